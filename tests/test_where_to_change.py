"""ARCHITECTURE.md's "Where to change what", tried. In a scratch copy of the repository, each
documented change is made where the page says and nowhere else, the copy's package is
exported from its notebooks with this environment's `nbdev-export`, and the checks are run
against the copy (`PYTHONPATH` and the working directory are the copy, so `minigpt` is the
copy's package, which each test asserts first)."""
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def scratch_copy(tmp_path: Path) -> Path:
    "The repository's tracked files, as they are in the working tree, in tmp_path/repo."
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                            check=True).stdout.decode().split("\0")
    copy = tmp_path / "repo"
    for name in filter(None, listed):
        if (ROOT / name).is_file():                  # a tracked file deleted here: not copied
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, copy / name)
    return copy


def run_in(copy: Path, *argv, timeout=300) -> subprocess.CompletedProcess:
    "Run `argv` in the copy, with the copy's package first on the path."
    env = dict(os.environ, PYTHONPATH=str(copy))
    return subprocess.run([str(a) for a in argv], cwd=copy, env=env, capture_output=True,
                          text=True, timeout=timeout)


def python_in(copy: Path, code: str) -> subprocess.CompletedProcess:
    return run_in(copy, sys.executable, "-c", textwrap.dedent(code))


def edit_cell(notebook: Path, anchor: str, old: str, new: str) -> None:
    "Replace `old` by `new` (once) in the one code cell of `notebook` that holds `anchor`."
    nb = json.loads(notebook.read_text())
    cells = [c for c in nb["cells"] if c["cell_type"] == "code" and anchor in "".join(c["source"])]
    assert len(cells) == 1, f"{notebook.name}: {len(cells)} cells hold {anchor!r}"
    src = "".join(cells[0]["source"])
    assert src.count(old) == 1, f"{notebook.name}: the cell of {anchor!r} has no {old!r}"
    cells[0]["source"] = src.replace(old, new).splitlines(keepends=True)
    notebook.write_text(json.dumps(nb, sort_keys=True, indent=1, ensure_ascii=False) + "\n")


def add_cell_after(notebook: Path, anchor: str, source: str) -> None:
    "A new code cell with `source` after the one code cell of `notebook` that holds `anchor`."
    nb = json.loads(notebook.read_text())
    at = [i for i, c in enumerate(nb["cells"])
          if c["cell_type"] == "code" and anchor in "".join(c["source"])]
    assert len(at) == 1, f"{notebook.name}: {len(at)} cells hold {anchor!r}"
    nb["cells"].insert(at[0] + 1, {"cell_type": "code", "execution_count": None,
                                   "id": "c0ffee01", "metadata": {}, "outputs": [],
                                   "source": source.splitlines(keepends=True)})
    notebook.write_text(json.dumps(nb, sort_keys=True, indent=1, ensure_ascii=False) + "\n")


def changed_notebooks(copy: Path) -> list[str]:
    "The notebooks of the copy that differ from this repository's."
    return sorted(p.name for p in (copy / "nbs").glob("*.ipynb")
                  if p.read_bytes() != (ROOT / "nbs" / p.name).read_bytes())


def export(copy: Path) -> None:
    "The copy's package, exported from the copy's notebooks; and proof that it is the one imported."
    r = run_in(copy, BIN / "nbdev-export")
    assert r.returncode == 0, r.stderr
    r = python_in(copy, "import minigpt.data; print(minigpt.data.__file__)")
    assert r.returncode == 0 and Path(r.stdout.strip()).is_relative_to(copy), r.stdout + r.stderr


# the documented change: a field made with `option`, and the filter's line in next_token
MIN_P_FIELD = '''
    min_p: float | None = option(None, "keep the tokens with at least min_p "
                                 "times the top probability", low=0, high=1)'''
MIN_P_FILTER = '''    if cfg.min_p:
        p = torch.softmax(logits, dim=-1)
        logits = logits.masked_fill(p < cfg.min_p * p.amax(-1, keepdim=True),
                                    float("-inf"))
'''


def test_a_sampling_option_is_one_notebook(tmp_path):
    """min-p, added to chapter 7 alone (its field, its line in `next_token`), is a flag of
    `generate` and `chat`, a request field of the server with its range checked, and at
    min_p = 1 it decodes greedily."""
    copy = scratch_copy(tmp_path)
    nb = copy / "nbs" / "07_generation.ipynb"
    edit_cell(nb, "class SamplingConfig", "\n\n    def __post_init__",
              MIN_P_FIELD + "\n\n    def __post_init__")
    edit_cell(nb, "def next_token", "    probs = torch.softmax(logits, dim=-1)\n",
              MIN_P_FILTER + "    probs = torch.softmax(logits, dim=-1)\n")
    export(copy)
    assert changed_notebooks(copy) == ["07_generation.ipynb"]

    for command in ("generate", "chat"):
        r = run_in(copy, sys.executable, "-m", "minigpt", command, "--help")
        assert r.returncode == 0 and "--min-p" in r.stdout, (command, r.stdout, r.stderr)
    r = run_in(copy, sys.executable, "-m", "minigpt", "generate", "--run", "no-run",
               "--min-p", "2")
    assert r.returncode == 1 and "--min-p must be in [0, 1], not 2.0" in r.stderr, r.stderr

    r = python_in(copy, """
        import torch
        from minigpt.generate import decode_steps
        from minigpt.model import GPT, GPTConfig
        from minigpt.sampling import SamplingConfig
        from minigpt.serve import APIError, sampling_config

        assert sampling_config({"min_p": 0.05}).min_p == 0.05
        assert sampling_config({}).min_p is None
        for bad in (1.5, -0.1, "high", True):
            try:
                sampling_config({"min_p": bad})
                raise SystemExit(f"the server accepted min_p={bad!r}")
            except APIError as e:
                assert (e.status, e.param) == (400, "min_p"), (e.status, e.param)
                assert "min_p" in e.message, e.message

        torch.manual_seed(0)
        model = GPT(GPTConfig(vocab_size=64, block_size=16, n_layer=2, n_head=4,
                              d_model=32)).eval()
        rows = [[5, 9, 2, 7], [8, 4]]
        def tokens(**kw):
            cfg = SamplingConfig(max_new_tokens=24, **kw)    # 24 > 16: it slides
            return torch.stack([t for t, _ in decode_steps(model, rows, cfg)], 1)
        greedy = tokens(temperature=0)
        assert torch.equal(tokens(temperature=1.5, min_p=1.0, seed=0), greedy)
        assert not torch.equal(tokens(temperature=1.5, seed=0), greedy)
        print("ok")
        """)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stdout + r.stderr

    # the command line's own tests read the options, so they cover min-p with no edit
    r = run_in(copy, sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
               "tests/test_cli.py", "-k", "sampling")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]


PROVERBS = '''#| export
def load_proverbs() -> Corpus:
    "A few proverbs, a document each."
    sayings = ["A stitch in time saves nine. " * 12,
               "Many hands make light work. " * 12,
               "Still waters run deep, and the shallow ones babble. " * 6]
    return Corpus("proverbs", [Document(f"proverbs/{i}", text)
                               for i, text in enumerate(sayings)])

register_corpus("proverbs", "a few proverbs, registered by a test",
                load_proverbs)'''


def test_a_corpus_is_one_function_and_one_registration(tmp_path):
    """A corpus registered in chapter 1 as the page says is listed by `minigpt data list`,
    loads by name, and the command line's tests pass with it."""
    copy = scratch_copy(tmp_path)
    add_cell_after(copy / "nbs" / "01_data.ipynb", 'register_corpus("tinystories"', PROVERBS)
    export(copy)
    assert changed_notebooks(copy) == ["01_data.ipynb"]
    r = run_in(copy, sys.executable, "-m", "minigpt", "data", "list")
    assert r.returncode == 0, r.stderr
    assert any(line.split(None, 1) == ["proverbs", "a few proverbs, registered by a test"]
               for line in r.stdout.splitlines()), r.stdout
    r = run_in(copy, sys.executable, "-m", "minigpt", "data", "stats", "--corpus", "proverbs")
    assert r.returncode == 0 and "proverbs/0" in r.stdout, r.stdout + r.stderr
    # the command line's tests, but for `plan` and `info`, which read no corpus (and are slow)
    r = run_in(copy, sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
               "tests/test_cli.py", "-k", "not plan_reproduces and not info_reports")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
