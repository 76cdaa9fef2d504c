"""Re-execute notebooks top to bottom and save their outputs: what the book prints.

    python tools/execute_nbs.py [NOTEBOOK ...]     (default: every nbs/*.ipynb)

Each notebook runs in a fresh Python process with `MINIGPT_BOOK=1`, the book's full settings
(the test run, `nbdev-test`, leaves it unset and uses the small settings). A notebook is only
overwritten when every cell succeeded, so a failure never loses the outputs already saved.
"""
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

RUN_ONE = """
import sys
from execnb.shell import CaptureShell
src, dest = sys.argv[1], sys.argv[2]
CaptureShell(mpl_format="retina").execute(src, dest, exc_stop=True)
"""


def execute(nb: Path) -> float:
    "Run `nb` in a fresh process; replace it with the executed copy. Returns seconds taken."
    tmp = nb.with_name(f".{nb.stem}.executing.ipynb")
    env = {**os.environ, "MINIGPT_BOOK": "1", "MPLBACKEND": "module://matplotlib_inline.backend_inline"}
    start = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", RUN_ONE, str(nb), str(tmp)], cwd=nb.parent, env=env)
    if r.returncode != 0 or not tmp.exists():
        tmp.unlink(missing_ok=True)
        raise SystemExit(f"execute: {nb.name} failed (its saved outputs are unchanged)")
    os.replace(tmp, nb)
    return time.perf_counter() - start


def main(argv) -> int:
    nbs = [Path(a).resolve() for a in argv] or sorted((ROOT / "nbs").glob("[0-9]*.ipynb"))
    for nb in nbs:
        print(f"execute: {nb.relative_to(ROOT)} ...", flush=True)
        print(f"execute: {nb.relative_to(ROOT)} done in {execute(nb):.1f} s", flush=True)
    # strip metadata and execution counts the way the repository stores notebooks
    subprocess.run([str(Path(sys.executable).parent / "nbdev-clean")], cwd=ROOT, check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
