"""Training speed and quality per time on this machine.

    .venv/bin/python bench/train.py [--steps 5] [--rounds 3] [--batch 16]
                                    [--quality-minutes 10] [--data data/shakespeare]

Part 1, speed: tokens/s of one optimizer step (forward, backward, clipping, AdamW) of the
CPU preset, for our GPT and for transformers' GPT2LMHeadModel built with the same
configuration, each in fp32 and, where the CPU has bf16 units (AVX512-BF16 or AMX), in bf16
autocast; on other CPUs bf16 is emulated and the bf16 rows are skipped with a note. They are
measured in alternating rounds, so that the machine's noise falls on all of them; the table
shows the median over rounds and the ratios against the goals (bf16 >= 1.8x fp32; ours >=
1.0x transformers).

Part 2, quality per time (skipped with --quality-minutes 0): prepares the default corpus
into --data if it is not there, trains the CPU preset for the given minutes with
`minigpt.train.train` in the default precision (`choose_precision`, or MINIGPT_PRECISION),
with the schedule fitted to the time (`fit_max_time`), and prints the validation bits per byte
on the whole validation split (goal: <= 2.5 after 10 minutes).

Prints tables; asserts nothing.
"""
import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from minigpt.model import GPT, GPTConfig
from minigpt.device import autocast, cpu_has_bf16


def hf_gpt2(cfg: GPTConfig):
    "transformers' GPT-2 with our configuration (dropout off, as ours)."
    from transformers import GPT2Config, GPT2LMHeadModel
    return GPT2LMHeadModel(GPT2Config(
        vocab_size=cfg.vocab_size, n_positions=cfg.block_size, n_embd=cfg.d_model,
        n_layer=cfg.n_layer, n_head=cfg.n_head, resid_pdrop=0.0, embd_pdrop=0.0,
        attn_pdrop=0.0))


def make_step(model, hf: bool, precision: str):
    "One training step on (x, y); the same optimizer and clipping for both models."
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)
    ctx = autocast(torch.device("cpu"), precision)

    def step(x, y):
        with ctx:
            # transformers shifts the labels itself, so it gets the inputs as labels
            loss = model(input_ids=x, labels=x).loss if hf else model(x, y)[1]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def speed(args) -> None:
    cfg = GPTConfig.preset("cpu", dropout=0.0)
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, cfg.vocab_size, (args.batch, cfg.block_size), generator=gen)
    y = torch.roll(x, -1, dims=1)
    runs = {}
    precisions = ("fp32", "bf16") if cpu_has_bf16() else ("fp32",)
    for name, hf in (("minigpt", False), ("transformers", True)):
        for precision in precisions:
            torch.manual_seed(0)
            model = (hf_gpt2(cfg) if hf else GPT(cfg)).train()
            runs[(name, precision)] = make_step(model, hf, precision)
    rates = {k: [] for k in runs}
    tokens = x.numel() * args.steps
    for k, step in runs.items():         # warm-up: allocator, kernels, optimizer state
        for _ in range(2): step(x, y)
    for _ in range(args.rounds):
        for k, step in runs.items():
            start = time.perf_counter()
            for _ in range(args.steps): step(x, y)
            rates[k].append(tokens / (time.perf_counter() - start))
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(f"one training step of the CPU preset ({sum(p.numel() for p in GPT(cfg).parameters()):,} "
          f"parameters), batch {args.batch} x {cfg.block_size}, {torch.get_num_threads()} "
          f"threads; median of {args.rounds} rounds of {args.steps} steps\n")
    print(f"| {'model':<13}| {'precision':<10}| {'tokens/s':>9} |")
    print(f"|{'-' * 14}|{'-' * 11}|{'-' * 11}|")
    for (name, precision), rate in med.items():
        print(f"| {name:<13}| {precision:<10}| {rate:>9,.0f} |")
    ratios = [("minigpt / transformers, fp32",
               med[("minigpt", "fp32")] / med[("transformers", "fp32")], 1.0)]
    if "bf16" in precisions:
        ratios += [("bf16 / fp32, minigpt",
                    med[("minigpt", "bf16")] / med[("minigpt", "fp32")], 1.8),
                   ("minigpt / transformers, bf16",
                    med[("minigpt", "bf16")] / med[("transformers", "bf16")], 1.0)]
    else:
        print("\nthis CPU has no bf16 units (no AVX512-BF16 or AMX): bf16 would be "
              "emulated, so it is not measured")
    print(f"\n| {'ratio':<30}| {'value':>6} | {'goal':>6} | met |")
    print(f"|{'-' * 31}|{'-' * 8}|{'-' * 8}|-----|")
    for label, value, goal in ratios:
        print(f"| {label:<30}| {value:>5.2f}x | >={goal:.1f}x | {'yes' if value >= goal else 'no':<3} |")


def quality(args) -> None:
    from minigpt.loader import open_data, prepare
    from minigpt.checkpoint import load_weights
    from minigpt.metrics import bits_per_byte, text_bytes, validation_loss
    from minigpt.train import TrainConfig, train
    data = Path(args.data)
    if not (data / "meta.json").exists():
        print(f"preparing the default corpus into {data} ...")
        prepare("shakespeare", data, vocab_size=4096)
    run = Path(tempfile.mkdtemp()) / "cpu"
    seconds = args.quality_minutes * 60
    cfg = TrainConfig(max_steps=100_000, max_time=seconds, fit_max_time=True,
                      eval_every=10_000, warmup_steps=50)
    result = train(data, run, cfg=cfg, progress_bar=False)
    d = open_data(data)
    model = GPT(GPTConfig.preset("cpu"))
    load_weights(model, run / "best.safetensors")
    device = torch.device(result["device"])
    model = model.to(device)
    val = validation_loss(model, d.val, 16, 256, autocast(device, result["precision"]),
                          device)
    bpb = bits_per_byte(val, text_bytes(d.val, d.tokenizer) / len(d.val))
    print(f"\nquality per time: CPU preset, {result['step']} steps "
          f"({result['tokens']:,} tokens) in {result['seconds']:.0f} s, {result['precision']}")
    print(f"| validation (whole split) | loss {val:.3f} | {bpb:.3f} bits per byte | "
          f"goal <= 2.5: {'met' if bpb <= 2.5 else 'not met'} |")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--quality-minutes", type=float, default=10)
    p.add_argument("--data", default="data/shakespeare")
    args = p.parse_args()
    speed(args)
    if args.quality_minutes > 0: quality(args)


if __name__ == "__main__":
    main()
