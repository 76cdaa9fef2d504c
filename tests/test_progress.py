"""Progress lines (`common.Progress`, on under `minigpt`), plots of fine-tuning runs, the
weights' permissions and `export --dtype` (issue 34)."""
import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import write_plays_jsonl
from minigpt.common import Progress, progress_shown

BIN = Path(sys.executable).parent / "minigpt"
SMALL = ["--set", "n_layer=1", "--set", "d_model=64", "--set", "n_head=2",
         "--seq-len", "64", "--batch-size", "4", "--precision", "fp32"]
EVERY = 0.2     # seconds between progress lines in a log, for these runs


class Clock:
    "A clock the test moves by hand."
    def __init__(self): self.now = 100.0
    def __call__(self): return self.now


def logged(total=100, steps=100, seconds_per_step=1.0, every=10.0, tty=False, on=True):
    clock, stream = Clock(), io.StringIO()
    stream.isatty = lambda: tty
    with Progress("work", total, "steps", on=on, stream=stream, every=every,
                  clock=clock) as bar:
        for i in range(steps):
            clock.now += seconds_per_step
            bar.update(loss=1.0 / (i + 1))
    return stream.getvalue()


def test_in_a_log_one_plain_line_at_the_start_then_one_per_interval_and_the_last():
    text = logged()
    assert "\r" not in text
    lines = text.splitlines()
    # steps 1, 11, 21, ..., 91 (one per 10 s), then the last one, 100
    assert [int(re.match(r"work: (\d+)/100 steps", l)[1]) for l in lines] == \
        [*range(1, 100, 10), 100]
    assert lines[-1].startswith("work: 100/100 steps (100%), 1.0 steps/s, 100 s")
    assert lines[-1].endswith("loss=0.01")
    assert "s left" in lines[0] and "s left" not in lines[-1]


def test_fast_steps_do_not_flood_a_log():
    text = logged(total=10_000, steps=10_000, seconds_per_step=0.01)   # 100 s
    assert len(text.splitlines()) == 100 // 10 + 1


def test_on_a_terminal_one_line_redrawn_in_place_and_kept_at_the_end():
    text = logged(tty=True, every=10.0)
    assert text.count("\n") == 1 and text.endswith("\n")
    redraws = text.split("\r")[1:]
    assert len(redraws) == 11 and all(r.rstrip("\n").endswith("\x1b[K") for r in redraws)


def test_off_by_default_in_a_library_call_and_on_within_progress_shown():
    assert logged(on=False) == ""
    for shown, expected in ((False, ""), (True, "work: 1 steps")):
        stream = io.StringIO()
        with progress_shown(shown), Progress("work", unit="steps", stream=stream) as bar:
            bar.update()
        assert stream.getvalue().startswith(expected)
    stream = io.StringIO()
    with Progress("work", unit="steps", stream=stream) as bar:   # after it: off again
        bar.update()
    assert stream.getvalue() == ""


def test_a_bad_interval_is_refused_naming_the_variable(monkeypatch):
    monkeypatch.setenv("MINIGPT_PROGRESS_EVERY", "often")
    with pytest.raises(ValueError, match="MINIGPT_PROGRESS_EVERY"):
        Progress("work", stream=io.StringIO())


# the command line: stderr into a file, as `minigpt train ... 2> log` does

def minigpt(*args, stderr_file=None, env=None, cwd=None):
    env = os.environ | {"MINIGPT_PROGRESS_EVERY": str(EVERY)} | (env or {})
    with open(stderr_file, "w") if stderr_file else open(os.devnull, "w") as err:
        start = time.perf_counter()
        r = subprocess.run([str(BIN), *map(str, args)], stdout=subprocess.PIPE,
                           stderr=err if stderr_file else subprocess.PIPE, text=True,
                           timeout=600, env=env, cwd=cwd)
        r.seconds = time.perf_counter() - start
    return r


def progress_lines(path: Path, what: str, r) -> list[str]:
    "The progress lines of `what` in a log, checked: plain lines at a bounded rate."
    text = path.read_text()
    assert "\r" not in text and "\x1b" not in text
    lines = [l for l in text.splitlines() if l.startswith(what + ": ")]
    assert lines, text
    assert len(lines) <= r.seconds / EVERY + 2, (len(lines), r.seconds)
    return lines


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("progress")
    corpus = write_plays_jsonl(folder / "plays.jsonl", 3)
    log = folder / "prepare.log"
    r = minigpt("prepare", "--corpus", corpus, "--vocab-size", "300", "--out",
                folder / "data", "--workers", "1", stderr_file=log)
    assert r.returncode == 0, log.read_text()
    return folder / "data", log, r


def test_prepare_shows_the_tokenizer_and_the_running_total_of_tokens(data):
    out, log, r = data
    meta = json.loads((out / "meta.json").read_text())
    merges = progress_lines(log, "tokenizer", r)
    assert merges[-1].startswith(f"tokenizer: {300 - 256 - 2}/{300 - 256 - 2} merges")
    for split in ("train", "val"):
        lines = progress_lines(log, f"prepare {split}", r)
        totals = [int(re.search(r"tokens=([\d,]+)", l)[1].replace(",", "")) for l in lines]
        assert totals == sorted(totals)
        assert totals[-1] == meta["splits"][split]["tokens"]   # the total, not a batch's


@pytest.fixture(scope="module")
def run(data, tmp_path_factory):
    folder = tmp_path_factory.mktemp("run")
    log = folder / "train.log"
    r = minigpt("train", "--data", data[0], "--out", folder / "run", "--max-steps", 30,
                "--eval-every", 15, *SMALL, stderr_file=log)
    assert r.returncode == 0, log.read_text()
    return folder / "run", log, r


def test_train_writes_plain_progress_lines_into_a_log(run):
    lines = progress_lines(run[1], "train", run[2])
    assert lines[-1].startswith("train: 30/30 steps (100%)")
    assert re.search(r"loss=\d+\.\d{3} tok_s=[\d,]+ mfu=", lines[-1])


def test_sft_shows_progress_and_its_run_plots_its_loss(run, tmp_path):
    examples = [{"instruction": f"Say {w}.", "input": "", "output": w}
                for w in ("yes", "no", "king", "queen") * 4]
    (tmp_path / "sft.jsonl").write_text("".join(json.dumps(e) + "\n" for e in examples))
    (tmp_path / "heldout.jsonl").write_text(json.dumps(examples[0]) + "\n")
    log, out = tmp_path / "sft.log", tmp_path / "sft"
    r = minigpt("sft", "--run", run[0], "--data", tmp_path / "sft.jsonl", "--out", out,
                "--steps", 12, "--batch-size", 2, "--precision", "fp32", stderr_file=log)
    assert r.returncode == 0, log.read_text()
    assert progress_lines(log, "fine-tune", r)[-1].startswith("fine-tune: 12/12 steps")
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [10, 12]
    assert {"loss", "lr", "grad_norm"} <= set(rows[0])

    from minigpt.metrics import plot_runs
    png = tmp_path / "sft.png"
    p = minigpt("plot", "--run", out, "--out", png)
    assert p.returncode == 0, p.stderr
    assert png.stat().st_size > 0 and "loss, lr, grad_norm of 1 run(s)" in p.stdout
    fig = plot_runs([out])        # what `minigpt plot` draws: the log's numbers
    loss = next(ax for ax in fig.axes if ax.get_ylabel().startswith("loss"))
    x, y = loss.lines[0].get_data()
    assert list(x) == [row["step"] for row in rows]
    assert list(y) == [row["loss"] for row in rows]


def test_plot_of_a_folder_without_metrics_says_what_makes_them(tmp_path):
    r = minigpt("plot", "--run", tmp_path)
    assert r.returncode == 1
    assert "metrics.jsonl does not exist" in r.stderr and "sft" in r.stderr


def test_export_refuses_a_dtype_its_format_does_not_write(run, tmp_path):
    r = minigpt("export", "--run", run[0], "--format", "hf", "--dtype", "q8_0",
                "--out", tmp_path / "hf")
    assert r.returncode == 1
    assert "--dtype q8_0" in r.stderr and "hf writes f32 only" in r.stderr
    assert not (tmp_path / "hf").exists()


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_weights_follow_the_umask_like_every_other_file(tmp_path, umask):
    code = ("import os, sys, torch; os.umask(int(sys.argv[2]))\n"
            "from minigpt.checkpoint import save_weights\n"
            "save_weights(torch.nn.Linear(2, 2), sys.argv[1] + '/w.safetensors')\n"
            "open(sys.argv[1] + '/plain.txt', 'w').close()\n"
            "from minigpt.model import GPT, GPTConfig, save_hf_gpt2\n"
            "from minigpt.export import save_hf_llama\n"
            "small = dict(vocab_size=64, block_size=16, n_layer=1, n_head=2, d_model=32)\n"
            "save_hf_gpt2(GPT(GPTConfig(**small)), sys.argv[1] + '/gpt2')\n"
            "save_hf_llama(GPT(GPTConfig(**small, norm='rmsnorm', mlp='swiglu', pos='rope',\n"
            "                            bias=False)), sys.argv[1] + '/llama')\n")
    subprocess.run([sys.executable, "-c", code, str(tmp_path), str(umask)], check=True,
                   timeout=120)
    mode = lambda name: (tmp_path / name).stat().st_mode & 0o777
    assert mode("plain.txt") == 0o666 & ~umask
    for name in ("w.safetensors", "gpt2/model.safetensors", "llama/model.safetensors"):
        assert mode(name) == 0o666 & ~umask, name
