"""A crash at every file operation of a checkpoint, in turn, leaves a run that
resumes to exactly the weights of a run that was never interrupted.

Each case trains in a fresh child process (forked from a server that has
imported the library once) whose file operations are counted while the second
checkpoint is saved; at the k-th one the child dies at once with `os._exit`,
as a kill -9 or a power cut would leave it. A second child resumes the run."""
import json
import multiprocessing as mp
import os
from pathlib import Path

import pytest

from conftest import write_plays_jsonl

# the operations that change what a later process finds on disk (an fsync
# matters for a power cut, not for a killed process)
OPERATIONS = ("mkdir", "open", "replace", "rename", "link", "unlink", "rmdir")
CRASHED = 17                  # the exit status of a child killed on purpose
TRAIN = dict(batch_size=2, max_steps=4, warmup_steps=2, eval_every=2,
             eval_batches=1, keep_every=0, log_every=1, precision="fp32")
MODEL = dict(n_layer=1, d_model=32, n_head=2, block_size=32, dropout=0.1)


def train_child(data, run, resume, crash_at, count_file):
    "Train (or resume) `run`; die before file operation `crash_at` of save 2."
    import torch
    import minigpt.train as mt
    # one thread: a parallel CPU reduction may add in another order from run
    # to run (we saw weights 1e-6 apart, about one case in fifty on an
    # Intel CPU); what is tested here is the checkpoint, not the kernels
    torch.set_num_threads(1)
    from minigpt.model import GPTConfig
    counter = {"save": 0, "op": 0, "on": False}
    def counted(name, real):
        def op(*args, **kw):
            if name == "open" and not args[1] & os.O_CREAT:
                return real(*args, **kw)              # a read changes nothing
            if counter["on"]:
                counter["op"] += 1
                if counter["op"] == crash_at: os._exit(CRASHED)
            return real(*args, **kw)
        return op
    for name in OPERATIONS: setattr(os, name, counted(name, getattr(os, name)))
    save = mt.save_checkpoint
    def save_counted(*args, **kw):
        counter["save"] += 1
        counter["on"] = counter["save"] == 2
        try: return save(*args, **kw)
        finally:
            counter["on"] = False
            if counter["save"] == 2 and crash_at == counter["op"] + 1:
                os._exit(CRASHED)          # the save is done, nothing after
    mt.save_checkpoint = save_counted
    mt.peak_flops = lambda *args: 1e12   # no effect on the weights; time saved
    vocab = json.loads((Path(data) / "meta.json").read_text())["vocab_size"]
    cfg = GPTConfig.preset("cpu", vocab_size=vocab, **MODEL)
    if resume: mt.train(data, run, resume=True, progress_bar=False)
    else: mt.train(data, run, cfg, mt.TrainConfig(**TRAIN), progress_bar=False)
    Path(count_file).write_text(str(counter["op"]))


@pytest.fixture(scope="module")
def ctx():
    c = mp.get_context("forkserver")
    c.set_forkserver_preload(["minigpt.train", __name__, "safetensors.torch",
                              "tqdm.auto"])
    return c


def run_child(ctx, *args) -> int:
    args = [str(a) if isinstance(a, Path) else a for a in args]
    p = ctx.Process(target=train_child, args=args)
    p.start(); p.join(300)
    return p.exitcode


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from minigpt.loader import prepare
    root = tmp_path_factory.mktemp("crash")
    text = write_plays_jsonl(root / "plays.jsonl", 30)
    prepare(str(text), root / "data", vocab_size=300)
    return root / "data"


def weights(run):
    from safetensors.torch import load_file
    return load_file(Path(run) / "model.safetensors")


def test_a_crash_at_any_file_operation_resumes_bit_identically(ctx, data,
                                                               tmp_path):
    import torch
    from minigpt.checkpoint import checkpoint_folders, read_manifest
    whole, count = tmp_path / "whole", tmp_path / "count"
    assert run_child(ctx, data, whole, False, 0, count) == 0
    n_ops = int(count.read_text())       # file operations of the second save
    assert n_ops >= 10, n_ops
    reference = weights(whole)
    for k in range(1, n_ops + 2):        # n_ops + 1: just after the save
        run = tmp_path / f"crash-{k}"
        assert run_child(ctx, data, run, False, k, count) == CRASHED, k
        # what survives: whole checkpoints, the old one or the new one
        steps = [read_manifest(c)["step"] for c in checkpoint_folders(run)]
        assert steps and set(steps) <= {2, 4}, (k, steps)
        assert run_child(ctx, data, run, True, 0, count) == 0, k
        resumed = weights(run)
        assert all(torch.equal(reference[n], resumed[n]) for n in reference), k
        assert not (run / ".lock").exists()
