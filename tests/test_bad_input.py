"""Every bad input gets one line that names the file or flag and says what to
do, a non-zero exit status, and leaves what was saved as it was.

Each row of the table builds its bad input in a fresh copy of a small prepared
folder and a small trained run, then runs the command line: `minigpt.cli.main`
with the arguments a user would type (a few rows also as a separate process)."""
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from minigpt.cli import main

BIN = Path(sys.executable).parent / "minigpt"
TINY = ["--set", "n_layer=1", "--set", "d_model=32", "--set", "n_head=2",
        "--seq-len", "32", "--batch-size", "2", "--precision", "fp32",
        "--device", "cpu"]


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    "A prepared folder, a run trained 2 steps on it, and the plain text."
    from minigpt.data import load_shakespeare
    root = tmp_path_factory.mktemp("bad")
    text = root / "plays.txt"
    text.write_text("\n\n".join(d.text for d in load_shakespeare().docs[:40]))
    assert main(["prepare", "--corpus", str(text), "--vocab-size", "512",
                 "--out", str(root / "data"), "--workers", "1"]) == 0
    assert main(["train", "--data", str(root / "data"), "--out",
                 str(root / "run"), "--max-steps", "2", "--eval-every", "2",
                 *TINY]) == 0
    return root


def edit_json(path, change):
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def flip_middle(path):
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))


def nan_weights(run):
    from minigpt.checkpoint import load_run, save_weights
    import torch
    model, _ = load_run(run, device="cpu")
    with torch.no_grad(): next(model.parameters())[0] = float("nan")
    save_weights(model, run / "best.safetensors")


def bad_ids(data):
    m = np.memmap(data / "train.bin", dtype=np.uint16, mode="r+", offset=32)
    m[::10] = 60000
    m.flush()


EVIL = {"format": "minigpt-tokenizer", "version": 1, "kind": "bpe",
        "special_tokens": {"<|endoftext|>": 256, "<|pad|>": 257},
        "pattern": "(?:a|aa)+$", "merges": []}

# (name, how to make the input bad, the command, what the one line must say)
# D: a copy of the prepared folder, R: a copy of the run, T: the text file
CASES = [
    ("garbled weights", lambda D, R, T: flip_middle(R / "best.safetensors"),
     "generate --run R --prompt ROMEO", "best.safetensors"),
    ("NaN weights", lambda D, R, T: nan_weights(R),
     "eval --run R --task perplexity", "NaN or infinite"),
    ("config.json without model",
     lambda D, R, T: edit_json(R / "config.json", lambda c: c.pop("model")),
     "generate --run R --prompt ROMEO", "config.json: no 'model'"),
    ("config.json not JSON",
     lambda D, R, T: (R / "config.json").write_text("{"),
     "generate --run R --prompt ROMEO", "config.json: not valid JSON"),
    ("config.json without model, resumed",
     lambda D, R, T: edit_json(R / "config.json", lambda c: c.pop("model")),
     "train --data D --out R --resume", "config.json: no 'model'"),
    ("meta.json without splits",
     lambda D, R, T: edit_json(D / "meta.json", lambda m: m.pop("splits")),
     "train --data D --out N", "no 'splits'"),
    ("meta.json not JSON",
     lambda D, R, T: (D / "meta.json").write_text('{"vocab_size": 512,'),
     "train --data D --out N", "meta.json: not valid JSON"),
    ("meta.json pointing outside",
     lambda D, R, T: edit_json(D / "meta.json", lambda m: m.__setitem__(
         "tokenizer", "/etc/passwd")), "train --data D --out N",
     "is not a file inside"),
    ("token ids beyond the vocabulary", lambda D, R, T: bad_ids(D),
     "train --data D --out N --max-steps 2", "train.bin: token id 60,000"),
    ("--log-every 0", None, "train --data D --out N --log-every 0",
     "--log-every"),
    ("--seq-len -3", None, "train --data D --out N --seq-len -3", "--seq-len"),
    ("--seq-len beyond the context", None,
     "train --data D --out N --seq-len 100000", "longer than the model's"),
    ("--lr 1e39", None, "train --data D --out N --lr 1e39", "below 3.4e38"),
    ("--eval-every 0", None, "train --data D --out N --eval-every 0",
     "--eval-every"),
    ("--max-time -1", None, "train --data D --out N --max-time -1",
     "--max-time"),
    ("--vocab-size too large", None,
     "prepare --corpus T --vocab-size 10000000 --out N", "--vocab-size 10,000"),
    ("--vocab-size too small", None,
     "prepare --corpus T --vocab-size 100 --out N", "--vocab-size 100"),
    ("a file that is not UTF-8 in a corpus",
     lambda D, R, T: (T / "latin1.txt").write_bytes(b"caf\xe9 au lait\n"),
     "prepare --corpus T --vocab-size 512 --out N", "latin1.txt: not UTF-8"),
    ("a tokenizer pattern that can hang",
     lambda D, R, T: (T / "evil.json").write_text(json.dumps(EVIL)),
     "tokenizer encode --tokenizer T/evil.json --text aaaab",
     "split pattern is not one"),
    ("a run whose tokenizer can hang",
     lambda D, R, T: (R / "tokenizer.json").write_text(json.dumps(EVIL)),
     "generate --run R --prompt aaaab", "split pattern is not one"),
    ("--resume --batch-size 8", None,
     "train --data D --out R --resume --batch-size 8",
     "--batch-size cannot change"),
    ("--resume --seq-len 16", None,
     "train --data D --out R --resume --seq-len 16", "--seq-len cannot change"),
    ("a garbled training state",
     lambda D, R, T: flip_middle(R / "checkpoints/step-000002/state.pt"),
     "train --data D --out R --resume --max-steps 4",
     "state.pt is missing or damaged"),
    ("a run without a checkpoint",
     lambda D, R, T: shutil.rmtree(R / "checkpoints"),
     "train --data D --out R --resume", "no checkpoint to resume from"),
    ("a second training of one run",
     lambda D, R, T: (R / ".lock").write_text(json.dumps(
         {"pid": os.getpid(), "host": socket.gethostname()})),
     "train --data D --out R --resume --max-steps 4",
     "being trained by another process"),
    ("--out that is not a run", None, "train --data D --out D",
     "not empty and not a run"),
    ("--out that holds a run", None, "train --data D --out R",
     "pass --resume"),
    ("--resume of nothing", None, "train --data D --out N --resume",
     "no run to resume"),
    ("no prepared data", None, "train --data N --out O", "no meta.json"),
    # evaluation on the benchmarks' own files (issue 33)
    ("--bench without its file", None, "eval --run R --bench gsm8k", "needs --data"),
    ("--bench humaneval without consent", lambda D, R, T: write_humaneval(T),
     "eval --run R --bench humaneval --data T/HumanEval.jsonl",
     "--allow-unsafe-code"),
    ("GSM8K k-shot without training problems", lambda D, R, T: write_gsm8k(T),
     "eval --run R --bench gsm8k --data T/test.jsonl", "--shots"),
    ("--limit 0", lambda D, R, T: write_gsm8k(T),
     "eval --run R --bench gsm8k --data T/test.jsonl --limit 0", "--limit 0"),
    ("a GSM8K file without answers", lambda D, R, T: (T / "test.jsonl").write_text(
        '{"question": "?", "answer": "7"}\n'),
     "eval --run R --bench gsm8k --data T/test.jsonl", "#### <number>"),
    # sampling values no generation can use
    ("--temperature inf", None, "generate --run R --prompt x --temperature inf",
     "finite"),
    ("--max-new-tokens 1e9", None,
     "generate --run R --prompt x --max-new-tokens 1000000000", "--max-new-tokens must be in"),
    ("--seed 2**70", None, f"generate --run R --prompt x --seed {2 ** 70}", "--seed must be in"),
]


GSM8K_RECORD = {"question": "Ann has 2 cats and gets 3 more. How many cats?",
                "answer": "2 + 3 = <<2+3=5>>5\n#### 5"}
HUMANEVAL_RECORD = {"task_id": "Demo/0", "entry_point": "add",
                    "prompt": "def add(a, b):\n    \"\"\"a + b\"\"\"\n",
                    "canonical_solution": "    return a + b\n",
                    "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n"}


def write_gsm8k(T, name="test.jsonl"):
    (T / name).write_text(json.dumps(GSM8K_RECORD) + "\n")


def write_humaneval(T):
    import gzip
    with gzip.open(T / "HumanEval.jsonl.gz", "wt") as f:
        f.write(json.dumps(HUMANEVAL_RECORD) + "\n")
    (T / "HumanEval.jsonl").write_text(json.dumps(HUMANEVAL_RECORD) + "\n")


def snapshot(root):
    "Every file under `root` and its bytes: what must not change."
    return {p: p.read_bytes() for p in sorted(Path(root).rglob("*"))
            if p.is_file()}


@pytest.mark.parametrize("name,spoil,command,says", CASES,
                         ids=[c[0] for c in CASES])
def test_bad_input_is_one_line(made, tmp_path, capsys, name, spoil, command,
                               says):
    D, R, T = tmp_path / "data", tmp_path / "run", tmp_path / "text"
    shutil.copytree(made / "data", D)
    shutil.copytree(made / "run", R)
    T.mkdir(); shutil.copy(made / "plays.txt", T / "plays.txt")
    if spoil: spoil(D, R, T)
    before = snapshot(tmp_path)
    paths = {"D": D, "R": R, "T": T, "N": tmp_path / "new",
             "O": tmp_path / "out"}
    argv = [str(paths.get(w, w)) if w in paths else
            w.replace("T/", f"{T}/") for w in command.split()]
    if argv[0] == "train" and "--resume" not in argv:   # the row's flags last
        argv[1:1] = TINY
    capsys.readouterr()
    status = main(argv)
    err = capsys.readouterr().err
    assert status != 0, name
    lines = [l for l in err.strip().splitlines()     # progress bars aside
             if not re.match(r"\s*\d+%\|", l)]
    assert len(lines) == 1 and lines[0].startswith("minigpt "), err
    assert says in lines[0], (says, lines[0])
    assert snapshot(tmp_path) == before | {       # nothing saved was changed;
        p: b for p, b in snapshot(tmp_path).items()   # new files are allowed
        if p not in before}, name


def test_the_installed_command_exits_non_zero(made, tmp_path):
    "The same one line from a separate process, as a shell sees it."
    r = subprocess.run([str(BIN), "train", "--data", str(made / "data"),
                        "--out", str(tmp_path / "r"), "--log-every", "0"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip() == ("minigpt train: error: log_every=0 "
                                "(--log-every): must be a whole number >= 1")


def test_planted_links_at_temporary_names_are_not_followed(made, tmp_path):
    "A resume writes its files under new names: links planted in the run stay."
    run = tmp_path / "run"
    shutil.copytree(made / "run", run)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    for name in ("state.pt.tmp", "config.json.tmp", "model.safetensors.tmp",
                 "metrics.jsonl.tmp", "checkpoints/.tmp"):
        (run / name).symlink_to(victim)
    assert main(["train", "--data", str(made / "data"), "--out", str(run),
                 "--resume", "--max-steps", "4"]) == 0
    assert victim.read_text() == "precious"


def test_a_diverged_run_resumes_from_its_last_good_checkpoint(made, tmp_path,
                                                             capsys):
    "--lr 1e30 diverges and saves nothing; --resume --lr 1e-3 goes on from it."
    run, data = tmp_path / "run", str(made / "data")
    shutil.copytree(made / "run", run)
    good = snapshot(run / "checkpoints")
    capsys.readouterr()
    assert main(["train", "--data", data, "--out", str(run), "--resume",
                 "--lr", "1e30", "--max-steps", "6"]) == 1
    err = capsys.readouterr().err
    assert "The last good checkpoint, step-000002, is unchanged" in err
    assert snapshot(run / "checkpoints") == good
    assert main(["train", "--data", data, "--out", str(run), "--resume",
                 "--lr", "1e-3"]) == 0
    assert "stopped by max_steps at step 6" in capsys.readouterr().out
    config = json.loads((run / "config.json").read_text())
    assert [c["changed"] for c in config["resumes"]] == [
        {"lr": [1e-3, 1e30], "max_steps": [2, 6]}, {"lr": [1e30, 1e-3]}]


def test_eval_bench_scores_the_official_file_formats(made, tmp_path, capsys):
    "minigpt eval --bench on GSM8K's JSON Lines and HumanEval's gzipped file."
    write_gsm8k(tmp_path, "test.jsonl")
    write_gsm8k(tmp_path, "train.jsonl")
    write_humaneval(tmp_path)
    capsys.readouterr()
    assert main(["eval", "--run", str(made / "run"), "--bench", "gsm8k", "--data",
                 str(tmp_path / "test.jsonl"), "--shots", str(tmp_path / "train.jsonl"),
                 "--k-shot", "1", "--device", "cpu"]) == 0
    out = capsys.readouterr().out.split()
    assert out[0::2] == ["exact_match", "strict-match", "flexible-extract"]
    assert all(0 <= float(x) <= 1 for x in out[1::2])
    assert main(["eval", "--run", str(made / "run"), "--bench", "humaneval", "--data",
                 str(tmp_path / "HumanEval.jsonl.gz"), "--allow-unsafe-code",
                 "--samples", "2", "--device", "cpu"]) == 0
    out = capsys.readouterr().out.split()
    assert out[0] == "pass@1" and 0 <= float(out[1]) <= 1
