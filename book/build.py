"""Render the book: notebooks (with their committed outputs) -> pandoc -> Typst -> PDF.

    python book/build.py [--config _quarto.yml] [--out book/_build/minigpt.pdf]

The chapter list is `book: chapters:` (and `appendices:`) of `_quarto.yml`. Each notebook is
converted by its own pandoc run, through `book/notebook.lua`; `book/template.typ` gives the
look. The build only renders: it executes nothing (`make execute` refreshes the outputs).
Pip-only: pandoc comes from the `pypandoc-binary` wheel and Typst from the `typst` wheel;
the only fonts used are Typst's embedded ones and those of the font packages in FONT_PACKAGES
(CJK, emoji), never the system's, so the PDF is the same on every machine.
"""
from __future__ import annotations

import argparse
import ast
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

BOOK = Path(__file__).resolve().parent
ROOT = BOOK.parent
MAX_COLUMNS = 80  # Typst does not wrap code: a longer line runs off the page
# pip packages (the `dev` extra) whose folders hold the fonts for what Typst's fonts lack:
# Noto Sans CJK (Chinese, Japanese, Korean) and Noto Emoji (monochrome), both OFL.
FONT_PACKAGES = ("noto_cjk_sans_jp_regular", "manimgx_fonts")
# A cross-reference label (`eq-attention`) printed as such: a reader cannot look it up.
# In a markdown cell `[@sec-x]` and `@sec-x` are references (_MARKUP drops them before this
# check); in code, docstrings and output `@sec-x` is printed as it is, so it counts too.
RAW_LABEL = re.compile(r"(?<![\w#<.-])@?(?:eq|sec|fig|tbl)-[a-z0-9][\w-]*")
# In a table row, inline code after a space that starts with "." (`, `.device``): Unicode line
# breaking forbids a break before ".", so the cell cannot wrap and overprints its neighbour.
UNBREAKABLE_CELL = re.compile(r"^\|.*?(`[^`]*`,?\s+`\.[^`]*`)", re.M)
# A word hyphenated at the end of a markdown line: the line break prints as a space ("fine- tuning").
SPLIT_WORD = re.compile(r"([A-Za-z]+-)\n[ \t]*([A-Za-z]+)")
# A placeholder the reader would have to fill in (`<repository-url>`), printed as such.
PLACEHOLDER = re.compile(r"<[a-z]+(?:[-_][a-z]+)+>")
# A fenced code block of a markdown cell: its lines print as they are, like a code cell's.
_FENCED = re.compile(r"^(```+|~~~+)[^\n]*\n(.*?)^\1", re.M | re.S)
# What in a markdown cell is not printed as it is: references, attributes, labels, math.
_MARKUP = re.compile(r"\[[^\]]*@[^\]]*\]|\{[#.][^}]*\}|@(?:eq|sec|fig|tbl)-[\w-]+|\$\$.*?\$\$|\$[^$]*\$", re.S)


# Pandoc's ipynb reader parses markdown cells with few extensions; the book needs these.
READER = "ipynb" + "".join(f"+{e}" for e in (
    "citations", "header_attributes", "table_captions", "table_attributes", "implicit_figures", "link_attributes",
    "footnotes", "smart", "fenced_code_attributes", "fenced_divs", "bracketed_spans",
    "raw_attribute", "inline_code_attributes", "tex_math_dollars"))


class BookError(Exception):
    "A problem with the book's sources, with what to do about it."


@dataclass
class Chapter:
    notebook: Path
    numbered: bool = True
    appendix: bool = False

    @property
    def stem(self) -> str: return self.notebook.stem


def read_config(path: Path) -> dict:
    "The book's settings and chapter list from `_quarto.yml`."
    import yaml
    if not path.exists(): raise BookError(f"{path}: no such file; the book needs its _quarto.yml")
    cfg = yaml.safe_load(path.read_text()) or {}
    book = cfg.get("book") or {}
    if not book.get("chapters"): raise BookError(f"{path}: `book: chapters:` lists no chapters")
    return {**book, "bibliography": cfg.get("bibliography") or book.get("bibliography")}


def _flatten(entries) -> list[str]:
    "Chapter paths of a Quarto chapter list, whose entries may be `part:` groups."
    out = []
    for e in entries or []:
        if isinstance(e, str): out.append(e)
        elif isinstance(e, dict): out += _flatten(e.get("chapters"))
    return out


def chapters(book: dict, base: Path) -> list[Chapter]:
    "The chapters in reading order; a notebook named `*index.ipynb` is the unnumbered preface."
    res = []
    for appendix, key in ((False, "chapters"), (True, "appendices")):
        for rel in _flatten(book.get(key)):
            nb = (base / rel).resolve()
            if nb.suffix != ".ipynb": raise BookError(f"{rel}: chapters must be notebooks (.ipynb)")
            if not nb.exists(): raise BookError(f"{rel}: listed in _quarto.yml but not found")
            res.append(Chapter(nb, numbered=not nb.stem.endswith("index"), appendix=appendix))
    return res


def read_version(root: Path = ROOT) -> str:
    "The package version, read from `minigpt/__init__.py` without importing the package."
    m = re.search(r'^__version__\s*=\s*["\']([^"\']+)', (root / "minigpt" / "__init__.py").read_text(), re.M)
    return m.group(1) if m else "unknown"


def build_date() -> dt.date:
    "Today, or `SOURCE_DATE_EPOCH` for a reproducible build."
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    return dt.datetime.fromtimestamp(int(epoch), dt.timezone.utc).date() if epoch else dt.date.today()


_CHECK = re.compile(r"^#\|\s*check\b", re.M)
# A cell the book leaves out entirely, and the colour codes of terminal output.
_HIDDEN = re.compile(r"^#\|\s*(hide|default_exp)\b|^#\|\s*include:\s*false", re.M)
_ANSI = re.compile(r"\x1b\[[\d;]*[A-Za-z]")


def is_check_cell(src: str) -> bool:
    "A `#| check: summary` cell: the book prints its summary, not its code (book/notebook.lua)."
    return bool(_CHECK.search(src))


def _check_cell_problem(cell: dict) -> str | None:
    "Why a check cell cannot be printed as its one-line summary, or None."
    src = "".join(cell.get("source", ""))
    if not re.search(r"^#\|\s*check:\s*\S", src, re.M): return "a check cell needs `#| check: <summary>`"
    if cell.get("outputs"): return "a check cell prints nothing: move what it prints to a cell of its own"
    return None


# A figure's text in print: `make execute` records, with each matplotlib figure a chapter shows,
# its text that would print under 7 points (nbs/figures.py); the book refuses such a figure.
FIGURE_KEY = "minigpt"


def figure_problem(out: dict) -> str | None:
    "Why a saved output, if it is a matplotlib figure, cannot be printed, or None."
    plain = out.get("data", {}).get("text/plain", "")
    if not "".join(plain).startswith("<Figure size"): return None   # a list of lines, or one string
    record = out.get("metadata", {}).get(FIGURE_KEY)
    if not isinstance(record, dict) or "small_text" not in record:
        return "a figure with no record of its text sizes: run `make execute` (it measures each figure)"
    if record["small_text"]:
        return (f"a figure whose text prints under 7 points: {', '.join(record['small_text'][:4])}; "
                "make it larger (8.3 points in a 6.4-inch-wide figure) and run `make execute`")
    return None


# A plumbing cell: package code that protects rather than teaches (validation, file safety,
# wire formats). The book prints, in its place, one line naming what it defines and what it
# guards against, and lists it again in the "Engineering notes" appendix (book/template.typ).
PACKAGE = "minigpt"
_PLUMBING = re.compile(r"^#\|\s*plumbing\b(?::\s*(\S.*))?$", re.M)
_EXPORT = re.compile(r"^#\|\s*export(?:s)?\b[ \t]*(\S*)", re.M)
_DEFAULT_EXP = re.compile(r"^#\|\s*default_exp\s+(\S+)", re.M)


def is_plumbing_cell(src: str) -> bool: return bool(_PLUMBING.search(src))


def _import_nodes(body: list[ast.stmt]) -> list[ast.Import | ast.ImportFrom] | None:
    """The imports of statements that only import, an optional import included
    (`try: import x` / `except ImportError: x = None`), or None."""
    out = []
    for n in body:
        if isinstance(n, (ast.Import, ast.ImportFrom)): out.append(n)
        elif isinstance(n, ast.Try) and (inner := _import_nodes(n.body)) is not None: out += inner
        else: return None
    return out


def _import_statements(src: str) -> list[ast.Import | ast.ImportFrom] | None:
    "What a cell that only imports imports (`from __future__` left out), or None for any other cell."
    nodes = _import_nodes(ast.parse(src).body)
    if not nodes: return None
    return [n for n in nodes if not (isinstance(n, ast.ImportFrom) and n.module == "__future__")]


def _imports(src: str) -> list[ast.alias] | None:
    "The names a cell that only imports imports, or None for any other cell."
    nodes = _import_statements(src)
    return None if nodes is None else [a for n in nodes for a in n.names]


def imported_labels(src: str) -> list[str]:
    """How the book names what an import cell imports: its plain imports as one label
    (`json, urllib.request, numpy as np`), then one per `from` import (`from pathlib: Path`)."""
    def named(a: ast.alias) -> str: return f"{a.name} as {a.asname}" if a.asname else a.name
    body = _import_statements(src) or []
    plain = [named(a) for n in body if isinstance(n, ast.Import) for a in n.names]
    return ([", ".join(plain)] if plain else []) + [
        f"from {'.' * n.level}{n.module or ''}: {', '.join(map(named, n.names))}"
        for n in body if isinstance(n, ast.ImportFrom)]


def shown_names(src: str) -> list[str]:
    """The public names a cell binds at its top level (def, class, assignment), in order; for a
    cell that only imports, the names it binds (`np` for `import numpy as np`)."""
    if (aliases := _imports(src)) is not None:
        return [a.asname or a.name.split(".")[0] for a in aliases]
    names = []
    for node in ast.parse(src).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.append(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names += [t.id for target in targets for t in ast.walk(target)   # a, (b, c) = ...
                      if isinstance(t, ast.Name)]
    return [n for n in dict.fromkeys(names) if not n.startswith("_")]


def _plumbing_cell_problem(cell: dict) -> str | None:
    "Why a plumbing cell cannot be printed as one line naming what it defines, or None."
    src = "".join(cell.get("source", ""))
    m = _PLUMBING.search(src)
    if not m.group(1): return "a plumbing cell needs `#| plumbing: <what it guards against>`"
    if not _EXPORT.search(src):
        return ("a plumbing cell is package code that the book does not print: export it "
                "(`#| export`), or print it")
    if cell.get("outputs"): return "a plumbing cell prints nothing: move what it prints to a cell of its own"
    if not shown_names(src): return "a plumbing cell defines no public name for the book to show"
    return None


def annotate_plumbing(notebook: dict) -> None:
    """Add to each plumbing cell the directives notebook.lua prints: the names it defines
    (`#| plumbing-names: a, b`) and the module file that holds them (`#| plumbing-module:`)."""
    module = None
    for cell in notebook["cells"]:
        if cell.get("cell_type") != "code": continue
        src = "".join(cell.get("source", ""))
        if m := _DEFAULT_EXP.search(src): module = m.group(1)
        if not is_plumbing_cell(src): continue
        target = _EXPORT.search(src).group(1) or module
        path = f"{PACKAGE}/{target.replace('.', '/')}.py" if target else PACKAGE
        imports = _imports(src) is not None     # an import cell: its line says what it imports
        names = imported_labels(src) if imports else shown_names(src)
        cell["source"] = (f"#| plumbing-names: {'; '.join(names)}\n"
                          f"#| plumbing-module: {path}\n"
                          + ("#| plumbing-kind: imports\n" if imports else "") + src)


def _fold_cell_problem(src: str) -> str | None:
    "Why a fold cell cannot be printed as its summary with its code at the chapter's end, or None."
    if re.search(r"^#\|\s*fold\b", src, re.M) and not re.search(r"^#\|\s*fold:\s*\S", src, re.M):
        return "a fold cell needs `#| fold: <summary>`"
    return None


def _shown_text(cell: dict) -> list[str]:
    "The lines of a code cell that the book prints: code without directives, and text outputs."
    src = "".join(cell.get("source", ""))
    if is_check_cell(src): return []  # printed as its summary, which Typst wraps
    echo = not re.search(r"^#\|\s*echo:\s*false", src, re.M)
    lines = [l for l in src.splitlines() if not l.startswith("#|")] if echo else []
    if re.search(r"^#\|\s*output:\s*false", src, re.M): return lines   # code only
    for out in cell.get("outputs", []):
        data = out.get("data") or {}
        if out.get("output_type") == "stream": text = out.get("text", "")
        elif "image/png" in data or "text/markdown" in data: continue  # rendered, not printed
        else: text = data.get("text/plain", "")
        lines += _ANSI.sub("", "".join(text)).splitlines()
    return lines


def printed_text_problem(line: str) -> str | None:
    "What a reader would stumble on in a printed line of prose, code or output, or None."
    if m := RAW_LABEL.search(line):
        label = m.group(0).lstrip("@")
        return (f"the raw label `{m.group(0)}` is printed; refer to it with [@{label}] in prose, "
                "or name what it is (in code, docstrings and output the book cannot number it)")
    if m := PLACEHOLDER.search(line):
        return f"the placeholder `{m.group(0)}` is printed; write the real value"
    return None


def check_notebook(nb: Path) -> dict:
    "Fail early, naming the cell, on what would break or overflow the page. Returns the notebook."
    try:
        notebook = json.loads(nb.read_text())
        cells = notebook["cells"]
    except (json.JSONDecodeError, KeyError, UnicodeDecodeError) as e:
        raise BookError(f"{nb.name}: not a valid notebook ({e})") from None
    for i, cell in enumerate(cells):
        src = "".join(cell.get("source", ""))
        if cell.get("cell_type") == "markdown":
            if m := SPLIT_WORD.search(_FENCED.sub("", src)):
                raise BookError(f"{nb.name}, cell {i} (markdown): `{m.group(1)}` ends a line and `{m.group(2)}` "
                                f"starts the next: the line break prints as a space ({m.group(1)} {m.group(2)}); "
                                "keep the hyphenated word on one line")
            if m := UNBREAKABLE_CELL.search(_FENCED.sub("", src)):
                raise BookError(f"{nb.name}, cell {i} (markdown): the table cell `{m.group(1)}` cannot wrap (a line "
                                "may not break before a \".\"), so it would print over the next column; write "
                                "each name in full")
            for line in _MARKUP.sub("", src).splitlines():
                if problem := printed_text_problem(line):
                    raise BookError(f"{nb.name}, cell {i} (markdown): {problem}: {line.strip()[:60]}")
            for block in _FENCED.finditer(src):
                for line in block.group(2).splitlines():
                    if len(line) > MAX_COLUMNS:
                        raise BookError(f"{nb.name}, cell {i} (markdown): a line of a code block has "
                                        f"{len(line)} characters (limit {MAX_COLUMNS}; Typst would wrap it "
                                        f"where a shell does not): {line[:50]}... split it, ending with ` \\`")
        if cell.get("cell_type") != "code": continue
        if _HIDDEN.search(src): continue
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                raise BookError(f"{nb.name}, cell {i}: its saved output is an error ({out.get('ename')}); "
                                "fix the cell and run `make execute`")
            if problem := figure_problem(out):
                raise BookError(f"{nb.name}, cell {i}: {problem}")
        if is_check_cell(src) and (problem := _check_cell_problem(cell)):
            raise BookError(f"{nb.name}, cell {i}: {problem}")
        if problem := _fold_cell_problem(src):
            raise BookError(f"{nb.name}, cell {i}: {problem}")
        if is_plumbing_cell(src):
            if problem := _plumbing_cell_problem(cell):
                raise BookError(f"{nb.name}, cell {i}: {problem}")
            continue  # printed as the names it defines and its summary
        for n, line in enumerate(_shown_text(cell), 1):
            if len(line) > MAX_COLUMNS:
                raise BookError(f"{nb.name}, cell {i}: a printed line has {len(line)} characters "
                                f"(limit {MAX_COLUMNS}, Typst does not wrap code): {line[:50]}...")
            if problem := printed_text_problem(line):
                raise BookError(f"{nb.name}, cell {i}: {problem} (fix the code, then `make execute` "
                                f"if it is in the output): {line.strip()[:60]}")
    return notebook


# Prose numbers that repeat an output: `[0.310]{.out}` in a markdown cell renders as plain
# "0.310", and the build checks that some text output of the same chapter prints that number
# (or a number that rounds to it), so the prose cannot drift from re-executed outputs.
_OUT_SPAN = re.compile(r"\[([^\[\]]+)\]\{\.out\}")
_NUMBER = re.compile(r"[-\u2212]?\d[\d,]*(?:\.\d+)?(?:[eE][-+]?\d+)?")


def _output_text(cell: dict) -> str:
    "What a shown code cell prints: its stream, plain-text and markdown (table) outputs."
    src = "".join(cell.get("source", ""))
    if _HIDDEN.search(src) or re.search(r"^#\|\s*output:\s*false", src, re.M): return ""
    texts = []
    for out in cell.get("outputs", []):
        data = out.get("data") or {}
        if out.get("output_type") == "stream": texts.append("".join(out.get("text", "")))
        else: texts.append("".join(data.get("text/markdown") or data.get("text/plain") or ""))
    return _ANSI.sub("", "\n".join(texts))


def _parse_number(text: str) -> tuple[float, int] | None:
    "The value of a printed number and its decimal places (`1,234.50` -> 1234.5, 2)."
    t = text.replace(",", "").replace("\u2212", "-")
    try: value = float(t)
    except ValueError: return None
    mantissa = re.split(r"[eE]", t)[0]
    return value, len(mantissa.split(".")[1]) if "." in mantissa else 0


def _rounds_to(prose: str, printed: str) -> bool:
    """Whether the prose form `prose` is `printed`, or a rounding of it: `5.2` of `5.18`, and
    `129,000` (a thousands separator with trailing zeros) of `128,768`."""
    p, q = _parse_number(prose), _parse_number(printed)
    if p is None or q is None: return False
    (pv, places), (qv, q_places) = p, q
    if places > q_places: return False  # more digits than were printed
    if "," in prose and "." not in prose:  # `129,000`: rounded to the thousand
        digits = prose.replace(",", "")
        places = -(len(digits) - len(digits.rstrip("0")))
    if "e" in prose.lower(): return abs(pv - qv) <= abs(pv) * 1e-9 or prose.lower() == printed.lower()
    return abs(qv - pv) <= 0.5 * 10 ** -places + 1e-12 * max(1.0, abs(qv))


def check_prose_numbers(nb_name: str, notebook: dict) -> int:
    """Each `[number]{.out}` span of the prose must be printed by an output of the chapter,
    exactly or rounded; `[31%]{.out}` may also be a fraction printed as 0.31. Returns the count."""
    outputs = "\n".join(_output_text(c) for c in notebook["cells"] if c.get("cell_type") == "code")
    printed = _NUMBER.findall(outputs)
    checked = 0
    for i, cell in enumerate(notebook["cells"]):
        if cell.get("cell_type") != "markdown": continue
        for span in _OUT_SPAN.findall("".join(cell.get("source", ""))):
            nums = _NUMBER.findall(span)
            if len(nums) != 1:
                raise BookError(f"{nb_name}, cell {i}: `[{span}]{{.out}}` must contain exactly one number")
            num = nums[0]
            ok = any(_rounds_to(num, q) for q in printed)
            if not ok and span.strip().endswith("%"):
                ok = any(_rounds_to(num, repr(100 * _parse_number(q)[0])) for q in printed
                         if _parse_number(q) and "." in q)
            if not ok:
                raise BookError(f"{nb_name}, cell {i}: the prose number {num} (`[{span}]{{.out}}`) is not "
                                "printed by any output of the chapter, nor is a rounding of one; "
                                "correct the prose or re-run the chapter (`make execute`)")
            checked += 1
    return checked


def check_all_prose_numbers(chs: list[Chapter]) -> int:
    "Check the `{.out}` numbers of every chapter (see `check_prose_numbers`)."
    return sum(check_prose_numbers(ch.notebook.name, json.loads(ch.notebook.read_text())) for ch in chs)


def for_pandoc(notebook: dict) -> dict:
    """A copy pandoc's reader accepts: nbdev-clean leaves `execution_count` null, pandoc wants a
    number; plumbing cells carry the names and module they print (`annotate_plumbing`)."""
    nb = json.loads(json.dumps(notebook))
    annotate_plumbing(nb)
    for cell in nb["cells"]:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "execute_result" and out.get("execution_count") is None:
                out["execution_count"] = 0
    return nb


def pandoc_path() -> str:
    import pypandoc
    return pypandoc.get_pandoc_path()


def convert(ch: Chapter, out_dir: Path, pandoc: str) -> Path:
    "One notebook -> one Typst file, its images extracted beside it."
    src = out_dir / "src" / ch.notebook.name
    src.parent.mkdir(exist_ok=True)
    src.write_text(json.dumps(for_pandoc(check_notebook(ch.notebook))))
    dest = out_dir / f"ch-{ch.stem}.typ"
    cmd = [pandoc, str(src), "--from", READER, "--to", "typst",
           "--ipynb-output=all", "--lua-filter", str(BOOK / "notebook.lua"),
           "--extract-media", f"media/{ch.stem}", "--wrap=preserve", "-o", dest.name]
    r = subprocess.run(cmd, cwd=out_dir, capture_output=True, text=True)
    if r.returncode != 0:
        raise BookError(f"{ch.notebook.name}: pandoc could not convert it:\n{r.stderr.strip()}")
    # the chapter names its notebook, so that the template's errors can (book-source)
    head = f'#import "compat.typ": *\n#state("book-source").update({_typst_str(ch.notebook.name)})\n'
    dest.write_text(head + modernise_math(dest.read_text()))
    return dest


# Symbol modifiers that pandoc's Typst writer emits and newer Typst renamed (`\odot` is
# written `dot.circle`, now `dot.o`). Names that were renamed live in compat.typ.
_CIRCLED = re.compile(r"\b(dot|plus|minus|times|div|ast|eq|slash)\.circle\b")


def modernise_math(typ: str) -> str:
    "Rename outdated symbol modifiers inside the `$...$` math of a chapter."
    return re.sub(r"\$[^$]*\$", lambda m: _CIRCLED.sub(r"\1.o", m.group(0)), typ)


def _typst_str(s: str) -> str: return json.dumps(s)  # a JSON string is a valid Typst string


def has_plumbing(chs: list[Chapter]) -> bool:
    "Whether some chapter has a plumbing cell, for the Engineering notes appendix to list."
    sources = ("".join(c.get("source", "")) for ch in chs
               for c in json.loads(ch.notebook.read_text())["cells"] if c.get("cell_type") == "code")
    return any(is_plumbing_cell(src) and _imports(src) is None for src in sources)


def main_typ(book: dict, chs: list[Chapter], version: str, date: dt.date, bib: Path | None,
             notes: bool = False) -> str:
    """The Typst document that includes every chapter in order, then (`notes`) the Engineering
    notes appendix that lists the plumbing cells."""
    lines = ['#import "template.typ": book, unnumbered, appendix, book-index, engineering-notes',
             f'#show: book.with(title: {_typst_str(book.get("title", ""))}, '
             f'subtitle: {_typst_str(book.get("subtitle", ""))}, '
             f'version: {_typst_str(version)}, date: {_typst_str(date.isoformat())})', ""]
    started_appendix = False
    for ch in chs:
        inc = f'include "ch-{ch.stem}.typ"'
        if ch.appendix and not started_appendix:
            lines.append("#show: appendix"); started_appendix = True
        lines.append(f"#{inc}" if ch.numbered else f"#unnumbered({inc})")
    if notes:
        if not started_appendix: lines.append("#show: appendix")
        lines.append("#engineering-notes()")
    if bib is not None:
        lines += ["", f'#bibliography({_typst_str(bib.name)}, title: "References")']
    lines += ["", "#book-index()"]  # the terms of book/index.txt, marked by notebook.lua
    return "\n".join(lines) + "\n"


def font_paths() -> list[str]:
    "The folders of the font packages (FONT_PACKAGES), which the `dev` extra installs."
    from importlib.resources import files
    from importlib.util import find_spec
    missing = [name for name in FONT_PACKAGES if find_spec(name) is None]
    if missing:
        raise BookError(f"the font package(s) {', '.join(missing)} are not installed; "
                        "run `make install` (or pip install -e '.[dev]')")
    return [str(files(name)) for name in FONT_PACKAGES]


# Typst prints a character that no font has as glyph 0 (.notdef) of a two-byte (Type0) font,
# and does not warn: read the text strings of each page's content for it.
_TOKENS = re.compile(rb"(/[^\s/\[(<]+)\s+[\d.]+\s+Tf|\(((?:\\.|[^\\)])*)\)", re.S)
_ESC = re.compile(rb"\\([0-7]{1,3}|.)", re.S)
_SIMPLE = {b"n": b"\n", b"r": b"\r", b"t": b"\t", b"b": b"\b", b"f": b"\f"}


def _unescape(s: bytes) -> bytes:
    def one(m):
        e = m.group(1)
        return bytes([int(e, 8) & 0xFF]) if e[:1].isdigit() else _SIMPLE.get(e, e)
    return _ESC.sub(one, s)


def missing_glyphs(pdf: bytes) -> list[str]:
    "The printed numbers of the pages that show a glyph no font has (.notdef, the empty box)."
    import io
    import pypdf
    reader = pypdf.PdfReader(io.BytesIO(pdf))
    labels, pages = reader.page_labels, []
    for n, page in enumerate(reader.pages):
        fonts = (page.get("/Resources") or {}).get("/Font") or {}
        wide = {k.encode() for k, f in fonts.items() if f.get_object().get("/Subtype") == "/Type0"}
        content = page.get_contents()
        if content is None: continue
        font = None
        for m in _TOKENS.finditer(content.get_data()):
            if m.group(1): font = m.group(1); continue
            if font in wide:
                b = _unescape(m.group(2))
                if any(b[i:i + 2] == b"\0\0" for i in range(0, len(b) - 1, 2)):
                    pages.append(labels[n]); break
    return pages


def compile_pdf(main: Path, out: Path, date: dt.date) -> int:
    "Typst -> PDF; warnings are errors; the final path is replaced atomically. Returns bytes written."
    import typst
    ts = int(dt.datetime.combine(date, dt.time(), dt.timezone.utc).timestamp())
    try:
        pdf, warnings = typst.compile_with_warnings(str(main), root=str(main.parent), font_paths=font_paths(),
                                                    ignore_system_fonts=True, timestamp=ts)
    except typst.TypstError as e:
        # the template's own checks panic with a message for the author: show it plainly
        if m := re.search(r'panicked with: "?(book: [^\n]*?)"?$', str(e), re.M):
            raise BookError(m.group(1)) from None
        raise BookError(f"typst could not compile {main.name}:\n{e}") from None
    if warnings:
        raise BookError("typst warnings (treated as errors):\n" + "\n".join(str(w) for w in warnings))
    if pages := missing_glyphs(pdf):
        raise BookError(f"a character that no font has prints as an empty box on page(s) {', '.join(pages)}; "
                        "add a font for its script (FONT_PACKAGES) or print something else")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_bytes(pdf)
    os.replace(tmp, out)
    return len(pdf)


def build(config: Path = ROOT / "_quarto.yml", out: Path = BOOK / "_build" / "minigpt.pdf") -> Path:
    "Render every chapter of `config` into the PDF `out`; the Typst sources go beside it."
    book = read_config(config)
    chs = chapters(book, config.parent)
    work = out.parent  # self-contained: chapters, media, template and bibliography
    work.mkdir(parents=True, exist_ok=True)
    for old in work.glob("ch-*.typ"): old.unlink()
    shutil.rmtree(work / "media", ignore_errors=True)
    for name in ("template.typ", "compat.typ"): shutil.copy(BOOK / name, work / name)
    bib = config.parent / (book.get("bibliography") or "book/references.bib")
    if bib.exists(): shutil.copy(bib, work / "references.bib")
    pandoc = pandoc_path()
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        list(pool.map(lambda ch: convert(ch, work, pandoc), chs))
    check_all_prose_numbers(chs)  # after convert, which reports broken notebooks
    main = work / "book.typ"
    date = build_date()
    main.write_text(main_typ(book, chs, read_version(), date, work / "references.bib" if bib.exists() else None,
                             notes=has_plumbing(chs)))
    compile_pdf(main, out, date)
    return out


def cli(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, default=ROOT / "_quarto.yml", help="the book's _quarto.yml")
    p.add_argument("--out", type=Path, default=BOOK / "_build" / "minigpt.pdf", help="the PDF to write")
    args = p.parse_args(argv)
    start = dt.datetime.now()
    try: out = build(args.config.resolve(), args.out.resolve())
    except BookError as e:
        print(f"book: error: {e}", file=sys.stderr)
        return 1
    secs = (dt.datetime.now() - start).total_seconds()
    print(f"book: wrote {os.path.relpath(out)} ({out.stat().st_size / 1e6:.1f} MB) in {secs:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(cli())
