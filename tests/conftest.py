import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# the book builder and the repository tools are scripts, not part of the package
for d in (ROOT / "book", ROOT / "tools"):
    if str(d) not in sys.path: sys.path.insert(0, str(d))
