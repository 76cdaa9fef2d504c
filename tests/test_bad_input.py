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
from minigpt.tokenizer import GPT2_PATTERN

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
    "Ids beyond the vocabulary, in a folder without checksums (made before them)."
    m = np.memmap(data / "train.bin", dtype=np.uint16, mode="r+", offset=32)
    m[::10] = 60000
    m.flush()
    edit_json(data / "meta.json", lambda meta: [s.pop("sha256")
                                                for s in meta["splits"].values()])


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
    ("a prompt that is not UTF-8", None, "generate --run R --prompt \udcff --device cpu",
     "not UTF-8 text"),
    ("--precision fp16 on a CPU", None,
     "generate --run R --prompt x --precision fp16 --device cpu", "fp16 needs a GPU"),
    # the commands that came last (issue 33)
    ("--items 0", None, "eval --run R --items 0", "--items 0"),
    ("--items -1", None, "eval --run R --items -1", "--items -1"),
    ("eval of a fine-tuned run", lambda D, R, T: edit_json(
        R / "config.json", lambda c: c.pop("data")), "eval --run R", "a fine-tuned run"),
    ("eval on data prepared with another tokenizer", lambda D, R, T: reprepare(D, R, T),
     "eval --run R --task perplexity", "prepared with another tokenizer"),
    ("sft on an empty file", lambda D, R, T: (T / "e.jsonl").write_text(""),
     "sft --run R --data T/e.jsonl --out N", "no examples"),
    ("sft on an output that is not text", lambda D, R, T: write_examples(T, output=42),
     "sft --run R --data T/ok.jsonl --out N", "'output' must be text"),
    ("sft on a binary file", lambda D, R, T: (T / "bin.txt").write_bytes(b"\x80\xff\x00"),
     "sft --run R --data T/bin.txt --out N", "bin.txt: not JSON Lines"),
    ("sft --batch-size 0", lambda D, R, T: write_examples(T),
     "sft --run R --data T/ok.jsonl --out N --batch-size 0", "(--batch-size)"),
    ("sft --steps 0", lambda D, R, T: write_examples(T),
     "sft --run R --data T/ok.jsonl --out N --steps 0", "steps=0 (--steps)"),
    ("sft --lora-rank 0", lambda D, R, T: write_examples(T),
     "sft --run R --data T/ok.jsonl --out N --lora --lora-rank 0", "--lora-rank 0"),
    ("dpo --beta -1", lambda D, R, T: write_examples(T, chosen="a", rejected="b"),
     "dpo --run R --data T/ok.jsonl --out N --beta -1", "(--beta)"),
    ("train --resume --set", None, "train --data D --out R --resume --set d_model=64",
     "--resume keeps the model"),
    ("--set block_size=10**12", None,
     "train --data D --out N --set block_size=1000000000000 --max-steps 1", "out of memory"),
    ("chat with a base model", None, "chat --run R --device cpu", "not fine-tuned"),
    ("plan --params 1e30", None, "plan --params 1e30", "--params '1e30'"),
    ("export into its own run", None, "export --run R --out R --format hf --force",
     "inside the run"),
    ("import of a minigpt run as --hf", None, "import --hf R --out N",
     "model_type None: minigpt reads gpt2 and llama"),
    # training keeps a good state (issue 33): damage is named, foreign locks explained
    ("metrics.jsonl not UTF-8", lambda D, R, T: (R / "metrics.jsonl").write_bytes(
        b"\xff\xfe garbage\n"), "train --data D --out R --resume --max-steps 4",
     "metrics.jsonl is damaged"),
    ("metrics.jsonl with a bad middle line", lambda D, R, T: (R / "metrics.jsonl").write_text(
        '{"step": 1}\n[1, 2]\n{"step": 2}\n'), "train --data D --out R --resume --max-steps 4",
     "metrics.jsonl: line 2"),
    ("a run tokenizer that is not the run's", lambda D, R, T: edit_json(
        R / "tokenizer.json", lambda t: t.__setitem__("pattern", GPT2_PATTERN)),
     "train --data D --out R --resume --max-steps 4", "tokenizer.json is not the tokenizer"),
    ("a run tokenizer that is not JSON", lambda D, R, T: (R / "tokenizer.json").write_text("{"),
     "train --data D --out R --resume --max-steps 4", "tokenizer.json"),
    ("16 flipped bytes in train.bin", lambda D, R, T: flip_bytes(D / "train.bin", 16),
     "train --data D --out N", "train.bin is damaged"),
    ("a lock from another machine", lambda D, R, T: (R / ".lock").write_text(json.dumps(
        {"pid": 4242, "host": "elsewhere.example"})),
     "train --data D --out R --resume --max-steps 4", "on elsewhere.example, another machine"),
]


def flip_bytes(path, n):
    "Flip `n` bytes in the middle of a file, past any header."
    raw = bytearray(path.read_bytes())
    for k in range(n):
        raw[len(raw) // 2 + k] ^= 0xFF
    path.write_bytes(bytes(raw))


def write_examples(T, **fields):
    "T/ok.jsonl: two instruction examples, with `fields` set in each."
    example = {"instruction": "Who speaks?", "input": "", "output": "ROMEO"} | fields
    (T / "ok.jsonl").write_text((json.dumps(example) + "\n") * 2)


def reprepare(D, R, T):
    "A prepared folder with another tokenizer, named as the run's data."
    assert main(["prepare", "--corpus", str(T / "plays.txt"), "--vocab-size", "300",
                 "--out", str(T / "other"), "--workers", "1"]) == 0
    edit_json(R / "config.json", lambda c: c.__setitem__("data", str(T / "other")))


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
    lines = [l for l in err.strip().splitlines()     # progress lines aside
             if not re.match(r"[\w .-]+: [\d,]+(/[\d,]+)? \w", l)]
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


def test_an_empty_stop_string_is_refused(made, capsys):
    "generate --stop '': a stop string that matches everywhere would stop at once."
    assert main(["generate", "--run", str(made / "run"), "--prompt", "x", "--stop", "",
                 "--device", "cpu"]) == 1
    assert "must not be empty" in capsys.readouterr().err


def test_samples_txt_planted_as_a_link_is_not_written_through(made, tmp_path, capsys):
    run, victim = tmp_path / "run", tmp_path / "victim.txt"
    shutil.copytree(made / "run", run)
    victim.write_text("precious")
    (run / "samples.txt").unlink()
    (run / "samples.txt").symlink_to(victim)
    assert main(["train", "--data", str(made / "data"), "--out", str(run), "--resume",
                 "--max-steps", "3", "--eval-every", "1"]) == 1
    assert "samples.txt is a link" in capsys.readouterr().err
    assert victim.read_text() == "precious"


def test_a_finite_divergence_is_not_saved_and_the_best_stays(made, tmp_path, monkeypatch,
                                                              capsys):
    """A validation loss far above the best stops the run before its save; the best
    checkpoint is kept beside the newest, and the newest is the last good one."""
    import minigpt.train as T
    run = tmp_path / "run"
    shutil.copytree(made / "run", run)          # step 2, evaluated
    losses = iter([4.0, 4.5, 4.6, 60.0])        # steps 3, 4, 5 and then a jump
    monkeypatch.setattr(T, "validation_loss", lambda *a, **k: next(losses))
    assert main(["train", "--data", str(made / "data"), "--out", str(run), "--resume",
                 "--max-steps", "6", "--eval-every", "1"]) == 1
    err = capsys.readouterr().err
    assert "training diverged" in err and "60" in err
    folders = [p.name for p in sorted((run / "checkpoints").iterdir())]
    assert folders == ["step-000003", "step-000005"]       # the best and the newest
    best = json.loads((run / "checkpoints/step-000003/manifest.json").read_text())
    assert best["best"] and best["metrics"]["val_loss"] == 4.0
    assert os.path.samefile(run / "best.safetensors",
                            run / "checkpoints/step-000003/model.safetensors")


def test_the_metrics_row_of_a_checkpoint_and_stray_temporaries(made, tmp_path):
    "A kill after a save lost the step's row: resume puts it back; stray .tmp files go."
    run = tmp_path / "run"
    shutil.copytree(made / "run", run)
    metrics = run / "metrics.jsonl"
    rows = metrics.read_text().splitlines(keepends=True)
    assert json.loads(rows[-1])["step"] == 2 and "val_loss" in rows[-1]
    metrics.write_text("".join(rows[:-1]))                  # the kill
    stray = run / "model.safetensors.x1y2z3.tmp"
    stray.write_bytes(b"\0" * 1000)
    assert main(["train", "--data", str(made / "data"), "--out", str(run), "--resume",
                 "--max-steps", "2"]) == 0
    assert metrics.read_text().splitlines(keepends=True) == rows   # the same row again
    assert not stray.exists()


def test_perplexity_of_a_huge_loss_is_infinite():
    import math
    from minigpt.metrics import perplexity
    assert perplexity(1000.0) == math.inf and perplexity(2.0) == math.exp(2.0)
