"""The book's diagrams (nbs/diagrams.py) draw on CPU, and those drawn from a real object
show that object: the masks, weights, cache steps, shapes and schedule."""
import sys
from pathlib import Path

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "nbs"))
import diagrams as D                                      # noqa: E402
from minigpt.attention import attention, causal_mask, tile_schedule  # noqa: E402
from minigpt.finetune import LoRALinear                  # noqa: E402
from minigpt.loader import document_mask                 # noqa: E402
from minigpt.model import GPTConfig                      # noqa: E402
from minigpt.scale import state_memory                   # noqa: E402
from minigpt.train import TrainConfig                    # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def texts(fig) -> str:
    return "\n".join(t.get_text() for ax in fig.axes for t in ax.texts)


def test_every_diagram_draws():
    cfg = GPTConfig.preset("cpu")
    example = {"instruction": "Which play?", "input": "", "options": ["A", "B"],
               "output": "B"}
    figs = [D.data_pipeline(["ab " * 200, "cd " * 90], lambda t: list(range(len(t))),
                            eot=99, seq_len=16, batch_size=3),
            D.packing(torch.tensor([1, 2, 9, 3, 4, 9, 5]), 9),
            D.attention_steps(), D.heads(), D.flash_tiles(), D.block(cfg), D.gpt(cfg),
            D.training_step(TrainConfig()), D.kv_cache(),
            D.lora(LoRALinear(torch.nn.Linear(16, 48), 4, 8)),
            D.dpo(example, 0.5), D.sharding(), D.pipeline(), D.book_map()]
    assert all(isinstance(f, matplotlib.figure.Figure) for f in figs)
    for f in figs:
        f.canvas.draw()                  # lays out every artist, text and image
        assert f.get_size_inches()[0] == D.WIDTH
        assert D.clipped(f) == [], f"{f.axes[0].texts[0].get_text()!r}...: {D.clipped(f)} cut"


def test_a_box_past_the_edge_of_its_axes_is_found():
    fig, ax = D.canvas(10, 4, 2.0)
    D.box(ax, 5, 2, 2, 1, "inside", "whole")
    D.label(ax, 9.9, 3, "a label that runs past the edge: the tight bounding box keeps it")
    assert D.clipped(fig) == []
    D.box(ax, 5, 0.2, 2, 1, "low", "cut by the axes")       # its bottom is below y = 0
    found = D.clipped(fig)
    assert len(found) == 1 and found[0].startswith("FancyBboxPatch")


def test_packing_draws_the_document_mask():
    E = 9
    x = torch.tensor([5, 6, E, 7, 8, 8, E, 4])
    allowed = (document_mask(x[None], E)[0] & causal_mask(8)).numpy()
    drawn = D.drawn(D.packing(x, E), "mask")
    assert np.array_equal(drawn > 0, allowed)
    # three documents, each its own colour
    assert sorted(set(drawn[allowed].astype(int))) == [1, 2, 3]


def test_attention_draws_the_real_mask_and_weights():
    fig = D.attention_steps(d=4, seed=0)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(5, 4, generator=g) for _ in range(3))
    out, w = attention(q, k, v, causal_mask(5), return_weights=True)
    assert np.array_equal(D.drawn(fig, "mask"), causal_mask(5).float().numpy())
    assert np.allclose(D.drawn(fig, "weights"), w.numpy())
    assert np.allclose(D.drawn(fig, "output"), out.numpy())
    assert np.allclose(D.drawn(fig, "weights").sum(1), 1)


def test_heads_follow_repeat_kv():
    assert D.kv_heads_served(8, 8) == list(range(8))
    assert D.kv_heads_served(8, 2) == [0, 0, 0, 0, 1, 1, 1, 1]
    assert D.kv_heads_served(8, 1) == [0] * 8


@pytest.mark.parametrize("T,bq,bk", [(14, 4, 4), (9, 2, 5), (12, 12, 3)])
def test_flash_tiles_draw_the_real_schedule(T, bq, bk):
    fig = D.flash_tiles(T, bq, bk)
    for causal, name in ((False, "full"), (True, "causal")):
        grid = D.drawn(fig, name)
        schedule = tile_schedule(T, T, bq, bk, causal)
        order = [(i0, j0) for i0, _, tiles in schedule for j0, _, _ in tiles]
        assert fig.order[causal] == order                 # the loop order drawn
        computed = np.zeros((T, T), dtype=bool)
        for i0, i1, tiles in schedule:
            for j0, j1, _ in tiles: computed[i0:i1, j0:j1] = True
        assert np.array_equal(grid > 0, computed)         # skipped tiles are blank
        visible = causal_mask(T).numpy() if causal else np.ones((T, T), bool)
        assert np.array_equal(grid == 1, visible)         # masked cells = the mask
    assert "1" in texts(fig) and str(len(fig.order[True])) in texts(fig)


def test_gpt_writes_the_real_shapes():
    cfg = GPTConfig.preset("cpu", vocab_size=1000, d_model=128, block_size=64)
    t = texts(D.gpt(cfg, batch_size=4))
    assert "tok_emb (1000, 128)" in t and "pos_emb (64, 128)" in t
    assert "(4, 64, 1000)" in t and f"{cfg.n_layer} \u00d7 Block" in t
    assert "1000" in texts(D.gpt(GPTConfig.preset("cpu", vocab_size=1000,
                                                  pos="rope")))


def test_kv_cache_draws_the_real_cache_steps():
    steps = D.cache_steps(prompt_len=3, new_tokens=2)
    assert steps == [(0, 3), (3, 4), (4, 5)]
    grid = D.drawn(D.kv_cache(prompt_len=3, new_tokens=2), "cache")
    assert grid.tolist() == [[2, 2, 2, 0, 0], [1, 1, 1, 2, 0], [1, 1, 1, 1, 2]]


def test_lora_writes_the_layer_shapes():
    layer = LoRALinear(torch.nn.Linear(32, 96), rank=4, alpha=8)
    t = texts(D.lora(layer))
    assert "W  96 \u00d7 32" in t and "A  4 \u00d7 32" in t and "B  96 \u00d7 4" in t
    assert f"{4 * (32 + 96):,} numbers" in t


def test_sharding_bars_are_state_memory():
    fig = D.sharding(world=4)
    unit = fig.widths["ddp"]["weights"] / state_memory(1, "mixed", "ddp", 1)["weights"]
    for s in ("ddp", "zero1", "zero2", "fsdp"):
        mem = state_memory(1, "mixed", s, 4)
        assert fig.widths[s] == pytest.approx({p: m * unit for p, m in mem.items()})


@pytest.mark.parametrize("p,m", [(2, 4), (4, 4), (4, 32), (1, 3)])
def test_pipeline_schedule(p, m):
    table = D.gpipe_schedule(p, m)
    assert D.bubble_share(table) == pytest.approx((p - 1) / (m + p - 1))   # eq-bubble
    when = {(s, c): t for s, row in enumerate(table) for t, c in enumerate(row) if c}
    for s in range(p):
        for j in range(m):
            if s: assert when[s, ("F", j)] > when[s - 1, ("F", j)]   # after upstream
            if s < p - 1: assert when[s, ("B", j)] > when[s + 1, ("B", j)]
            assert when[s, ("B", j)] > when[s, ("F", m - 1)]          # GPipe
    assert D.pipeline(p, m).table == table
