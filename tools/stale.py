"""Name the notebooks whose saved outputs may come from older code than the current one.

    python tools/stale.py       (`make stale`)

One line per stale notebook with the reasons: the modules or code cells that changed since it
was executed, or that it has no record of that (tools/provenance.py). Exit status 0 when
none is stale, 1 otherwise. `make execute` re-runs exactly the stale ones.
"""
import sys
from pathlib import Path

from provenance import ROOT, Layout, book_notebooks, project_layout, read_notebook, stale_reasons


def stale_notebooks(layout: Layout) -> dict:
    "{notebook path: reasons} for every stale notebook, in reading order."
    reasons = {nb: stale_reasons(read_notebook(nb), layout) for nb in book_notebooks(layout)}
    return {nb: r for nb, r in reasons.items() if r}


def main(root: Path = ROOT) -> int:
    layout = project_layout(root)
    stale = stale_notebooks(layout)
    for nb, reasons in stale.items():
        print(f"stale: {nb.relative_to(layout.root)}: {'; '.join(reasons)}")
    total = len(book_notebooks(layout))
    if stale:
        print(f"stale: {len(stale)} of {total} notebooks; `make execute` re-runs them")
    else:
        print(f"stale: none; the outputs of all {total} notebooks come from the current code")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
