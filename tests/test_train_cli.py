"`minigpt prepare` then `minigpt train`, stopped and resumed, as a user runs them."
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from minigpt.train import TrainConfig

BIN = Path(sys.executable).parent / "minigpt"
SMALL = ["--set", "n_layer=1", "--set", "d_model=64", "--set", "n_head=2",
         "--seq-len", "64", "--batch-size", "4", "--precision", "fp32"]


def minigpt(*args, **kw):
    return subprocess.run([str(BIN), *map(str, args)], capture_output=True, text=True,
                          timeout=600, **kw)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "shakespeare"
    r = minigpt("prepare", "--corpus", "shakespeare", "--vocab-size", "1024", "--out", out)
    assert r.returncode == 0, r.stderr
    return out


def start_training(data, run, *args, sigint=signal.SIG_DFL):
    "A `minigpt train` in the background, with no step or evaluation limit."
    return subprocess.Popen([str(BIN), "train", "--data", str(data), "--out", str(run),
                             "--max-steps", "100000", "--eval-every", "100000",
                             *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            # Ctrl-C as in a terminal: a shell starts background jobs
                            # with SIGINT ignored, which Python would inherit
                            preexec_fn=(lambda: signal.signal(signal.SIGINT, sigint))
                            if sys.platform != "win32" else None)


def wait_for(path, seconds=120):
    deadline = time.time() + seconds
    while not path.exists() and time.time() < deadline:
        time.sleep(0.2)


def metrics(run):
    return [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]


def test_train_then_resume_with_a_new_budget(data, tmp_path):
    run = tmp_path / "run"
    r = minigpt("train", "--data", data.name, "--out", run, "--max-steps", 6,
                "--eval-every", 3, *SMALL, cwd=data.parent)   # a relative --data
    assert r.returncode == 0, r.stderr
    # stored as an absolute path: the run finds its data from any folder
    assert json.loads((run / "config.json").read_text())["data"] == str(data.resolve())
    assert "stopped by max_steps at step 6" in r.stdout
    for name in ("config.json", "tokenizer.json", "model.safetensors", "best.safetensors",
                 "checkpoints/step-000006/state.pt", "metrics.jsonl", "samples.txt"):
        assert (run / name).exists(), name
    r = minigpt("train", "--data", data, "--out", run, "--resume", "--max-steps", 9,
                cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "at step 9" in r.stdout
    steps = [m["step"] for m in metrics(run)]
    assert steps == sorted(steps) and steps[-1] == 9   # continued, not restarted
    assert not (run / ".lock").exists()                 # released at the end


def test_sigint_saves_a_checkpoint_and_exits_cleanly(data, tmp_path):
    run = tmp_path / "run"
    p = start_training(data, run, *SMALL)
    wait_for(run / "metrics.jsonl")
    time.sleep(1.0)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 130, err          # 128 + SIGINT, as a shell reports it
    assert "stopped by SIGINT" in out
    state_step = metrics(run)[-1]["step"]
    saved = run / "checkpoints" / f"step-{state_step:06d}" / "state.pt"
    assert saved.exists() and 0 < state_step < 100000
    assert not (run / "samples.txt").exists()     # no sample on the way out
    r = minigpt("train", "--data", data, "--out", run, "--resume",
                "--max-steps", state_step + 2)
    assert r.returncode == 0 and f"at step {state_step + 2}" in r.stdout


def test_started_with_sigint_ignored_it_keeps_ignoring_it_and_saves_on_sigterm(data, tmp_path):
    "`nohup minigpt train &`: the shell ignores Ctrl-C for the job; SIGTERM still saves."
    run = tmp_path / "run"
    p = start_training(data, run, "--log-every", 1, *SMALL, sigint=signal.SIG_IGN)
    wait_for(run / "metrics.jsonl")
    time.sleep(0.5)
    p.send_signal(signal.SIGINT)
    before = len(metrics(run))
    deadline = time.time() + 60
    while len(metrics(run)) < before + 3 and time.time() < deadline: time.sleep(0.2)
    assert p.poll() is None and len(metrics(run)) >= before + 3   # still training
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 143 and "stopped by SIGTERM" in out, (out, err)
    step = metrics(run)[-1]["step"]
    assert (run / "checkpoints" / f"step-{step:06d}" / "state.pt").exists()


def test_a_second_ctrl_c_stops_at_once(data, tmp_path):
    "The first Ctrl-C asks for a save; a second one during it ends the process."
    run = tmp_path / "run"
    # the CPU preset's width and depth: the save's evaluation takes seconds
    p = start_training(data, run, "--log-every", 1, *SMALL, "--batch-size", 32,
                       "--seq-len", 128, "--set", "d_model=256", "--set", "n_layer=4")
    wait_for(run / "metrics.jsonl")
    err, handled = [], threading.Event()    # stderr, read as it comes

    def read_stderr():
        for ch in iter(lambda: p.stderr.read(1), ""):
            err.append(ch)
            if ch == "\n" and "again to stop at once" in "".join(err[-80:]):
                handled.set()
    out = []                                # stdout, read by a thread of its own:
    readers = [threading.Thread(target=read_stderr),   # communicate() would read
               threading.Thread(target=lambda: out.append(p.stdout.read()))]
    for r in readers: r.start()             # stderr too and race the reader
    p.send_signal(signal.SIGINT)            # the save evaluates, then writes
    # two signals during one long C call (a step) would count as one: wait
    # until the first is handled, then press again at once, during the save
    assert handled.wait(timeout=120), "".join(err)
    p.send_signal(signal.SIGINT)            # during it: out, nothing saved
    p.wait(timeout=120)
    for r in readers: r.join(timeout=60)
    out, err = "".join(out), "".join(err)
    assert p.returncode == 130 and "interrupted" in err, (out, err)
    assert "Traceback" not in err
    assert not (run / "checkpoints").exists() or not list(
        (run / "checkpoints").glob("step-*"))
    assert not (run / ".lock").exists()     # released on the way out


def test_bad_requests_are_one_line(data, tmp_path):
    r = minigpt("train", "--data", tmp_path / "nothing", "--out", tmp_path / "r")
    assert r.returncode == 1 and "no meta.json" in r.stderr and "Traceback" not in r.stderr
    r = minigpt("train", "--data", data, "--out", tmp_path / "r", "--resume")
    assert r.returncode == 1 and "no run to resume" in r.stderr
    r = minigpt("train", "--data", data, "--out", tmp_path / "r", "--set", "bogus=1")
    assert r.returncode == 1 and "unknown GPTConfig fields: ['bogus']" in r.stderr


def test_max_time_is_per_session_and_resume_continues(data, tmp_path):
    run = tmp_path / "run"
    r = minigpt("train", "--data", data, "--out", run, "--max-steps", 100000,
                "--max-time", 2, "--eval-every", 100000, *SMALL)
    assert r.returncode == 0 and "stopped by max_time" in r.stdout, r.stderr
    first = metrics(run)[-1]["step"]
    r = minigpt("train", "--data", data, "--out", run, "--resume", "--max-time", 2)
    assert r.returncode == 0 and "stopped by max_time" in r.stdout, r.stderr
    assert metrics(run)[-1]["step"] > first + 1     # a second session of training


def test_fit_max_time_sizes_the_schedule_to_the_time(data, tmp_path):
    "--fit-max-time: max_steps estimated from the first steps, saved, and the run ends then."
    run = tmp_path / "run"
    r = minigpt("train", "--data", data, "--out", run, "--max-time", 12, "--fit-max-time",
                "--log-every", 1, *SMALL)
    assert r.returncode == 0, r.stderr
    train_cfg = json.loads((run / "config.json").read_text())["train"]
    assert not train_cfg["fit_max_time"]                  # fitted once, for good
    # fitted: more than the probe's steps, and not the default length (a fast CPU
    # fits more than 2,000 steps into 12 s of this tiny model)
    assert 11 < train_cfg["max_steps"] != TrainConfig().max_steps
    assert train_cfg["warmup_steps"] <= train_cfg["max_steps"] // 10
    rows = metrics(run)
    last = rows[-1]
    assert last["step"] >= 0.5 * train_cfg["max_steps"]   # most of the way, or all
    if last["step"] == train_cfg["max_steps"]:             # the schedule ran out: at the floor
        assert "stopped by max_steps" in r.stdout
        assert last["lr"] < 0.11 * 1e-3
    r = minigpt("train", "--data", data, "--out", run, "--max-time", 2, "--resume")
    assert r.returncode == 0, r.stderr                     # resumes the fitted schedule
    config = json.loads((run / "config.json").read_text())
    assert config["train"] == train_cfg | {"max_time": 2}  # only the time changed,
    assert config["resumes"][-1]["changed"] == {"max_time": [12, 2]}   # as recorded


def test_two_trainings_of_one_run_the_second_is_refused(data, tmp_path):
    "A second `train` on a run that a live process trains stops; the first goes on."
    run = tmp_path / "run"
    first = start_training(data, run, *SMALL)
    wait_for(run / ".lock")
    wait_for(run / "config.json")
    config = (run / "config.json").read_text()
    r = minigpt("train", "--data", data, "--out", run, "--seed", 7, *SMALL)
    assert r.returncode == 1 and "being trained by another process" in r.stderr, r.stderr
    assert (run / "config.json").read_text() == config      # the second wrote nothing
    first.send_signal(signal.SIGINT)
    out, err = first.communicate(timeout=120)
    assert first.returncode == 130 and "stopped by SIGINT" in out, err
    steps = [m["step"] for m in metrics(run)]
    assert steps == sorted(set(steps))                       # one writer's metrics
    assert not (run / ".lock").exists()
