"""What code produced a notebook's saved outputs, and what of it has changed since.

`execute_nbs.py` records, in the metadata of each notebook it executes (`metadata.minigpt`),
a hash of the code that ran: of each code cell, and of each definition of ours the cells reach
(the package's modules and the modules beside the notebooks, such as `nbs/book_settings.py`).
`stale.py` compares that record with the code as it is now. `pyproject.toml` lists the key in
nbdev's `allowed_metadata_keys`, so `nbdev-clean` keeps it.

What a notebook reaches is read from the source (ast), not from a run. A module is cut into its
top-level functions and classes and the rest of its top level (`<module>`: what importing it
runs). The cells' names, resolved through their imports (at the top or inside functions), are
the roots; each definition adds the names it uses, transitively; a module a cell runs as a
command (`["-m", "minigpt"]`, `bin / "minigpt"`, `!minigpt ...`) counts whole. So a notebook
that draws with one function of `nbs/diagrams.py` depends on that function and what it calls,
not on the modules the file's other functions import.

Hashes are of syntax trees without comments and docstrings: a comment, a docstring or a line
wrapped differently changes no output, and stales nothing. A cell's hash leaves out the `#|`
directives that only tell the book how to print it (a caption, `echo`, `fold`, `export`);
`#| eval:` decides whether the cell runs, so it counts. A notebook without code cells has
printed nothing, so it is never stale.
"""
from __future__ import annotations

import ast
import hashlib
import json
import os
import platform
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

KEY = "minigpt"   # the notebook metadata key of the record
ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Layout:
    "Where the notebooks and the package are; record paths are relative to `root`."
    root: Path
    nbs: Path   # the notebooks, and the book's own modules beside them (nbs/*.py)
    lib: Path   # the package (minigpt/)


def project_layout(root: Path = ROOT) -> Layout:
    "The layout nbdev's configuration (pyproject.toml) gives the repository at `root`."
    from nbdev.config import get_config
    cfg = get_config(path=root)
    return Layout(Path(cfg.config_path), cfg.path("nbs_path"), cfg.path("lib_path"))


def book_notebooks(layout: Layout) -> list[Path]:
    "The book's notebooks in reading order: `_quarto.yml`'s chapters, then its appendices."
    import sys
    book_dir = str(layout.root / "book")
    if book_dir not in sys.path: sys.path.insert(0, book_dir)
    from build import chapters, read_config
    return [c.notebook for c in chapters(read_config(layout.root / "_quarto.yml"), layout.root)]


def short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def read_notebook(path: Path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def write_notebook(nb: dict, path: Path) -> None:
    "Write `nb` the way nbdev does (sorted keys, indent 1), so cleaning changes nothing."
    Path(path).write_text(json.dumps(nb, sort_keys=True, indent=1, ensure_ascii=False) + "\n",
                          encoding="utf-8")


_EVAL = re.compile(r"^#\|\s*eval\s*:.*$", re.M)


def cell_hash(source: str) -> str:
    """What a cell runs: its syntax tree without comments and the docstrings of what it defines
    (a cell's own leading string stays: the cell shows it), its shell and magic lines, and an
    `#| eval:` directive, which decides whether it runs. The book's other `#|` directives (a
    caption, `echo`, `fold`, `export`) only tell the book how to print it, and do not count."""
    evals = [re.sub(r"\s+", "", line) for line in _EVAL.findall(source)]
    python, shell = _shell_lines(source)
    try: code = tree_hash([_strip_docstrings(ast.parse(python), module_too=False)])
    except SyntaxError: code = source                # not Python: the text itself
    return short_hash(json.dumps([evals, code, [line.strip() for line in shell]]))


def code_cells(nb: dict) -> list[str]:
    "The sources of the notebook's code cells, in order."
    return ["".join(c["source"]) if isinstance(c["source"], list) else c["source"]
            for c in nb.get("cells", []) if c.get("cell_type") == "code"]


# ---- imports, read from source

_RUN_MODULE = re.compile(r"(?:^|\s)-m\s+([A-Za-z_][\w.]*)")


def _shell_lines(source: str) -> tuple[str, list[str]]:
    "(Python without IPython's magics, the shell and magic lines) of a cell."
    if source.lstrip().startswith("%%"):        # a cell magic: %%time's body is Python, %%bash's shell
        first, _, body = source.lstrip().partition("\n")
        return "\n" + body, source.splitlines()
    python, shell = [], []
    for line in source.splitlines():
        if line.lstrip().startswith(("!", "%")):
            shell.append(line)
            line = ""                            # keep the line numbers
        python.append(line)
    return "\n".join(python), shell


def _is_str(node, value=None) -> bool:
    return (isinstance(node, ast.Constant) and isinstance(node.value, str)
            and (value is None or node.value == value))


def _commands(tree: ast.AST, package: str) -> set[str]:
    "Modules that code in `tree` runs as a command: `[..., '-m', 'x']`, or the package's script."
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.List, ast.Tuple)):
            items = [e.value if _is_str(e) else None for e in node.elts]
            found |= {b for a, b in zip(items, items[1:]) if a == "-m" and b}
            if isinstance(node, ast.List) and items and items[0] == package:
                found.add(package)               # ["minigpt", "train", ...]
        elif (isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div)
              and _is_str(node.right, package)):
            found.add(package)                   # bin_dir / "minigpt": the installed script
    return found


def _shell_commands(lines: list[str], package: str) -> set[str]:
    found = set()
    for line in lines:
        found |= set(_RUN_MODULE.findall(line))
        if re.match(rf"\s*!\s*(?:\S*/)?{re.escape(package)}(?:\s|$)", line):
            found.add(package)
    return found


def _run_as_main(modules: set[str]) -> set[str]:
    # `python -m pkg` runs pkg/__main__.py; the package's script runs the same main()
    return modules | {f"{m}.__main__" for m in modules}


def module_file(name: str, layout: Layout) -> Path | None:
    "The file of module `name` if it is ours (in the package or beside the notebooks), else None."
    top, *rest = name.split(".")
    base = layout.lib.parent if top == layout.lib.name else layout.nbs
    path = base.joinpath(top, *rest)
    for f in (path.parent / f"{path.name}.py", path / "__init__.py"):
        if f.is_file(): return f
    return None




# ---- the definitions a notebook runs, read from source
#
# A module is cut into its top-level definitions (functions and classes, each hashed whole,
# methods included) and the rest of its top level ("<module>": imports, constants, registry
# calls), which runs whenever the module is imported. A notebook depends on the definitions its
# cells name, and transitively on the ones those name; on every imported module's top level.
# Hashes are of the syntax tree without comments and docstrings (ast.dump without positions):
# a reworded comment, a docstring or a wrapped line changes no output.

TOP = "<module>"   # the part of a module that runs on import


def _strip_docstrings(tree: ast.AST, module_too: bool = True) -> ast.AST:
    "`tree` without the docstrings of its functions and classes (and of the module itself)."
    for node in ast.walk(tree):
        kinds = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef) + ((ast.Module,) if module_too else ())
        if isinstance(node, kinds) and node.body and _is_str(getattr(node.body[0], "value", None)) \
                and isinstance(node.body[0], ast.Expr):
            node.body = node.body[1:] or [ast.Pass()]
    return tree


def tree_hash(nodes) -> str:
    "One hash of these syntax trees: what they compute, not how they are written."
    return short_hash("\n".join(ast.dump(n, include_attributes=False) for n in nodes))


@dataclass
class Definition:
    "A top-level function or class of a module (or the module's top level): its hash and names."
    hash: str
    names: set[str]          # dotted names it refers to: "f", "np.zeros", "generate.top_k"
    decorators: set[str] = field(default_factory=set)   # the names its decorators use
    imports: set[str] = field(default_factory=set)      # modules it imports: their top levels run


@dataclass
class ModuleInfo:
    "A module of ours cut into definitions, with what its names are bound to."
    path: Path
    definitions: dict[str, Definition]
    bindings: dict[str, str]  # local name -> dotted target ("minigpt.model.GPT", "minigpt.model")
    star: list[str]           # modules it imports with *


def _bindings(tree: ast.AST, package: str | None) -> tuple[dict[str, str], list[str]]:
    "Names that import statements anywhere in `tree` bind, to their dotted targets; and * imports."
    bound, star = {}, []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.asname: bound[a.asname] = a.name
                else: bound[a.name.split(".")[0]] = a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom):
            module = _absolute(node, package)
            if module is None: continue
            for a in node.names:
                if a.name == "*": star.append(module)
                else: bound[a.asname or a.name] = f"{module}.{a.name}"
    return bound, star


def imported_modules(tree: ast.AST, package: str | None) -> set[str]:
    "Dotted names of what import statements in `tree` import (`from x import y`: x and x.y)."
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and (module := _absolute(node, package)):
            found |= {module} | {f"{module}.{a.name}" for a in node.names if a.name != "*"}
    return found


def _absolute(node: ast.ImportFrom, package: str | None) -> str | None:
    "The module a `from ... import` names, relative imports resolved against `package`."
    if not node.level: return node.module
    if package is None: return None
    parts = package.split(".")
    if node.level > len(parts): return None
    base = ".".join(parts[:len(parts) - node.level + 1])
    return f"{base}.{node.module}" if node.module else base


def _dotted(node: ast.AST) -> str | None:
    "'a.b.c' for the expression a.b.c, else None."
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name): return None
    return ".".join([node.id, *reversed(parts)])


def referenced_names(tree: ast.AST) -> set[str]:
    "Every name and whole attribute chain `tree` uses: {'f', 'torch.zeros', 'm.GPT', ...}."
    names = set()

    def visit(node):
        if isinstance(node, (ast.Attribute, ast.Name)) and (dotted := _dotted(node)):
            names.add(dotted)                    # m.GPT, not also m: m is not used whole
            return
        for child in ast.iter_child_nodes(node): visit(child)
    visit(tree)
    return names


def module_info(path: Path, package: str) -> ModuleInfo:
    "Module file `path` (of package `package`) cut into definitions."
    text = path.read_text(encoding="utf-8").replace("\r\n", "\n")
    try: tree = _strip_docstrings(ast.parse(text, filename=str(path)))
    except SyntaxError:                          # it fails when run: any change counts
        return ModuleInfo(path, {TOP: Definition(short_hash(text), set())}, {}, [])
    bindings, star = _bindings(tree, package)
    defs, top = {}, []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defs.setdefault(node.name, []).append(node)   # defined twice: both count
        else:
            top.append(node)
    def definition(nodes):
        return Definition(tree_hash(nodes), set().union(set(), *map(referenced_names, nodes)),
                          set().union(set(), *(referenced_names(d) for n in nodes
                                               for d in getattr(n, "decorator_list", []))),
                          set().union(set(), *(imported_modules(n, package) for n in nodes)))
    out = {name: definition(nodes) for name, nodes in defs.items()}
    out[TOP] = definition(top)
    return ModuleInfo(path, out, bindings, star)


class CodeIndex:
    "The modules of ours (in the package and beside the notebooks), read once each."
    def __init__(self, layout: Layout):
        self.layout = layout
        self._modules: dict[str, ModuleInfo | None] = {}

    def module(self, name: str) -> ModuleInfo | None:
        if name not in self._modules:
            path = module_file(name, self.layout)
            package = None
            if path is not None:
                package = name if path.name == "__init__.py" else name.rpartition(".")[0]
            self._modules[name] = None if path is None else module_info(path, package or name)
        return self._modules[name]

    def resolve(self, dotted: str) -> list[tuple[str, str]]:
        """The (module, definition) pairs a dotted target reaches: 'minigpt.model.GPT' is GPT
        of minigpt.model (with the top levels of minigpt and minigpt.model, which importing
        runs); 'minigpt.model' alone is the whole module; a name not ours reaches nothing."""
        parts = dotted.split(".")
        found = []
        for i in range(1, len(parts) + 1):
            name = ".".join(parts[:i])
            info = self.module(name)
            if info is None:
                if i > 1 and self.module(".".join(parts[:i - 1])) is not None:
                    found += self._definition(".".join(parts[:i - 1]), parts[i - 1])
                    return found
                continue
            found.append((name, TOP))
        if found and self.module(dotted) is not None:      # the module itself, used whole
            found += [(dotted, d) for d in self.module(dotted).definitions]
        return found

    def top_levels(self, imported: set[str]) -> list[tuple[str, str]]:
        "The top levels of ours that importing these dotted names runs (a.b runs a, then a.b)."
        found = []
        for dotted in imported:
            parts = dotted.split(".")
            found += [(m, TOP) for m in (".".join(parts[:i]) for i in range(1, len(parts) + 1))
                      if self.module(m) is not None]
        return found

    def _definition(self, module: str, name: str) -> list[tuple[str, str]]:
        "Definition `name` of `module`, or where the module imported `name` from."
        info = self.module(module)
        if name in info.definitions: return [(module, name)]
        if name in info.bindings: return self.resolve(info.bindings[name])
        for other in info.star:
            if self.module(other) and name in self.module(other).definitions:
                return [(other, TOP), (other, name)]
        return []                                         # a global set at the top level

    def names_in(self, names: set[str], bindings: dict[str, str], star: list[str],
                 module: str | None = None) -> list[tuple[str, str]]:
        "What the dotted `names` of some code reach, given its import bindings."
        stars = [m for m in star if self.module(m)]
        found = [(m, TOP) for m in stars]
        for dotted in names:
            head, _, rest = dotted.partition(".")
            if head in bindings:
                found += self.resolve(bindings[head] + (f".{rest}" if rest else ""))
            elif module is not None and head in self.module(module).definitions:
                found.append((module, head))
            else:
                found += [(m, head) for m in stars if head in self.module(m).definitions]
        return found

    def closure(self, roots: list[tuple[str, str]]) -> dict[tuple[str, str], str]:
        "Every definition reachable from `roots`, with its hash."
        seen, todo = {}, list(roots)
        while todo:
            module, name = todo.pop()
            info = self.module(module)
            if (module, name) in seen or info is None or name not in info.definitions: continue
            definition = info.definitions[name]
            seen[(module, name)] = definition.hash
            todo.append((module, TOP))
            parts = module.split(".")
            todo += [(".".join(parts[:i]), TOP) for i in range(1, len(parts))]  # parent packages
            todo += self.names_in(definition.names, info.bindings, info.star, module)
            todo += self.top_levels(definition.imports)
            if name == TOP: todo += self._registered(module)
        return seen

    def _registered(self, module: str) -> list[tuple[str, str]]:
        """The definitions of `module` that a decorator of ours registers when the module is
        imported (`@command("train", ...)`): they run without being named."""
        info = self.module(module)
        return [(module, name) for name, d in info.definitions.items()
                if d.decorators and self.names_in(d.decorators, info.bindings, info.star, module)]


# ---- the record

def _python(source: str) -> ast.Module | None:
    "The Python of a code cell (magics and shell lines blanked), parsed; None if it is not Python."
    try: return ast.parse(_shell_lines(source)[0])
    except SyntaxError: return None


def notebook_roots(sources: list[str], index: CodeIndex) -> list[tuple[str, str]]:
    """The definitions of ours that the cells use by name (through the imports of any cell), and
    the whole of every module a cell runs as a command (`python -m minigpt`, `!minigpt ...`)."""
    package = index.layout.lib.name
    bindings, star, names, commands, imported = {}, [], set(), set(), set()
    for source, tree in zip(sources, map(_python, sources)):
        commands |= _shell_commands(_shell_lines(source)[1], package)
        if tree is None: continue
        bound, starred = _bindings(tree, None)
        bindings.update(bound)
        imported |= imported_modules(tree, None)
        star += starred
        names |= referenced_names(tree)
        commands |= _commands(tree, package)
    roots = index.names_in(names, bindings, star) + index.top_levels(imported)
    for module in sorted(_run_as_main(commands)):
        roots += index.resolve(module)
    return roots


def code_record(nb: dict, layout: Layout) -> dict:
    """The code behind the outputs of notebook `nb`: a hash per code cell (`cell_hashes`), a
    hash per definition of ours it reaches (`definitions`: {module path: {name: hash}}, paths
    relative to the root, `<module>` for a module's top level), and `code_hash`, one of them all."""
    sources = code_cells(nb)
    index = CodeIndex(layout)
    definitions = {}
    for (module, name), h in index.closure(notebook_roots(sources, index)).items():
        path = index.module(module).path.relative_to(layout.root).as_posix()
        definitions.setdefault(path, {})[name] = h
    definitions = {p: dict(sorted(d.items())) for p, d in sorted(definitions.items())}
    cells = [cell_hash(s) for s in sources]
    whole = json.dumps({"cells": cells, "definitions": definitions}, sort_keys=True)
    # not "cells": nbdev's notebook writer (fastcore's nb2dict) reads any list under that key
    # as notebook cells, at any depth, and nbdev-clean then fails on the notebook
    return {"code_hash": hashlib.sha256(whole.encode()).hexdigest(), "cell_hashes": cells,
            "definitions": definitions}


def machine(env: dict) -> dict:
    "What executes the notebooks: versions, platform, CPU, GPU, and the MINIGPT_* settings of `env`."
    info = {"python": platform.python_version(), "platform": platform.platform(terse=True),
            "machine": platform.machine(), "cpus": os.cpu_count()}
    try: info["cpu"] = next(l.split(":", 1)[1].strip() for l in
                            Path("/proc/cpuinfo").read_text().splitlines()
                            if l.startswith("model name"))
    except (OSError, StopIteration): pass
    try:
        info["torch"] = metadata.version("torch")
        import torch
        if torch.cuda.is_available(): info["gpu"] = torch.cuda.get_device_name(0)
    except Exception: pass                     # no torch: nothing more to say
    info["settings"] = {k: v for k, v in sorted(env.items()) if k.startswith("MINIGPT_")}
    return info


def provenance(code: dict, seconds: float, machine_info: dict) -> dict:
    "The record saved in a notebook's metadata: its code record, when, how long, and where."
    return {**code, "executed": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "seconds": round(seconds, 1), "machine": machine_info}


# ---- staleness

def _first_line(source: str, width: int = 40) -> str:
    lines = [l for l in source.splitlines() if l.strip() and not l.startswith("#|")]
    line = lines[0].strip() if lines else ""
    return json.dumps(line if len(line) <= width else line[:width - 3] + "...")


def _cell_changes(recorded: list[str], sources: list[str]) -> list[str]:
    current = [cell_hash(s) for s in sources]
    if current == recorded: return []
    unmatched = Counter(current) - Counter(recorded)      # current cells the record lacks
    edited = []
    for source, h in zip(sources, current):
        if unmatched[h] > 0:
            edited.append(source)
            unmatched[h] -= 1
    # an edited cell is one new hash and one lost hash: count as removed only the excess
    removed = max(0, sum((Counter(recorded) - Counter(current)).values()) - len(edited))
    if not edited and not removed: return ["code cells reordered"]
    out = []
    if edited:
        shown = ", ".join(_first_line(s) for s in edited[:3])
        more = f" and {len(edited) - 3} more" if len(edited) > 3 else ""
        out.append(f"{len(edited)} code cell(s) edited or added: {shown}{more}")
    if removed: out.append(f"{removed} code cell(s) removed")
    return out


def _listed(changes: dict[str, list[str]], most: int = 4) -> str:
    "'a.py (f, g), b.py (<module>)': the definitions per file, at most `most` names each."
    def names(n):
        return ", ".join(n[:most]) + (f" and {len(n) - most} more" if len(n) > most else "")
    return ", ".join(f"{path} ({names(n)})" for path, n in changes.items())


def _definition_changes(recorded: dict, current: dict) -> list[str]:
    groups = {"changed": {}, "newly used": {}, "no longer used": {}}
    for path in sorted(recorded.keys() | current.keys()):
        was, now = recorded.get(path, {}), current.get(path, {})
        for what, names in (("changed", [n for n in now if n in was and now[n] != was[n]]),
                            ("newly used", [n for n in now if n not in was]),
                            ("no longer used", [n for n in was if n not in now])):
            if names: groups[what][path] = sorted(names)
    return [f"{what}: {_listed(changes)}" for what, changes in groups.items() if changes]


def stale_reasons(nb: dict, layout: Layout) -> list[str]:
    "Why the saved outputs of `nb` may not come from the current code; [] when they do."
    sources = code_cells(nb)
    if not sources: return []                  # nothing ran, nothing printed
    recorded = nb.get("metadata", {}).get(KEY)
    if not isinstance(recorded, dict) or "code_hash" not in recorded:
        return ["no record of the code that produced its outputs"]
    if "definitions" not in recorded:
        return ["its record is of whole files, from before definitions were tracked"]
    now = code_record(nb, layout)
    if now["code_hash"] == recorded["code_hash"]: return []
    reasons = (_definition_changes(recorded["definitions"], now["definitions"])
               + _cell_changes(recorded.get("cell_hashes", []), sources))
    return reasons or ["its code hash differs from the recorded one"]
