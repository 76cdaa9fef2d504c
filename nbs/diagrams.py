"""The book's explanatory diagrams, drawn with matplotlib by code, one function each.

Book scaffolding like `book_settings.py`: the chapters import it (`from diagrams import
...`), the minigpt package never does. Where a diagram shows something the library
computes (a mask, attention weights, shapes, a cache, a schedule), it is drawn from the
real object, so that the picture cannot drift from the code. Every function returns a
matplotlib Figure; the shared style below (colours, boxes, arrows, text sizes) makes the
diagrams one family. Figures are 6.4 inches wide and printed at the text width (about
5.4 inches), so 9-point text prints at about 7.6 points.
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
FONT, SMALL = 9, 8               # points before scaling to the text width
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


def box(ax, x, y, w, h, title, sub=None, kind="model", bold=True, size=FONT):
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
                fontsize=SMALL, color=INK)


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
                          numbers.format(values[i, j]), size=SMALL - 1, zorder=3)
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
    box(ax, x1, top, w, h, "data", "ch. 1: clean, dedup", "data")
    box(ax, x2, top, w, h, "tokenizer", "ch. 2: BPE", "data")
    box(ax, x3, top, w, h, "loader", "ch. 3: shards, batches", "data")
    box(ax, x4, mid, w, h, "model", "ch. 4-5: attention, GPT", "model")
    box(ax, x3, low, w, h, "train", "ch. 6: AdamW, DDP", "model")
    box(ax, x2, low, w, h, "run directory", "weights, metrics", "train")
    box(ax, x1, low + 0.62, w, h * 0.8, "generate", "ch. 7: sampling", "other")
    box(ax, x1, low - 0.62, w, h * 0.8, "evaluate", "ch. 8: perplexity", "other")
    box(ax, x2, mid, w, h, "fine-tune", "ch. 9: SFT, DPO, RL", "other")
    box(ax, x3, mid, w, h, "use it", "ch. 10: export, serve", "other")
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
        label(ax, cx, rows["documents"] + 0.14, first, size=SMALL - 1)
        label(ax, cx, rows["documents"] - 0.2, f"{len(d):,} characters",
              size=SMALL - 1, color=MUTED)
        head = ", ".join(str(v) for v in t[:3])
        label(ax, cx, rows["token ids"] + 0.12, f"[{head}, ...]", size=SMALL - 1,
              family="monospace")
        label(ax, cx, rows["token ids"] - 0.2, f"{len(t) - 1:,} tokens + eot",
              size=SMALL - 1, color=MUTED)
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
    label(ax, x0 + span, y - 0.42, f"{len(stream):,} tokens", size=SMALL - 1,
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
        label(ax, x0 + (o + seq_len / 2) * scale, y - 0.36, str(b), size=SMALL - 1)
        label(ax, bx - 0.12, top - (b + 0.5) * bh, str(b), size=SMALL - 1, ha="right")
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
              size=SMALL - 1, color="white" if is_eot else INK)
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
           numbers="{:.2f}", title="weights")
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
            label(ax, cx, qy, f"q{h}", size=SMALL - 1)
            kx = x0 + (served[h] + 0.5) * w / n_kv
            ax.plot([cx, kx], [qy - 0.22, ky + 0.22], color=MUTED, lw=0.7)
        kw = w / n_kv
        for j in range(n_kv):
            cx = x0 + (j + 0.5) * kw
            ax.add_patch(Rectangle((cx - min(kw, step) * 0.4, ky - 0.22),
                                   min(kw, step) * 0.8, 0.44,
                                   fc=COLORS["model"][0], ec=COLORS["model"][1]))
            label(ax, cx, ky, f"kv{j}", size=SMALL - 1)
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
              size=SMALL - 1, color=MUTED, va="bottom")
        arrow(ax, (x0 - 0.12, top), (x0 - 0.12, top - T * c))
        label(ax, x0 - 0.22, top - T * c / 2, "outer loop: query blocks",
              size=SMALL - 1, color=MUTED, rotation=90, ha="right")
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
        box(ax, x0 + 0.8, by, 1.3, 0.7, n, sub_n, kind="other")
        arrow(ax, (x0, by - 0.35), (x0, by), style="-")
        ax.plot([x0, x0 + 0.15], [by, by], color=INK, lw=1.0)
        box(ax, x0 + 2.55, by, 1.85, 0.7, f, sub_f, kind="model")
        arrow(ax, (x0 + 1.45, by), (x0 + 1.62, by))
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
    box(ax, 1.1, y1, 1.9, 0.85, "batch", f"x, y  ({cfg.batch_size}, T)", kind="data")
    box(ax, 3.85, y1, 2.1, 0.85, "forward", "logits (B, T, V)", kind="model")
    box(ax, 6.6, y1, 2.1, 0.85, "loss", "cross-entropy vs y", kind="model")
    box(ax, 6.6, y2, 2.1, 0.85, "backward", "a gradient per weight", kind="train")
    box(ax, 3.85, y2, 2.1, 0.85, "clip", f"norm \u2264 {cfg.grad_clip}", kind="train")
    box(ax, 1.1, y2, 1.9, 0.85, "AdamW step", "lr(step), decay", kind="train")
    arrow(ax, (2.05, y1), (2.8, y1))
    arrow(ax, (4.9, y1), (5.55, y1))
    arrow(ax, (6.6, y1 - 0.43), (6.6, y2 + 0.43), "loss.backward()", side="right")
    arrow(ax, (5.55, y2), (4.9, y2))
    arrow(ax, (2.8, y2), (2.05, y2))
    arrow(ax, (1.6, y2 + 0.43), (3.3, y1 - 0.43), "new weights", side="left",
          color=COLORS["train"][1])
    label(ax, 9.0, (y1 + y2) / 2, f"{cfg.grad_accum} micro-batch"
          f"{'es' if cfg.grad_accum > 1 else ''}\nper step; then\nzero the gradients\n"
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
    label(ax, 1.6, 2.15, prompt, size=SMALL - 1)
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
        lx += 2.55
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
