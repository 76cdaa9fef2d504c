"The installed `minigpt` command, run as a user runs it: a separate process."
import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import minigpt

BIN = Path(sys.executable).parent


def run(*args, env=None):
    exe = shutil.which("minigpt", path=str(BIN)) or "minigpt"
    return subprocess.run([exe, *args], capture_output=True, text=True, env=env, timeout=120)


def test_version_matches_package():
    r = run("--version")
    assert r.returncode == 0
    assert r.stdout.strip() == f"minigpt {minigpt.__version__}"


def test_help_lists_subcommands():
    from minigpt.cli import COMMANDS
    r = run("--help")
    assert r.returncode == 0
    assert r.stdout.startswith("usage: minigpt")
    for name in COMMANDS:
        assert name in r.stdout


def test_no_command_prints_help():
    r = run()
    assert r.returncode == 0 and "usage: minigpt" in r.stdout


def test_info_reports_torch():
    import torch
    r = run("info")
    assert r.returncode == 0, r.stderr
    assert f"torch: {torch.__version__}" in r.stdout
    assert f"minigpt: {minigpt.__version__}" in r.stdout


def test_unknown_command_is_refused():
    r = run("frobnicate")
    assert r.returncode == 2
    assert "invalid choice: 'frobnicate'" in r.stderr
    assert "Traceback" not in r.stderr


def test_version_does_not_import_torch():
    # `--version` and `--help` must answer without loading PyTorch
    code = ("import sys\nfrom minigpt.cli import build_parser\n"
            "build_parser().format_help()\nprint('torch' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"


def test_version_and_help_import_no_library_module():
    "The installed command answers --version and --help without NumPy or PyTorch."
    code = ("import sys\nfrom minigpt.cli import main\n"
            "for argv in (['--version'], ['--help']):\n"
            "    try: main(argv)\n"
            "    except SystemExit: pass\n"
            "print(sorted(m for m in ('numpy', 'torch', 'minigpt.data') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[]"


def test_data_stats_bad_path_is_one_clear_line():
    "A name that is neither a registered corpus nor a path: one line that lists the corpora."
    from minigpt.data import corpus_specs
    r = run("data", "stats", "--corpus", "no/such/folder")
    assert r.returncode == 1
    give = ", ".join(corpus_specs() + ["a .txt or .jsonl file or a folder of them"])
    assert r.stderr.strip() == ("minigpt data: error: no/such/folder: no such file or folder, "
                                f"nor a registered corpus; give {give}")


def commands_with(flag: str) -> list[list[str]]:
    "The command lines (`[\"data\", \"stats\"]`, ...) whose parser has `flag`, found in the parser."
    from minigpt.cli import build_parser
    found = []
    def walk(parser, argv):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, argv + [name])
            elif flag in action.option_strings:
                found.append(argv)
    walk(build_parser(), [])
    assert found, f"no command takes {flag}"
    return found


def test_data_list_and_corpus_help_read_the_registry():
    "`minigpt data list` prints the registry; every --corpus help names each corpus in it."
    from minigpt.data import CORPORA, corpus_specs, corpus_table
    r = run("data", "list")
    assert r.returncode == 0, r.stderr
    assert r.stdout == corpus_table() + "\n"
    assert [line.split()[0] for line in r.stdout.splitlines()] == corpus_specs()
    for description in (s.description for s in CORPORA.values()):
        assert description in r.stdout
    for argv in commands_with("--corpus"):
        r = run(*argv, "--help")
        assert r.returncode == 0, r.stderr
        assert all(spec in " ".join(r.stdout.split()) for spec in corpus_specs()), argv


def test_generate_and_chat_have_a_flag_for_every_sampling_option():
    "The sampling flags are SamplingConfig's fields: each one in `generate` and in `chat`."
    from minigpt.cli import option_flag
    from minigpt.sampling import SamplingConfig, options
    for command in ("generate", "chat"):
        r = run(command, "--help")
        assert r.returncode == 0, r.stderr
        missing = [o.name for o in options(SamplingConfig) if option_flag(o.name) not in r.stdout]
        assert not missing, (command, missing)


def test_a_sampling_value_out_of_range_is_one_line_naming_its_flag(tmp_path, capsys):
    "Each bounded option, given a value just outside its range: exit 1, one line naming the flag."
    from minigpt.cli import main, option_flag
    from minigpt.sampling import SamplingConfig, options
    bounded = [o for o in options(SamplingConfig) if o.low is not None]
    assert bounded
    for o in bounded:
        low = o.low if o.above else o.low - 1
        for command in ("generate", "chat"):
            status = main([command, "--run", str(tmp_path / "none"), option_flag(o.name),
                           str(o.kind(low))])
            err = capsys.readouterr().err
            assert status == 1, (command, o.name)
            assert f"error: {option_flag(o.name)} must be" in err and "Traceback" not in err, err


def test_data_stats_on_a_folder(tmp_path):
    (tmp_path / "a.txt").write_text("word " * 100)
    (tmp_path / "b.txt").write_text("word " * 100)          # an exact copy
    (tmp_path / "c.bin").write_bytes(b"\x00\x01")
    r = run("data", "stats", "--corpus", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "exact duplicates: 1;" in r.stdout
    assert "skipped c.bin: not a .txt or .jsonl file" in r.stdout


def test_tokenizer_train_and_encode_shakespeare(tmp_path):
    "The book's tokenizer from the command line, checked against the library."
    from minigpt.tokenizer import load_tokenizer
    out = tmp_path / "tokenizer.json"
    r = run("tokenizer", "train", "--corpus", "shakespeare", "--vocab-size", "4096",
            "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "trained 4096 tokens" in r.stdout and out.exists()
    tok = load_tokenizer(out)
    assert tok.vocab_size == 4096
    r = run("tokenizer", "encode", "--tokenizer", str(out), "--text", "O Romeo, Romeo!")
    assert r.returncode == 0, r.stderr
    assert f"ids:    {tok.encode('O Romeo, Romeo!')}" in r.stdout


def test_tokenizer_encode_with_a_corrupt_file(tmp_path):
    bad = tmp_path / "tok.json"
    bad.write_text('{"format": "minigpt-tokenizer", "version": 1, "kind": "bpe"')
    r = run("tokenizer", "encode", "--tokenizer", str(bad), "--text", "x")
    assert r.returncode == 1
    assert "not a valid minigpt tokenizer file" in r.stderr and "Traceback" not in r.stderr


def test_prepare_shakespeare_round_trips(tmp_path):
    "`minigpt prepare` writes shards whose decoded text is the cleaned corpus."
    from minigpt.data import load_corpus, run_pipeline
    from minigpt.loader import open_data
    from minigpt.common import ENDOFTEXT
    out = tmp_path / "shakespeare"
    r = run("prepare", "--corpus", "shakespeare", "--vocab-size", "4096", "--out", str(out),
            "--workers", "2")
    assert r.returncode == 0, r.stderr
    data = open_data(out)
    assert data.meta["dtype"] == "uint16" and data.meta["vocab_size"] == 4096
    result = run_pipeline(load_corpus("shakespeare"))
    for split, docs in (("train", result.train), ("val", result.val)):
        text = data.tokenizer.decode(getattr(data, split).tolist())
        assert text.split(ENDOFTEXT)[1:] == [d.text for d in docs]
    assert not list(out.glob("*.tmp"))


def test_plan_reproduces_llama2_7b():
    # Llama 2 7B: 2T tokens, 184,320 A100 GPU-hours (Touvron et al. 2023, Table 2)
    r = run("plan", "--params", "7B", "--tokens", "2T", "--gpu", "a100")
    assert r.returncode == 0, r.stderr
    hours = float(r.stdout.split("time")[1].split("GPU-hours")[0].replace(",", ""))
    assert abs(hours / 184_320 - 1) < 0.03
    # without --tokens: the compute-optimal 20 tokens per parameter
    r = run("plan", "--params", "7B")
    assert r.returncode == 0 and "tokens    140B (20 per parameter" in r.stdout
    r = run("plan", "--params", "seven")
    assert r.returncode == 1 and "name a preset" in r.stderr and "Traceback" not in r.stderr
