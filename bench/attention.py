"""Attention on this CPU: our from-scratch path against PyTorch's SDPA, T = 128 ... 2048.

    .venv/bin/python bench/attention.py [--batch 4] [--d-model 512] [--heads 8]
                                        [--plot bench/out/attention.png]

Each (T, implementation) runs in a fresh process, so its peak resident memory (ru_maxrss)
belongs to that configuration alone; the table shows the time of one forward pass (best of
5) and the memory above the process's baseline after the inputs exist. Prints a table and
saves a figure; asserts nothing.
"""
import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path


def measure(T, impl, batch, d_model, heads):
    "Run in a child process: best time and extra peak memory of one forward pass."
    import torch
    from minigpt.attention import CausalSelfAttention
    torch.manual_seed(0)
    layer = CausalSelfAttention(d_model, heads, use_sdpa=impl == "sdpa").eval()
    x = torch.randn(batch, T, d_model)
    with torch.no_grad():
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        layer(x)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        times = []
        for _ in range(5):
            start = time.perf_counter(); layer(x); times.append(time.perf_counter() - start)
    return {"seconds": min(times), "peak_mb": (peak - base) / 1024}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--d-model", type=int, default=512)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--plot", default="bench/out/attention.png")
    p.add_argument("--one", nargs=2, help=argparse.SUPPRESS)   # T impl, in a child
    args = p.parse_args()
    if args.one:
        print(json.dumps(measure(int(args.one[0]), args.one[1], args.batch, args.d_model,
                                 args.heads)))
        return
    lengths, rows = [128, 256, 512, 1024, 2048], {}
    for T in lengths:
        for impl in ("scratch", "sdpa"):
            out = subprocess.run([sys.executable, __file__, "--one", str(T), impl,
                                  "--batch", str(args.batch), "--d-model", str(args.d_model),
                                  "--heads", str(args.heads)],
                                 capture_output=True, text=True, check=True)
            rows[T, impl] = json.loads(out.stdout)
    print(f"B={args.batch}, d={args.d_model}, h={args.heads}, fp32, one forward pass")
    print(f"{'T':>6} {'scratch ms':>11} {'SDPA ms':>9} {'speed-up':>9} "
          f"{'scratch MB':>11} {'SDPA MB':>9}")
    for T in lengths:
        a, b = rows[T, "scratch"], rows[T, "sdpa"]
        print(f"{T:>6} {a['seconds'] * 1e3:>11.1f} {b['seconds'] * 1e3:>9.1f} "
              f"{a['seconds'] / b['seconds']:>8.2f}x {a['peak_mb']:>11.0f} {b['peak_mb']:>9.0f}")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(8, 3))
    for impl, label in (("scratch", "from scratch"), ("sdpa", "SDPA")):
        ax1.plot(lengths, [rows[T, impl]["seconds"] * 1e3 for T in lengths], "o-", label=label)
        ax2.plot(lengths, [rows[T, impl]["peak_mb"] for T in lengths], "o-", label=label)
    for ax, label in ((ax1, "ms per forward"), (ax2, "extra peak memory (MB)")):
        ax.set_xscale("log", base=2); ax.set_xlabel("sequence length T")
        ax.set_ylabel(label); ax.legend(frameon=False)
    ax1.set_yscale("log")
    plt.tight_layout()
    Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.plot, dpi=120)
    print(f"figure: {args.plot}")


if __name__ == "__main__":
    main()
