"""GPU speed: training tokens/s and MFU, eager and compiled; decoding with and without the KV cache.

    python bench/gpu.py [--device cuda] [--steps 10] [--batch-size 16] [--precision auto]
                        [--new-tokens 256] [--no-compile] [--small] [--out results.json]

Training: one optimizer step (forward, loss, backward, clipping, AdamW fused on CUDA, the
GradScaler in fp16) of two shapes of about GPT-2 small's size with a 1,024-token context:
`gpt2` (GPT-2 small, tied embeddings, LayerNorm, GELU, learned positions) and `llama`, the
same width and depth with RMSNorm, SwiGLU (d_ff 2,048), RoPE, grouped-query attention (4 of 12
heads for keys and values), no biases and an untied head. Each runs eager and under
`torch.compile`, in the precision `choose_precision` picks for the device (bf16 on an H100 or
H200; MINIGPT_PRECISION or --precision override it), on random token batches: no data files.
After --warmup steps (the first compiled one includes the compilation, reported apart), the
mean of --steps timed steps between two device synchronisations. MFU is
`flops_per_token * tokens/s / peak_flops(device, precision)`: the data-sheet peak on a GPU
(989 TFLOP/s dense bf16 for an H100 or H200), a measured matrix product on a CPU.

Decoding: `decode_steps`, the loop that `minigpt.generate.generate` runs, so that exactly
--new-tokens are made (a random model would stop at a random <|endoftext|>), greedy, from
random 16-token prompts, batch 1 and 8, with the KV cache and without it, in fp32 and under
autocast in the chosen precision; tokens/s counts the new tokens of the whole batch.

--small: tiny shapes and few steps, so that `--device cpu --small` checks the script in a
minute. Prints tables (and writes --out as JSON); asserts nothing. A configuration that fails
is reported in its row and the others still run.
"""
import argparse
import json
import platform
import time
import traceback

import torch

from minigpt.device import autocast, choose_precision, peak_flops, resolve_device
from minigpt.generate import SamplingConfig, decode_steps
from minigpt.model import GPT, GPTConfig, flops_per_token, parameter_groups
from minigpt.train import TrainConfig, make_optimizer

LLAMA = dict(norm="rmsnorm", mlp="swiglu", pos="rope", n_kv_head=4, tie_weights=False,
             bias=False, d_ff=2048)
SMALL = dict(vocab_size=512, block_size=128, n_layer=2, n_head=4, d_model=64)


def shapes(small: bool) -> dict[str, GPTConfig]:
    "The two model shapes: full size, or tiny with --small."
    if small:
        return {"gpt2": GPTConfig.preset("cpu", **SMALL),
                "llama": GPTConfig.preset("cpu", **SMALL, **(LLAMA | {"n_kv_head": 2,
                                                                      "d_ff": 192}))}
    return {"gpt2": GPTConfig.preset("gpt2"), "llama": GPTConfig.preset("gpt2", **LLAMA)}


def sync(device: torch.device) -> None:
    if device.type == "cuda": torch.cuda.synchronize(device)
    elif device.type == "mps": torch.mps.synchronize()


def reset_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None


def count(cfg: GPTConfig) -> dict:
    "Parameters (tied weights once) and those outside the embeddings and the head."
    with torch.device("meta"): groups = parameter_groups(GPT(cfg))
    total = sum(groups.values())
    return {"params": total, "non_embedding": total - groups["embeddings"] - groups["head"]}


def train_speed(name: str, cfg: GPTConfig, compiled: bool, args, device, precision) -> dict:
    "tokens/s, MFU and peak memory of training steps of `cfg` on random batches."
    row = {"model": name, "mode": "compiled" if compiled else "eager",
           "precision": precision}
    reset_memory(device)
    torch.manual_seed(0)
    model = GPT(cfg).to(device).train()
    opt = make_optimizer(model, TrainConfig(), device)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    ctx = autocast(device, precision)
    step_model = torch.compile(model) if compiled else model
    B, T = args.batch_size, cfg.block_size
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, cfg.vocab_size, (B, T + 1), generator=gen).to(device)
               for _ in range(4)]

    def step(i: int) -> None:
        b = batches[i % len(batches)]
        with ctx: _, loss = step_model(b[:, :-1], b[:, 1:])
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt); scaler.update()
        opt.zero_grad(set_to_none=True)

    try:
        sync(device); start = time.perf_counter()
        step(0); sync(device)
        row["first_step_s"] = time.perf_counter() - start     # compilation, if any
        for i in range(1, args.warmup): step(i)
        sync(device); start = time.perf_counter()
        for i in range(args.steps): step(i)
        sync(device)
        seconds = (time.perf_counter() - start) / args.steps
        row["step_ms"] = 1e3 * seconds
        row["tokens_per_s"] = B * T / seconds
        row["mfu"] = flops_per_token(cfg, T) * row["tokens_per_s"] / args.peak
        row["peak_memory_gb"] = peak_memory_gb(device)
    finally:
        del model, opt, step_model, batches
        if compiled: torch._dynamo.reset()
        reset_memory(device)
    return row


def decode_speed(name: str, cfg: GPTConfig, batch: int, use_cache: bool, precision: str,
                 args, device) -> dict:
    "New tokens per second of greedy decoding, the whole batch counted."
    row = {"model": name, "batch": batch, "cache": "yes" if use_cache else "no",
           "precision": precision}
    torch.manual_seed(0)
    model = GPT(cfg).to(device).eval()
    gen = torch.Generator().manual_seed(1)
    rows = torch.randint(0, cfg.vocab_size, (batch, 16), generator=gen).tolist()
    sampling = SamplingConfig(max_new_tokens=args.new_tokens, temperature=0,
                              stop_at_eot=False)
    ctx = autocast(device, precision)

    def run(n: int) -> int:
        cfg_n = SamplingConfig(max_new_tokens=n, temperature=0, stop_at_eot=False)
        with ctx: return sum(1 for _ in decode_steps(model, rows, cfg_n, use_cache))

    try:
        run(4)                                       # warm-up: kernels, allocator
        sync(device); start = time.perf_counter()
        with ctx: made = sum(1 for _ in decode_steps(model, rows, sampling, use_cache))
        sync(device)
        seconds = time.perf_counter() - start
        row["new_tokens"] = made
        row["tokens_per_s"] = batch * made / seconds
        row["ms_per_step"] = 1e3 * seconds / made
    finally:
        del model
        reset_memory(device)
    return row


def guarded(fn, row: dict, *a) -> dict:
    "fn(*a), or `row` with the error, so that one failure does not end the benchmark."
    try: return fn(*a)
    except Exception as e:                          # noqa: BLE001 -- reported, not hidden
        traceback.print_exc()
        return row | {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"}


def si(x: float) -> str:
    "1.2e8 -> '120.0 M'."
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale: return f"{x / scale:,.1f} {unit}"
    return f"{x:,.0f} "


def fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default=None, help="cuda, cuda:N, mps or cpu "
                   "(default: $MINIGPT_DEVICE, else the best present)")
    p.add_argument("--steps", type=int, default=None, help="timed training steps "
                   "(default 10; 3 with --small)")
    p.add_argument("--warmup", type=int, default=3, help="steps before timing (>= 1)")
    p.add_argument("--batch-size", type=int, default=None, help="sequences per step "
                   "(default 16; 4 with --small)")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    p.add_argument("--new-tokens", type=int, default=None,
                   help="decoded tokens (default 256; 32 with --small)")
    p.add_argument("--no-compile", action="store_true", help="eager only")
    p.add_argument("--small", action="store_true", help="tiny shapes, few steps")
    p.add_argument("--out", help="also write the results here as JSON")
    args = p.parse_args()
    args.steps = args.steps or (3 if args.small else 10)
    args.batch_size = args.batch_size or (4 if args.small else 16)
    args.new_tokens = args.new_tokens or (32 if args.small else 256)
    args.warmup = max(1, args.warmup)

    device = resolve_device(args.device)
    precision = choose_precision(device, args.precision)
    if device.type == "cuda": torch.set_float32_matmul_precision("high")   # as train does
    args.peak = peak_flops(device, precision)
    models = shapes(args.small)
    name = (torch.cuda.get_device_name(device) if device.type == "cuda" else
            platform.processor() or platform.machine())
    info = {"device": str(device), "device_name": name, "torch": torch.__version__,
            "precision": precision, "peak_flops": args.peak, "batch_size": args.batch_size,
            "steps": args.steps, "warmup": args.warmup, "small": args.small,
            "models": {k: {**count(c), "block_size": c.block_size,
                           "flops_per_token": flops_per_token(c)} for k, c in models.items()}}
    print(f"{name} ({device}), torch {torch.__version__}, {precision}, peak "
          f"{si(args.peak)}FLOP/s for MFU")
    for k, m in info["models"].items():
        print(f"  {k:<6} {m['params']:,} parameters ({si(m['params'])}; "
              f"{si(m['non_embedding'])} outside embeddings and head), context "
              f"{m['block_size']:,}, {si(m['flops_per_token'])}FLOP per token")

    train_rows, decode_rows = [], []

    def save():     # after every row: a run stopped by a time limit keeps what it measured
        if not args.out: return
        with open(args.out, "w") as f:
            json.dump(info | {"train": train_rows, "decode": decode_rows}, f, indent=1)

    def training(compiled: bool) -> None:
        "One table: each shape, eager or compiled (compiled last: it takes the longest)."
        mode = "compiled" if compiled else "eager"
        print(f"\ntraining, {mode}: batch {args.batch_size} x context, mean of {args.steps} "
              f"steps after {args.warmup} warm-up step(s)"
              f"{' (the first includes compiling)' if compiled else ''}\n")
        print(f"| {'model':<6} | {'tokens/s':>10} | {'ms/step':>8} | {'MFU':>6} "
              f"| {'peak GB':>7} | {'1st step s':>10} | {'vs eager':>8} |")
        print(f"|{'-' * 8}|{'-' * 12}|{'-' * 10}|{'-' * 8}|{'-' * 9}|{'-' * 12}|{'-' * 10}|")
        for mname, cfg in models.items():
            row = guarded(train_speed, {"model": mname, "mode": mode, "precision": precision},
                          mname, cfg, compiled, args, device, precision)
            eager = next((r.get("tokens_per_s") for r in train_rows
                          if r["model"] == mname and r["mode"] == "eager"), None)
            if compiled and eager and "tokens_per_s" in row:
                row["speedup_vs_eager"] = row["tokens_per_s"] / eager
            train_rows.append(row); save()
            if "error" in row:
                print(f"| {mname:<6} | failed: {row['error']} |", flush=True)
                continue
            print(f"| {mname:<6} | {row['tokens_per_s']:>10,.0f} | {row['step_ms']:>8.1f} | "
                  f"{row['mfu']:>6.1%} | {fmt(row['peak_memory_gb'], '7.1f'):>7} | "
                  f"{row['first_step_s']:>10.1f} | "
                  f"{fmt(row.get('speedup_vs_eager'), '7.2f') + 'x' if compiled else '-':>8} |",
                  flush=True)

    def decoding() -> None:
        precisions = ["fp32"] + ([precision] if precision != "fp32" else [])
        print(f"\ndecoding: greedy, {args.new_tokens} new tokens after a 16-token prompt; "
              "tokens/s of the whole batch\n")
        print(f"| {'model':<6} | {'precision':<9} | {'batch':>5} | {'cache':>10} | "
              f"{'no cache':>10} | {'speed-up':>8} |")
        print(f"|{'-' * 8}|{'-' * 11}|{'-' * 7}|{'-' * 12}|{'-' * 12}|{'-' * 10}|")
        for mname, cfg in models.items():
            for prec in precisions:
                for batch in (1, 8):
                    pair = [guarded(decode_speed, {"model": mname, "batch": batch,
                                                   "cache": "yes" if c else "no",
                                                   "precision": prec},
                                    mname, cfg, batch, c, prec, args, device)
                            for c in (True, False)]
                    decode_rows.extend(pair); save()
                    rates = [r.get("tokens_per_s") for r in pair]
                    cells = [fmt(r, ",.0f") if r else "failed" for r in rates]
                    ratio = f"{rates[0] / rates[1]:.1f}x" if all(rates) else "-"
                    print(f"| {mname:<6} | {prec:<9} | {batch:>5} | {cells[0]:>10} | "
                          f"{cells[1]:>10} | {ratio:>8} |", flush=True)
                    for r in pair:
                        if "error" in r: print(f"  cache={r['cache']}: {r['error']}")

    training(compiled=False)
    decoding()
    if not args.no_compile: training(compiled=True)
    if args.out: save(); print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
