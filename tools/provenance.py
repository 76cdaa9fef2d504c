"""What code produced a notebook's saved outputs, and what of it has changed since.

`execute_nbs.py` records, in the metadata of each notebook it executes (`metadata.minigpt`),
a hash of the code that ran: the notebook's code cells, and the source of every module of
ours it imports, transitively (the package's modules and the modules beside the notebooks,
such as `nbs/book.py`). `stale.py` compares that record with the code as it is now.
`pyproject.toml` lists the key in nbdev's `allowed_metadata_keys`, so `nbdev-clean` keeps it.

Imports are read from the source (ast), not from a run: in cells, in module bodies and inside
functions, plus the modules a cell runs as a command (`["-m", "minigpt"]`, `bin / "minigpt"`,
`!minigpt ...`). A notebook without code cells has printed nothing, so it is never stale.

A cell's hash covers the code that runs, not the `#|` directives that only tell the book how to
print it (a caption, `echo`, `check`, `fold`, `export`): rewording a caption leaves the outputs
as they are. `#| eval:` decides whether the cell runs, so it counts.
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
from dataclasses import dataclass
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
    "The notebooks `execute_nbs.py` runs by default: the numbered ones, in reading order."
    return sorted(layout.nbs.glob("[0-9]*.ipynb"))


def short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def read_notebook(path: Path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def write_notebook(nb: dict, path: Path) -> None:
    "Write `nb` the way nbdev does (sorted keys, indent 1), so cleaning changes nothing."
    Path(path).write_text(json.dumps(nb, sort_keys=True, indent=1, ensure_ascii=False) + "\n",
                          encoding="utf-8")


_RENDER_ONLY = re.compile(r"^#\|(?!\s*eval\s*:).*$\n?", re.M)


def executed_code(source: str) -> str:
    "The part of a cell's source that decides what it runs: all but the book's `#|` directives."
    return _RENDER_ONLY.sub("", source)


def cell_hash(source: str) -> str: return short_hash(executed_code(source))


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


def _imports(tree: ast.AST, package: str | None = None) -> set[str]:
    """Names of the modules `tree` imports, wherever the statement is.
    `package`: the package of the file, to resolve relative imports (None in a notebook).
    `from x import y` names both x and x.y: y may be a module (only existing files count)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                if package is None: continue
                parts = package.split(".")
                if node.level > len(parts): continue
                base = ".".join(parts[:len(parts) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module
            names.add(module)
            names |= {f"{module}.{a.name}" for a in node.names if a.name != "*"}
    return names


def cell_imports(source: str, package: str) -> set[str]:
    "Modules a code cell imports or runs as a command (`package`: the name of our package)."
    python, shell = _shell_lines(source)
    try: tree = ast.parse(python)
    except SyntaxError: tree = ast.Module(body=[], type_ignores=[])   # fails when run anyway
    return _imports(tree) | _run_as_main(_commands(tree, package) | _shell_commands(shell, package))


def module_file(name: str, layout: Layout) -> Path | None:
    "The file of module `name` if it is ours (in the package or beside the notebooks), else None."
    top, *rest = name.split(".")
    base = layout.lib.parent if top == layout.lib.name else layout.nbs
    path = base.joinpath(top, *rest)
    for f in (path.parent / f"{path.name}.py", path / "__init__.py"):
        if f.is_file(): return f
    return None


def local_modules(names: set[str], layout: Layout) -> dict[str, Path]:
    "Our modules among `names`, with their parent packages and what they import, transitively."
    found, seen, todo = {}, set(), set(names)
    while todo:
        name = todo.pop()
        seen.add(name)
        parts = name.split(".")
        todo |= {".".join(parts[:i]) for i in range(1, len(parts))} - seen  # a.b runs a/__init__.py
        if (path := module_file(name, layout)) is None: continue
        found[name] = path
        package = name if path.name == "__init__.py" else ".".join(parts[:-1])
        try: tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        except SyntaxError: continue             # its hash still counts; running it fails anyway
        todo |= _imports(tree, package) - seen
    return found


# ---- the record

def _file_hash(path: Path) -> str:
    # line endings normalised: a Windows checkout (autocrlf) is the same code
    return short_hash(path.read_text(encoding="utf-8").replace("\r\n", "\n"))


def code_record(nb: dict, layout: Layout) -> dict:
    """The code behind the outputs of notebook `nb`: a hash per code cell (`cell_hashes`), a
    hash per module of ours it uses (`modules`, by path relative to the root), and `code_hash`,
    one hash of them all."""
    sources = code_cells(nb)
    imported = set().union(*(cell_imports(s, layout.lib.name) for s in sources))
    modules = {p.relative_to(layout.root).as_posix(): _file_hash(p)
               for p in local_modules(imported, layout).values()}
    cells = [cell_hash(s) for s in sources]
    whole = json.dumps({"cells": cells, "modules": modules}, sort_keys=True)
    # not "cells": nbdev's notebook writer (fastcore's nb2dict) reads any list under that key
    # as notebook cells, at any depth, and nbdev-clean then fails on the notebook
    return {"code_hash": hashlib.sha256(whole.encode()).hexdigest(), "cell_hashes": cells,
            "modules": dict(sorted(modules.items()))}


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


def _module_changes(recorded: dict, current: dict) -> list[str]:
    changed = sorted(p for p in current.keys() & recorded.keys() if current[p] != recorded[p])
    groups = [("changed", changed), ("newly imported", sorted(current.keys() - recorded.keys())),
              ("no longer imported", sorted(recorded.keys() - current.keys()))]
    return [f"{what}: {', '.join(paths)}" for what, paths in groups if paths]


def stale_reasons(nb: dict, layout: Layout) -> list[str]:
    "Why the saved outputs of `nb` may not come from the current code; [] when they do."
    sources = code_cells(nb)
    if not sources: return []                  # nothing ran, nothing printed
    recorded = nb.get("metadata", {}).get(KEY)
    if not isinstance(recorded, dict) or "code_hash" not in recorded:
        return ["no record of the code that produced its outputs"]
    now = code_record(nb, layout)
    if now["code_hash"] == recorded["code_hash"]: return []
    reasons = (_module_changes(recorded.get("modules", {}), now["modules"])
               + _cell_changes(recorded.get("cell_hashes", []), sources))
    return reasons or ["its code hash differs from the recorded one"]
