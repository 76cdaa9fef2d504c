"""GPU speed: training tokens/s and MFU, eager and compiled; decoding without the KV cache, with
it, and with compiled fixed-shape steps; the llama-1b preset in 24 GB.

    python bench/gpu.py [--device cuda] [--steps 10] [--batch-size 16] [--precision auto]
                        [--new-tokens 256] [--batches 1 32] [--decode-models gpt2]
                        [--llama-batches 1 2 4]
                        [--parts train decode memory] [--no-compile] [--small] [--out F.json]

Training: the library's `train_step` (the loop's step: forward, loss, backward, clipping,
AdamW fused on CUDA, the GradScaler in fp16, one read-back of loss and gradient norm, batches
copied from pinned memory) of two shapes of about GPT-2 small's size with a 1,024-token
context: `gpt2` (GPT-2 small, tied embeddings, LayerNorm, GELU, learned positions) and
`llama`, the same width and depth with RMSNorm, SwiGLU (d_ff 2,048), RoPE, grouped-query
attention (4 of 12 heads for keys and values), no biases and an untied head. Each runs eager
and under `torch.compile`, in the precision `choose_precision` picks for the device (bf16 on
an H100 or H200; MINIGPT_PRECISION or --precision override it), on random token batches: no
data files. After --warmup steps (the first compiled one includes the compilation, reported
apart), the mean of --steps timed steps between two device synchronisations. MFU is
`flops_per_token * tokens/s / peak_flops(device, precision)`: the data-sheet peak on a GPU
(989 TFLOP/s dense bf16 for an H100 or H200), a measured matrix product on a CPU.

Decoding: `decode_steps`, the loop that `minigpt.generate.generate` runs, so that exactly
--new-tokens are made (a random model would stop at a random <|endoftext|>), greedy, from
random 16-token prompts, of the --decode-models (gpt2 by default), without the cache, with it
(eager steps) and with compiled fixed-shape steps (`compile=True`: CUDA graphs on a GPU),
under autocast in the chosen precision for each of --batches, and in fp32 for the first
batch size; tokens/s counts the new tokens of the whole batch, after a warm-up call (which
compiles). "same" says whether the compiled steps drew the eager steps'
tokens.

Memory (CUDA only): the llama-1b preset (1.1B parameters, 2,048-token context) trained
eagerly with activation checkpointing while `torch.cuda.set_per_process_memory_fraction`
caps the GPU at 24 GB; per micro-batch of --llama-batches (until one fails): tokens/s, MFU,
peak memory and the peak that `minigpt plan` predicts (DDP on one GPU, checkpointing).

--small: tiny shapes and few steps, so that `--device cpu --small` checks the script in a
minute or two. Prints tables (and writes --out as JSON); asserts nothing. A configuration
that fails is reported in its row and the others still run.
"""
import argparse
import json
import platform
import tempfile
import time
import traceback
from pathlib import Path

import torch

from minigpt.device import autocast, choose_precision, peak_flops, resolve_device
from minigpt.generate import SamplingConfig, decode_steps
from minigpt.model import GPT, GPTConfig, flops_per_token, parameter_groups
from minigpt.train import TrainConfig, Trainer, make_optimizer, train_step

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


class RandomBatches:
    "The loader's `next_batch` over random token ids (CPU tensors, as the loader's): no files."
    def __init__(self, vocab_size: int, batch_size: int, seq_len: int, seed: int = 0):
        self.shape, self.vocab = (batch_size, seq_len + 1), vocab_size
        self.gen = torch.Generator().manual_seed(seed)

    def next_batch(self):
        rows = torch.randint(0, self.vocab, self.shape, generator=self.gen)
        return rows[:, :-1], rows[:, 1:]


def train_speed(name: str, cfg: GPTConfig, compiled: bool, args, device, precision,
                batch_size: int | None = None, checkpointing: bool = False) -> dict:
    """tokens/s, MFU and peak memory of the library's `train_step` (the loop's step: one
    read-back per step, pinned copies) on random batches."""
    B, T = batch_size or args.batch_size, cfg.block_size
    row = {"model": name, "mode": "compiled" if compiled else "eager", "precision": precision,
           "batch": B, "checkpointing": checkpointing}
    reset_memory(device)
    torch.manual_seed(0)
    tcfg = TrainConfig(batch_size=B, compile=compiled, precision=precision,
                       activation_checkpointing=checkpointing)
    model = GPT(cfg).to(device).train()
    model.activation_checkpointing = checkpointing
    t = Trainer(Path(tempfile.mkdtemp()), None, cfg, tcfg, device, precision, model, model,
                make_optimizer(model, tcfg, device),
                torch.amp.GradScaler(device.type, enabled=precision == "fp16"),
                RandomBatches(cfg.vocab_size, B, T), {"step": 0})
    step_model = torch.compile(model) if compiled else model
    ctx = autocast(device, precision)

    def step() -> None:
        row["loss"] = train_step(t, step_model, ctx)["loss"]
        t.progress["step"] += 1

    try:
        sync(device); start = time.perf_counter()
        step(); sync(device)
        row["first_step_s"] = time.perf_counter() - start     # compilation, if any
        for _ in range(1, args.warmup): step()
        sync(device); start = time.perf_counter()
        for _ in range(args.steps): step()
        sync(device)
        seconds = (time.perf_counter() - start) / args.steps
        row["step_ms"] = 1e3 * seconds
        row["tokens_per_s"] = B * T / seconds
        row["mfu"] = flops_per_token(cfg, T) * row["tokens_per_s"] / args.peak
        row["peak_memory_gb"] = peak_memory_gb(device)
    finally:
        del model, step_model, t
        if compiled: torch._dynamo.reset()
        reset_memory(device)
    return row


def llama_1b_in_24gb(args, device, precision) -> list[dict]:
    """The llama-1b preset at its 2,048-token context, eager, activation checkpointing, with
    the GPU capped at 24 GB (a consumer card): tokens/s and peak memory against `minigpt
    plan`'s prediction, per micro-batch size until one does not fit."""
    from minigpt.scale import make_plan
    cfg, rows = GPTConfig.preset("llama-1b"), []
    total = torch.cuda.get_device_properties(device).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, 24e9 / total), device)
    try:
        for B in args.llama_batches:
            plan = make_plan("llama-1b", gpus=1, precision="mixed", micro_batch=B)
            predicted = sum(plan.memory("ddp", checkpointing=True).values()) / 1e9
            row = guarded(train_speed, {"model": "llama-1b", "batch": B}, "llama-1b", cfg,
                          False, args, device, precision, B, True)
            rows.append(row | {"model": "llama-1b", "cap_gb": 24, "predicted_gb": predicted})
            if "error" in row: break
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, device)
    return rows


def decode_speed(name: str, cfg: GPTConfig, batch: int, mode: str, precision: str,
                 args, device) -> dict:
    """New tokens per second of greedy decoding, the whole batch counted: `mode` is
    "no cache", "cache" (eager steps) or "compiled" (fixed-shape steps, CUDA graphs)."""
    row = {"model": name, "batch": batch, "mode": mode, "precision": precision}
    torch.manual_seed(0)
    model = GPT(cfg).to(device).eval()
    gen = torch.Generator().manual_seed(1)
    rows = torch.randint(0, cfg.vocab_size, (batch, 16), generator=gen).tolist()
    use_cache, compile = mode != "no cache", mode == "compiled"
    ctx = autocast(device, precision)

    def run(n: int) -> list[torch.Tensor]:
        cfg_n = SamplingConfig(max_new_tokens=n, temperature=0, stop_at_eot=False)
        with ctx: return [t for t, _ in decode_steps(model, rows, cfg_n, use_cache,
                                                      compile=compile)]

    try:
        start = time.perf_counter()
        run(4)                               # warm-up: kernels, allocator, compilation
        row["first_call_s"] = time.perf_counter() - start
        sync(device); start = time.perf_counter()
        tokens = run(args.new_tokens)
        sync(device)
        seconds = time.perf_counter() - start
        row["new_tokens"] = len(tokens)
        row["tokens_per_s"] = batch * len(tokens) / seconds
        row["ms_per_step"] = 1e3 * seconds / len(tokens)
        row["tokens"] = torch.stack(tokens, 1).tolist()       # compared, then dropped
    finally:
        del model
        if compile: torch._dynamo.reset()
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
    p.add_argument("--batches", type=int, nargs="+", default=[1, 32],
                   help="decoding batch sizes (default 1 32)")
    p.add_argument("--decode-models", nargs="+", default=["gpt2"], choices=["gpt2", "llama"],
                   help="shapes to decode with (default gpt2)")
    p.add_argument("--llama-batches", type=int, nargs="+", default=[1, 2, 4],
                   help="llama-1b micro-batches tried in 24 GB, until one fails")
    p.add_argument("--parts", nargs="+", default=["train", "decode", "memory"],
                   choices=["train", "decode", "memory"], help="what to measure")
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

    train_rows, decode_rows, memory_rows = [], [], []

    def save():     # after every row: a run stopped by a time limit keeps what it measured
        if not args.out: return
        with open(args.out, "w") as f:
            json.dump(info | {"train": train_rows, "decode": decode_rows,
                              "memory": memory_rows}, f, indent=1)

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
        modes = ["no cache", "cache"] + ([] if args.no_compile else ["compiled"])
        print(f"\ndecoding: greedy, {args.new_tokens} new tokens after a 16-token prompt; "
              "tokens/s of the whole batch; compiled: fixed-shape steps (CUDA graphs on a "
              "GPU); same: the compiled steps' tokens equal the eager ones\n")
        print(f"| {'model':<6} | {'precision':<9} | {'batch':>5} | {'no cache':>10} | "
              f"{'cache':>10} | {'compiled':>10} | {'compiled/cache':>14} | same |")
        print(f"|{'-' * 8}|{'-' * 11}|{'-' * 7}|{'-' * 12}|{'-' * 12}|{'-' * 12}|"
              f"{'-' * 16}|{'-' * 6}|")
        for mname in args.decode_models:
            cfg = models[mname]
            for prec in precisions:
                for batch in args.batches if prec == precision else args.batches[:1]:
                    got = {m: guarded(decode_speed, {"model": mname, "batch": batch,
                                                     "mode": m, "precision": prec},
                                      mname, cfg, batch, m, prec, args, device)
                           for m in modes}
                    toks = {m: r.pop("tokens", None) for m, r in got.items()}
                    rates = {m: r.get("tokens_per_s") for m, r in got.items()}
                    same = ("-" if None in (toks["cache"], toks.get("compiled")) else
                            "yes" if toks["cache"] == toks["compiled"] else "no")
                    for r in got.values(): r["same_tokens"] = same
                    decode_rows.extend(got.values()); save()
                    cell = lambda m: fmt(rates.get(m), ",.0f") if rates.get(m) else "failed"
                    ratio = (f"{rates['compiled'] / rates['cache']:.1f}x"
                             if rates.get("compiled") and rates.get("cache") else "-")
                    print(f"| {mname:<6} | {prec:<9} | {batch:>5} | {cell('no cache'):>10} | "
                          f"{cell('cache'):>10} | {cell('compiled'):>10} | {ratio:>14} | "
                          f"{same:>4} |", flush=True)
                    for r in got.values():
                        if "error" in r: print(f"  {r['mode']}: {r['error']}")

    def memory() -> None:
        print("\nllama-1b (1.1B parameters), context 2,048, eager, activation checkpointing, "
              "the GPU capped at 24 GB\n")
        print("| batch | tokens/s | MFU | peak GB | plan GB | plan/peak |")
        print("|------:|---------:|----:|--------:|--------:|----------:|")
        for row in llama_1b_in_24gb(args, device, precision):
            memory_rows.append(row); save()
            if "error" in row:
                print(f"| {row['batch']} | failed: {row['error']} |"); continue
            print(f"| {row['batch']} | {row['tokens_per_s']:,.0f} | {row['mfu']:.1%} | "
                  f"{row['peak_memory_gb']:.1f} | {row['predicted_gb']:.1f} | "
                  f"{row['predicted_gb'] / row['peak_memory_gb']:.2f} |", flush=True)

    parts = args.parts
    if "train" in parts: training(compiled=False)
    if "decode" in parts: decoding()
    if "train" in parts and not args.no_compile: training(compiled=True)
    if "memory" in parts:
        if device.type == "cuda": memory()
        else: print("\nllama-1b in 24 GB: needs a CUDA GPU; skipped")
    if args.out: save(); print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
