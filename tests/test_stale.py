"""`make stale`: a notebook whose saved outputs are older than its code is named, with the
reason; an up-to-date one is not. On a repository in miniature (a package `pkg`, notebooks,
a book module beside them), with records made the way tools/execute_nbs.py makes them, and
nothing executed."""
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
    "base.py": "def f(): return 1\n",
    "model.py": "from .base import f\n",                                   # relative
    "train.py": "def train():\n    from pkg.model import f\n    return f()\n",  # in a function
    "cli.py": "import pkg.train\n",
    "__main__.py": "from .cli import *\n",
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


def test_a_change_in_a_module_imported_transitively_makes_it_stale(layout):
    nb = save(notebook("from pkg.train import train", "print(train())"), layout, "01_a.ipynb")
    assert reasons(nb, layout) == []
    edit(layout.lib / "unused.py")                 # not imported: still up to date
    assert reasons(nb, layout) == []
    edit(layout.lib / "base.py")                   # train -> model -> base
    assert reasons(nb, layout) == ["changed: pkg/base.py"]


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
        "newly imported: nbs/book.py", '1 code cell(s) edited or added: "import book"']


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
    modules = pv.read_notebook(path)["metadata"][pv.KEY]["modules"]
    assert set(modules) == {f"pkg/{m}" for m in ("__init__.py", "__main__.py", "cli.py",
                                                 "train.py", "model.py", "base.py")}
    edit(layout.lib / "model.py")
    assert reasons(path, layout) == ["changed: pkg/model.py"]


def test_imports_under_magics_and_in_functions_count(layout):
    path = save(notebook("%%time\nimport pkg.cli", "%matplotlib inline\ndef f():\n"
                         "    from pkg import unused\n    return unused.X"), layout, "01_a.ipynb")
    modules = pv.read_notebook(path)["metadata"][pv.KEY]["modules"]
    assert set(modules) == {f"pkg/{m}" for m in ("__init__.py", "cli.py", "train.py", "model.py",
                                                 "base.py", "unused.py")}


def test_the_book_module_beside_the_notebooks_counts(layout):
    path = save(notebook("from book import FULL", "print(FULL)"), layout, "01_a.ipynb")
    modules = pv.read_notebook(path)["metadata"][pv.KEY]["modules"]
    assert set(modules) == {"nbs/book.py", "pkg/__init__.py", "pkg/base.py"}
    edit(layout.nbs / "book.py", "FULL = False\n")
    assert reasons(path, layout) == ["changed: nbs/book.py"]


def test_make_stale_names_the_stale_ones_and_execute_picks_them(layout, capsys):
    save(notebook(), layout, "00_index.ipynb", executed=False)
    save(notebook("import pkg.model"), layout, "01_fresh.ipynb")
    save(notebook("import pkg.train"), layout, "02_old.ipynb")
    save(notebook("print(1)"), layout, "03_new.ipynb", executed=False)
    edit(layout.lib / "train.py")

    assert stale.main(layout.root) == 1
    out = capsys.readouterr().out.splitlines()
    assert out == ["stale: nbs/02_old.ipynb: changed: pkg/train.py",
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
    main = pv.code_record(pv.read_notebook(ROOT / "nbs" / "99_main.ipynb"), layout)
    assert {"minigpt/__init__.py", "minigpt/cli.py"} <= set(main["modules"])   # from minigpt.cli import main
