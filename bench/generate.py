"""Generation speed: with and without the KV cache, and against transformers' generate.

    .venv/bin/python bench/generate.py [--lengths 128 512 1024] [--prompt-tokens 16]

The model is the CPU preset with a context window of 1,280 positions (so that 1,024 new
tokens fit without sliding the window), random weights from seed 0; speed does not depend on
the values of the weights. The same weights are exported to a transformers GPT-2 directory
(`save_hf_gpt2`, Chapter "The GPT model") and loaded as `GPT2LMHeadModel`. All runs decode
greedily in fp32, batch 1, from the same prompt; each time is the best of --repeat runs.
Prints a table with the ratios against the goals (cache >= 5x at 1,024 tokens; ours >= 1.0x
transformers) and whether the greedy tokens agree; asserts nothing.
"""
import argparse
import tempfile
import time

import torch

from minigpt.generate import SamplingConfig, decode_steps
from minigpt.model import GPT, GPTConfig, save_hf_gpt2


def ours(model, prompt: list[int], n: int, use_cache: bool) -> list[int]:
    cfg = SamplingConfig(max_new_tokens=n, temperature=0, stop_at_eot=False)
    return [int(t[0]) for t, _ in decode_steps(model, [prompt], cfg, use_cache)]


def theirs(model, prompt: list[int], n: int) -> list[int]:
    x = torch.tensor([prompt])
    with torch.no_grad():
        out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n,
                             min_new_tokens=n, do_sample=False, use_cache=True,
                             pad_token_id=0)
    return out[0, len(prompt):].tolist()


def best_time(fn, repeat: int):
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[128, 512, 1024])
    p.add_argument("--prompt-tokens", type=int, default=16)
    p.add_argument("--repeat", type=int, default=2)
    args = p.parse_args()
    from transformers import GPT2LMHeadModel
    from transformers.utils import logging
    logging.disable_progress_bar(); logging.set_verbosity_error()

    torch.manual_seed(0)
    cfg = GPTConfig.preset("cpu", block_size=1280)
    model = GPT(cfg).eval()
    hf = GPT2LMHeadModel.from_pretrained(save_hf_gpt2(model, tempfile.mkdtemp())).eval()
    prompt = torch.randint(0, cfg.vocab_size, (args.prompt_tokens,),
                           generator=torch.Generator().manual_seed(1)).tolist()
    print(f"greedy decoding, CPU preset with a {cfg.block_size}-token window, batch 1, fp32, "
          f"{torch.get_num_threads()} threads, prompt of {len(prompt)} tokens; tokens/s\n")
    print("| new tokens | cache | no cache | cache speed-up | transformers | ours / theirs "
          "| same tokens |")
    print("|--:|--:|--:|--:|--:|--:|:--|")
    for n in args.lengths:
        t_cache, a = best_time(lambda: ours(model, prompt, n, True), args.repeat)
        t_plain, b = best_time(lambda: ours(model, prompt, n, False), 1)
        t_hf, c = best_time(lambda: theirs(hf, prompt, n), args.repeat)
        same = "yes" if a == b == c else f"cache/no cache {a == b}, hf {a == c}"
        print(f"| {n:,} | {n / t_cache:,.0f} | {n / t_plain:,.0f} | {t_plain / t_cache:.1f}x "
              f"| {n / t_hf:,.0f} | {t_hf / t_cache:.2f}x | {same} |")
    print("\ngoals: cache speed-up >= 5x at 1,024 tokens; ours / transformers >= 1.0x")


if __name__ == "__main__":
    main()
