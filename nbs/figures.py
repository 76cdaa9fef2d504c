"""The book's figures in print: no text under 7 points.

Book scaffolding like `diagrams.py` (the minigpt package never imports it). Every figure is
printed at the text width, so a figure drawn 6.4 inches wide prints at 85% of its size, and
one drawn wider smaller still. `tools/execute_nbs.py` measures every figure a chapter shows,
as it is shown (`watch_figures`), and records the text that would print too small in the
output's metadata; book/build.py refuses a figure with such text, or with no record.
"""
from __future__ import annotations

PRINT_WIDTH = 5.45      # inches: the text width of book/template.typ (7 in - 0.85 in - 0.7 in)
LEAST_PRINTED = 7       # points: no text of a figure prints smaller
KEY = "minigpt"         # the output metadata key of the record


def printed_size(fig, points: float) -> float:
    "The size in the book of text `points` large in `fig`, which prints at the text width."
    return points * PRINT_WIDTH / fig.get_size_inches()[0]


def small_text(fig, least: float = LEAST_PRINTED) -> list[str]:
    """'text (size pt)' for each visible text of `fig` (labels, ticks, legends, titles) that
    prints under `least` points."""
    from matplotlib.text import Text
    fig.canvas.draw()                    # tick labels get their text when drawn
    return [f"{t.get_text()!r} ({printed_size(fig, t.get_fontsize()):.1f} pt)"
            for t in fig.findobj(Text)
            if t.get_visible() and t.get_text().strip()
            and printed_size(fig, t.get_fontsize()) < least]


def watch_figures(shell) -> None:
    """Have IPython `shell` record, with each matplotlib figure it displays, the figure's text
    that prints too small: `{KEY: {"small_text": [...]}}` in the PNG's metadata."""
    from matplotlib.figure import Figure
    formatter = shell.display_formatter.formatters["image/png"]
    draw = formatter.lookup_by_type(Figure)
    def measured(fig):
        out = draw(fig)
        data, metadata = out if isinstance(out, tuple) else (out, None)
        return data, {**(metadata or {}), KEY: {"small_text": small_text(fig)}}
    formatter.for_type(Figure, measured)
