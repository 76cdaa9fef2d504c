"""Data loading speed: prepare's encoding step with 1 and 2 workers, and the batch sampler.

    .venv/bin/python bench/loader.py [--batch-size 32] [--seq-len 256]

Encoding: all scenes of the default corpus with the 4,096-token tokenizer, through
`encode_documents` (the step of `prepare` that scales with the corpus), in tokens/s.
Sampling: random (B, T) batches from the memory-mapped training shard, in batches/s, next to
the rate at which a training loop consumes them (a small GPT's step time on this CPU is
measured by bench/train.py once it exists; here we compare with 10 steps/s, a generous bound
for a few-million-parameter model on a CPU). Prints a table; asserts nothing.
"""
import argparse
import tempfile
import time
from pathlib import Path

from minigpt.data import load_shakespeare
from minigpt.loader import BatchSampler, encode_documents, open_data, prepare


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    work = Path(tempfile.mkdtemp())
    prepare("shakespeare", work, vocab_size=4096, workers=1)
    texts = [d.text for d in load_shakespeare().docs]
    print(f"encoding {len(texts)} scenes, {sum(map(len, texts)) / 1e6:.1f} M characters "
          f"(best of {args.repeats})")
    print(f"{'workers':<10} {'seconds':>8} {'tokens/s':>12} {'speed-up':>9}")
    base = None
    for workers in (1, 2):
        best, n = float("inf"), 0
        for _ in range(args.repeats):
            start = time.perf_counter()
            n = sum(len(a) for a in encode_documents(texts, work / "tokenizer.json", workers))
            best = min(best, time.perf_counter() - start)
        base = base or best
        print(f"{workers:<10} {best:>8.2f} {n / best:>12,.0f} {base / best:>8.2f}x")

    data = open_data(work)
    sampler = BatchSampler(data.train, args.batch_size, args.seq_len, seed=0)
    n_batches, start = 0, time.perf_counter()
    while time.perf_counter() - start < 2.0:
        sampler.next_batch(); n_batches += 1
    rate = n_batches / (time.perf_counter() - start)
    print(f"\nsampler: B={args.batch_size}, T={args.seq_len}: {rate:,.0f} batches/s "
          f"({rate * args.batch_size * args.seq_len / 1e6:.1f} M tokens/s), "
          f"{rate / 10:,.0f}x a training loop at 10 steps/s")


if __name__ == "__main__":
    main()
