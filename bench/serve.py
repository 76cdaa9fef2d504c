"""Server throughput: one request at a time against continuous batching, 1 client against 8.

    .venv/bin/python bench/serve.py [--tokens 128] [--clients 8] [--precision auto]

The model is the CPU preset with random weights from seed 0 (speed does not depend on the
values of the weights) and a byte-level tokenizer, saved as a run directory; `minigpt.serve`
serves it in this process on a free loopback port, once with `max_batch=1` (one request at a
time, in turn) and once with `max_batch=--clients` (continuous batching). Each engine answers
--clients greedy completion requests (different prompts, --tokens new tokens each, the end
tokens banned so that each reply has exactly --tokens) from 1 client, one after the other,
then from --clients clients at once. Prints a table: total tokens/s of each, the ratio of
the many clients' tokens/s to the one client's (goal with batching: >= 3x on a 2-core CPU),
whether every reply equals that prompt's reply from the one-at-a-time engine to 1 client,
and the load average before and after; asserts nothing.
"""
import argparse
import http.client
import json
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from minigpt.checkpoint import save_weights
from minigpt.model import GPT, GPTConfig
from minigpt.serve import Engine, Server, create_app
from minigpt.tokenizer import BPETokenizer, save_tokenizer

PROMPTS = ["ROMEO:\n", "The king", "Once upon a time", "What is", "JULIET: O",
           "In the beginning", "def f(x):", "A B C", "Hello", "It was night"]


def random_run(path: Path) -> Path:
    "A run directory: the CPU preset with random weights, a byte-level tokenizer."
    tok = BPETokenizer.from_merges([])
    torch.manual_seed(0)
    model = GPT(GPTConfig.preset("cpu"))
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({"model": model.cfg.to_dict()}))
    save_tokenizer(tok, path / "tokenizer.json")
    save_weights(model, path / "best.safetensors")
    return path


def complete(server: Server, prompt: str, tokens: int) -> tuple[str, int]:
    "(text, completion tokens) of one greedy request."
    conn = http.client.HTTPConnection(server.host, server.port, timeout=600)
    conn.request("POST", "/v1/completions", json.dumps(dict(
        prompt=prompt, max_tokens=tokens, temperature=0, ignore_eos=True)),
        {"Content-Type": "application/json"})
    r = json.loads(conn.getresponse().read())
    return r["choices"][0]["text"], r["usage"]["completion_tokens"]


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def measure(run: Path, max_batch: int, prompts: list[str], tokens: int, precision: str):
    "{clients: (texts, tokens, seconds)} for 1 client in turn and all clients at once."
    engine = Engine(run, device="cpu", precision=precision, max_batch=max_batch)
    with Server(create_app(engine)) as server:
        complete(server, "warm up", 4)
        one, one_s = timed(lambda: [complete(server, p, tokens) for p in prompts])
        with ThreadPoolExecutor(len(prompts)) as pool:
            many, many_s = timed(lambda: list(pool.map(
                lambda p: complete(server, p, tokens), prompts)))
    return {1: (one, one_s), len(prompts): (many, many_s)}, engine.precision


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--precision", default="auto")
    args = p.parse_args()
    prompts = (PROMPTS * args.clients)[:args.clients]
    run = random_run(Path(tempfile.mkdtemp()) / "cpu-random")
    load_before = os.getloadavg()
    results, reference = {}, None
    for name, max_batch in (("one at a time", 1), ("batching", args.clients)):
        results[name], precision = measure(run, max_batch, prompts, args.tokens,
                                           args.precision)
        reference = reference or [t for t, _ in results[name][1][0]]
    load_after = os.getloadavg()
    print(f"CPU preset, random weights; {args.tokens} new tokens per request, greedy, "
          f"{precision}; torch threads: {torch.get_num_threads()}")
    print(f"| engine | clients | tokens | seconds | tokens/s | vs 1 client "
          f"| same text as alone |\n|---|--:|--:|--:|--:|--:|---|")
    for name, by_clients in results.items():
        base = None
        for clients, (replies, seconds) in by_clients.items():
            n = sum(t for _, t in replies)
            rate = n / seconds
            base = base or rate
            same = sum(t == r for (t, _), r in zip(replies, reference))
            print(f"| {name} | {clients} | {n} | {seconds:.2f} | {rate:.0f} "
                  f"| {rate / base:.2f}x | {same}/{len(replies)} |")
    print(f"load average before: {load_before[0]:.2f}, after: {load_after[0]:.2f} "
          f"(1 min); {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
