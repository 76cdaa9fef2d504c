"""Re-execute notebooks top to bottom and save their outputs: what the book prints.

    python tools/execute_nbs.py                 the stale ones (see tools/stale.py)
    python tools/execute_nbs.py --all           every chapter of _quarto.yml, in order
    python tools/execute_nbs.py NOTEBOOK ...    these

Each notebook runs in a fresh Python process with `MINIGPT_BOOK=1`, the book's full settings
(the test run, `nbdev-test`, leaves it unset and uses the small settings). A notebook is only
overwritten when every cell succeeded, so a failure never loses the outputs already saved.
Each executed notebook records in its metadata the code that produced its outputs, when, and
on what machine (tools/provenance.py); `tools/stale.py` compares that record with the code.
"""
import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from provenance import (KEY, Layout, book_notebooks, code_record, machine, project_layout,
                        provenance, read_notebook, stale_reasons, write_notebook)

RUN_ONE = """
import sys
from execnb.shell import CaptureShell
from figures import watch_figures        # nbs/figures.py: the notebook's folder is the cwd
src, dest = sys.argv[1], sys.argv[2]
shell = CaptureShell(mpl_format="retina")
watch_figures(shell)                     # each figure shown records its text too small to print
shell.execute(src, dest, exc_stop=True)
"""


# What a chapter needs beyond `make install` to print its real outputs. Without it the chapter
# still runs but prints a note ("llama_cpp is not installed", "no chromium on this machine")
# where the book shows llama.cpp's text and the chat page, so a book run refuses to start.
BOOK_NEEDS = {
    "10_using.ipynb": [
        ("module", "llama_cpp", 'CMAKE_ARGS="-DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF" '
                                '.venv/bin/python -m pip install -e ".[gguf]" (compiles llama.cpp)'),
        ("program", "chromium", "apt-get install chromium, or put a Chromium named chromium "
                                "on PATH"),
    ],
}


def missing_needs(nbs: list[Path], needs: dict = BOOK_NEEDS) -> list[str]:
    "One line for each thing a notebook of `nbs` needs (`needs`) and this machine lacks."
    lines = []
    for nb in nbs:
        for kind, name, how in needs.get(Path(nb).name, []):
            found = (importlib.util.find_spec(name) is not None if kind == "module"
                     else shutil.which(name) is not None)
            if not found: lines.append(f"{Path(nb).name} needs {name}: {how}")
    return lines


def lift_figure_records(nb: dict) -> None:
    """Move the record `watch_figures` puts in a figure's PNG metadata to the output's own
    metadata (`{"minigpt": ...}`), the key nbdev-clean keeps (`allowed_out_metadata_keys`)."""
    for cell in nb.get("cells", []):
        for out in cell.get("outputs", []):
            png = out.get("metadata", {}).get("image/png")
            if isinstance(png, dict) and KEY in png:
                out["metadata"][KEY] = png.pop(KEY)


def book_env() -> dict:
    "The environment of a book run: the full settings, figures kept in the notebook."
    return {**os.environ, "MINIGPT_BOOK": "1", "MPLBACKEND": "module://matplotlib_inline.backend_inline"}


def execute(nb: Path, layout: Layout, env: dict, machine_info: dict) -> float:
    """Run `nb` in a fresh process with `env`; replace it with the executed copy, which records
    the code that ran. Returns seconds taken."""
    code = code_record(read_notebook(nb), layout)   # before the run: the code it starts from
    tmp = nb.with_name(f".{nb.stem}.executing.ipynb")
    start = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", RUN_ONE, str(nb), str(tmp)], cwd=nb.parent, env=env)
    if r.returncode != 0 or not tmp.exists():
        tmp.unlink(missing_ok=True)
        raise SystemExit(f"execute: {nb.name} failed (its saved outputs are unchanged)")
    seconds = time.perf_counter() - start
    executed = read_notebook(tmp)
    lift_figure_records(executed)
    executed.setdefault("metadata", {})[KEY] = provenance(code, seconds, machine_info)
    write_notebook(executed, tmp)
    os.replace(tmp, nb)
    return seconds


def notebooks_to_run(args, layout: Layout) -> list[Path]:
    "The notebooks named, all of them with --all, else the stale ones."
    if args.notebooks:
        missing = [p for p in args.notebooks if not Path(p).is_file()]
        if missing: raise SystemExit(f"execute: no such notebook: {', '.join(missing)}")
        return [Path(p).resolve() for p in args.notebooks]
    every = book_notebooks(layout)
    return every if args.all else [nb for nb in every if stale_reasons(read_notebook(nb), layout)]


def main(argv) -> int:
    parser = argparse.ArgumentParser(description="Re-execute notebooks with the book's settings.")
    parser.add_argument("notebooks", nargs="*", help="default: the stale ones")
    parser.add_argument("--all", action="store_true", help="every chapter of the book")
    args = parser.parse_args(argv)
    layout = project_layout()
    nbs = notebooks_to_run(args, layout)
    if not nbs:
        print("execute: no notebook is stale (--all runs them all)")
        return 0
    if missing := missing_needs(nbs):
        raise SystemExit("execute: nothing was run; the book's outputs need what this machine "
                         "lacks:\n  " + "\n  ".join(missing))
    env = book_env()
    machine_info = machine(env)
    for nb in nbs:
        name = os.path.relpath(nb, layout.root)
        print(f"execute: {name} ...", flush=True)
        print(f"execute: {name} done in {execute(nb, layout, env, machine_info):.1f} s", flush=True)
    # strip metadata and execution counts the way the repository stores notebooks
    subprocess.run([str(Path(sys.executable).parent / "nbdev-clean")], cwd=layout.root, check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
