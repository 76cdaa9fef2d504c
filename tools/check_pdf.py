"""Check a built book the way a reader would look at it.

    python tools/check_pdf.py [book/_build/minigpt.pdf] [--config _quarto.yml]

Fails (exit 1, one line per problem) unless the PDF has pages, a table of contents, every
chapter title of `_quarto.yml`, numbered figures, tables and equations, a bibliography, and
no leaked notebook directives (`#|`) or raw LaTeX (`\\frac`, `\\begin`, ...), and no prime
where an apostrophe belongs ("GPT-4′s").
"""
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LEAKS = [r"(?m)^\s*#\|", r"\\frac", r"\\begin\{", r"\\end\{", r"\\mathrm", r"\\operatorname", r"\$\$",
         r"\{#(sec|fig|tbl|eq)-", r"\[@"]


def chapter_titles(config: Path) -> list[str]:
    "The level-1 heading of every notebook listed in `config`."
    sys.path.insert(0, str(ROOT / "book"))
    from build import read_config, chapters
    titles = []
    for ch in chapters(read_config(config), config.parent):
        for cell in json.loads(ch.notebook.read_text())["cells"]:
            m = re.search(r"^# (.+?)(\s*\{#.*\})?\s*$", "".join(cell["source"]), re.M)
            if cell["cell_type"] == "markdown" and m:
                titles.append(m.group(1).strip()); break
    return titles


def pdf_text(pdf: Path) -> tuple[int, str]:
    from pypdf import PdfReader
    reader = PdfReader(str(pdf))
    return len(reader.pages), "\n".join(p.extract_text() or "" for p in reader.pages)


def problems(pdf: Path, config: Path, min_pages: int = 5) -> list[str]:
    "Everything a reader would notice is wrong with `pdf`; empty when it is fine."
    if not pdf.exists(): return [f"{pdf}: not found; run `make pdf`"]
    n, text = pdf_text(pdf)
    flat = re.sub(r"\s+", " ", text)
    found = []
    if n < min_pages: found.append(f"only {n} pages")
    if "Contents" not in text: found.append("no table of contents")
    for title in chapter_titles(config):
        if re.sub(r"\s+", " ", title) not in flat: found.append(f"chapter title missing: {title!r}")
    for what, pattern in [("a numbered figure", r"Figure\s+\d+"), ("a numbered table", r"Table\s+\d+"),
                          ("a numbered equation", r"\((\d+\.)?\d+\)"), ("a bibliography", r"References")]:
        if not re.search(pattern, text): found.append(f"missing {what}")
    for m in re.finditer(r"\S*\d\u2032[a-z]+", text):
        found.append(f"a prime after a digit where an apostrophe belongs: {m.group(0)!r}")
    for leak in LEAKS:
        m = re.search(leak, text)
        if m: found.append(f"leaked source text {m.group(0)!r}: ...{text[max(0, m.start()-40):m.end()+40]!r}")
    return found


def main(argv) -> int:
    import argparse
    p = argparse.ArgumentParser(description="Check a built book the way a reader would look at it.")
    p.add_argument("pdf", nargs="?", type=Path, default=ROOT / "book" / "_build" / "minigpt.pdf")
    p.add_argument("--config", type=Path, default=ROOT / "_quarto.yml")
    args = p.parse_args(argv)
    found = problems(args.pdf, args.config.resolve())
    for problem in found: print(f"check_pdf: {problem}")
    if not found:
        print(f"check_pdf: {args.pdf.name} ok ({pdf_text(args.pdf)[0]} pages, "
              f"every chapter of {args.config.name} present)")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
