"""A reader of the book sees only the printed cells: none may use a name that only a hidden cell defines.

The rules, for each notebook `nbs/NN_*.ipynb`, cell by cell in order:

* A code cell is *hidden* when the book leaves its code out: `#| hide`,
  `#| default_exp`, `#| include: false` (as book/build.py decides) and also
  `#| echo: false`, whose output is printed but not its code: a name it defines
  is as invisible to a reader as one a hidden cell defines, and the code that
  uses names is not shown, so there is nothing to check in it; and likewise
  `#| check: summary`, printed as its summary alone.
* A plumbing cell (`#| plumbing: summary`) is printed as one line that names the public
  names it defines (book/build.py's `shown_names`): those count as printed, its other
  definitions as hidden, and its code is not shown, so there is nothing to check in it.
* A cell *defines* the names it binds at the top level (imports, assignments,
  `for`/`with` targets, `def`, `class`, `:=`, and a `global` name assigned in a
  function) and *loads* every name it reads that resolves to a global, in
  function bodies, classes and comprehensions too (Python's own `symtable`
  decides the scopes). IPython's `%magic` and `!shell` lines are left out
  (IPython's own transformer finds them; `!=` on a continued line is code).
* A printed cell fails when it loads a name that is not a builtin, not defined
  by itself or by an earlier printed cell, and that a hidden cell defines.
  Exported (`#| export`) cells are printed, so their definitions count.
"""
import builtins
import importlib
import json
import re
import symtable
from pathlib import Path

import build as book
import pytest
from IPython.core.inputtransformer2 import TransformerManager

ROOT = Path(__file__).resolve().parent.parent


def book_notebooks() -> list[Path]:
    "The chapters and appendices of `_quarto.yml`, in reading order."
    from provenance import book_notebooks, project_layout
    return book_notebooks(project_layout(ROOT))


NOTEBOOKS = book_notebooks()
HIDDEN = re.compile(r"^#\|\s*(?:(?:hide|default_exp|check)\b|include:\s*false|echo:\s*false)", re.M)
BUILTINS = frozenset(dir(builtins))


def is_hidden(src: str) -> bool:
    "Whether the book prints none of this cell's code."
    return bool(HIDDEN.search(src))


def without_magics(src: str) -> str:
    "The cell as plain Python: IPython turns each `%magic` and `!shell` line into a call, no longer code."
    return TransformerManager().transform_cell(src)


def star_imported(module: str) -> set[str]:
    "The names `from module import *` binds."
    mod = importlib.import_module(module)
    return set(getattr(mod, "__all__", [n for n in vars(mod) if not n.startswith("_")]))


def scope_names(table, defined: set, loaded: set) -> None:
    "Add to `defined` and `loaded` the global names that `table` and its nested scopes bind and read."
    top = table.get_type() == "module"
    for sym in table.get_symbols():
        name = sym.get_name()
        if top and (sym.is_assigned() or sym.is_imported()): defined.add(name)
        if not top and sym.is_declared_global() and sym.is_assigned(): defined.add(name)
        if sym.is_referenced() and (top or sym.is_global()): loaded.add(name)
    for child in table.get_children(): scope_names(child, defined, loaded)


def cell_names(src: str) -> tuple[set, set]:
    "The global names a code cell defines and the ones it loads."
    code = without_magics(src)
    defined, loaded = set(), set()
    scope_names(symtable.symtable(code, "<cell>", "exec"), defined, loaded)
    for m in re.finditer(r"^from\s+([\w.]+)\s+import\s+\*", code, re.M):
        defined |= star_imported(m.group(1))
    return defined, loaded


def names_of_cell(cell_id: str, src: str) -> tuple[set, set]:
    "`cell_names`, with the cell's id in the message of a syntax error."
    try: return cell_names(src)
    except SyntaxError as e: raise SyntaxError(f"cell {cell_id}: {e}") from None


def names_from_hidden_cells(cells: list[dict]) -> list[tuple[str, list[str]]]:
    "(cell id, names) for each printed cell that uses names only hidden cells define."
    code = [(c.get("id", "?"), "".join(c["source"])) for c in cells if c["cell_type"] == "code"]
    names = {i: names_of_cell(cell_id, src) for i, (cell_id, src) in enumerate(code)}
    shown = {i: set(book.shown_names(src)) for i, (_, src) in enumerate(code) if book.is_plumbing_cell(src)}
    hidden = set().union(*(names[i][0] - shown.get(i, set()) for i, (_, src) in enumerate(code)
                           if is_hidden(src) or i in shown))
    printed, found = set(BUILTINS), []
    for i, (cell_id, src) in enumerate(code):
        if i in shown: printed |= shown[i]
        if is_hidden(src) or i in shown: continue
        defined, loaded = names[i]
        missing = (loaded - defined - printed) & hidden
        if missing: found.append((cell_id, sorted(missing)))
        printed |= defined
    return found


def read_cells(nb: Path) -> list[dict]:
    "The cells of notebook `nb`."
    return json.loads(nb.read_text())["cells"]


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=[nb.stem for nb in NOTEBOOKS])
def test_printed_cells_use_no_name_of_a_hidden_cell(nb):
    found = names_from_hidden_cells(read_cells(nb))
    assert not found, "\n".join(f"{nb.name}, cell {cell_id}: uses {', '.join(names)}, "
                                "defined only in a hidden cell" for cell_id, names in found)


def cell(src: str, cell_id: str) -> dict:
    return {"cell_type": "code", "id": cell_id, "source": src.splitlines(keepends=True)}


def test_a_planted_hidden_name_is_caught():
    cells = [
        cell("#| hide\nfrom fastcore.test import test_eq\nimport tempfile\nhelper = 1", "setup"),
        cell("#| echo: false\nimport numpy as np\nshown = 2", "figure"),
        {"cell_type": "markdown", "id": "text", "source": ["np and helper in prose are fine"]},
        cell("import math\ntest_eq(math.pi > 3, True)", "uses-test-eq"),
        cell("#| export\ndef f(x):\n    return helper + x", "in-a-function"),
        cell("class C:\n    k = [tempfile for _ in range(2)]", "in-a-class"),
        cell("%time y = np.ones(2)\nprint(shown)", "magic-and-echo-false"),
        cell("#| check: the helper works\nchecked = helper + 1\nassert checked", "check-cell-is-not-printed"),
        cell("print(checked)", "uses-a-check-cells-name"),
        cell("#| export\n#| plumbing: checks x\ndef check_x(x):\n    return x\n_LIMIT = 3", "plumbing"),
        cell("print(check_x(2), _LIMIT)", "uses-a-plumbing-cells-names"),
    ]
    assert names_from_hidden_cells(cells) == [("uses-test-eq", ["test_eq"]), ("in-a-function", ["helper"]),
                                              ("in-a-class", ["tempfile"]), ("magic-and-echo-false", ["shown"]),
                                              ("uses-a-check-cells-name", ["checked"]),
                                              ("uses-a-plumbing-cells-names", ["_LIMIT"])]


def test_no_alarm_on_what_a_reader_can_see():
    cells = [
        cell("#| hide\nimport os, json\nx = y = n = 0\nfrom pathlib import Path", "setup"),
        cell("import os\nprint(os.sep, len('ab'))", "imports-it-again"),
        cell("x = 3\nprint(x)", "defines-before-use"),
        cell("def g():\n    global y\n    y = 1\ng()", "global"),
        cell("print(x, y, [n for n in range(3)], (lambda json: json)(1))", "defined-above-or-local"),
        cell("def h(n):\n    return {Path: n for Path in range(n)}", "parameters-and-comprehensions"),
        cell("%matplotlib inline\n!ls json\nprint(len([]))", "magics"),
        cell("z = (len('a')\n     != len('b'))\nw = (3\n     % 2)", "operators-on-continued-lines"),
        cell("#| export\n#| plumbing: the imports\nimport numpy as np\nfrom typing import Iterable", "import-line"),
        cell("def k(xs: Iterable):\n    return np.array(list(xs))", "uses-what-the-import-line-names"),
    ]
    assert names_from_hidden_cells(cells) == []
