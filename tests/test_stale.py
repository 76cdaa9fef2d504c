"""`make stale`: a notebook whose saved outputs are older than its code is named, with the
reason (the definitions or cells whose meaning changed); an up-to-date one is not, and neither
is one whose code changed only in comments, docstrings or layout. On a repository in miniature
(a package `pkg`, notebooks, a book module beside them), with records made the way
tools/execute_nbs.py makes them, and nothing executed."""
import argparse
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import execute_nbs
import provenance as pv
import stale

ROOT = Path(__file__).resolve().parent.parent

PACKAGE = {
    "__init__.py": '__version__ = "0.1"\n',
    "base.py": "def f():\n    return 1\n\n\ndef g():\n    return 2\n",
    "model.py": "from .base import f\n",                                   # relative
    "train.py": "def train():\n    from pkg.model import f\n    return f()\n",  # in a function
    "cli.py": "import pkg.train\n\n\ndef main():\n    return pkg.train.train()\n",
    "__main__.py": "from .cli import *\nmain()\n",
    "unused.py": "X = 1\n",
}


def notebook(*sources: str) -> dict:
    "A notebook with a title and these code cells."
    cells = [{"cell_type": "markdown", "id": "title", "metadata": {}, "source": ["# A chapter"]}]
    cells += [{"cell_type": "code", "execution_count": None, "id": f"code{i}", "metadata": {},
               "outputs": [], "source": s.splitlines(True)} for i, s in enumerate(sources)]
    return {"cells": cells, "metadata": {"kernelspec": {"display_name": "python3",
            "language": "python", "name": "python3"}}, "nbformat": 4, "nbformat_minor": 5}


@pytest.fixture
def layout(tmp_path) -> pv.Layout:
    (tmp_path / "pyproject.toml").write_text(textwrap.dedent("""\
        [project]
        name = "pkg"
        [tool.nbdev]
        lib_path = "pkg"
        nbs_path = "nbs"
        """))
    for name, text in PACKAGE.items():
        (tmp_path / "pkg").mkdir(exist_ok=True)
        (tmp_path / "pkg" / name).write_text(text)
    (tmp_path / "nbs").mkdir()
    (tmp_path / "nbs" / "book.py").write_text("from pkg import base\nFULL = True\n")
    (tmp_path / "_quarto.yml").write_text(   # the book's chapters, in reading order
        "book:\n  chapters:\n" + "".join(f"    - nbs/{n}.ipynb\n" for n in (
            "00_index", "01_fresh", "02_old", "03_new")))
    return pv.project_layout(tmp_path)


def save(nb: dict, layout: pv.Layout, name: str, executed: bool = True) -> Path:
    "Write `nb` into the notebooks, recorded as execute_nbs.py records an executed one."
    if executed:
        nb["metadata"][pv.KEY] = pv.provenance(pv.code_record(nb, layout), 1.0, pv.machine({}))
    path = layout.nbs / name
    pv.write_notebook(nb, path)
    return path


def reasons(path: Path, layout: pv.Layout) -> list[str]:
    return pv.stale_reasons(pv.read_notebook(path), layout)


def edit(path: Path, text: str = "\n# edited\n") -> None:
    path.write_text(path.read_text() + text)


def replace(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def test_a_change_in_a_definition_reached_transitively_makes_it_stale(layout):
    nb = save(notebook("from pkg.train import train", "print(train())"), layout, "01_a.ipynb")
    assert reasons(nb, layout) == []
    edit(layout.lib / "unused.py", "X = 2\n")     # not imported: still up to date
    replace(layout.lib / "base.py", "return 2", "return 3")   # g: in an imported module, unused
    assert reasons(nb, layout) == []
    replace(layout.lib / "base.py", "return 1", "return 4")   # train -> model's f -> base.f
    assert reasons(nb, layout) == ["changed: pkg/base.py (f)"]
    edit(layout.lib / "base.py", "Y = 1\n")        # the top level runs on every import
    assert reasons(nb, layout) == ["changed: pkg/base.py (<module>, f)"]


def test_comments_docstrings_and_layout_stale_nothing(layout):
    "What a function computes, not how it is written: the issue's comment-only change."
    nb = save(notebook("from pkg.base import f  # the first", "print(f())"), layout, "01_a.ipynb")
    replace(layout.lib / "base.py", "def f():\n    return 1",
            '# a comment\ndef f():  # another\n    "A docstring."\n    return (\n        1)')
    edit(layout.lib / "base.py", "# the end\n")
    assert reasons(nb, layout) == []
    cells = pv.code_cells(pv.read_notebook(nb))
    record = pv.read_notebook(nb)["metadata"][pv.KEY]
    reworded = notebook("from pkg.base import f  # the function", "print(f( ))\n# done")
    reworded["metadata"][pv.KEY] = record
    assert pv.stale_reasons(reworded, layout) == []
    assert cells != pv.code_cells(reworded)
    # a cell's own leading string is shown by the cell: it counts
    shown = notebook("from pkg.base import f", '"a text"')
    shown["metadata"][pv.KEY] = pv.code_record(shown, layout)
    shown["cells"][2]["source"] = ['"another text"']
    assert pv.stale_reasons(shown, layout) == ['1 code cell(s) edited or added: "\\"another text\\""']


def test_a_book_module_counts_only_for_the_functions_a_chapter_uses(layout):
    "Book scaffolding: drawing with one function does not depend on the others' imports."
    (layout.nbs / "drawings.py").write_text(
        "def simple():\n    return 0\n\n\ndef with_model():\n"
        "    from pkg.model import f\n    return f()\n")
    nb = save(notebook("from drawings import simple", "simple()"), layout, "01_a.ipynb")
    assert set(pv.read_notebook(nb)["metadata"][pv.KEY]["definitions"]) == {"nbs/drawings.py"}
    replace(layout.lib / "base.py", "return 1", "return 4")
    assert reasons(nb, layout) == []


def test_definitions_a_decorator_of_ours_registers_count_on_import(layout):
    (layout.lib / "cmds.py").write_text(
        "COMMANDS = {}\n\n\ndef command(f):\n    COMMANDS[f.__name__] = f\n    return f\n\n\n"
        "@command\ndef hello():\n    return 1\n\n\ndef helper():\n    return 2\n")
    nb = save(notebook("from pkg.cmds import COMMANDS", "COMMANDS['hello']()"), layout, "01_a.ipynb")
    assert set(pv.read_notebook(nb)["metadata"][pv.KEY]["definitions"]["pkg/cmds.py"]) == {
        "<module>", "command", "hello"}
    replace(layout.lib / "cmds.py", "return 1", "return 3")
    assert reasons(nb, layout) == ["changed: pkg/cmds.py (hello)"]


def test_an_edited_added_or_removed_cell_makes_it_stale(layout):
    cells = ["import pkg.model", "x = 1\nprint(x)", "print(2)"]
    path = save(notebook(*cells), layout, "01_a.ipynb")
    record = pv.read_notebook(path)["metadata"][pv.KEY]

    def stale_with(*sources):
        nb = notebook(*sources)
        nb["metadata"][pv.KEY] = record
        return pv.stale_reasons(nb, layout)

    assert stale_with(*cells) == []
    assert stale_with(cells[0], "x = 2\nprint(x)", cells[2]) == [
        '1 code cell(s) edited or added: "x = 2"']
    assert stale_with(cells[0], cells[2]) == ["1 code cell(s) removed"]
    assert stale_with(cells[0], cells[2], cells[1]) == ["code cells reordered"]
    # a new import is a new dependency, named with the cell that brings it
    assert stale_with(*cells, "import book") == [
        "newly used: nbs/book.py (<module>)", '1 code cell(s) edited or added: "import book"']


def test_the_books_directives_do_not_make_it_stale_but_eval_does(layout):
    cells = ["#| label: fig-x\n#| fig-cap: \"A plot\"\nprint(1)", "#| export\nx = 1"]
    path = save(notebook(*cells), layout, "01_a.ipynb")
    record = pv.read_notebook(path)["metadata"][pv.KEY]

    def stale_with(*sources):
        nb = notebook(*sources)
        nb["metadata"][pv.KEY] = record
        return pv.stale_reasons(nb, layout)

    # a new caption, a check or fold summary, echo: the same code runs, the outputs hold
    assert stale_with("#| label: fig-x\n#| fig-cap: \"Another\"\n#| echo: false\nprint(1)",
                      "#| export\n#| fold: the x\nx = 1") == []
    # eval: false decides whether the cell runs at all
    assert stale_with(cells[0], "#| export\n#|  eval: false\nx = 1") == [
        '1 code cell(s) edited or added: "x = 1"']
    assert stale_with(cells[0], "#| export\nx = 2") != []


def test_no_record_is_stale_and_no_code_is_never_stale(layout):
    assert reasons(save(notebook("print(1)"), layout, "01_a.ipynb", executed=False), layout) == [
        "no record of the code that produced its outputs"]
    assert reasons(save(notebook(), layout, "00_index.ipynb", executed=False), layout) == []
    # a record with no imports at all: the cells alone
    assert reasons(save(notebook("print(1)"), layout, "02_b.ipynb"), layout) == []


@pytest.mark.parametrize("cell", [
    'import subprocess, sys\nsubprocess.run([sys.executable, "-m", "pkg", "train"])',
    'from pathlib import Path\nbin_dir = Path("bin")\ncmd = [str(bin_dir / "pkg"), "train"]',
    '!pkg train --out runs/x',
    '!python -m pkg train',
    '%%bash\npython -m pkg train',
])
def test_a_cell_that_runs_the_command_depends_on_what_the_command_imports(layout, cell):
    path = save(notebook(cell), layout, "01_a.ipynb")
    modules = pv.read_notebook(path)["metadata"][pv.KEY]["definitions"]
    assert set(modules) == {f"pkg/{m}" for m in ("__init__.py", "__main__.py", "cli.py",
                                                 "train.py", "model.py", "base.py")}
    edit(layout.lib / "model.py", "X = 1\n")
    assert reasons(path, layout) == ["changed: pkg/model.py (<module>)"]


def test_imports_under_magics_and_in_functions_count(layout):
    path = save(notebook("%%time\nimport pkg.cli\npkg.cli.main()", "%matplotlib inline\ndef f():\n"
                         "    from pkg import unused\n    return unused.X"), layout, "01_a.ipynb")
    modules = pv.read_notebook(path)["metadata"][pv.KEY]["definitions"]
    assert set(modules) == {f"pkg/{m}" for m in ("__init__.py", "cli.py", "train.py", "model.py",
                                                 "base.py", "unused.py")}


def test_the_book_module_beside_the_notebooks_counts(layout):
    path = save(notebook("from book import FULL", "print(FULL)"), layout, "01_a.ipynb")
    modules = pv.read_notebook(path)["metadata"][pv.KEY]["definitions"]
    assert set(modules) == {"nbs/book.py", "pkg/__init__.py", "pkg/base.py"}
    edit(layout.nbs / "book.py", "FULL = False\n")
    assert reasons(path, layout) == ["changed: nbs/book.py (<module>)"]


def test_make_stale_names_the_stale_ones_and_execute_picks_them(layout, capsys):
    save(notebook(), layout, "00_index.ipynb", executed=False)
    save(notebook("import pkg.model"), layout, "01_fresh.ipynb")
    save(notebook("import pkg.train", "pkg.train.train()"), layout, "02_old.ipynb")
    save(notebook("print(1)"), layout, "03_new.ipynb", executed=False)
    replace(layout.lib / "train.py", "return f()", "return f() + 1")

    assert stale.main(layout.root) == 1
    out = capsys.readouterr().out.splitlines()
    assert out == ["stale: nbs/02_old.ipynb: changed: pkg/train.py (train)",
                   "stale: nbs/03_new.ipynb: no record of the code that produced its outputs",
                   "stale: 2 of 4 notebooks; `make execute` re-runs them"]
    default = argparse.Namespace(notebooks=[], all=False)
    assert [p.name for p in execute_nbs.notebooks_to_run(default, layout)] == [
        "02_old.ipynb", "03_new.ipynb"]

    for name in ("02_old.ipynb", "03_new.ipynb"):   # as if executed again
        save(pv.read_notebook(layout.nbs / name), layout, name)
    assert stale.main(layout.root) == 0
    assert "none" in capsys.readouterr().out
    assert execute_nbs.notebooks_to_run(default, layout) == []


def test_nbdev_clean_keeps_the_record_and_cleaning_twice_changes_nothing(layout, tmp_path):
    nb = notebook("import pkg.model", "print(1)")
    nb["cells"][2]["execution_count"] = 3
    nb["metadata"]["widgets"] = {}                 # kept by nbdev anyway
    nb["metadata"]["language_info"] = {"name": "python"}   # stripped by nbdev-clean
    path = save(nb, layout, "01_a.ipynb")
    record = pv.read_notebook(path)["metadata"][pv.KEY]
    clean = [str(Path(sys.executable).parent / "nbdev-clean"), "--fname", str(path)]

    # with this repository's nbdev settings (pyproject.toml), as `make sync-check` runs it
    first = subprocess.run(clean, cwd=ROOT, capture_output=True, text=True, check=True)
    assert "Failed" not in first.stderr, first.stderr     # nbdev only warns when it fails
    cleaned = pv.read_notebook(path)
    assert cleaned["metadata"][pv.KEY] == record
    assert "language_info" not in cleaned["metadata"]
    assert cleaned["cells"][2]["execution_count"] is None
    assert pv.stale_reasons(cleaned, layout) == []

    text = path.read_text()
    second = subprocess.run(clean, cwd=ROOT, capture_output=True, text=True, check=True)
    assert "Failed" not in second.stderr, second.stderr
    assert path.read_text() == text
    # and the record's own format is nbdev's: writing it again changes nothing
    pv.write_notebook(pv.read_notebook(path), path)
    assert path.read_text() == text


def test_the_repository_keeps_the_record_key():
    "nbdev-clean keeps exactly the notebook metadata keys pyproject.toml allows."
    from nbdev.config import get_config
    assert pv.KEY in get_config(path=ROOT).get("allowed_metadata_keys")
    layout = pv.project_layout(ROOT)
    assert (layout.nbs, layout.lib) == (ROOT / "nbs", ROOT / "minigpt")
    cli = pv.code_record(pv.read_notebook(ROOT / "nbs" / "12_cli.ipynb"), layout)
    assert {"minigpt/__init__.py", "minigpt/__main__.py", "minigpt/model.py"} <= set(
        cli["definitions"])                  # the chapter runs the command


def test_on_the_book_a_comment_stales_nothing_and_a_sampling_filter_only_what_samples(tmp_path):
    """The issue's demonstration, on a copy of this repository: every chapter recorded as
    executed; a comment-only change to model.py leaves `make stale` empty; a change to the
    top-k filter (its chapter's cell and the exported module) names only the chapters that
    sample, not those of data, tokenizer, loader, attention, model or scaling."""
    import shutil
    listed = subprocess.run(["git", "ls-files", "minigpt", "nbs", "book/build.py", "_quarto.yml",
                             "pyproject.toml"], cwd=ROOT, capture_output=True, text=True,
                            check=True).stdout.split()
    for name in listed:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, tmp_path / name)
    layout = pv.project_layout(tmp_path)
    notebooks = pv.book_notebooks(layout)
    for path in notebooks:                       # as if executed now
        save(pv.read_notebook(path), layout, path.name)

    def stale_now() -> set[str]:
        return {p.name for p in notebooks if pv.stale_reasons(pv.read_notebook(p), layout)}

    model = layout.lib / "model.py"
    model.write_text("# a comment at the top\n" + model.read_text().replace(
        "class GPT(nn.Module):\n", "class GPT(nn.Module):  # the model\n"))
    assert stale_now() == set()

    old = 'return logits.masked_fill(logits < kth, float("-inf"))'
    new = 'return logits.masked_fill(logits <= kth - 1e-9, float("-inf"))'
    replace(layout.lib / "generate.py", old, new)
    chapter = layout.nbs / "07_generation.ipynb"
    nb = pv.read_notebook(chapter)
    cell = next(c for c in nb["cells"] if "def top_k_filter" in "".join(c["source"]))
    cell["source"] = "".join(cell["source"]).replace(old, new).splitlines(True)
    pv.write_notebook(nb, chapter)
    stale_ones = stale_now()
    assert {"07_generation.ipynb", "08_evaluation.ipynb", "09_finetuning.ipynb",
            "10_using.ipynb", "12_cli.ipynb"} <= stale_ones
    assert not stale_ones & {"00_index.ipynb", "01_data.ipynb", "02_tokenizer.ipynb",
                             "03_loader.ipynb", "04_attention.ipynb", "05_model.ipynb",
                             "11_scaling.ipynb"}
    for name in stale_ones - {"07_generation.ipynb"}:
        reasons = pv.stale_reasons(pv.read_notebook(layout.nbs / name), layout)
        assert reasons == ["changed: minigpt/generate.py (top_k_filter)"], (name, reasons)


def test_execute_refuses_a_book_run_without_what_a_chapter_needs(tmp_path):
    "A chapter that would print 'not installed' where the book shows real output is refused."
    nbs = [tmp_path / "10_using.ipynb", tmp_path / "11_other.ipynb"]
    needs = {"10_using.ipynb": [("module", "json", "-"), ("program", "sh", "-"),
                                ("module", "no_such_module_here", "pip install it"),
                                ("program", "no-such-program-here", "apt-get install it")]}
    assert execute_nbs.missing_needs(nbs, needs) == [
        "10_using.ipynb needs no_such_module_here: pip install it",
        "10_using.ipynb needs no-such-program-here: apt-get install it"]
    assert execute_nbs.missing_needs(nbs[1:], needs) == []       # other chapters run
    # the real table names chapters of the book
    assert all((ROOT / "nbs" / name).is_file() for name in execute_nbs.BOOK_NEEDS)
