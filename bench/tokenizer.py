"""Tokenizer training and encoding speed: minigpt against Hugging Face `tokenizers`.

    .venv/bin/python bench/tokenizer.py [--vocab-size 4096] [--naive-merges N]

Training: vocabulary 4096 on the training scenes of the default corpus with the naive
trainer, the fast trainer and `tokenizers`' BPE trainer (byte level). The naive trainer runs
all merges unless --naive-merges caps it, in which case its time is extrapolated linearly (the
cost per merge is nearly constant) and marked "~". Encoding: the whole corpus, one scene at a
time, with our tokenizer through tiktoken, in pure Python, and with `tokenizers`.
Goal of the chapter: the fast trainer at least 20x faster than the naive one, and under 60 s.
"""
import argparse
import os
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")   # one thread, like ours

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from minigpt.data import load_shakespeare, run_pipeline
from minigpt.tokenizer import (SPECIAL_TOKENS, BPETokenizer, to_tiktoken,
                               train_bpe, train_bpe_naive)


def timed(fn, *args):
    start = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - start, result


def train_hf(texts, vocab_size):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return tok


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--naive-merges", type=int, default=None,
                   help="cap the naive trainer's merges and extrapolate its time")
    args = p.parse_args()
    corpus = run_pipeline(load_shakespeare())
    texts = [d.text for d in corpus.train]
    n_merges = args.vocab_size - 256 - len(SPECIAL_TOKENS)
    print(f"training on {len(texts)} scenes, {sum(map(len, texts)) / 1e6:.1f} M characters; "
          f"vocabulary {args.vocab_size} ({n_merges} merges)\n")

    naive_n = min(n_merges, args.naive_merges or n_merges)
    naive_s, naive = timed(train_bpe_naive, texts, naive_n)
    naive_full = naive_s * n_merges / naive_n
    fast_s, fast = timed(train_bpe, texts, n_merges)
    hf_s, hf = timed(train_hf, texts, args.vocab_size)
    assert fast[:naive_n] == naive, "the fast and naive trainers disagree"
    mark = "" if naive_n == n_merges else "~"
    print(f"{'training':<28} {'seconds':>9} {'vs fast':>8}")
    print(f"{'minigpt naive':<28} {mark + format(naive_full, '.1f'):>9} {naive_full / fast_s:>7.1f}x")
    print(f"{'minigpt fast':<28} {fast_s:>9.1f} {1:>7.1f}x")
    print(f"{'tokenizers (Rust)':<28} {hf_s:>9.1f} {hf_s / fast_s:>7.2f}x")
    ok = naive_full / fast_s >= 20 and fast_s < 60
    print(f"goal (fast >= 20x naive, < 60 s): {'met' if ok else 'NOT met'}\n")

    ours = BPETokenizer.from_merges(fast)
    enc = to_tiktoken(ours)
    docs = [d.text for d in corpus.train + corpus.val]
    n_bytes = sum(len(d.encode()) for d in docs)
    rows = []
    for name, fn in [("minigpt via tiktoken", enc.encode_ordinary),
                     ("minigpt pure Python", ours.encode_ordinary),
                     ("tokenizers (Rust)", lambda t: hf.encode(t).ids)]:
        secs, n_tokens = timed(lambda: sum(len(fn(d)) for d in docs))
        rows.append((name, secs, n_bytes / secs / 1e6, n_tokens))
    print(f"{'encoding ' + format(n_bytes / 1e6, '.1f') + ' MB':<28} {'seconds':>9} {'MB/s':>8} {'tokens':>10}")
    for name, secs, mbs, n_tokens in rows:
        print(f"{name:<28} {secs:>9.2f} {mbs:>8.2f} {n_tokens:>10,}")


if __name__ == "__main__":
    main()
