"""The PDF book: built from the real chapters, and from small notebooks made to break it."""
import json
import re
import sys
from pathlib import Path

import nbformat
import pytest

import build as book
from check_pdf import pdf_text, problems

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def real_book(tmp_path_factory):
    "The whole book, built from the committed notebooks into a temporary folder."
    out = tmp_path_factory.mktemp("book") / "minigpt.pdf"
    book.build(ROOT / "_quarto.yml", out)
    return out


def test_real_book_passes_the_reader_checks(real_book):
    assert problems(real_book, ROOT / "_quarto.yml") == []


def test_real_book_has_front_matter_and_numbering(real_book):
    n, text = pdf_text(real_book)
    assert "Build a Large Language Model" in text and f"Version {book.read_version()}" in text
    assert re.search(r"Chapter\s+1", text)                      # numbered chapters
    assert re.search(r"Figure\s+1\s*:", text)                  # captioned figures
    assert re.search(r"Table\s+1\s*:", text)                   # captioned tables
    assert "(1)" in text                                        # a numbered equation
    assert "Vaswani" in text                                    # the bibliography
    assert "print(f\"minigpt {minigpt.__version__}\")" in text  # code...
    assert f"minigpt {book.read_version()}" in text             # ...with its output


def make_book(tmp: Path, cells: list, name: str = "01_test.ipynb", title="Test Book") -> Path:
    "A one-chapter book in `tmp` with the given cells; returns its _quarto.yml."
    nb = nbformat.v4.new_notebook()
    nb.cells = cells
    (tmp / "nbs").mkdir(exist_ok=True)
    nbformat.write(nb, tmp / "nbs" / name)
    cfg = tmp / "_quarto.yml"
    cfg.write_text(f"book:\n  title: {title}\n  chapters:\n    - nbs/{name}\n")
    return cfg


def md(text): return nbformat.v4.new_markdown_cell(text)


def code(src, *outputs):
    c = nbformat.v4.new_code_cell(src)
    c.outputs = list(outputs)
    return c


def stream(text): return nbformat.v4.new_output("stream", name="stdout", text=text)


def png_output(width: float = 2, label_size: float = 10, record: bool = True):
    "A matplotlib figure's output, with the record of its small text that `make execute` writes."
    import base64, io
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    sys.path.insert(0, str(ROOT / "nbs"))
    from figures import small_text
    fig, ax = plt.subplots(figsize=(width, 1)); ax.plot([0, 1], [0, 1])
    ax.tick_params(labelsize=label_size)
    buf = io.BytesIO(); fig.savefig(buf, format="png")
    metadata = {"minigpt": {"small_text": small_text(fig)}} if record else {}
    plt.close(fig)
    return nbformat.v4.new_output("display_data", data={"image/png": base64.b64encode(buf.getvalue()).decode(),
                                                        "text/plain": f"<Figure size {width * 100:g}x100 with 1 Axes>"},
                                  metadata=metadata)


def test_directives_hidden_cells_and_crossrefs(tmp_path):
    cfg = make_book(tmp_path, [
        md("# A chapter\n\nSee [@sec-two], [@fig-line], [@tbl-t] and [@eq-e].\n\n"
           "$$\n\\frac{a}{b} = \\operatorname{softmax}(x)\n$$ {#eq-e}\n\n"
           # symbols that pandoc writes with names newer Typst renamed (book/compat.typ)
           "$A \\cap B$, $\\partial x$, $\\langle x \\rangle$, $\\hbar$, "
           "$a \\odot b \\oplus c \\otimes d$\n\n## Two {#sec-two}\n"),
        code("#| hide\nSECRET_HIDDEN_CELL = 1", stream("HIDDEN_OUTPUT\n")),
        code("#| echo: false\nSECRET_ECHO_FALSE = 1", stream("VISIBLE_OUTPUT\n")),
        code("#| output: false\nshown_code = 2", stream("SECRET_SUPPRESSED_OUTPUT\n")),
        code("#| export\ndef exported(): return 'EXPORTED_SHOWN'"),
        code("#| label: fig-line\n#| fig-cap: A line.\nplot()", png_output()),
        code("#| label: tbl-t\n#| tbl-cap: A table.\ntable()",
             nbformat.v4.new_output("execute_result", data={"text/markdown": "| a | b |\n|--|--|\n| 1 | 2 |\n",
                                                            "text/plain": "<md>"}, execution_count=None)),
    ])
    out = tmp_path / "out" / "book.pdf"
    book.build(cfg, out)
    n, text = pdf_text(out)
    for secret in ("SECRET_HIDDEN_CELL", "HIDDEN_OUTPUT", "SECRET_ECHO_FALSE", "SECRET_SUPPRESSED_OUTPUT", "#|",
                   "{#", "[@", "\\frac", "<md>"):
        assert secret not in text, secret
    for shown in ("VISIBLE_OUTPUT", "shown_code = 2", "EXPORTED_SHOWN", "Figure 1.1: A line.", "Table 1.1: A table.",
                  "(1.1)", "Section 1.1", "Equation (1.1)"):
        assert shown in re.sub(r"\s+", " ", text), shown


def test_failure_names_the_notebook_and_keeps_the_old_pdf(tmp_path):
    cfg = make_book(tmp_path, [md("# Good\n\nText.")])
    out = tmp_path / "book.pdf"
    book.build(cfg, out)
    before = out.read_bytes()
    (tmp_path / "nbs" / "01_test.ipynb").write_text("{ not json")
    with pytest.raises(book.BookError, match=r"01_test\.ipynb.*not a valid notebook"):
        book.build(cfg, out)
    assert out.read_bytes() == before  # nothing already built is lost
    assert not list(tmp_path.glob(".*.tmp"))


def test_cli_exits_nonzero_with_the_notebook_name(tmp_path, capsys):
    cfg = make_book(tmp_path, [md("# Bad"), code("#| label: fig-x\nplot()", png_output())])
    status = book.cli(["--config", str(cfg), "--out", str(tmp_path / "b.pdf")])
    assert status == 1
    err = capsys.readouterr().err
    assert "01_test.ipynb" in err and "fig-cap" in err
    assert not (tmp_path / "b.pdf").exists()


def test_uncaptioned_table_output_is_an_error(tmp_path):
    cfg = make_book(tmp_path, [md("# T"), code("t()", nbformat.v4.new_output(
        "display_data", data={"text/markdown": "| a |\n|--|\n| 1 |\n", "text/plain": "x"}))])
    with pytest.raises(book.BookError, match="tbl-cap"):
        book.build(cfg, tmp_path / "b.pdf")


def test_overlong_code_line_is_an_error(tmp_path):
    cfg = make_book(tmp_path, [md("# T"), code("x = '" + "a" * 90 + "'")])
    with pytest.raises(book.BookError, match=r"01_test\.ipynb, cell 1: .*characters"):
        book.build(cfg, tmp_path / "b.pdf")


def test_a_check_cell_prints_its_summary_not_its_code(tmp_path):
    long_assert = "assert " + " and ".join(["SECRET_ASSERT == SECRET_ASSERT"] * 4)  # too wide to print
    cfg = make_book(tmp_path, [
        md("# T"),
        code("shown = 1\nprint(shown)", stream("SHOWN_OUTPUT\n")),
        code("#| check: cached = uncached for `5` model types\n" + long_assert),
    ])
    out = tmp_path / "b.pdf"
    book.build(cfg, out)                  # the over-wide assert is not a printed line
    text = re.sub(r"\s+", " ", pdf_text(out)[1])
    assert "✓ checked: cached = uncached for 5 model types" in text
    assert "SECRET_ASSERT" not in text and "#|" not in text
    assert "shown = 1" in text and "SHOWN_OUTPUT" in text
    typ = (tmp_path / "ch-01_test.typ").read_text()
    assert "#checked[cached = uncached for `5` model types]" in typ


@pytest.mark.parametrize("src, outputs, message", [
    ("#| check: x is 1\nx = 1\nprint(x)", [stream("1\n")], "a check cell prints nothing"),
    ("#| check\nassert True", [], "a check cell needs `#| check: <summary>`"),
])
def test_a_check_cell_that_prints_or_has_no_summary_is_an_error(tmp_path, src, outputs, message):
    cfg = make_book(tmp_path, [md("# T"), code(src, *outputs)])
    with pytest.raises(book.BookError, match=r"01_test\.ipynb, cell 1: " + re.escape(message)):
        book.build(cfg, tmp_path / "b.pdf")


def test_a_fold_cell_prints_its_summary_and_page_in_place_and_its_code_at_the_end(tmp_path):
    cfg = make_book(tmp_path, [
        md("# T\n\nBEFORE_FOLD"),
        code("#| fold: how `refuse` checks its input\ndef refuse(x):\n    FOLDED_BODY = x\n"),
        code("#| fold: the table's code\nprint('TABLE_OUTPUT')", stream("TABLE_OUTPUT\n")),
        md("AFTER_FOLD\n\n## Further reading\n\nLAST_SECTION"),
    ])
    out = tmp_path / "b.pdf"
    book.build(cfg, out)
    text = re.sub(r"\s+", " ", pdf_text(out)[1])
    # in place: the summary, the page of the code, and the folded cell's output
    place = text[text.index("BEFORE_FOLD"):text.index("AFTER_FOLD")]
    assert re.search(r"▸ code on p\. \d+: how refuse checks its input", place)
    assert "FOLDED_BODY" not in place and "TABLE_OUTPUT" in place
    # the code, under its summary, in the chapter's last section, after everything else
    end = text[text.index("LAST_SECTION"):]
    assert "Listings in full" in end
    assert end.index("how refuse checks its input") < end.index("FOLDED_BODY = x")
    assert "print('TABLE_OUTPUT')" in end
    # the page named is the page that holds the listing: it prints that number in its folio
    page = re.search(r"code on p\. (\d+): how refuse", place).group(1)
    from pypdf import PdfReader
    holding = [t for t in (pg.extract_text() for pg in PdfReader(str(out)).pages) if "FOLDED_BODY" in t]
    assert len(holding) == 1 and re.search(rf"(?m)^\s*{page}\s*$|(?:^|\s){page}(?:\s|$)", holding[0])


def test_a_fold_cell_needs_a_summary(tmp_path):
    cfg = make_book(tmp_path, [md("# T"), code("#| fold\nx = 1")])
    with pytest.raises(book.BookError, match=r"01_test\.ipynb, cell 1: a fold cell needs `#\| fold: <summary>`"):
        book.build(cfg, tmp_path / "b.pdf")


def test_a_plumbing_cell_prints_its_names_and_summary_and_the_appendix_lists_it(tmp_path):
    cfg = make_book(tmp_path, [
        md("# T"),
        code("#| default_exp files"),
        md("BEFORE_PLUMBING"),
        code("#| export\n#| plumbing: what the module works with\nfrom __future__ import annotations\n"
             "import json, urllib.request\nimport numpy as np\nfrom pathlib import Path as P\n"
             "try:\n    from fastapi import Request   # optional\nexcept ImportError:\n    Request = None"),
        code("#| export\n#| plumbing: writes a file whole or not at all\n"
             "def atomic_write(path, data):\n    PLUMBING_BODY = data\n\n_private = 1\nLIMIT = 3\n"
             "WEIGHTS, (STATE, _KEY) = 'w', ('s', 'k')"),
        code("#| export other.place\n#| plumbing: refuses a corpus that would be empty\n"
             "def check_corpus(text):\n    return text"),
        md("AFTER_PLUMBING"),
    ])
    out = tmp_path / "b.pdf"
    book.build(cfg, out)
    text = re.sub(r"\s+", " ", pdf_text(out)[1])
    place = text[text.index("BEFORE_PLUMBING"):text.index("AFTER_PLUMBING")]
    # in place: the public names, the module file, the summary; never the code
    assert re.search(r"in the package: ?atomic_write, LIMIT, WEIGHTS, STATE \(minigpt/files\.py\): writes a "
                     r"file whole or not at all", place)
    assert re.search(r"package: ?check_corpus \(minigpt/other/place\.py\): refuses a corpus that would be empty",
                     place)
    assert "PLUMBING_BODY" not in text and "_private" not in text
    # an import cell: one line of what it imports
    assert re.search(r"imports: ?json, urllib\.request, numpy as np · from pathlib: Path as P · from fastapi: Request \(minigpt/files\.py\): "
                     r"what the module works with", place)
    assert "__future__" not in text
    # the appendix, after the chapter: both, under the chapter, with the page they run on
    notes = text[text.index("Appendix A Engineering notes"):]
    assert "Chapter 1 · T" in notes
    assert re.search(r"atomic_write, LIMIT, WEIGHTS, STATE \(minigpt/files\.py, p\. 1\): writes a file", notes)
    assert re.search(r"check_corpus \(minigpt/other/place\.py, p\. 1\): refuses a corpus", notes)
    assert "what the module works with" not in notes   # imports are not engineering


def test_a_chapter_whose_only_plumbing_is_imports_has_no_engineering_notes(tmp_path):
    cfg = make_book(tmp_path, [md("# T\n\nText."), code("#| export\n#| plumbing: the imports\nimport json")])
    book.build(cfg, tmp_path / "b.pdf")
    text = pdf_text(tmp_path / "b.pdf")[1]
    assert "imports:" in text and "Engineering notes" not in text


def test_without_plumbing_cells_there_is_no_engineering_notes_appendix(tmp_path):
    cfg = make_book(tmp_path, [md("# T\n\nText."), code("#| export\ndef f(): pass")])
    book.build(cfg, tmp_path / "b.pdf")
    assert "Engineering notes" not in pdf_text(tmp_path / "b.pdf")[1]


@pytest.mark.parametrize("src, outputs, message", [
    ("#| export\n#| plumbing\ndef f(): pass", [], r"a plumbing cell needs `#\| plumbing: <what it guards"),
    ("#| plumbing: checks x\ndef f(): pass", [], r"a plumbing cell is package code.*export it"),
    ("#| export\n#| plumbing: checks x\nprint(1)", [stream("1\n")], r"a plumbing cell prints nothing"),
    ("#| export\n#| plumbing: checks x\n_x = 1", [], r"a plumbing cell defines no public name"),
])
def test_a_plumbing_cell_that_cannot_be_named_in_one_line_is_an_error(tmp_path, src, outputs, message):
    cfg = make_book(tmp_path, [md("# T"), code(src, *outputs)])
    with pytest.raises(book.BookError, match=r"01_test\.ipynb, cell 1: " + message):
        book.build(cfg, tmp_path / "b.pdf")


def test_every_chapter_ends_with_further_reading():
    "Each numbered chapter points beyond itself: a `## Further reading` section with citations."
    missing = []
    for ch in book.chapters(book.read_config(ROOT / "_quarto.yml"), ROOT):
        if not ch.numbered or ch.appendix: continue
        cells = json.loads(ch.notebook.read_text())["cells"]
        texts = ["".join(c["source"]) for c in cells if c["cell_type"] == "markdown"]
        reading = [t for t in texts if re.search(r"^## Further reading", t, re.M)]
        if not reading or "[@" not in reading[-1].split("## Further reading", 1)[1]:
            missing.append(ch.notebook.name)
    assert missing == [], f"no Further reading with citations: {missing}"


def notation_rows() -> list[tuple[list[str], str]]:
    "(symbols, meaning) of each row of the preface's notation table (tbl-notation)."
    cells = json.loads((ROOT / "nbs" / "00_index.ipynb").read_text())["cells"]
    table = next("".join(c["source"]) for c in cells if "{#tbl-notation}" in "".join(c["source"]))
    rows = re.findall(r"^\| (\$.*?) \| (.*?) \|$", table, re.M)
    return [(re.findall(r"\$([^$]+)\$", symbols), meaning) for symbols, meaning in rows]


def test_the_notation_table_gives_each_quantity_one_symbol_that_the_equations_use():
    rows = notation_rows()
    assert len(rows) >= 8
    assert all(len(symbols) == 1 for symbols, _ in rows), [s for s, _ in rows if len(s) != 1]
    symbols = [s[0] for s, _ in rows]
    assert len(set(symbols)) == len(symbols), symbols
    math = []
    for ch in book.chapters(book.read_config(ROOT / "_quarto.yml"), ROOT):
        for c in json.loads(ch.notebook.read_text())["cells"]:
            if c["cell_type"] == "markdown" and "{#tbl-notation}" not in "".join(c["source"]):
                math += re.findall(r"\$\$(.*?)\$\$|\$([^$]+)\$", "".join(c["source"]), re.S)
    spans = [a or b for a, b in math]
    for sym in symbols:    # each symbol of the table is one the equations use
        assert any(re.search(rf"(?<![A-Za-z\\]){re.escape(sym)}(?![A-Za-z])", t) for t in spans), sym


def test_every_figure_is_referred_to_by_its_chapter():
    "A figure the text never mentions is a picture the reader has to guess the point of."
    unreferred = []
    for ch in book.chapters(book.read_config(ROOT / "_quarto.yml"), ROOT):
        cells = json.loads(ch.notebook.read_text())["cells"]
        prose = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
        for c in cells:
            if c["cell_type"] != "code": continue
            for label in re.findall(r"^#\|\s*label:\s*(fig-[\w-]+)", "".join(c["source"]), re.M):
                if f"@{label}" not in prose:
                    unreferred.append(f"{ch.notebook.name}: {label}")
    assert unreferred == [], unreferred


def test_real_book_reaches_make_demo_by_page_5(real_book):
    from pypdf import PdfReader
    reader = PdfReader(str(real_book))
    first = next(n for n, page in enumerate(reader.pages) if "make demo" in (page.extract_text() or ""))
    label = reader.page_labels[first]
    assert label.isdigit() and int(label) <= 5, f"`make demo` first appears on page {label}"


def test_an_apostrophe_after_a_digit_prints_as_one_and_a_cited_subject_has_its_authors(tmp_path):
    (tmp_path / "refs.bib").write_text("@inproceedings{lee2022dedup, author = {Lee, Katherine and Ippolito, "
                                      "Daphne and Nystrom, Andrew}, title = {Deduplicating Training Data}, "
                                      "booktitle = {ACL}, year = {2022}}\n")
    cfg = make_book(tmp_path, [md("# T {#sec-t}\n\nGPT-4's vocabulary; Chapter 6's loop; [@sec-t]'s end. @lee2022dedup found "
                                   "duplicates, as others did [@lee2022dedup].")])
    cfg.write_text(cfg.read_text() + "bibliography: refs.bib\n")
    book.build(cfg, tmp_path / "b.pdf")
    text = re.sub(r"\s+", " ", pdf_text(tmp_path / "b.pdf")[1])
    assert "GPT-4\u2019s vocabulary; Chapter 6\u2019s loop; Chapter 1\u2019s end" in text and "\u2032" not in text
    assert "K. Lee, D. Ippolito, and A. Nystrom [1] found" in text and "as others did [1]." in text
    assert not [p for p in problems(tmp_path / "b.pdf", cfg) if "prime" in p]


def test_check_pdf_finds_a_prime_after_a_digit(tmp_path, monkeypatch):
    import check_pdf
    monkeypatch.setattr(check_pdf, "pdf_text", lambda pdf: (9, "Contents\nFigure 1 Table 1 (1) References GPT-4\u2032s"))
    monkeypatch.setattr(check_pdf, "widows", lambda pdf: [])   # no pages to lay out
    (tmp_path / "b.pdf").write_bytes(b"%PDF")
    cfg = make_book(tmp_path, [md("# T")])
    assert any("a prime after a digit" in p and "GPT-4\u2032s" in p for p in check_pdf.problems(tmp_path / "b.pdf", cfg))


def test_a_table_cell_that_cannot_wrap_is_an_error(tmp_path):
    table = "| Chapter | Module |\n|:--|:--|\n| 6 Pretraining | `minigpt.train`, `.device`, `.metrics` |\n\n: T {#tbl-t}"
    cfg = make_book(tmp_path, [md("# T\n\n" + table)])
    with pytest.raises(book.BookError, match=r"cell 0 \(markdown\): the table cell `.*\.device`` cannot wrap"):
        book.build(cfg, tmp_path / "b.pdf")
    ok = make_book(tmp_path, [md("# T\n\n" + table.replace("`.", "`minigpt."))])
    book.build(ok, tmp_path / "ok.pdf")


def test_a_word_hyphenated_over_two_lines_is_an_error(tmp_path):
    cfg = make_book(tmp_path, [md("# T\n\nEverything after training (generating, fine-\ntuning) reads it.")])
    with pytest.raises(book.BookError, match=r"cell 0 \(markdown\): `fine-` ends a line and `tuning` starts the next"):
        book.build(cfg, tmp_path / "b.pdf")
    ok = make_book(tmp_path, [md("# T\n\nA 125-\n\n```bash\nmake demo  # pre-\ntrain\n```\n\nfine-tuning, and\npre- and post-training.")])
    book.build(ok, tmp_path / "ok.pdf")   # a code block, and a hyphen before a space, are not split words


def test_missing_chapter_is_an_error(tmp_path):
    cfg = tmp_path / "_quarto.yml"
    cfg.write_text("book:\n  chapters:\n    - nbs/nope.ipynb\n")
    with pytest.raises(book.BookError, match="nope.ipynb: listed in _quarto.yml but not found"):
        book.build(cfg, tmp_path / "b.pdf")


def test_saved_error_output_is_an_error(tmp_path):
    err = nbformat.v4.new_output("error", ename="ZeroDivisionError", evalue="division by zero", traceback=[])
    cfg = make_book(tmp_path, [md("# T"), code("1/0", err)])
    with pytest.raises(book.BookError, match="ZeroDivisionError.*make execute"):
        book.build(cfg, tmp_path / "b.pdf")


def test_typst_warnings_fail_the_build(tmp_path):
    main = tmp_path / "w.typ"
    main.write_text('#set text(font: "No Such Font")\nHello')
    with pytest.raises(book.BookError, match="warning"):
        book.compile_pdf(main, tmp_path / "w.pdf", book.build_date())
    assert not (tmp_path / "w.pdf").exists()


def test_chapter_list_comes_from_quarto_yml(tmp_path):
    chs = book.chapters(book.read_config(ROOT / "_quarto.yml"), ROOT)
    import yaml
    listed = yaml.safe_load((ROOT / "_quarto.yml").read_text())["book"]["chapters"]
    assert [c.notebook for c in chs][:len(listed)] == [(ROOT / p).resolve() for p in listed]
    assert not chs[0].numbered and all(c.numbered for c in chs[1:])  # the preface is unnumbered


def test_a_spelled_out_word_before_a_reference_is_not_doubled(tmp_path):
    # the template writes "Chapter 1" / "Section 1.1" itself: "Chapter [@sec-a]" must not
    # come out as "Chapter Chapter 1"
    cfg = make_book(tmp_path, [md("# A chapter {#sec-a}\n\nAs in Chapter [@sec-a] "
                                  "(Chapter [@sec-a]) and Section [@sec-b].\n\n## B {#sec-b}\n")])
    book.build(cfg, tmp_path / "b.pdf")
    text = re.sub(r"\s+", " ", pdf_text(tmp_path / "b.pdf")[1])
    assert "As in Chapter 1 (Chapter 1) and Section 1.1." in text, text
    assert "Chapter Chapter" not in text and "Section Section" not in text


def test_appendices_are_lettered(tmp_path):
    make_book(tmp_path, [md("# Main chapter\n\nText.")])
    nb = nbformat.v4.new_notebook()
    nb.cells = [md("# Troubles\n\n$$\nx = 1\n$$ {#eq-x}\n\nSee [@eq-x]."),
                code("#| label: fig-a\n#| fig-cap: An appendix figure.\nplot()", png_output())]
    nbformat.write(nb, tmp_path / "nbs" / "12_app.ipynb")
    cfg = tmp_path / "_quarto.yml"
    cfg.write_text("book:\n  title: T\n  chapters:\n    - nbs/01_test.ipynb\n"
                   "  appendices:\n    - nbs/12_app.ipynb\n")
    book.build(cfg, tmp_path / "b.pdf")
    text = re.sub(r"\s+", " ", pdf_text(tmp_path / "b.pdf")[1])
    for shown in ("Chapter 1 Main chapter", "Appendix A Troubles", "(A.1)", "Equation (A.1)",
                  "Figure A.1: An appendix figure."):
        assert shown in text, shown


def test_check_pdf_catches_what_a_reader_would(tmp_path):
    "The CI check fails on a PDF with leaked directives or LaTeX and a missing chapter."
    import typst
    src = tmp_path / "bad.typ"
    src.write_text("= Contents\n\n```\n#| export\n```\n\nRaw \\\\frac{a}{b} and [\\@sec-x].\n")
    pdf = tmp_path / "bad.pdf"
    pdf.write_bytes(typst.compile(str(src), ignore_system_fonts=True))
    found = "\n".join(problems(pdf, ROOT / "_quarto.yml", min_pages=1))
    assert "chapter title missing: 'Preface'" in found
    assert "'#|'" in found and "\\\\frac" in found and "[@" in found
    assert "missing a numbered figure" in found


@pytest.mark.parametrize("figure, message", [
    (dict(width=12, label_size=10), r"a figure whose text prints under 7 points: '\S+' \(4\.5 pt\)"),
    (dict(record=False), r"a figure with no record of its text sizes: run `make execute`"),
])
def test_a_figure_whose_text_prints_too_small_or_unmeasured_is_an_error(tmp_path, figure, message):
    "A 12-inch figure prints at 45% of its size: its 10-point ticks at 4.5 points."
    cfg = make_book(tmp_path, [md("# T"), code("#| label: fig-x\n#| fig-cap: A plot.\nplot()", png_output(**figure))])
    with pytest.raises(book.BookError, match=r"01_test\.ipynb, cell 1: " + message):
        book.build(cfg, tmp_path / "b.pdf")


def _paragraphs_over_a_page_break(tmp_path, words: int, widow_cost: str) -> Path:
    "A two-page PDF: a paragraph of `words` words across the page break, then another."
    import typst
    text = " ".join(["several plain words"] * (words // 3)) + " end."
    src = tmp_path / f"p{words}-{widow_cost.strip('%')}.typ"
    src.write_text(f"#set page(width: 300pt, height: 260pt, margin: 30pt)\n"
                   f"#set text(size: 10.5pt, costs: (widow: {widow_cost}, orphan: {widow_cost}))\n"
                   f"#set par(justify: true, leading: 0.62em, spacing: 1.1em)\n"
                   f"{' '.join(['Opening words.'] * 40)}\n\n{text}\n\nThe next paragraph starts here.\n")
    pdf = src.with_suffix(".pdf")
    pdf.write_bytes(typst.compile(str(src), ignore_system_fonts=True))
    return pdf


def test_check_pdf_finds_a_widow_and_only_a_widow(tmp_path):
    """Typst keeps a paragraph's last line off the top of a page unless told it costs nothing;
    so told, some length of paragraph leaves a widow, and `widows` finds it, with its text."""
    import check_pdf
    lengths = range(30, 130, 6)
    found = {n: check_pdf.widows(_paragraphs_over_a_page_break(tmp_path, n, "0%")) for n in lengths}
    widowed = {n: w for n, w in found.items() if w}
    assert widowed, "no length of paragraph left a widow"
    for n, w in widowed.items():
        (page, line), = w
        assert page == 2 and line.endswith("end."), (n, w)
    for n in widowed:            # the same pages, set with typst's default costs: none
        assert check_pdf.widows(_paragraphs_over_a_page_break(tmp_path, n, "100%")) == [], n


# --- prose numbers that repeat an output: `[x]{.out}` ---

def test_prose_number_that_an_output_prints_passes_and_renders_plain(tmp_path):
    cfg = make_book(tmp_path, [
        md("# T\n\nThe loss ends at [5.2]{.out}, after [1,234]{.out} steps, [31%]{.out} right."),
        code("print(loss, steps, acc)", stream("loss 5.18 steps 1234 acc 0.310\n"))])
    book.build(cfg, tmp_path / "b.pdf")
    text = re.sub(r"\s+", " ", pdf_text(tmp_path / "b.pdf")[1])
    assert "The loss ends at 5.2, after 1,234 steps, 31% right." in text
    assert "{.out}" not in text and "[5.2]" not in text


def test_prose_number_that_no_output_prints_fails_naming_it(tmp_path):
    cfg = make_book(tmp_path, [md("# T\n\nThe loss ends at [5.3]{.out}."),
                               code("print(loss)", stream("loss 5.18\n"))])
    with pytest.raises(book.BookError, match=r"01_test\.ipynb, cell 0: the prose number 5\.3 "):
        book.build(cfg, tmp_path / "b.pdf")


def test_prose_numbers_are_checked_against_shown_outputs_only():
    nb = {"cells": [md("[7.5]{.out} and [0.310]{.out}"),
                    code("#| hide\nprint(x)", stream("7.5\n")),
                    code("t()", nbformat.v4.new_output("execute_result", execution_count=None, data={
                        "text/markdown": "| trained | 0.310 |", "text/plain": "<md>"}))]}
    with pytest.raises(book.BookError, match="prose number 7.5"):  # only a hidden cell prints it
        book.check_prose_numbers("x.ipynb", nb)
    nb["cells"][0] = md("[0.31]{.out} and [0.3]{.out}")  # roundings of the table's 0.310
    assert book.check_prose_numbers("x.ipynb", nb) == 2
    nb["cells"][0] = md("[0.32]{.out}")
    with pytest.raises(book.BookError, match="0.32"):
        book.check_prose_numbers("x.ipynb", nb)


def test_prose_number_roundings():
    assert book._rounds_to("5.2", "5.18") and book._rounds_to("5.18", "5.18")
    assert not book._rounds_to("5.1", "5.18") and not book._rounds_to("5.180", "5.18")
    assert book._rounds_to("129,000", "128,768") and not book._rounds_to("120,000", "128,768")
    assert not book._rounds_to("100", "149")           # no separator: an exact integer
    assert book._rounds_to("1,234", "1234") and not book._rounds_to("1,235", "1234")


# --- the index at the back (book/index.txt, marked by notebook.lua, printed by template.typ) ---

def test_index_lists_terms_of_body_text_with_pages_not_code(tmp_path):
    cfg = make_book(tmp_path, [md("# T\n\nThe KV cache keeps keys; RoPE rotates them.\n\n## Two\n\n"
                                  "Perplexity is the exponential of the loss."),
                               code("lora = 1  # LoRA only in code")])
    book.build(cfg, tmp_path / "b.pdf")
    typ = (tmp_path / "ch-01_test.typ").read_text()
    assert '#metadata("KV cache")<index-term>' in typ and '#metadata("perplexity")<index-term>' in typ
    assert '"LoRA"' not in typ                                   # code is never indexed
    n, text = pdf_text(tmp_path / "b.pdf")
    index = re.sub(r"\s+", " ", text.rsplit("Index", 1)[1])
    for term in ("KV cache", "RoPE", "perplexity"):
        assert re.search(re.escape(term) + r" \d+", index), (term, index)
    assert "LoRA" not in index


def test_index_matches_a_capitalised_spelling_as_written_and_marks_bold_mentions_main(tmp_path):
    cfg = make_book(tmp_path, [md("# T\n\nStart from zero.\n\n## Two\n\n**ZeRO** shards the optimizer; "
                                  "**perplexity** again.\n\n## Three\n\nNo ZERO here, and zero again.")])
    book.build(cfg, tmp_path / "b.pdf")
    typ = (tmp_path / "ch-01_test.typ").read_text()
    assert typ.count('#metadata("ZeRO")') == 1                    # "zero" and "ZERO" are not ZeRO
    assert '#metadata("ZeRO")<index-main>' in typ and '#metadata("perplexity")<index-main>' in typ


def test_a_term_on_many_pages_keeps_its_main_pages_and_one_per_chapter(tmp_path):
    body = "\n\n".join(f"## S{i}\n\nThe perplexity here.\n\n```{{=typst}}\n#pagebreak()\n```" for i in range(16))
    cfg = make_book(tmp_path, [md("# T\n\n" + body + "\n\n## Def\n\nThe **perplexity** defined.")])
    book.build(cfg, tmp_path / "b.pdf")
    index = re.sub(r"\s+", " ", pdf_text(tmp_path / "b.pdf")[1].rsplit("Index", 1)[1])
    pages = re.search(r"perplexity ([\d, ]+)", index).group(1).replace(" ", "").strip(",").split(",")
    assert len(pages) == 2, index           # 17 pages: the chapter's first and the bold one
    assert pages[0] == "1" and int(pages[1]) >= 16


def test_real_book_index_has_its_main_terms_with_pages(real_book):
    terms = [l.split("|")[0].strip() for l in (ROOT / "book" / "index.txt").read_text().splitlines()
             if l.strip() and not l.startswith("#")]
    assert 80 <= len(terms) <= 150
    n, text = pdf_text(real_book)
    title = re.search(r"^Index$", text, re.M)   # the heading; running heads read "Index 287"
    index = re.sub(r"\s+", " ", text[title.end():])
    found = [t for t in terms if re.search(re.escape(t) + r" \d+", index)]
    for t in ("attention", "KV cache", "BPE", "RoPE", "LoRA", "DPO", "perplexity"):
        assert t in found, t
    assert len(found) >= 0.9 * len(terms), sorted(set(terms) - set(found))


# Typesetting defects a reader would see: each fails the build, naming the notebook and cell.

@pytest.mark.parametrize("cells, message", [
    ([md("# T"), code('def f():\n    "Attention (eq-attention) of q."')], r"cell 1: the raw label `eq-attention`"),
    ([md("# T"), code('def f():\n    "The template of @sec-finetuning."')],
     r"cell 1: the raw label `@sec-finetuning` is printed; refer to it with \[@sec-finetuning\]"),
    ([md("# T"), code("print(1)", stream("see sec-intro\n"))], r"cell 1: the raw label `sec-intro`.*make execute"),
    ([md("# T\n\nAs fig-loss shows.")], r"cell 0 \(markdown\): the raw label `fig-loss`"),
    ([md("# T\n\n```bash\ngit clone <repository-url>\n```")], r"cell 0 \(markdown\): the placeholder `<repository-url>`"),
    ([md("# T\n\n```bash\nminigpt train " + "--x 1 " * 14 + "\\\n```")], r"cell 0 \(markdown\): a line of a code block"),
])
def test_printed_text_defects_are_errors(tmp_path, cells, message):
    cfg = make_book(tmp_path, cells)
    with pytest.raises(book.BookError, match=r"01_test\.ipynb, " + message):
        book.build(cfg, tmp_path / "b.pdf")


def test_references_labels_and_emails_are_not_raw_labels(tmp_path):
    cfg = make_book(tmp_path, [
        md("# T {#sec-t}\n\n$$\nx = 1\n$$ {#eq-one}\n\nSee [@eq-one] and [@sec-t]; pass@k counts."),
        code("#| label: fig-a\n#| fig-cap: A line.\nplot()", png_output())])
    book.build(cfg, tmp_path / "b.pdf")
    text = re.sub(r"\s+", " ", pdf_text(tmp_path / "b.pdf")[1])
    assert "See Equation (1.1) and Chapter 1; pass@k counts." in text, text


def test_an_equation_wider_than_the_line_is_an_error(tmp_path):
    wide = " + ".join(f"\\operatorname{{term}}_{{{i}}}" for i in range(40))
    cfg = make_book(tmp_path, [md(f"# T\n\n$$\nx = {wide}\n$$ {{#eq-wide}}\n")])
    with pytest.raises(book.BookError, match=r"equation \(1\.1\) <eq-wide> in 01_test\.ipynb is \d+% of the line"):
        book.build(cfg, tmp_path / "b.pdf")


def test_a_slightly_wide_equation_is_scaled_beside_its_number(tmp_path):
    # wider than the line less its number, narrower than the line: it shrinks, no error
    wide = " + ".join(f"a_{{{i}}} b_{{{i}}}" for i in range(11))
    cfg = make_book(tmp_path, [md(f"# T\n\n$$\nx = {wide}\n$$ {{#eq-w}}\n\nSee [@eq-w].")])
    book.build(cfg, tmp_path / "b.pdf")
    assert "(1.1)" in pdf_text(tmp_path / "b.pdf")[1]


def test_cjk_and_emoji_have_glyphs_and_a_missing_glyph_is_an_error(tmp_path):
    cfg = make_book(tmp_path, [md("# T\n\nBytes of `日本語` and 🙂 in prose."),
                               code('print("語 🙂")', stream("'語': 3 byte(s) 🙂\x1d\n"))])
    book.build(cfg, tmp_path / "b.pdf")   # the font packages cover them; \x1d prints escaped
    assert "\\x1d" in pdf_text(tmp_path / "b.pdf")[1]
    # a character of a script no font covers (Sutton SignWriting) prints as an empty box
    cfg = make_book(tmp_path, [md("# T\n\nA sign: \U0001D800.")])
    with pytest.raises(book.BookError, match=r"no font has.*page\(s\) 1\b"):
        book.build(cfg, tmp_path / "b.pdf")


def test_missing_glyphs_reads_the_pdf():
    import typst
    ok, box = (typst.compile(bytes(f"= T\n{s}\n", "utf-8"), ignore_system_fonts=True) for s in ("A", "\U0001D800"))
    assert book.missing_glyphs(ok) == [] and book.missing_glyphs(box) == ["1"]


def test_inline_code_prints_as_written(tmp_path):
    # (whether a <|token|> can break depends on where the line ends: not forced here)
    words = "word " * 30
    cfg = make_book(tmp_path, [md(f"# T\n\n{words}`<|endoftext|>` {words}`<|endoftext|>` {words}"
                                  f"`a_very_long_name_with_parts.and_an_attribute_too` {words}")])
    book.build(cfg, tmp_path / "b.pdf")
    text = pdf_text(tmp_path / "b.pdf")[1]
    assert text.count("<|endoftext|>") == 2      # boxed, still the token
    assert "\u200b" not in text                  # copied text is the code, nothing added
