"""The book's explanatory diagrams, drawn with matplotlib by code, one function each.

Book scaffolding like `book_settings.py`: the chapters import it (`from diagrams import
...`), the minigpt package never does. Where a diagram shows something the library
computes (a mask, attention weights, shapes, a cache, a schedule), it is drawn from the
real object, so that the picture cannot drift from the code. Every function returns a
matplotlib Figure; the shared style below (colours, boxes, arrows, text sizes) makes the
diagrams one family. Figures are 6.4 inches wide and printed at the text width (5.45
inches), so 9-point text prints at about 7.7 points (`figures.small_text` finds any text
that would print under 7 points).
"""
from __future__ import annotations

import math
import textwrap

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.colors import ListedColormap
from matplotlib.patches import FancyBboxPatch, Rectangle

WIDTH = 6.4                      # inches, like the book's plots
FONT, SMALL, TINY = 9, 9, 8.5    # points before scaling: 7.7, 7.7 and 7.2 printed
INK, MUTED = "#333333", "#666666"
# one colour per kind of thing, a pale fill and a strong edge/line of each
COLORS = {"data": ("#deebf7", "#3182bd"), "model": ("#fee6ce", "#e6550d"),
          "train": ("#e5f5e0", "#31a354"), "other": ("#efedf5", "#756bb1"),
          "frozen": ("#eeeeee", "#888888"), "bad": ("#fde0dd", "#c51b8a")}
DOCS = ["#9ecae1", "#fdae6b", "#a1d99b", "#bcbddc", "#fc9272", "#c7e9c0"]


# ---------------------------------------------------------------- shared style
def canvas(w: float, h: float, height: float):
    "A figure WIDTH x `height` inches whose axes span data units [0, w] x [0, h]."
    fig, ax = plt.subplots(figsize=(WIDTH, height))
    ax.set_xlim(0, w); ax.set_ylim(0, h); ax.axis("off")
    fig.subplots_adjust(0.01, 0.01, 0.99, 0.99)
    return fig, ax


def box(ax, x, y, w, h, title, sub=None, kind="model", bold=True, size=FONT, sub_size=SMALL):
    "A rounded box centred at (x, y), a title and an optional smaller line below."
    fill, edge = COLORS[kind]
    ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h,
                                boxstyle="round,pad=0,rounding_size=0.06",
                                fc=fill, ec=edge, lw=1.0))
    dy = 0.13 * h if sub else 0
    ax.text(x, y + dy, title, ha="center", va="center", fontsize=size,
            weight="bold" if bold else "normal", color=INK)
    if sub:
        ax.text(x, y - 0.22 * h, sub, ha="center", va="center",
                fontsize=sub_size, color=INK)


def arrow(ax, start, end, text=None, color=INK, side="above", lw=1.0, style="-|>",
          rad=0.0):
    "An arrow from `start` to `end`, with an optional label beside its middle."
    ax.annotate("", xy=end, xytext=start, arrowprops=dict(
        arrowstyle=style, color=color, lw=lw, shrinkA=0, shrinkB=0,
        connectionstyle=f"arc3,rad={rad}"))
    if text:
        mx, my = (start[0] + end[0]) / 2, (start[1] + end[1]) / 2
        off = {"above": (0, 6), "below": (0, -6), "left": (-5, 0),
               "right": (5, 0)}[side]
        va = {"above": "bottom", "below": "top"}.get(side, "center")
        ha = {"left": "right", "right": "left"}.get(side, "center")
        ax.annotate(text, (mx, my), xytext=off, textcoords="offset points",
                    ha=ha, va=va, fontsize=SMALL, color=MUTED)


def label(ax, x, y, text, size=FONT, color=INK, **kw):
    "Plain text at (x, y), centred unless told otherwise."
    kw = {"ha": "center", "va": "center", **kw}
    return ax.text(x, y, text, fontsize=size, color=color, **kw)


def number_text(numbers, value: float) -> str:
    """A cell's number: `numbers` is a format ("{:.1f}"), or "prob" for a probability in
    three characters (".59", "1", "0"), which fits a small cell."""
    if numbers != "prob": return numbers.format(value)
    text = f"{value:.2f}"
    return text[0] if text in ("0.00", "1.00") else text[1:]


def matrix(ax, x, y, values, cell, name, cmap="Blues", vmin=None, vmax=None,
           numbers=None, title=None):
    """Draw `values` (rows x cols) with its top-left corner at (x, y), cells `cell`
    units wide; the image is labelled `name`, so that tests can find what was drawn."""
    values = np.asarray(values, dtype=float)
    r, c = values.shape
    im = ax.imshow(values, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest",
                   extent=(x, x + c * cell, y - r * cell, y), zorder=1)
    im.set_label(name)
    ax.add_patch(Rectangle((x, y - r * cell), c * cell, r * cell, fill=False,
                           ec=INK, lw=0.8, zorder=2))
    if numbers is not None:
        for i in range(r):
            for j in range(c):
                if np.isfinite(values[i, j]):
                    label(ax, x + (j + 0.5) * cell, y - (i + 0.5) * cell,
                          number_text(numbers, values[i, j]), size=TINY, zorder=3)
    if title:
        label(ax, x + c * cell / 2, y + 0.18, title, size=FONT)
    return im


def finish(ax, w, h):
    "Restore the data limits (imshow resets them) and the free aspect."
    ax.set_xlim(0, w); ax.set_ylim(0, h); ax.set_aspect("equal")
    return ax.figure


def clipped(fig) -> list[str]:
    """What in `fig` would not print whole: each box or other patch that reaches past the
    axes that clip it (a box drawn below y = 0 loses its bottom). Text is never clipped:
    the book saves figures with a tight bounding box, which grows to hold every label."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    found = []
    for ax in fig.axes:
        frame = ax.bbox
        for artist in ax.patches:
            clips = artist.get_clip_on() and (artist.get_clip_path() is not None
                                              or artist.get_clip_box() is not None)
            box = artist.get_window_extent(renderer)
            if clips and (box.x0 < frame.x0 - 0.5 or box.y0 < frame.y0 - 0.5
                          or box.x1 > frame.x1 + 0.5 or box.y1 > frame.y1 + 0.5):
                found.append(f"{type(artist).__name__} at ({box.x0:.0f}, {box.y0:.0f}) px")
    return found


def drawn(fig, name: str) -> np.ndarray:
    "The array drawn as the image labelled `name` in `fig` (for tests)."
    for ax in fig.axes:
        for im in ax.images:
            if im.get_label() == name: return np.asarray(im.get_array())
    raise KeyError(name)


# ------------------------------------------------------------------ preface
def book_map():
    """The stages the book builds, each with its chapter: text becomes data, tokens and
    batches, a model is trained into a run directory, and everything after reads it."""
    fig, ax = canvas(11.6, 5.0, 3.1)
    x1, x2, x3, x4 = 1.95, 4.7, 7.45, 10.2         # four columns of boxes
    top, mid, low = 4.35, 2.75, 1.25
    w, h = 2.35, 0.95
    label(ax, 0.3, top, "raw\ntext", size=SMALL, style="italic")
    for x, y, title, sub, kind, height in [
            (x1, top, "data", "ch. 1: cleaning", "data", h),
            (x2, top, "tokenizer", "ch. 2: BPE", "data", h),
            (x3, top, "loader", "ch. 3: batches", "data", h),
            (x4, mid, "model", "ch. 4-5: the GPT", "model", h),
            (x3, low, "train", "ch. 6: AdamW", "model", h),
            (x2, low, "run directory", "weights, metrics", "train", h),
            (x1, low + 0.62, "generate", "ch. 7: sampling", "other", h * 0.8),
            (x1, low - 0.62, "evaluate", "ch. 8: scores", "other", h * 0.8),
            (x2, mid, "fine-tune", "ch. 9: SFT, RL", "other", h),
            (x3, mid, "use it", "ch. 10: export", "other", h)]:
        box(ax, x, y, w, height, title, sub, kind, sub_size=TINY)
    half = w / 2
    for start, end in [((0.6, top), (x1 - half, top)), ((x1 + half, top), (x2 - half, top)),
                       ((x2 + half, top), (x3 - half, top)), ((x3 + half, top), (x4, mid + h / 2)),
                       ((x4, mid - h / 2), (x3 + half, low)), ((x3 - half, low), (x2 + half, low)),
                       ((x2 - half, low), (x1 + half, low + 0.5)), ((x2 - half, low), (x1 + half, low - 0.5)),
                       ((x2 - 0.25, low + h / 2), (x2 - 0.25, mid - h / 2)),
                       ((x2 + 0.25, mid - h / 2), (x2 + 0.25, low + h / 2)),
                       ((x2 + half, low + 0.3), (x3 - half, mid - 0.3))]:
        arrow(ax, start, end)
    label(ax, x4 - 0.3, 0.5, "ch. 11: scaling up\nch. 12: the minigpt command",
          size=SMALL, color=MUTED)
    return fig


# ---------------------------------------------------------- ch. 3: the data
def data_pipeline(docs: list[str], encode, eot: int, seq_len: int = 256,
                  batch_size: int = 4, seed: int = 0):
    """Raw text -> documents -> token ids -> one stream -> packed batch, drawn
    from real documents and a real tokenizer (`encode`: text -> ids)."""
    ids = [[eot] + list(encode(d)) for d in docs]     # eot before each document
    stream = np.concatenate(ids)
    doc_of = np.concatenate([np.full(len(t), i) for i, t in enumerate(ids)])
    W, H = 10.0, 6.4
    fig, ax = canvas(W, H, 4.1)
    rows = {"raw text": 5.75, "documents": 4.65, "token ids": 3.5,
            "one stream": 2.35, "batch (B, T)": 0.85}
    for name, y in rows.items():
        label(ax, 0.75, y, name, weight="bold", ha="center")
    x0, span = 1.75, W - 1.85
    raw = " ".join(docs[0].split())[:80] + " ..."
    label(ax, x0 + span / 2, rows["raw text"], f"\u201c{raw}\u201d", size=SMALL,
          style="italic")
    n = len(docs)
    w = span / n
    for i, (d, t) in enumerate(zip(docs, ids)):
        cx = x0 + (i + 0.5) * w
        first = textwrap.shorten(" ".join(d.split()), 26, placeholder=" ...")
        ax.add_patch(FancyBboxPatch((cx - w / 2 + 0.08, rows["documents"] - 0.4),
                     w - 0.16, 0.8, boxstyle="round,pad=0,rounding_size=0.06",
                     fc=DOCS[i % len(DOCS)], ec=INK, lw=0.6))
        label(ax, cx, rows["documents"] + 0.14, first, size=TINY)
        label(ax, cx, rows["documents"] - 0.2, f"{len(d):,} characters",
              size=TINY, color=MUTED)
        head = ", ".join(str(v) for v in t[:3])
        label(ax, cx, rows["token ids"] + 0.12, f"[{head}, ...]", size=TINY,
              family="monospace")
        label(ax, cx, rows["token ids"] - 0.2, f"{len(t) - 1:,} tokens + eot",
              size=TINY, color=MUTED)
        arrow(ax, (cx, rows["raw text"] - 0.3), (cx, rows["documents"] + 0.45))
        arrow(ax, (cx, rows["documents"] - 0.45), (cx, rows["token ids"] + 0.32),
              "encode" if i == 0 else None, side="right")
        arrow(ax, (cx, rows["token ids"] - 0.35),
              (x0 + (np.flatnonzero(doc_of == i)[0] + len(t) / 2) / len(stream)
               * span, rows["one stream"] + 0.3), lw=0.6, color=MUTED)
    # the stream: each document's share of the tokens, its eot a black tick
    scale = span / len(stream)
    y = rows["one stream"]
    for i, t in enumerate(ids):
        start = np.flatnonzero(doc_of == i)[0]
        ax.add_patch(Rectangle((x0 + start * scale, y - 0.2), len(t) * scale, 0.4,
                               fc=DOCS[i % len(DOCS)], ec="none"))
        ax.plot([x0 + start * scale] * 2, [y - 0.24, y + 0.24], color="black", lw=1.4)
    label(ax, x0 + span, y - 0.42, f"{len(stream):,} tokens", size=TINY,
          color=MUTED, ha="right")
    # B windows of T + 1 tokens at random offsets, and the batch they make
    rng = np.random.default_rng(seed)
    offsets = np.sort(rng.integers(0, len(stream) - seq_len - 1, batch_size))
    bw, bh = 2.6, 0.26
    bx = x0 + span / 2 - bw / 2
    top = rows["batch (B, T)"] + batch_size * bh / 2
    batch = np.stack([doc_of[o:o + seq_len] for o in offsets])
    for b, o in enumerate(offsets):
        ax.add_patch(Rectangle((x0 + o * scale, y - 0.2), seq_len * scale, 0.4,
                               fill=False, ec=INK, lw=1.0))
        label(ax, x0 + (o + seq_len / 2) * scale, y - 0.36, str(b), size=TINY)
        label(ax, bx - 0.12, top - (b + 0.5) * bh, str(b), size=TINY, ha="right")
    arrow(ax, (bx + bw / 2, y - 0.5), (bx + bw / 2, top + 0.08),
          "B windows at random offsets, stacked", side="right")
    ax.imshow(batch, cmap=ListedColormap(DOCS[:n]), vmin=-0.5, vmax=n - 0.5,
              extent=(bx, bx + bw, top - batch_size * bh, top), aspect="auto",
              interpolation="nearest").set_label("batch")
    ax.add_patch(Rectangle((bx, top - batch_size * bh), bw, batch_size * bh,
                           fill=False, ec=INK, lw=0.8))
    label(ax, bx + bw + 1.35, rows["batch (B, T)"],
          f"B = {batch_size} windows\nof T = {seq_len} tokens", size=SMALL,
          ha="center")
    ax.set_xlim(0, W); ax.set_ylim(0, H)
    return fig


def packing(x: torch.Tensor, eot: int):
    """One packed row `x` (T,) of real token ids: its documents, each token's
    position in its document, and the mask that lets a token see only the earlier
    tokens of its own document (document_mask & causal_mask)."""
    from minigpt.attention import causal_mask
    from minigpt.loader import document_ids, document_mask, document_positions
    x = torch.as_tensor(x).view(1, -1)
    T = x.shape[1]
    doc = document_ids(x, eot)[0].numpy()
    pos = document_positions(x, eot)[0].numpy()
    mask = (document_mask(x, eot)[0] & causal_mask(T)).numpy()
    cell = 3.4 / T
    W, H = 7.6, 0.75 + (T + 1.6) * cell
    fig, ax = canvas(W, H, WIDTH * H / W)
    x0, ytok = 1.0, H - 0.35
    cmap = ListedColormap(["white"] + DOCS)
    first = doc.min()
    colours = np.where(mask, doc[:, None] - first + 1, 0)
    # the row of tokens, coloured by document, eot black, positions written in
    for j in range(T):
        is_eot = int(x[0, j]) == eot
        ax.add_patch(Rectangle((x0 + j * cell, ytok - cell), cell, cell,
                               fc="black" if is_eot else DOCS[(doc[j] - first) % 6],
                               ec="white", lw=0.5))
        label(ax, x0 + (j + 0.5) * cell, ytok - cell / 2, str(pos[j]),
              size=TINY, color="white" if is_eot else INK)
    label(ax, x0 - 0.1, ytok - cell / 2, "position in\ndocument", size=SMALL,
          ha="right")
    top = ytok - 1.6 * cell
    im = ax.imshow(colours, cmap=cmap, vmin=-0.5, vmax=len(DOCS) + 0.5,
                   extent=(x0, x0 + T * cell, top - T * cell, top),
                   interpolation="nearest")
    im.set_label("mask")
    for k in range(T + 1):      # the grid of cells
        ax.plot([x0 + k * cell] * 2, [top, top - T * cell], color="#cccccc", lw=0.3)
        ax.plot([x0, x0 + T * cell], [top - k * cell] * 2, color="#cccccc", lw=0.3)
    ax.add_patch(Rectangle((x0, top - T * cell), T * cell, T * cell, fill=False,
                           ec=INK, lw=0.8))
    label(ax, x0 - 0.1, top - T * cell / 2, "query i", size=SMALL, ha="right",
          rotation=0)
    label(ax, x0 + T * cell / 2, top - T * cell - 0.2, "key j", size=SMALL)
    xr = x0 + T * cell + 0.2
    label(ax, xr, top - 0.3, f"T = {T} tokens,\n{doc.max() - first + 1} documents"
          f"\n\ncoloured: i may\nattend to j\n(same document,\nj \u2264 i)\n\nwhite: "
          "masked", size=SMALL, ha="left", va="top")
    return finish(ax, W, H)


# ---------------------------------------------------------- ch. 4: attention
def attention_steps(words=("To", "be", "or", "not", "to"), d: int = 4, seed: int = 0):
    """Q, K, V of a few tokens -> scores QK^T/sqrt(d) -> causal mask -> softmax
    weights -> output, computed by minigpt's `attention` and `causal_mask`."""
    from minigpt.attention import attention, causal_mask
    T = len(words)
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(T, d, generator=g) for _ in range(3))
    mask = causal_mask(T)
    scores = q @ k.T / math.sqrt(d)
    out, weights = attention(q, k, v, mask, return_weights=True)
    c = 0.42
    W, H = 10.0, 5.9
    fig, ax = canvas(W, H, WIDTH * H / W)
    lim = float(max(q.abs().max(), k.abs().max(), v.abs().max()))
    top, top2 = H - 0.45, H - 0.45 - T * c - 1.25
    mid, mid2 = top - T * c / 2, top2 - T * c / 2
    x = 0.85
    for name, m in (("Q", q), ("K", k), ("V", v)):   # a row per token, d wide
        matrix(ax, x, top, m, c, name, cmap="RdBu", vmin=-lim, vmax=lim,
               title=f"{name}  (T\u00d7d)")
        x += d * c + 0.35
    for i, w in enumerate(words):
        label(ax, 0.75, top - (i + 0.5) * c, w, size=SMALL, ha="right")
        label(ax, 0.75, top2 - (i + 0.5) * c, w, size=SMALL, ha="right")
    arrow(ax, (x - 0.1, mid), (x + 0.75, mid))
    label(ax, x + 0.33, mid - 0.45, "Q K\u1d40/\u221ad", size=SMALL)
    x += 0.85
    smax = float(scores.abs().max())
    matrix(ax, x, top, scores, c, "scores", cmap="RdBu", vmin=-1.7 * smax,
           vmax=1.7 * smax, numbers="{:.1f}", title="scores  (T\u00d7T)")
    label(ax, x + T * c + 0.15, mid, "row i: how well\nquery i matches\neach key j",
          size=SMALL, ha="left", color=MUTED)
    # second row: mask, softmax, weights, mix of the values
    x = 0.85
    matrix(ax, x, top2, mask.float(), c, "mask",
           cmap=ListedColormap(["white", "#9ecae1"]), vmin=0, vmax=1,
           title="causal mask")
    label(ax, x + T * c / 2, top2 - T * c - 0.3, "key j \u2264 query i", size=SMALL,
          color=MUTED)
    x += T * c
    arrow(ax, (x + 0.1, mid2), (x + 1.15, mid2))
    label(ax, x + 0.62, mid2 + 0.45, "scores,\nmasked", size=SMALL)
    label(ax, x + 0.62, mid2 - 0.35, "softmax", size=SMALL)
    x += 1.25
    matrix(ax, x, top2, weights, c, "weights", cmap="Oranges", vmin=0, vmax=1.4,
           numbers="prob", title="weights")
    label(ax, x + T * c / 2, top2 - T * c - 0.3, "rows sum to 1", size=SMALL,
          color=MUTED)
    x += T * c
    arrow(ax, (x + 0.1, mid2), (x + 0.9, mid2))
    label(ax, x + 0.5, mid2 - 0.3, "\u00b7 V", size=FONT)
    x += 1.0
    olim = float(out.abs().max())
    matrix(ax, x, top2, out, c, "output", cmap="RdBu", vmin=-olim, vmax=olim,
           title="output  (T\u00d7d)")
    label(ax, x + d * c + 0.15, mid2, "row i: a mix of\nthe values of\nkeys 0 to i",
          size=SMALL, ha="left", color=MUTED)
    return finish(ax, W, H)


def kv_heads_served(n_head: int, n_kv_head: int) -> list[int]:
    "The key/value head that each query head reads, as `repeat_kv` arranges it."
    from minigpt.attention import repeat_kv
    kv = torch.arange(n_kv_head).view(1, n_kv_head, 1, 1)
    return repeat_kv(kv, n_head // n_kv_head).flatten().tolist()


def heads(n_head: int = 8, kv_heads=(8, 2, 1), d_model: int = 256):
    """Query heads and the key/value heads they share: multi-head, grouped-query
    and multi-query attention, connected as `repeat_kv` connects them."""
    names = {n_head: "multi-head", 1: "multi-query"}
    W, H = 3 * 4.4, 3.6
    fig, ax = canvas(W, H, 2.3)
    d_head = d_model // n_head
    for p, n_kv in enumerate(kv_heads):
        x0, w = p * 4.4 + 0.2, 4.0
        step = w / n_head
        served = kv_heads_served(n_head, n_kv)
        qy, ky = 2.55, 0.95
        for h in range(n_head):
            cx = x0 + (h + 0.5) * step
            ax.add_patch(Rectangle((cx - step * 0.4, qy - 0.22), step * 0.8, 0.44,
                                   fc=COLORS["data"][0], ec=COLORS["data"][1]))
            label(ax, cx, qy, f"q{h}", size=TINY)
            kx = x0 + (served[h] + 0.5) * w / n_kv
            ax.plot([cx, kx], [qy - 0.22, ky + 0.22], color=MUTED, lw=0.7)
        kw = w / n_kv
        for j in range(n_kv):
            cx = x0 + (j + 0.5) * kw
            ax.add_patch(Rectangle((cx - min(kw, step) * 0.4, ky - 0.22),
                                   min(kw, step) * 0.8, 0.44,
                                   fc=COLORS["model"][0], ec=COLORS["model"][1]))
            label(ax, cx, ky, f"kv{j}", size=TINY)
        title = names.get(n_kv, "grouped-query")
        label(ax, x0 + w / 2, 3.3, f"{title}: {n_head} q, {n_kv} kv",
              size=FONT, weight="bold")
        label(ax, x0 + w / 2, 0.35, f"cache: {2 * n_kv * d_head} numbers per\n"
              "token and layer", size=SMALL, color=MUTED, va="top")
    ax.set_xlim(0, W); ax.set_ylim(-0.35, H)
    return fig


def flash_tile_grid(T: int, block_q: int, block_k: int, causal: bool):
    """(T, T) codes of the tiles `tile_schedule` visits: 0 a skipped tile,
    1 a cell of a computed tile, 2 a cell that the causal mask hides inside a
    computed tile; and the tiles' top-left corners (i0, j0) in loop order."""
    from minigpt.attention import tile_mask, tile_schedule
    grid, order = np.zeros((T, T), dtype=int), []
    for i0, i1, tiles in tile_schedule(T, T, block_q, block_k, causal):
        for j0, j1, masked in tiles:
            order.append((i0, j0))
            grid[i0:i1, j0:j1] = 1
            if masked:
                hidden = ~tile_mask(i0, i1, j0, j1, 0, "cpu").numpy()
                grid[i0:i1, j0:j1][hidden] = 2
    return grid, order


def flash_tiles(T: int = 14, block_q: int = 4, block_k: int = 4):
    """The T x T scores cut into tiles of block_q queries by block_k keys, as
    `flash_attention` visits them, without and with the causal mask: computed
    tiles numbered in loop order, masked cells inside them, skipped tiles."""
    W, H = 10.0, 4.0
    fig, ax = canvas(W, H, WIDTH * H / W)
    c = 2.8 / T                                  # data units per score
    cmap = ListedColormap(["white", COLORS["data"][0], COLORS["bad"][0]])
    fig.order = {}
    for p, causal in enumerate((False, True)):
        x0, top = 0.6 + p * 3.85, H - 0.75
        grid, order = flash_tile_grid(T, block_q, block_k, causal)
        fig.order[causal] = order
        name = "causal" if causal else "full"
        ax.imshow(grid, cmap=cmap, vmin=-0.5, vmax=2.5, interpolation="nearest",
                  extent=(x0, x0 + T * c, top - T * c, top)).set_label(name)
        for k in range(T + 1):                   # the grid of single scores
            ax.plot([x0 + k * c] * 2, [top, top - T * c], color="white", lw=0.4)
            ax.plot([x0, x0 + T * c], [top - k * c] * 2, color="white", lw=0.4)
        for i0 in range(0, T, block_q):          # every tile, skipped ones hatched
            for j0 in range(0, T, block_k):
                h, w = min(block_q, T - i0), min(block_k, T - j0)
                skipped = grid[i0, j0 + w - 1] == 0
                ax.add_patch(Rectangle((x0 + j0 * c, top - (i0 + h) * c), w * c,
                                       h * c, fill=skipped, fc="white",
                                       hatch="///" if skipped else None,
                                       ec=INK, lw=0.9))
        for n, (i0, j0) in enumerate(order, 1):  # the loop order
            h, w = min(block_q, T - i0), min(block_k, T - j0)
            label(ax, x0 + (j0 + w / 2) * c, top - (i0 + h / 2) * c, str(n),
                  size=SMALL, weight="bold", color=COLORS["data"][1])
        label(ax, x0 + T * c / 2, top + 0.5, "causal" if causal else
              "no mask", weight="bold")
        arrow(ax, (x0, top + 0.12), (x0 + T * c, top + 0.12))
        label(ax, x0 + T * c / 2, top + 0.25, "inner loop: key blocks",
              size=TINY, color=MUTED, va="bottom")
        arrow(ax, (x0 - 0.12, top), (x0 - 0.12, top - T * c))
        label(ax, x0 - 0.22, top - T * c / 2, "outer loop: query blocks",
              size=TINY, color=MUTED, rotation=90, ha="right")
        label(ax, x0 + T * c / 2, top - T * c - 0.22,
              f"{len(order)} of {math.ceil(T / block_q) * math.ceil(T / block_k)}"
              " tiles computed", size=SMALL, color=MUTED)
    lx, ly = 7.75, H - 1.1
    for i, (fc, hatch, text) in enumerate((
            (COLORS["data"][0], None, "computed"),
            (COLORS["bad"][0], None, "masked cell\n(set to \u2212\u221e)"),
            ("white", "///", "skipped tile"))):
        ax.add_patch(Rectangle((lx, ly - i * 0.75), 0.3, 0.3, fc=fc, hatch=hatch,
                               ec=INK, lw=0.6))
        label(ax, lx + 0.42, ly + 0.15 - i * 0.75, text, size=SMALL, ha="left",
              va="center")
    label(ax, lx, ly - 2.25, f"T = {T}\ntiles of {block_q} \u00d7 {block_k}\n"
          "numbers: loop order", size=SMALL, ha="left", va="center", color=MUTED)
    return finish(ax, W, H)


# -------------------------------------------------------------- ch. 5: model
def block(cfg):
    "A pre-norm transformer block of `cfg`: two residual branches on one stream."
    norm = "RMSNorm" if cfg.norm == "rmsnorm" else "LayerNorm"
    ffn = "SwiGLU" if cfg.mlp == "swiglu" else "GELU MLP"
    heads_txt = (f"{cfg.n_head} heads" if cfg.n_kv_head == cfg.n_head else
                 f"{cfg.n_head} q / {cfg.n_kv_head} kv heads")
    W, H = 10.0, 3.2
    fig, ax = canvas(W, H, 2.1)
    y = 0.7
    line = COLORS["data"][1]
    ax.plot([0.3, 9.45], [y, y], color=line, lw=2.2, zorder=0)
    arrow(ax, (9.3, y), (9.75, y), color=line, lw=2.2)
    label(ax, 0.3, y - 0.32, f"x  (B, T, {cfg.d_model})", size=SMALL, ha="left")
    label(ax, 9.75, y - 0.32, f"(B, T, {cfg.d_model})", size=SMALL, ha="right")
    label(ax, 5.0, y - 0.32, "the residual stream", size=SMALL, color=line,
          style="italic")
    for x0, n, sub_n, f, sub_f in (
            (0.9, norm, "norm1", "attention", f"causal, {heads_txt}"),
            (5.0, norm, "norm2", ffn, f"{cfg.d_model}\u2192{cfg.d_ff}\u2192"
             f"{cfg.d_model}")):
        by = 2.25
        ax.plot([x0, x0], [y, by - 0.35], color=INK, lw=1.0)
        box(ax, x0 + 0.8, by, 1.44, 0.7, n, sub_n, kind="other")
        arrow(ax, (x0, by - 0.35), (x0, by), style="-")
        ax.plot([x0, x0 + 0.08], [by, by], color=INK, lw=1.0)
        box(ax, x0 + 2.55, by, 1.85, 0.7, f, sub_f, kind="model")
        arrow(ax, (x0 + 1.52, by), (x0 + 1.62, by))
        plus = x0 + 3.75
        ax.plot([x0 + 3.48, plus], [by, by], color=INK, lw=1.0)
        arrow(ax, (plus, by), (plus, y + 0.14))
        ax.add_patch(plt.Circle((plus, y), 0.14, fc="white", ec=INK, lw=1.0,
                                zorder=3))
        label(ax, plus, y, "+", size=FONT, weight="bold", zorder=4)
    return fig


def gpt(cfg, batch_size: int = 16):
    """The whole GPT of `cfg`, from token ids to logits and loss, with the shapes
    of its real parameters (read from a model on the meta device) and tensors."""
    from minigpt.model import meta_model
    m = meta_model(cfg)
    B, T, d, V = batch_size, cfg.block_size, cfg.d_model, cfg.vocab_size
    tok = tuple(m.tok_emb.weight.shape)
    pos = {"learned": f"+ pos_emb {tuple(m.pos_emb.weight.shape)}"
           if cfg.pos == "learned" else "",
           "sinusoidal": "+ sinusoidal positions",
           "rope": "(RoPE inside attention)"}[cfg.pos]
    head = tuple(m.lm_head.weight.shape)
    tied = "weights tied to tok_emb" if cfg.tie_weights else "its own weights"
    block = m.blocks[0]
    n_block = sum(p.numel() for p in block.parameters())
    stages = [("token ids", "", "data", f"({B}, {T})"),
              ("embeddings", f"tok_emb {tok} {pos}", "model", f"({B}, {T}, {d})"),
              (f"{cfg.n_layer} \u00d7 Block", f"{cfg.n_head} heads, d_ff {cfg.d_ff}, "
               f"{n_block:,} parameters each", "model", f"({B}, {T}, {d})"),
              ("final norm", "norm_f", "other", f"({B}, {T}, {d})"),
              ("head", f"lm_head {head}, {tied}", "model", f"({B}, {T}, {V})"),
              ("loss", "cross-entropy with the targets (B, T)", "train", "a number")]
    W, H = 10.0, 0.2 + 0.78 * len(stages)
    fig, ax = canvas(W, H, WIDTH * H / W)
    y = H - 0.45
    for i, (title, sub, kind, shape) in enumerate(stages):
        box(ax, 2.0, y, 2.6, 0.5, title, kind=kind)
        label(ax, 3.5, y, sub, size=SMALL, ha="left")
        if i + 1 < len(stages):
            arrow(ax, (2.0, y - 0.25), (2.0, y - 0.53))
            label(ax, 0.55, y - 0.39, shape, size=SMALL, color=MUTED, ha="center")
        y -= 0.78
    label(ax, 0.55, H - 0.1, "tensor shape", size=SMALL, color=MUTED)
    label(ax, W - 0.05, 0.15, f"B = {B}, T = {T}, d = {d}, V = {V:,}", size=SMALL,
          color=MUTED, ha="right")
    return fig


# ----------------------------------------------------------- ch. 6: training
def training_step(cfg):
    """One optimizer step of the training loop of `cfg` (a TrainConfig): forward,
    loss, backward, clipping, AdamW at the scheduled learning rate."""
    W, H = 10.0, 3.4
    fig, ax = canvas(W, H, 2.2)
    y1, y2 = 2.6, 0.8
    box(ax, 1.05, y1, 1.9, 0.85, "batch", f"x, y  ({cfg.batch_size}, T)", kind="data")
    box(ax, 3.75, y1, 2.4, 0.85, "forward", "logits (B, T, V)", kind="model")
    box(ax, 6.65, y1, 2.4, 0.85, "loss", "cross-entropy vs y", kind="model")
    box(ax, 6.65, y2, 2.4, 0.85, "backward", "a gradient per weight", kind="train")
    box(ax, 3.75, y2, 2.4, 0.85, "clip", f"norm \u2264 {cfg.grad_clip}", kind="train")
    box(ax, 1.05, y2, 1.9, 0.85, "AdamW step", "lr(step), decay", kind="train")
    arrow(ax, (2.0, y1), (2.55, y1))
    arrow(ax, (4.95, y1), (5.45, y1))
    arrow(ax, (6.65, y1 - 0.43), (6.65, y2 + 0.43), "loss.backward()", side="left")
    arrow(ax, (5.45, y2), (4.95, y2))
    arrow(ax, (2.55, y2), (2.0, y2))
    arrow(ax, (1.6, y2 + 0.43), (3.2, y1 - 0.43), "new weights", side="left",
          color=COLORS["train"][1])
    label(ax, 9.05, (y1 + y2) / 2, f"{cfg.grad_accum} micro-batch"
          f"{'es' if cfg.grad_accum > 1 else ''}\nper step, then\nzero the\ngradients\n"
          "and repeat", size=SMALL, color=MUTED)
    return fig


# --------------------------------------------------------- ch. 7: generation
def cache_steps(prompt_len: int = 4, new_tokens: int = 3, seed: int = 0):
    """Run a tiny GPT with a KVCache on a prompt, then one token per step; return
    (positions in the cache before, positions after) of each forward pass."""
    from minigpt.generate import KVCache
    from minigpt.model import GPT, GPTConfig
    torch.manual_seed(seed)
    cfg = GPTConfig(vocab_size=32, block_size=16, n_layer=1, n_head=2, d_model=8)
    model = GPT(cfg).eval()
    cache = KVCache(cfg, 1, cfg.block_size)
    idx, steps = torch.randint(0, 32, (1, prompt_len)), []
    with torch.no_grad():
        for _ in range(new_tokens + 1):
            before = cache.length
            logits, _ = model(idx, cache=cache)
            steps.append((before, cache.length))
            idx = logits[:, -1:].argmax(-1)         # greedy: the next token
    return steps


def kv_cache(prompt_len: int = 4, new_tokens: int = 4):
    """Which keys and values each decoding step computes and which it reads from
    the cache, from a real run of `KVCache` (`cache_steps`)."""
    steps = cache_steps(prompt_len, new_tokens)
    S = steps[-1][1]
    grid = np.zeros((len(steps), S))      # 0 empty, 1 read from cache, 2 computed
    for r, (a, b) in enumerate(steps):
        grid[r, :a], grid[r, a:b] = 1, 2
    cell = 0.55
    W, H = 10.0, 0.75 + len(steps) * cell + 0.1
    fig, ax = canvas(W, H, min(3.0, WIDTH * H / W))
    x0, top = 2.2, H - 0.55
    cmap = ListedColormap(["white", COLORS["frozen"][0], COLORS["model"][1]])
    im = ax.imshow(grid, cmap=cmap, vmin=-0.5, vmax=2.5, interpolation="nearest",
                   extent=(x0, x0 + S * cell, top - len(steps) * cell, top))
    im.set_label("cache")
    for k in range(S + 1):
        ax.plot([x0 + k * cell] * 2, [top, top - len(steps) * cell], color="white",
                lw=1.5)
    for r in range(len(steps) + 1):
        ax.plot([x0, x0 + S * cell], [top - r * cell] * 2, color="white", lw=1.5)
    for j in range(S):
        label(ax, x0 + (j + 0.5) * cell, top + 0.2, str(j), size=SMALL)
    label(ax, x0 + S * cell / 2, top + 0.45, "positions of keys and values",
          size=SMALL)
    for r, (a, b) in enumerate(steps):
        yy = top - (r + 0.5) * cell
        name = "prefill" if r == 0 else f"step {r}"
        label(ax, x0 - 0.15, yy, name, size=FONT, ha="right")
        label(ax, x0 + S * cell + 0.2, yy, f"compute {b - a}, read {a}", size=SMALL,
              ha="left", color=MUTED)
    lx = x0 + S * cell + 2.3
    for i, (c, t) in enumerate(((COLORS["model"][1], "computed now, stored"),
                                (COLORS["frozen"][0], "read from the cache"))):
        ax.add_patch(Rectangle((lx, top - 0.35 - i * 0.45), 0.3, 0.3, fc=c,
                               ec=MUTED, lw=0.5))
        label(ax, lx + 0.4, top - 0.2 - i * 0.45, t, size=SMALL, ha="left")
    return finish(ax, W, H)


# ------------------------------------------------------- ch. 9: fine-tuning
def lora(layer):
    """A `LoRALinear`: the frozen W and the trainable A and B drawn to the scale of
    their real shapes, and the two paths that add up."""
    out_f, in_f = layer.base.weight.shape
    r = layer.A.shape[0]
    W, H = 10.0, 5.0
    fig, ax = canvas(W, H, WIDTH * H / W)
    s = 1.7 / max(out_f, in_f)               # data units per row or column
    thin = lambda n: max(n * s, 0.06)
    yu, yl, ym = 3.7, 1.3, 2.5
    def rect(cx, cy, rows, cols, kind, text, above=True):
        w, h = thin(cols), thin(rows)
        ax.add_patch(Rectangle((cx - w / 2, cy - h / 2), w, h, fc=COLORS[kind][0]
                               if kind == "frozen" else COLORS[kind][1],
                               ec=COLORS[kind][1] if kind == "frozen" else INK,
                               lw=0.8))
        label(ax, cx, cy + (h / 2 + 0.2 if above else -h / 2 - 0.2), text,
              size=SMALL)
        return w, h
    label(ax, 0.55, ym, f"x\n(\u2026, {in_f})")
    ax.plot([1.05, 1.4], [ym, ym], color=INK, lw=1.0)
    ax.plot([1.4, 1.4], [yl, yu], color=INK, lw=1.0)
    w, h = rect(3.4, yu, out_f, in_f, "frozen", f"W  {out_f} \u00d7 {in_f}, frozen")
    arrow(ax, (1.4, yu), (3.4 - w / 2, yu))
    wa, ha = rect(2.9, yl, r, in_f, "train", f"A  {r} \u00d7 {in_f}")
    arrow(ax, (1.4, yl), (2.9 - wa / 2, yl))
    wb, hb = rect(4.9, yl, out_f, r, "train", f"B  {out_f} \u00d7 {r}, zeros at first",
                  above=False)
    arrow(ax, (2.9 + wa / 2, yl), (4.9 - wb / 2, yl), f"(\u2026, {r})")
    label(ax, 6.0, yl + 0.25, f"\u00d7 \u03b1/r = {layer.scale:g}", size=SMALL)
    px = 7.0
    ax.plot([3.4 + w / 2, px], [yu, yu], color=INK, lw=1.0)
    arrow(ax, (px, yu), (px, ym + 0.16))
    ax.plot([4.9 + wb / 2, px], [yl, yl], color=INK, lw=1.0)
    arrow(ax, (px, yl), (px, ym - 0.16))
    ax.add_patch(plt.Circle((px, ym), 0.16, fc="white", ec=INK, lw=1.0, zorder=3))
    label(ax, px, ym, "+", weight="bold", zorder=4)
    arrow(ax, (px + 0.16, ym), (px + 0.8, ym))
    label(ax, px + 0.9, ym, f"h\n(\u2026, {out_f})", ha="left")
    trainable = r * (in_f + out_f)
    label(ax, 8.4, 1.0, f"trainable: A and B,\n{trainable:,} numbers,\n"
          f"{trainable / (in_f * out_f):.1%} of W's", size=SMALL, color=MUTED)
    return finish(ax, W, H)


def dpo(example: dict, beta: float):
    """A preference pair of a real task example and what DPO does with it: both
    responses scored by the policy and the frozen reference, the loss of the gap."""
    right = example["output"]
    wrong = next(o for o in example["options"] if o != right)
    prompt = textwrap.fill(" ".join((example["instruction"] + " " +
                                     example.get("input", "")).split()), 34)
    W, H = 10.0, 4.6
    fig, ax = canvas(W, H, 3.0)
    box(ax, 1.6, 2.3, 3.0, 2.2, "", kind="data")
    label(ax, 1.6, 3.2, "prompt x", weight="bold")
    label(ax, 1.6, 2.15, prompt, size=TINY)
    for y, name, text, kind in ((3.6, "chosen $y_w$", right, "train"),
                                (1.0, "rejected $y_l$", wrong, "bad")):
        box(ax, 4.6, y, 2.2, 0.8, name,
            textwrap.shorten(text, 26, placeholder="..."), kind=kind)
        arrow(ax, (3.1, 2.3 + (y - 2.3) * 0.3), (3.5, y))
        w = "w" if kind == "train" else "l"
        box(ax, 7.35, y, 2.6, 0.8, f"reward $r_{w}$",
            rf"$\beta\,\log\,\pi_\theta(y_{w}|x)\,/\,\pi_{{ref}}(y_{w}|x)$",
            kind="other")
        arrow(ax, (5.7, y), (6.15, y))
    box(ax, 7.35, 2.3, 2.6, 0.75, "loss", r"$-\log\,\sigma(r_w - r_l)$",
        kind="model")
    arrow(ax, (7.35, 3.2), (7.35, 2.68)); arrow(ax, (7.35, 1.4), (7.35, 1.92))
    label(ax, 9.7, 2.3, f"\u03b2 = {beta:g}", size=SMALL, color=MUTED, ha="right")
    label(ax, 7.35, 0.2, r"pushes $r_w$ above $r_l$; $\pi_{ref}$ is frozen", size=SMALL,
          color=MUTED)
    return fig


# ---------------------------------------------------------- ch. 10: scaling
def sharding(world: int = 4, strategies=("ddp", "zero1", "zero2", "fsdp"),
             precision: str = "mixed"):
    """What each of `world` GPUs holds of the weights, gradients and optimizer
    state under each strategy: bar widths are `state_memory` bytes per parameter."""
    from minigpt.model import STATE_PARTS as PARTS
    from minigpt.scale import state_memory
    names = {"ddp": "DDP", "zero1": "ZeRO-1", "zero2": "ZeRO-2",
             "fsdp": "FSDP (ZeRO-3)", "zero3": "ZeRO-3"}
    kinds = dict(zip(PARTS, ("data", "train", "model")))
    full = state_memory(1, precision, "ddp", 1)
    unit = 1.7 / sum(full.values())          # data units per byte
    W, H = 10.0, 1.0 + 0.75 * len(strategies)
    fig, ax = canvas(W, H, min(3.2, WIDTH * H / W))
    gx0, gw = 1.9, 2.0
    fig.widths = {}
    for r, s in enumerate(strategies):
        y = H - 1.0 - r * 0.75
        mem = state_memory(1, precision, s, world)
        fig.widths[s] = {p: mem[p] * unit for p in PARTS}
        label(ax, gx0 - 0.15, y, names[s], ha="right", weight="bold")
        for g in range(world):
            x = gx0 + g * gw
            ax.add_patch(Rectangle((x, y - 0.22), sum(full.values()) * unit, 0.44,
                                   fill=False, ec="#cccccc", lw=0.6, ls="--"))
            for p in PARTS:
                w_full = full[p] * unit
                shard = mem[p] < full[p]
                off = g * w_full / world if shard else 0
                ax.add_patch(Rectangle((x + off, y - 0.22), mem[p] * unit, 0.44,
                                       fc=COLORS[kinds[p]][1], ec="white", lw=0.5))
                x += w_full
        label(ax, gx0 + world * gw - 0.2, y, f"{sum(mem.values()):g} B/param",
              size=SMALL, ha="left", color=MUTED)
    for g in range(world):
        label(ax, gx0 + g * gw + 0.85, H - 0.45, f"GPU {g}", size=FONT)
    lx = gx0
    for p in PARTS:
        ax.add_patch(Rectangle((lx, 0.12), 0.25, 0.22, fc=COLORS[kinds[p]][1]))
        label(ax, lx + 0.32, 0.23, f"{p} ({full[p]:g} B/param)", size=SMALL,
              ha="left")
        lx += 2.8
    ax.set_xlim(0, W); ax.set_ylim(0, H)
    return fig


def gpipe_schedule(stages: int, micro: int) -> list[list[tuple[str, int] | None]]:
    """The GPipe timetable: slot t of stage s is ("F", j), ("B", j) or None (idle).
    Forward of micro-batch j reaches stage s at t = s + j; the backward passes run
    after all forwards, from the last stage back, each as long as a forward."""
    T = 2 * (micro + stages - 1)
    table = [[None] * T for _ in range(stages)]
    for s in range(stages):
        for j in range(micro):
            table[s][s + j] = ("F", j)
            # the last stage starts backward right after its last forward
            table[s][(micro + stages - 1) + (stages - 1 - s) + j] = ("B", j)
    return table


def bubble_share(table) -> float:
    "Share of the stage-time slots in `table` that are idle."
    slots = [c for row in table for c in row]
    return sum(c is None for c in slots) / len(slots)


def pipeline(stages: int = 2, micro: int = 4):
    "The GPipe schedule of `stages` ranks and `micro` micro-batches, bubble hatched."
    table = gpipe_schedule(stages, micro)
    T = len(table[0])
    cell = min(0.5, 7.6 / T)
    W, H = 10.0, 0.45 + stages * cell + 0.75
    fig, ax = canvas(W, H, min(2.4, WIDTH * H / W))
    x0, top = 1.6, H - 0.45
    for s, row in enumerate(table):
        y = top - (s + 1) * cell
        label(ax, x0 - 0.15, y + cell / 2, f"stage {s}", ha="right")
        for t, c in enumerate(row):
            x = x0 + t * cell
            if c is None:
                ax.add_patch(Rectangle((x, y), cell, cell, fc="white", ec="#bbbbbb",
                                       hatch="///", lw=0.5))
                continue
            kind = "data" if c[0] == "F" else "model"
            ax.add_patch(Rectangle((x, y), cell, cell, fc=COLORS[kind][1],
                                   ec="white", lw=1.0))
            label(ax, x + cell / 2, y + cell / 2, f"{c[0]}{c[1]}", size=SMALL,
                  color="white", weight="bold")
    arrow(ax, (x0, top - stages * cell - 0.2), (x0 + T * cell, top - stages * cell
          - 0.2), "time \u2192", side="below", style="-")
    share = bubble_share(table)
    label(ax, x0 + T * cell + 0.2, top - stages * cell / 2,
          f"p = {stages} stages\nm = {micro} micro-batches\nidle (hatched): "
          f"{share:.0%}\n= (p\u22121)/(m+p\u22121)", size=SMALL, ha="left")
    fig.table = table
    return finish(ax, W, H)


# ------------------------------------------- shared style, 9 points at least
# The diagrams below keep every text at FONT (9 points) or more: `panel` and
# `tag` are `box` and `arrow`'s labels at that size.
def panel_height(lines) -> float:
    "The height of a `panel` with a title and `lines`."
    return 0.5 + 0.32 * len(lines)


def panel(ax, x, y, w, h, title, lines=(), kind="other", align="left"):
    """A rounded box with its top-left corner at (x, y): a bold title, then
    `lines` of plain text, all at FONT (h None: `panel_height`); returns the
    y of the box's bottom."""
    h = panel_height(lines) if h is None else h
    fill, edge = COLORS[kind]
    ax.add_patch(FancyBboxPatch((x, y - h), w, h,
                                boxstyle="round,pad=0,rounding_size=0.08",
                                fc=fill, ec=edge, lw=1.0))
    tx = x + 0.15 if align == "left" else x + w / 2
    label(ax, tx, y - 0.2, title, weight="bold", ha=align, va="top")
    for i, line in enumerate(lines):
        label(ax, tx, y - 0.55 - 0.32 * i, line, ha=align, va="top")
    return y - h


def tag(ax, start, end, text=None, side="above", color=INK, **kw):
    "An arrow with its label at FONT, beside the arrow's middle."
    arrow(ax, start, end, color=color, **kw)
    if text:
        mx, my = (start[0] + end[0]) / 2, (start[1] + end[1]) / 2
        off = {"above": (0, 4), "below": (0, -4), "left": (-4, 0),
               "right": (4, 0)}[side]
        ax.annotate(text, (mx, my), xytext=off, textcoords="offset points",
                    ha={"left": "right", "right": "left"}.get(side, "center"),
                    va={"above": "bottom", "below": "top"}.get(side, "center"),
                    fontsize=FONT, color=MUTED)


# ------------------------------------------------------------ ch. 1: LSH
def lsh_bands(docs, bands: int = 4, rows: int = 3, k: int = 5, seed: int = 1):
    """The MinHash signatures of `docs` (minigpt.data's `signatures`), one
    column per document, cut into `bands` bands of `rows` values, and the
    buckets of each band as `lsh_candidates` fills them: documents whose band
    values are equal share a bucket. `fig.buckets[b, i]`: doc i's bucket."""
    from minigpt.data import estimate_jaccard, lsh_candidates, signatures
    m, n = bands * rows, len(docs)
    sig = signatures(docs, m, k, seed)                      # (n, m)
    buckets = np.zeros((bands, n), dtype=int)
    shared = []                                            # (band, pair)
    for b in range(bands):
        pairs = lsh_candidates(sig[:, b * rows:(b + 1) * rows], 1, rows)
        shared += [(b, p) for p in sorted(pairs)]
        for i in range(n):               # the first doc of i's bucket names it
            buckets[b, i] = min([i] + [x for x, y in pairs if y == i])
    ch, gap = 0.3, 0.12                   # a row's height, a gap between bands
    W, H = 10.0, 1.35 + m * ch + (bands - 1) * gap
    fig, ax = canvas(W, H, WIDTH * H / W)
    x0, cw, top = 1.25, 1.45, H - 0.55
    names = [chr(ord("A") + i) for i in range(n)]
    y_of = lambda r: top - (r + 0.5) * ch - (r // rows) * gap
    for j, name in enumerate(names):
        label(ax, x0 + (j + 0.5) * cw, top + 0.22, name, weight="bold")
    for r in range(m):
        b = r // rows
        same = [i for i in range(n) for j in range(n)
                if i != j and sig[i, r] == sig[j, r]]
        for j in range(n):
            ax.add_patch(Rectangle((x0 + j * cw, y_of(r) - ch / 2), cw, ch,
                                   fc=COLORS["train"][0] if j in same else
                                   "white", ec="#cccccc", lw=0.5))
            label(ax, x0 + (j + 0.5) * cw, y_of(r), str(int(sig[j, r])),
                  family="monospace")
    for b in range(bands):
        y1, y2 = y_of(b * rows) + ch / 2, y_of(b * rows + rows - 1) - ch / 2
        ax.add_patch(Rectangle((x0, y2), n * cw, y1 - y2, fill=False, ec=INK,
                               lw=1.0))
        label(ax, x0 - 0.15, (y1 + y2) / 2, f"band {b + 1}", ha="right")
        for i, j in [p for bb, p in shared if bb == b]:  # the shared band
            for c in (i, j):
                ax.add_patch(Rectangle((x0 + c * cw, y2), cw, y1 - y2,
                                       fill=False, ec=COLORS["train"][1],
                                       lw=2.0, zorder=3))
        # the buckets of this band: one box per bucket, its documents inside
        bx = x0 + n * cw + 0.9
        tag(ax, (x0 + n * cw + 0.1, (y1 + y2) / 2), (bx - 0.1, (y1 + y2) / 2))
        for key in sorted(set(buckets[b])):
            members = [names[i] for i in range(n) if buckets[b, i] == key]
            w = 0.45 + 0.35 * (len(members) - 1)
            kind = "train" if len(members) > 1 else "frozen"
            ax.add_patch(FancyBboxPatch((bx, (y1 + y2) / 2 - 0.2), w, 0.4,
                                        boxstyle="round,pad=0,rounding_size=0.06",
                                        fc=COLORS[kind][0], ec=COLORS[kind][1],
                                        lw=1.0))
            label(ax, bx + w / 2, (y1 + y2) / 2, " ".join(members),
                  weight="bold" if len(members) > 1 else "normal")
            bx += w + 0.15
        if any(bb == b for bb, _ in shared):
            pairs = ", ".join(f"{names[i]} and {names[j]}"
                              for bb, (i, j) in shared if bb == b)
            label(ax, bx + 0.1, (y1 + y2) / 2, f"{pairs}: one bucket,\n"
                  "a candidate pair", ha="left", color=COLORS["train"][1])
    label(ax, x0 + n * cw + 0.9, top + 0.22, f"buckets (key: the band's "
          f"{rows} values)", ha="left", weight="bold")
    cands = sorted({p for _, p in shared})
    est = "; ".join(f"{names[i]}, {names[j]}: {int((sig[i] == sig[j]).sum())} "
                    f"of {m} values agree, estimated J = "
                    f"{estimate_jaccard(sig[i], sig[j]):.2f}" for i, j in cands)
    label(ax, x0, 0.3, f"{m} hash functions = {bands} bands \u00d7 {rows} rows"
          + (f". {est}" if est else ""), ha="left")
    fig.buckets, fig.signatures = buckets, sig
    return finish(ax, W, H)


# ------------------------------------------------------- ch. 2: BPE merges
def visible_bytes(b: bytes) -> str:
    "Token bytes as text, a space shown as \u2423."
    return b.decode("utf-8", errors="replace").replace(" ", "\u2423")


def bpe_steps(tok, chunk: str) -> list[tuple[int | None, list[int]]]:
    """How `bpe_encode_chunk` turns `chunk` into tokens: (the merge that acted,
    the ids after it) for each merge of `tok` that changes the chunk, from the
    bytes (None) to the final ids. After the merges ranked below k the ids are
    those of encoding with only the first k merges (`merged_ranks`)."""
    from minigpt.tokenizer import bpe_encode_chunk, merged_ranks
    piece = chunk.encode("utf-8")
    steps = [(None, list(piece))]
    for k in range(1, len(tok.merges) + 1):
        if tok.vocab[255 + k] not in piece:
            continue                     # a token the chunk cannot contain
        ids = bpe_encode_chunk(piece, merged_ranks(tok.merges[:k]))
        if ids != steps[-1][1]:
            steps.append((255 + k, ids))
    return steps


def bpe_merges(tok, chunk: str):
    """A chunk's bytes merged step by step into tokens by a trained
    `BPETokenizer` (`bpe_steps`): each row the tokens after one merge, the
    new token highlighted, the merge named on the right."""
    steps = bpe_steps(tok, chunk)
    piece = chunk.encode("utf-8")
    rh, cw = 0.5, 0.72
    W, H = 10.0, 1.2 + len(steps) * rh
    fig, ax = canvas(W, H, WIDTH * H / W)
    x0, top = 1.5, H - 0.6
    for j, byte in enumerate(piece):             # the byte values above
        label(ax, x0 + (j + 0.5) * cw, top + 0.25, str(byte), color=MUTED)
    for r, (idx, ids) in enumerate(steps):
        y = top - (r + 0.5) * rh
        label(ax, x0 - 0.15, y, "bytes" if idx is None else f"step {r}",
              ha="right")
        start = 0
        for i in ids:
            n = len(tok.vocab[i])
            kind = "model" if i == idx else "data"
            ax.add_patch(FancyBboxPatch(
                (x0 + start * cw + 0.04, y - rh / 2 + 0.05), n * cw - 0.08,
                rh - 0.1, boxstyle="round,pad=0,rounding_size=0.05",
                fc=COLORS[kind][0], ec=COLORS[kind][1],
                lw=1.4 if i == idx else 0.8))
            label(ax, x0 + (start + n / 2) * cw, y, visible_bytes(tok.vocab[i]),
                  family="monospace", weight="bold" if i == idx else "normal")
            start += n
        if idx is not None:
            a, b = tok.merges[idx - 256]
            label(ax, x0 + len(piece) * cw + 0.3, y, f"merge {idx}:  "
                  f"{visible_bytes(tok.vocab[a])} + {visible_bytes(tok.vocab[b])}",
                  ha="left", family="monospace")
    label(ax, x0 + len(piece) * cw + 0.3, top + 0.25, "the merge that acts",
          ha="left", color=MUTED)
    label(ax, x0, 0.22, f"{chunk!r} \u2192 {steps[-1][1]}: {len(piece)} bytes,"
          f" {len(steps[-1][1])} token{'s' * (len(steps[-1][1]) > 1)}; "
          f"the tokenizer has {len(tok.merges)} merges", ha="left")
    fig.steps = steps
    return finish(ax, W, H)


# ------------------------------------------------ ch. 7: the static cache
def static_cache_steps(prompt_lens=(3, 5), new_tokens: int = 3,
                       max_len: int = 10, seed: int = 0) -> list[dict]:
    """A tiny GPT run through the fixed-shape path of `decode_steps`: a prefill
    of the left-padded prompts into a `KVCache` of `max_len` slots, then
    `decode_step` per token, with `cache.slot` and the mask `visible` as
    `fixed_shape_inputs` makes them. Per forward pass: the slot written
    (None: the prefill), `visible` (B, max_len) as that pass saw it, which
    slots hold a key afterwards (read from the cache itself), the logits."""
    from minigpt.generate import (KVCache, decode_step, fixed_shape_inputs,
                                  padding_mask, positions_of, token_buffer)
    from minigpt.model import GPT, GPTConfig
    torch.manual_seed(seed)
    cfg = GPTConfig(vocab_size=32, block_size=max_len, n_layer=1, n_head=2,
                    d_model=8)
    model = GPT(cfg).eval()
    rows = [torch.randint(0, 32, (n,)).tolist() for n in prompt_lens]
    ids, valid = token_buffer(rows, new_tokens, "cpu")
    w = max(prompt_lens)
    cache = KVCache(cfg, len(rows), max_len)
    held = lambda: (cache.k[0, :, 0] != 0).any(-1).clone()    # (B, max_len)
    steps = []
    with torch.no_grad():
        v = valid[:, :w]
        logits = model(ids[:, :w], positions=positions_of(v), cache=cache,
                       mask=padding_mask(v, w))[0][:, -1]
        visible, pos = fixed_shape_inputs(cache, v)
        steps.append(dict(slot=None, visible=visible[:, 0].clone(),
                          held=held(), logits=logits, rows=rows))
        for n in range(w, w + new_tokens):
            nxt = logits.argmax(-1)
            ids[:, n], valid[:, n] = nxt, True
            visible.index_fill_(2, cache.slot, True)   # its own key too
            slot = int(cache.slot)
            logits = decode_step(model, nxt[:, None], pos, visible, cache)
            cache.slot.add_(1)
            pos.add_(1)
            steps.append(dict(slot=slot, visible=visible[:, 0].clone(),
                              held=held(), logits=logits))
    steps[0]["model"], steps[0]["ids"] = model, ids
    return steps


def static_cache(prompt_lens=(3, 5), new_tokens: int = 3, max_len: int = 10):
    """The fixed-shape KV cache of `static_cache_steps`, one grid per row of
    the batch: each forward pass (a row of the grid) over the `max_len`
    preallocated slots, the slot it writes, the keys the mask `visible`
    shows and those it hides (padding, empty slots)."""
    steps = static_cache_steps(prompt_lens, new_tokens, max_len)
    B, S = steps[0]["visible"].shape
    # 0 empty and hidden, 1 a key, visible, 2 written now, visible,
    # 3 a key the mask hides (padding)
    grids = np.zeros((B, len(steps), S), dtype=int)
    for r, s in enumerate(steps):
        held, vis = s["held"].numpy(), s["visible"].numpy()
        now = held if s["slot"] is None else np.arange(S) == s["slot"]
        grids[:, r] = np.where(held & ~vis, 3, np.where(now & vis, 2,
                                                        np.where(vis, 1, 0)))
    c, gap = 0.36, 0.75
    W, H = 10.0, 0.45 + B * (len(steps) * c + gap)
    fig, ax = canvas(W, H, WIDTH * H / W)
    x0, top = 1.25, H - 0.45 - gap + 0.3
    cmap = ListedColormap(["white", COLORS["data"][0], COLORS["model"][1],
                           COLORS["frozen"][0]])
    for j in range(S):
        label(ax, x0 + (j + 0.5) * c, H - 0.2, str(j))
    label(ax, x0 + S * c + 0.2, H - 0.2, "cache slots", ha="left", color=MUTED)
    for b in range(B):
        pad = max(prompt_lens) - prompt_lens[b]
        label(ax, x0 - 1.15, top + 0.2, f"row {b} of the batch: a prompt of "
              f"{prompt_lens[b]} tokens" + (f", left-padded by {pad}" if pad
                                          else ""), ha="left", weight="bold")
        ax.imshow(grids[b], cmap=cmap, vmin=-0.5, vmax=3.5,
                  interpolation="nearest",
                  extent=(x0, x0 + S * c, top - len(steps) * c, top)
                  ).set_label(f"row {b}")
        for k in range(S + 1):
            ax.plot([x0 + k * c] * 2, [top, top - len(steps) * c],
                    color="#bbbbbb", lw=0.5)
        for r in range(len(steps) + 1):
            ax.plot([x0, x0 + S * c], [top - r * c] * 2, color="#bbbbbb",
                    lw=0.5)
        ax.add_patch(Rectangle((x0, top - len(steps) * c), S * c,
                               len(steps) * c, fill=False, ec=INK, lw=0.8))
        for r, s in enumerate(steps):
            y = top - (r + 0.5) * c
            label(ax, x0 - 0.12, y, "prefill" if s["slot"] is None else
                  f"step {r}", ha="right")
            text = (f"writes slots 0\u2013{max(prompt_lens) - 1}" if
                    s["slot"] is None else f"writes slot {s['slot']}")
            label(ax, x0 + S * c + 0.2, y, text, ha="left")
        top -= len(steps) * c + gap
    lx, ly = 7.1, H - 0.75
    for i, (code, text) in enumerate(((2, "written by this pass"),
                                      (1, "a key the mask shows"),
                                      (3, "a key the mask hides"),
                                      (0, "empty, hidden"))):
        ax.add_patch(Rectangle((lx, ly - i * 0.42 - 0.13), 0.26, 0.26,
                               fc=cmap(code), ec=INK, lw=0.5))
        label(ax, lx + 0.38, ly - i * 0.42, text, ha="left")
    label(ax, lx, ly - 4 * 0.42 + 0.1, f"each step attends to\nall {S} slots; "
          "the mask\n`visible` hides all but\nthe keys of real tokens",
          ha="left", va="top", color=MUTED)
    fig.grids, fig.steps = grids, steps
    return finish(ax, W, H)


# ------------------------------------------------------ ch. 8: the sandbox
SANDBOX_TASK = {"task_id": "Demo/sort3", "entry_point": "sort3",
                "prompt": 'def sort3(xs):\n    """xs in increasing order."""\n',
                "test": "def check(candidate):\n"
                        "    assert candidate([3, 1, 2]) == [1, 2, 3]\n"}


def sandbox_runs(completions: dict, timeout: float = 1.0) -> dict:
    """Check each completion of SANDBOX_TASK with `run_check`, recording the
    `subprocess.Popen` call it makes: {name: (its result, (argv, kwargs))}."""
    import subprocess
    from unittest import mock
    from minigpt.evaluate import run_check
    calls = []
    class Recorded(subprocess.Popen):
        def __init__(self, args, **kwargs):
            calls.append((list(args), dict(kwargs)))
            super().__init__(args, **kwargs)
    out = {}
    with mock.patch.object(subprocess, "Popen", Recorded):
        for name, completion in completions.items():
            out[name] = (run_check(SANDBOX_TASK, completion, timeout),
                         calls[-1])
    return out


def sandbox_demos() -> dict:
    "A completion of SANDBOX_TASK for each outcome of `run_check`."
    return {"passed": "    return sorted(xs)\n",
            "failed": "    return sorted(xs, reverse=True)\n",
            "timed out": "    while True:\n        pass\n"}


def sandbox(completions: dict | None = None, timeout: float = 1.0):
    """What `run_check` does with a completion: the parent, which runs the
    tests, the child process it starts (its command line, folder, environment
    and session, as recorded from real calls), the limits and the audit hook
    that `SANDBOX` installs in the child, the calls and answers between them,
    and the outcome: one real run per outcome."""
    import ast, re
    from minigpt.evaluate import SANDBOX
    runs = sandbox_runs(completions or sandbox_demos(), timeout)
    argv, kw = next(iter(runs.values()))[1]
    at = argv.index(SANDBOX)
    head = argv[1:at]
    cpu, memory, size = (int(a) for a in argv[at + 1:at + 4])
    rlimits = re.findall(r"resource\.(RLIMIT_\w+)", SANDBOX)
    consts = {t.id: ast.literal_eval(node.value)
              for node in ast.parse(SANDBOX).body if isinstance(node, ast.Assign)
              for t in node.targets if isinstance(t, ast.Name)
              and isinstance(node.value, ast.Tuple)}
    refused = [r.rstrip(".") + ("*" if r.endswith("_") else "")
               for r in consts["REFUSED"]]
    limits = {"RLIMIT_CPU": f"{cpu} s of CPU time", "RLIMIT_AS":
              f"{memory >> 20:,} MiB of memory", "RLIMIT_FSIZE":
              f"files of at most {size >> 20} MiB", "RLIMIT_NPROC":
              "no new process (unless root)"}
    parts = [("child: python " + " ".join(head) + " SANDBOX",
              [f"folder: the temporary one; environment: {kw.get('env')}",
               "its own session and process group"
               if kw.get("start_new_session") else "the parent's group"],
              "model"),
             ("1. limits (resource.setrlimit)",
              [f"{n}: {limits.get(n, '')}" for n in rlimits], "frozen"),
             ("2. an audit hook refuses", textwrap.wrap(", ".join(
                 refused + [f"import {m}" for m in consts["MODULES"]]), 48)
              + ["writes outside the folder, reads outside it",
                 "and Python's own folders"], "bad"),
             ("3. runs candidate.py, then answers each call", [], "train")]
    outcome = [f"{res['outcome']}: " + (res["error"] or "every test held")
               for res, _ in runs.values()]
    gap = 0.12
    right = sum(panel_height(lines) for _, lines, _ in parts) + gap * 3
    W, H = 10.0, 0.2 + right + 0.55 + panel_height(outcome)
    fig, ax = canvas(W, H, WIDTH * H / W)
    top = H - 0.1
    parent = ["writes candidate.py (prompt", "and completion) into a new",
              "temporary folder, starts", "the child, runs the tests",
              "here: each call of the", "candidate goes to the child;",
              f"after {timeout:g} s (wall clock)", "kills its process group"]
    pb = panel(ax, 0.1, top, 3.2, None, "parent: run_check", parent,
               kind="data")
    y = top
    for i, (title, lines, kind) in enumerate(parts):
        b = panel(ax, 4.55, y, 5.35, None, title, lines, kind=kind)
        if i == 0: child_mid = (y + b) / 2
        y = b - gap
    tag(ax, (3.3, child_mid + 0.3), (4.55, child_mid + 0.3), "Popen",
        side="above")
    tag(ax, (3.3, child_mid - 0.3), (4.55, child_mid - 0.3), "pipe: calls",
        side="above")
    last = y + gap + panel_height([]) / 2
    ax.plot([4.55, 2.4], [last, last], color=INK, lw=1.0)
    tag(ax, (2.4, last), (2.4, pb))
    label(ax, 3.45, last + 0.08, "pipe: answers\n(plain data)", va="bottom",
          color=MUTED)
    panel(ax, 0.1, y - 0.3, 9.8, None, "the outcome, from real runs of "
          f"{len(outcome)} completions of sort3", outcome, kind="other")
    tag(ax, (0.9, pb), (0.9, y - 0.3), "decides", side="right")
    fig.runs = runs
    return fig


# ------------------------------------------------------ ch. 10: GGUF layout
def gguf_sections(path) -> dict:
    """A GGUF file as minigpt.gguf writes it, read back byte by byte: the
    header's counts, each metadata entry (key, type, value or its count,
    start, end), each tensor info (name, dims, type, offset, start, end),
    where the data starts, and the file's size."""
    import struct
    from minigpt import gguf as G
    raw = open(path, "rb").read()
    pos = 0
    def take(fmt):
        nonlocal pos
        vals = struct.unpack_from("<" + fmt, raw, pos)
        pos += struct.calcsize("<" + fmt)
        return vals
    def string():
        nonlocal pos
        (n,) = take("Q")
        pos += n
        return raw[pos - n:pos].decode("utf-8")
    def value(vtype):
        if vtype == G.STRING: return string()
        if vtype == G.ARRAY:
            etype, n = take("IQ")
            items = [value(etype) for _ in range(n)]
            return items
        return take({G.UINT32: "I", G.INT32: "i", G.FLOAT32: "f",
                     G.BOOL: "?"}[vtype])[0]
    magic = raw[:4]
    pos = 4
    version, n_tensors, n_kv = take("IQQ")
    header_end = pos
    kvs, infos = [], []
    for _ in range(n_kv):
        start = pos
        key = string()
        (vtype,) = take("I")
        v = value(vtype)
        kvs.append(dict(key=key, type=vtype, value=v, start=start, end=pos))
    for _ in range(n_tensors):
        start = pos
        name = string()
        (nd,) = take("I")
        dims = take(f"{nd}Q")
        ttype, offset = take("IQ")
        infos.append(dict(name=name, dims=dims, type=ttype, offset=offset,
                          start=start, end=pos))
    data = pos + G.pad_to(pos)
    sizes = [G.tensor_nbytes(i["dims"][::-1], i["type"]) for i in infos]
    for i, n in zip(infos, sizes): i["nbytes"] = n
    return dict(magic=magic, version=version, n_tensors=n_tensors, n_kv=n_kv,
                header_end=header_end, kvs=kvs, infos=infos, infos_end=pos,
                data=data, size=len(raw))


def gguf_layout(path, shown: int = 2):
    """The layout of a real GGUF file (`gguf_sections`): header, metadata,
    tensor infos, padding and aligned tensor data, each with its byte range
    and the first `shown` entries of the file; a bar below to scale."""
    from minigpt import gguf as G
    f = gguf_sections(path)
    vnames = {G.UINT32: "uint32", G.INT32: "int32", G.FLOAT32: "float32",
              G.BOOL: "bool", G.STRING: "string", G.ARRAY: "array"}
    tnames = {G.F32: "f32", G.F16: "f16", G.Q8_0: "q8_0"}
    def val(kv):
        v = kv["value"]
        if isinstance(v, list): return f"{len(v):,} items"
        if isinstance(v, str): return repr(textwrap.shorten(v, 18, placeholder="..."))
        return f"{v:g}" if isinstance(v, float) else str(v)
    big = max(f["kvs"], key=lambda kv: kv["end"] - kv["start"])
    kvs = f["kvs"][:shown] + ([big] if big not in f["kvs"][:shown] else [])
    kv_lines = [f"{kv['key']}  {vnames[kv['type']]}  {val(kv)}" for kv in kvs]
    kv_lines.append(f"... {f['n_kv']} entries; the largest: {big['key']}, "
                    f"{big['end'] - big['start']:,} bytes")
    info_lines = [f"{i['name']}  ({', '.join(map(str, i['dims']))})  "
                  f"{tnames[i['type']]}  offset {i['offset']:,}"
                  for i in f["infos"][:shown]]
    info_lines.append(f"... {f['n_tensors']} tensors; dims ne0 (the fastest) "
                      "first; offset: from the data's start")
    last = f["infos"][-1]
    data_lines = [f"{i['name']}: bytes {f['data'] + i['offset']:,} to "
                  f"{f['data'] + i['offset'] + i['nbytes'] - 1:,}"
                  for i in f["infos"][:shown - 1]]
    data_lines += [f"... {last['name']}: to {f['data'] + last['offset'] + last['nbytes'] - 1:,}",
                   f"each tensor starts at a multiple of {G.ALIGNMENT} bytes; "
                   "zeros between"]
    parts = [("header", 0, f["header_end"], "data",
              ["magic, version, counts", f"magic {f['magic'].decode()}, version {f['version']}, "
               f"{f['n_tensors']} tensors, {f['n_kv']} metadata entries"]),
             ("metadata", f["header_end"], f["kvs"][-1]["end"], "other",
              ["key, value type, value"] + kv_lines),
             ("tensor infos", f["infos"][0]["start"], f["infos_end"], "model",
              ["name, dims, type, offset"] + info_lines),
             ("padding", f["infos_end"], f["data"], "frozen",
              ["zeros", f"{f['data'] - f['infos_end']} zero bytes: the data starts at "
               f"a multiple of {G.ALIGNMENT}"]),
             ("tensor data", f["data"], f["size"], "train",
              ["the tensors' bytes, in the order of the infos"] + data_lines)]
    hs = [max(panel_height(lines[1:]), panel_height("a")) for *_, lines in parts]
    W, H = 10.0, sum(hs) + 0.1 * len(parts) + 1.1
    fig, ax = canvas(W, H, WIDTH * H / W)
    y = H - 0.1
    for (name, a, b, kind, lines), h in zip(parts, hs):
        panel(ax, 0.1, y, 2.0, h, name, [f"{a:,}\u2013{b - 1:,}"], kind=kind)
        panel(ax, 2.25, y, 7.65, h, lines[0], lines[1:], kind=kind)
        y -= h + 0.1
    # the file to scale
    x0, span = 0.1, 9.8
    label(ax, x0, 0.72, f"the file to scale: {f['size']:,} bytes; byte "
          "ranges above", ha="left",
          color=MUTED)
    for name, a, b, kind, _ in parts:
        ax.add_patch(Rectangle((x0 + a / f["size"] * span, 0.15),
                               max((b - a) / f["size"] * span, 0.02), 0.35,
                               fc=COLORS[kind][1], ec="none"))
    fig.sections = f
    return finish(ax, W, H)


# ----------------------------------------------------- ch. 10: the server
class _StubEngine:
    "What `events` and `create_app` use of an Engine, with a scripted reply."
    def __init__(self, pieces, name="book-cpu-chat", reason="stop"):
        self.pieces, self.name, self.reason = list(pieces), name, reason
        self.chat, self.created = True, 0

    async def stream(self, ids, cfg, reply, top=None, pieces=True):
        for p in self.pieces:
            reply.text += p
            reply.tokens += 1
            yield p
        reply.finish_reason = self.reason


def sse_events(pieces=("To", " be", ","), chat: bool = True,
               include_usage: bool = False) -> list[str]:
    "The server-sent events `minigpt.serve.events` sends for a reply of `pieces`."
    import asyncio
    from concurrent.futures import ThreadPoolExecutor
    from minigpt.serve import events
    async def collect():
        return [e async for e in events(_StubEngine(pieces), [1, 2, 3], None,
                                        chat, include_usage)]
    with ThreadPoolExecutor(1) as pool:    # its own loop, even in a notebook's
        return pool.submit(lambda: asyncio.run(collect())).result()


def server_routes() -> list[tuple[str, str]]:
    "(method, path) of each route of `create_app`'s application."
    from minigpt.serve import create_app
    app = create_app(_StubEngine(()))
    return [(m, r.path) for r in app.routes if getattr(r, "include_in_schema",
                                                        False)
            for m in sorted(getattr(r, "methods", ()) - {"HEAD"})]


def engine_max_batch() -> int:
    "The most requests an `Engine` decodes together by default."
    import inspect
    from minigpt.serve import Engine
    return inspect.signature(Engine).parameters["max_batch"].default


def server(pieces=("To", " be", ",")):
    """`minigpt serve`: requests from several clients, checked on the event
    loop, queued for the one worker thread that decodes them as a batch, and the reply of
    one streamed as the server-sent events `events` makes (real ones, for a
    reply of `pieces`)."""
    import json
    routes = server_routes()
    max_batch = engine_max_batch()
    lines = []
    for e in sse_events(pieces):
        body = e.strip()[len("data: "):]
        if body == "[DONE]":
            lines.append("data: [DONE]")
            continue
        c = json.loads(body)["choices"][0]
        extra = {k: c[k] for k in ("delta", "finish_reason")}
        lines.append("data: {\u2026 " + json.dumps(extra)[1:])
    W = 10.0
    gets = [p for m, p in routes if m == "GET"]
    posts = [p for m, p in routes if m == "POST"]
    loop = ["GET " + ", ".join(gets)] + [f"POST {p}" for p in posts] + [
        "read_request checks each one:", "a bad request is refused at once"]
    work = [f"a batch of up to {max_batch} requests:", "each step, one run of the",
            "model for all rows; rows", "join and leave between", "steps; pieces go back",
            "through asyncio.Queues"]
    top_h = max(panel_height(loop), panel_height(work))
    H = 0.3 + top_h + 0.55 + panel_height(lines) + 0.1
    fig, ax = canvas(W, H, WIDTH * H / W)
    top = H - 0.1
    ch = (top_h - 0.3) / 3
    panel(ax, 1.95, top, 3.9, top_h, "event loop (FastAPI)", loop,
          kind="other")
    panel(ax, 6.65, top, 3.25, top_h, "Engine: one worker thread", work,
          kind="model")
    for i, name in enumerate("ABC"):
        y = top - 0.1 - ch / 2 - i * (ch + 0.1)
        box(ax, 0.7, y, 1.2, ch, f"client {name}", kind="data")
        tag(ax, (1.3, y), (1.95, y), "POST" if i == 0 else None,
            side="above")
    mid = top - top_h / 2
    tag(ax, (5.85, mid + 0.3), (6.65, mid + 0.3), "queue", side="above")
    tag(ax, (6.65, mid - 0.3), (5.85, mid - 0.3), "pieces", side="below")
    ytop = top - top_h - 0.55
    tag(ax, (3.9, top - top_h), (3.9, ytop), "text/event-stream to client A",
        side="right")
    panel(ax, 0.1, ytop, 9.8, None, "the events of a reply: one per piece, "
          "then the finish reason, then [DONE]", lines, kind="train")
    for t in ax.texts[-len(lines):]:
        t.set_family("monospace")
    fig.routes, fig.max_batch, fig.events = routes, max_batch, lines
    return fig


# ------------------------------------------------ ch. 11: tensor parallel
def tensor_parallel_mlp(cfg, world: int = 2, batch: int = 8) -> dict:
    """Shapes of a feed-forward network of `cfg` split as `train_tensor_parallel`
    splits it (fc column-wise, proj row-wise), read from the real DTensors of
    rank 0 of `world` in a fake process group (one process, no other ranks),
    and the collectives its forward pass runs (`CommDebugMode`)."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.debug import CommDebugMode
    from torch.distributed.tensor.parallel import (
        ColwiseParallel, RowwiseParallel, parallelize_module)
    from torch.testing._internal.distributed.fake_pg import FakeStore
    from minigpt.model import GPT
    if dist.is_initialized():
        raise RuntimeError("tensor_parallel_mlp makes its own (fake) process "
                           "group; this process has one already")
    torch.manual_seed(0)
    mlp = GPT(cfg).blocks[0].mlp
    full = {n: tuple(p.shape) for n, p in mlp.named_parameters()}
    dist.init_process_group("fake", rank=0, world_size=world, store=FakeStore())
    try:
        mesh = init_device_mesh("cpu", (world,))
        parallelize_module(mlp, mesh, {"fc": ColwiseParallel(),
                                       "proj": RowwiseParallel()})
        local = {n: tuple(p.to_local().shape) for n, p in mlp.named_parameters()}
        placement = {n: str(p.placements[0]) for n, p in mlp.named_parameters()}
        seen = {}
        hook = mlp.act.register_forward_hook(
            lambda m, i, o: seen.update(hidden=tuple(o.shape)))   # None
        x = torch.randn(batch, cfg.block_size, cfg.d_model)
        comm = CommDebugMode()
        with comm, torch.no_grad():
            y = mlp(x)
        y = y.wait() if hasattr(y, "wait") else y
        hook.remove()
        counts = {str(k).split(".")[-1]: v for k, v in comm.get_comm_counts().items()}
    finally:
        dist.destroy_process_group()
    return dict(full=full, local=local, placement=placement, x=tuple(x.shape),
                hidden=seen["hidden"], y=tuple(y.shape), comms=counts,
                world=world)


def tensor_parallel(cfg, world: int = 2, batch: int = 8):
    """The feed-forward network of `cfg` split over `world` ranks
    (`tensor_parallel_mlp`): each rank multiplies the whole input by its
    columns of W1, applies GELU, multiplies by its rows of W2, and one
    all-reduce adds the partial outputs. Matrices drawn to scale."""
    s = tensor_parallel_mlp(cfg, world, batch)
    d_ff_r, d = s["local"]["fc.weight"]              # (out/W, in)
    B, T, _ = s["x"]
    W, H = 10.0, 1.0 + world * 2.0
    fig, ax = canvas(W, H, WIDTH * H / W)
    u = 1.2 / max(d_ff_r, d)                         # units per row/column
    ys = [H - 0.95 - r * 2.0 for r in range(world)]
    cy = (ys[0] + ys[-1]) / 2
    label(ax, 0.1, cy, f"x\n{s['x']}\non every\nrank", ha="left")
    n_ar = s["comms"].get("all_reduce", 0)
    for r, y in enumerate(ys):
        w1, h1 = d_ff_r * u, d * u        # W1's columns: d rows, d_ff/W cols
        w2, h2 = d * u, d_ff_r * u        # W2's rows: d_ff/W rows, d cols
        label(ax, 1.75, y + h2 / 2 + 0.05, f"rank {r}", ha="left",
              weight="bold", va="bottom")
        ax.plot([1.3, 1.55], [cy, y], color=INK, lw=1.0)
        tag(ax, (1.55, y), (1.75, y))
        ax.add_patch(Rectangle((1.75, y - h1 / 2), w1, h1, fc=COLORS["model"][1],
                               ec=INK, lw=0.8))
        label(ax, 1.75 + w1 / 2, y - h1 / 2 - 0.05, rf"$W_1$ columns"
              f"\n{r * d_ff_r}\u2013{(r + 1) * d_ff_r - 1}: {d} \u00d7 {d_ff_r}",
              va="top")
        tag(ax, (1.8 + w1, y), (4.6, y), "GELU", side="above")
        label(ax, 3.75, y - 0.1, f"h {s['hidden']}", va="top", color=MUTED)
        ax.add_patch(Rectangle((4.65, y - h2 / 2), w2, h2, fc=COLORS["model"][1],
                               ec=INK, lw=0.8))
        label(ax, 4.65 + w2 + 0.1, y + h2 / 2, rf"$W_2$ rows"
              f"\n{r * d_ff_r}\u2013{(r + 1) * d_ff_r - 1}:\n{d_ff_r} \u00d7 {d}",
              ha="left", va="top")
        tag(ax, (4.7 + w2, y - 0.4), (7.75, y - 0.4), f"partial y {s['y']}",
            side="below")
    for y in ys:
        ax.plot([7.75, 7.95], [y - 0.4, cy], color=INK, lw=1.0)
    ax.add_patch(plt.Circle((8.1, cy), 0.16, fc="white", ec=INK, lw=1.0,
                            zorder=3))
    label(ax, 8.1, cy, "+", weight="bold", zorder=4)
    label(ax, 8.25, cy + 0.22, f"all-reduce\n(\u00d7 {n_ar})", va="bottom",
          ha="left")
    tag(ax, (8.26, cy), (8.7, cy))
    label(ax, 8.75, cy - 0.1, f"y\n{s['y']}\non every\nrank", ha="left",
          va="top")
    label(ax, 0.1, 0.45, f"ColwiseParallel: fc.weight {s['full']['fc.weight']}"
          f" \u2192 {s['local']['fc.weight']} on each rank", ha="left",
          color=MUTED)
    label(ax, 0.1, 0.15, f"RowwiseParallel: proj.weight "
          f"{s['full']['proj.weight']} \u2192 {s['local']['proj.weight']} on "
          "each rank (PyTorch's (out, in) shapes)", ha="left", color=MUTED)
    fig.shapes = s
    return finish(ax, W, H)


# ----------------------------------------------- appendix A: run directory
class _Opened:
    """The files this process opens or replaces while `log` is a list, seen
    through an audit hook (PEP 578), added once and idle otherwise."""
    log, hooked = None, False

    @classmethod
    def hook(cls, event, args):
        if cls.log is None: return
        import os
        try:
            if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
                write = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT
                cls.log.append((os.fsdecode(args[0]), bool(args[2] & write)))
            elif event in ("os.rename", "os.replace", "os.link"):
                cls.log.append((os.fsdecode(args[1]), True))
        except Exception:                # a hook must never break the caller
            pass


def resume_trace(data_dir, run) -> tuple[set, set]:
    """What `minigpt.train.train(..., resume=True)` reads and what it rewrites
    in run directory `run`, paths relative to it: resumed on a copy, with the
    files it opens recorded (`_Opened`)."""
    import os, shutil, sys, tempfile
    from pathlib import Path
    from minigpt.train import train
    if not _Opened.hooked:
        sys.addaudithook(_Opened.hook)
        _Opened.hooked = True
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / Path(run).name
        shutil.copytree(run, copy)
        first = {}                      # hard links stay hard links
        for p in sorted(Path(run).rglob("*")):
            if p.is_file():
                key = (p.stat().st_dev, p.stat().st_ino)
                if key in first:
                    (copy / p.relative_to(run)).unlink()
                    os.link(copy / first[key], copy / p.relative_to(run))
                else:
                    first[key] = p.relative_to(run)
        _Opened.log = log = []
        try:
            train(data_dir, copy, resume=True, progress_bar=False)
        finally:
            _Opened.log = None
        root = str(copy.resolve()) + "/"
        rel = lambda p: str(Path(p).resolve())[len(root):]
        inside = [(rel(p), w) for p, w in log
                  if str(Path(p).resolve()).startswith(root)]
    kept = {p for p, _ in run_tree(run)}          # not the temporary files
    written = {p for p, w in inside if w and p in kept}
    read = {p for p, w in inside if not w and p in kept}
    return read, written


def run_tree(run) -> list[tuple[str, int]]:
    "(path relative to `run`, size in bytes; -1 for a folder) of every entry."
    from pathlib import Path
    run = Path(run)
    out = []
    def walk(folder, prefix):
        entries = sorted(folder.iterdir(), key=lambda p: (p.is_dir(), p.name))
        for p in entries:
            out.append((prefix + p.name, -1 if p.is_dir() else p.stat().st_size))
            if p.is_dir(): walk(p, prefix + p.name + "/")
    walk(run, "")
    return out


def run_directory(data_dir, run):
    """A real run directory (`run_tree`): its files and checkpoint folders,
    what each holds, and which of them a `--resume` reads and rewrites
    (`resume_trace`)."""
    from minigpt.checkpoint import CHECKPOINTS, MANIFEST, STATE, WEIGHTS
    tree = run_tree(run)
    read, written = resume_trace(data_dir, run)
    import json
    from pathlib import Path
    run = Path(run)
    what = {"config.json": "model and training settings",
            "tokenizer.json": "the tokenizer of the data",
            WEIGHTS: "a link to the newest checkpoint's weights",
            "best.safetensors": "a link to the best validation loss's weights",
            "metrics.jsonl": "a line per logged step",
            "samples.txt": "generated text",
            CHECKPOINTS: "a folder per checkpoint kept"}
    inside = {WEIGHTS: "the weights"}
    for path, size in tree:              # what the checkpoints really hold
        if path.endswith("/" + STATE):
            keys = torch.load(run / path, weights_only=True).keys()
            inside[STATE] = ", ".join(keys)
        elif path.endswith("/" + MANIFEST):
            keys = json.loads((run / path).read_text()).keys()
            inside[MANIFEST] = ", ".join(keys) + " (of the two files)"
    newest = max(p for p, s in tree if p.startswith(CHECKPOINTS + "/step-")
                 and s < 0)
    rh = 0.32
    W, H = 10.0, 0.75 + rh * len(tree) + 0.1
    fig, ax = canvas(W, H, WIDTH * H / W)
    top = H - 0.65
    label(ax, 0.1, H - 0.25, f"{run.name}/", ha="left", weight="bold",
          family="monospace")
    colours = {"read": COLORS["train"][1], "rewritten": COLORS["model"][1]}
    marks = {}
    for r, (path, size) in enumerate(tree):
        y = top - r * rh
        depth = path.count("/")
        name = path.rsplit("/", 1)[-1]
        label(ax, 0.55 + 0.35 * depth, y, name + ("/" if size < 0 else ""),
              ha="left", family="monospace", weight="bold" if size < 0
              else "normal")
        if size >= 0:
            label(ax, 5.0, y, f"{size:,} B" if size < 10_000 else
                  f"{size / 1e3:,.0f} kB", ha="right", color=MUTED)
        if name.startswith("step-"):
            keep = json.loads((run / path / MANIFEST).read_text())["keep"]
            desc = ("the newest checkpoint" if path == newest else "") + (
                ", " * (path == newest and keep) + "kept (keep_every)" if keep
                else "")
        else:
            desc = (inside if depth > 1 else what).get(name, "")
        label(ax, 5.2, y, desc, ha="left")
        marks[path] = [k for k, s in (("read", read), ("rewritten", written))
                       if path in s]
        for i, k in enumerate(marks[path]):
            ax.add_patch(Rectangle((0.1 + i * 0.2, y - 0.09), 0.16, 0.18,
                                   fc=colours[k], ec="none"))
    lx = 4.9
    for i, (k, c) in enumerate(colours.items()):
        ax.add_patch(Rectangle((lx + i * 2.5, H - 0.34), 0.16, 0.18, fc=c,
                               ec="none"))
        label(ax, lx + 0.25 + i * 2.5, H - 0.25, f"{k} by --resume",
              ha="left")
    fig.tree, fig.read, fig.written, fig.marks = tree, read, written, marks
    return finish(ax, W, H)
