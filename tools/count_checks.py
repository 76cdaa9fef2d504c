"""How much test code the book prints: printed code lines and printed check lines per chapter.

    python tools/count_checks.py

A line counts as *printed* when the book shows it: not in a hidden cell (`#| hide`,
`#| default_exp`, `#| include: false`, `#| echo: false`) nor in a check cell (`#| check: ...`) or a plumbing
cell (`#| plumbing: ...`), each printed as its one-line summary. A fold cell's code is printed,
in the chapter's "Listings in full", so it counts. A *check line* starts with `assert` or a fastcore `test_*` call.
"""
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOT_PRINTED = re.compile(r"^#\|\s*(?:(?:hide|default_exp|check|plumbing)\b|include:\s*false|echo:\s*false)", re.M)
CHECK_LINE = re.compile(r"\s*(assert\b|test_\w*\()")


def printed_lines(nb: Path) -> tuple[int, int, int]:
    "(printed code lines, printed check lines, check cells) of notebook `nb`."
    code = checks = check_cells = 0
    for cell in json.loads(nb.read_text())["cells"]:
        if cell["cell_type"] != "code": continue
        src = "".join(cell["source"])
        if re.search(r"^#\|\s*check\b", src, re.M): check_cells += 1
        if NOT_PRINTED.search(src): continue
        lines = [l for l in src.splitlines() if not l.startswith("#|") and l.strip()]
        code += len(lines)
        checks += sum(bool(CHECK_LINE.match(l)) for l in lines)
    return code, checks, check_cells


def main() -> int:
    from provenance import book_notebooks, project_layout
    total = [0, 0, 0]
    for nb in book_notebooks(project_layout(ROOT)):
        counts = printed_lines(nb)
        print(f"{nb.name:28s} code {counts[0]:5d}  checks {counts[1]:4d}  check cells {counts[2]:3d}")
        total = [t + c for t, c in zip(total, counts)]
    print(f"{'total':28s} code {total[0]:5d}  checks {total[1]:4d}  check cells {total[2]:3d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
