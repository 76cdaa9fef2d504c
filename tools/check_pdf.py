"""Check a built book the way a reader would look at it.

    python tools/check_pdf.py [book/_build/minigpt.pdf] [--config _quarto.yml]

Fails (exit 1, one line per problem) unless the PDF has pages, a table of contents, every
chapter title of `_quarto.yml`, numbered figures, tables and equations, a bibliography, and
no leaked notebook directives (`#|`) or raw LaTeX (`\\frac`, `\\begin`, ...), no prime
where an apostrophe belongs ("GPT-4′s"), and no widow (a paragraph's last line alone at the
top of a page).
"""
import json
import re
import sys
from collections import Counter
from dataclasses import dataclass
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


# ---- widows: a paragraph's last line alone at the top of a page

@dataclass
class Line:
    "One printed line of a page: its height on the page (points) and its pieces of text."
    y: float
    pieces: list[tuple[float, str, float, str]]   # (x, text, font size, font name)

    @property
    def text(self) -> str: return "".join(t for _, t, _, _ in self.pieces).strip()


def page_lines(page) -> list[Line]:
    "The lines of a pypdf page, top to bottom; an index or exponent joins the line it belongs to."
    rows: dict[int, list] = {}
    def visit(text, cm, tm, font, size):
        if not text.strip(): return
        x = tm[4] * cm[0] + tm[5] * cm[2] + cm[4]
        y = tm[4] * cm[1] + tm[5] * cm[3] + cm[5]
        scaled = round(abs(size * (tm[3] or 1) * (cm[3] or 1)), 1)
        rows.setdefault(round(y), []).append((x, text, scaled, str(font.get("/BaseFont", "")) if font else ""))
    page.extract_text(visitor_text=visit)
    groups: list[list] = []
    for y, pieces in sorted(rows.items(), reverse=True):
        if groups and groups[-1][-1][0] - y < 5: groups[-1].append((y, pieces))   # a subscript
        else: groups.append([(y, pieces)])
    # a line sits where its largest text sits, not where an index beside it does
    return [Line(max(g, key=lambda r: max(p[2] for p in r[1]))[0], sorted(p for _, ps in g for p in ps))
            for g in groups]


def _body_size(pages: list[list[Line]]) -> float:
    "The font size of the running text: the commonest size of text that is not code."
    return Counter(p[2] for lines in pages for line in lines for p in line.pieces
                   if "Mono" not in p[3]).most_common(1)[0][0]


def widows(pdf: Path) -> list[tuple[int, str]]:
    """(page, line) for each page that starts with the last line of a paragraph begun on the page
    before. A page's running text starts at the same height on every page; the line there is a
    widow when it is running text, the text before it on the previous page goes on (it ends
    without a sentence's end, or the line starts in lower case), and a paragraph's gap or
    nothing follows it."""
    from pypdf import PdfReader
    pages = [page_lines(p) for p in PdfReader(str(pdf)).pages]
    body = _body_size(pages)
    def running(line: Line) -> bool:   # the body's text, not code, math, a heading or the contents
        x, _, size, font = line.pieces[0]
        return (size == body and not any(kind in font for kind in ("Mono", "Math", "Bold"))
                and ". . ." not in line.text)
    def text_lines(lines: list[Line]) -> list[Line]:   # without running head and page number
        return [l for l in lines if any(p[2] >= body for p in l.pieces) and not l.text.isdigit()]
    texts = [text_lines(lines) for lines in pages]
    gaps = Counter(round(a.y - b.y) for lines in texts for a, b in zip(lines, lines[1:])
                   if running(a) and running(b))
    if not gaps: return []
    pitch = gaps.most_common(1)[0][0]
    top = Counter(round(lines[0].y) for lines in texts if lines).most_common(1)[0][0]
    found = []
    for n in range(1, len(texts)):
        before, here = texts[n - 1], texts[n]
        if not before or not here or abs(here[0].y - top) > 2: continue
        last, first = before[-1], here[0]
        if not (running(last) and running(first)): continue
        goes_on = (not re.search(r"[.:!?)\]][\"”’]?$", last.text)
                   or re.match(r"[a-z]", first.text) is not None)
        alone = len(here) == 1 or first.y - here[1].y > 1.2 * pitch
        if goes_on and alone: found.append((n + 1, first.text))
    return found


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
    for page, line in widows(pdf):
        found.append(f"a widow on page {page}: the last line of a paragraph alone at the top ({line[:50]!r}); "
                     "rephrase the paragraph or the one before it")
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
