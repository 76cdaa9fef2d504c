"""Near-duplicate detection on the whole default corpus: minigpt against datasketch.

    .venv/bin/python bench/dedup.py [--repeats 3] [--num-perm 128] [--threshold 0.7]

Both run in this process on the same cleaned scenes with the same 5-word shingles, so the
ratio of their times is what to compare across machines. Prints a table; asserts nothing.
"""
import argparse
import time

from datasketch import MinHash, MinHashLSH

from minigpt.data import clean_corpus, load_shakespeare, near_dedup, shingles


def run_minigpt(docs, num_perm, threshold):
    return len(near_dedup(docs, threshold, num_perm).pairs)


def run_datasketch(docs, num_perm, threshold):
    lsh, sigs = MinHashLSH(threshold=threshold, num_perm=num_perm), {}
    for d in docs:
        m = MinHash(num_perm=num_perm, seed=1)
        m.update_batch([s.encode() for s in shingles(d.text)])
        sigs[d.id] = m
        lsh.insert(d.id, m)
    pairs = {frozenset((d.id, o)) for d in docs for o in lsh.query(sigs[d.id]) if o != d.id}
    return len(pairs)


def best_time(fn, repeats, *args):
    "Fastest of `repeats` runs (seconds) and the function's result."
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn(*args)
        times.append(time.perf_counter() - start)
    return min(times), result


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--num-perm", type=int, default=128)
    p.add_argument("--threshold", type=float, default=0.7)
    args = p.parse_args()
    docs, _ = clean_corpus(load_shakespeare().docs)
    chars = sum(len(d.text) for d in docs)
    print(f"corpus: {len(docs)} scenes, {chars / 1e6:.1f} M characters; "
          f"num_perm={args.num_perm}, threshold={args.threshold}, best of {args.repeats}")
    rows = []
    for name, fn in [("minigpt", run_minigpt), ("datasketch", run_datasketch)]:
        secs, pairs = best_time(fn, args.repeats, docs, args.num_perm, args.threshold)
        rows.append((name, secs, len(docs) / secs, pairs))
    base = rows[1][1]
    print(f"{'implementation':<14} {'seconds':>8} {'docs/s':>9} {'pairs':>6} {'time vs datasketch':>19}")
    for name, secs, rate, pairs in rows:
        print(f"{name:<14} {secs:>8.2f} {rate:>9.0f} {pairs:>6} {secs / base:>18.2f}x")


if __name__ == "__main__":
    main()
