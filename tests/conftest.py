import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# the book builder and the repository tools are scripts, not part of the package
for d in (ROOT / "book", ROOT / "tools"):
    if str(d) not in sys.path: sys.path.insert(0, str(d))


def write_plays_jsonl(path: Path, n: int) -> Path:
    "The first `n` Shakespeare plays as a JSON-lines corpus at `path`: a reader's own text."
    import json
    from minigpt.data import load_shakespeare
    path.write_text("".join(json.dumps({"text": d.text}) + "\n"
                            for d in load_shakespeare().docs[:n]))
    return path


def minigpt_in_process(*args):
    "Exit status, standard output and standard error of `minigpt ARGS`, in this process."
    import contextlib, io
    from minigpt.cli import main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try: status = main([str(a) for a in args])
        except SystemExit as e: status = e.code
    return status, out.getvalue(), err.getvalue()
