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
from figures import small_text                            # noqa: E402
from minigpt.attention import attention, causal_mask, tile_schedule  # noqa: E402
from minigpt.finetune import LoRALinear                  # noqa: E402
from minigpt.loader import document_mask                 # noqa: E402
from minigpt.model import GPTConfig                      # noqa: E402
from minigpt.scale import state_memory                   # noqa: E402
from minigpt.train import TrainConfig                    # noqa: E402
from minigpt.scale import DEMO                           # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def near_copies():
    "Three documents: a text, a copy with a word in 30 replaced, another."
    from minigpt.data import Document
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in rng.integers(0, 400, 300)]
    copy = [w if i % 30 else "sir" for i, w in enumerate(words)]
    other = [f"v{i}" for i in rng.integers(0, 400, 300)]
    return [Document(n, " ".join(t)) for n, t in (("a", words), ("b", copy),
                                                   ("c", other))]


def tiny_tokenizer():
    "A BPE tokenizer of 14 merges, trained on a line of six words."
    from minigpt.tokenizer import BPETokenizer
    return BPETokenizer.train(["low lower lowest newer newest wider " * 3], 272)


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    "A GGUF file that minigpt.gguf writes for a small GPT-2-shaped model."
    from minigpt.gguf import write_gguf
    from minigpt.model import GPT
    from minigpt.tokenizer import BPETokenizer
    tok = BPETokenizer.train(["To be, or not to be, that is the question. " * 20], 280)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=320, block_size=32, n_layer=2, n_head=2,
                          d_model=64))
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    write_gguf(model, tok, path, "q8_0")
    return path


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    "(data folder, run directory) of a 30-step run that keeps step 20's checkpoint."
    import json
    from minigpt.data import load_shakespeare
    from minigpt.loader import prepare
    from minigpt.train import train
    work = tmp_path_factory.mktemp("run")
    plays = "".join(d.text for d in load_shakespeare().docs[:6])
    (work / "plays.jsonl").write_text("\n".join(
        json.dumps({"text": plays[i * 1500:(i + 1) * 1500]}) for i in range(16)))
    prepare(str(work / "plays.jsonl"), work / "data", vocab_size=300, val_fraction=0.2)
    tiny = GPTConfig(vocab_size=300, block_size=32, n_layer=1, n_head=2, d_model=32)
    train(work / "data", work / "run", tiny,
          TrainConfig(batch_size=4, max_steps=30, eval_every=10, keep_every=20,
                      warmup_steps=2, precision="fp32"), progress_bar=False)
    return work / "data", work / "run"


def texts(fig) -> str:
    return "\n".join(t.get_text() for ax in fig.axes for t in ax.texts)


def test_every_diagram_draws(tiny_gguf, tiny_run, monkeypatch):
    monkeypatch.setitem(plt.rcParams, "figure.max_open_warning", 0)   # 22 at once
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
    # the diagrams of issue 32: no text below 9 points
    new = [D.lsh_bands(near_copies()), D.bpe_merges(tiny_tokenizer(), " lowest"),
           D.static_cache(), D.sandbox(), D.gguf_layout(tiny_gguf), D.server(),
           D.tensor_parallel(DEMO), D.run_directory(*tiny_run)]
    assert all(isinstance(f, matplotlib.figure.Figure) for f in figs + new)
    for f in figs + new:
        f.canvas.draw()                  # lays out every artist, text and image
        assert f.get_size_inches()[0] == D.WIDTH
        assert D.clipped(f) == [], f"{f.axes[0].texts[0].get_text()!r}...: {D.clipped(f)} cut"
        assert small_text(f) == [], f"{f.axes[0].texts[0].get_text()!r}...: {small_text(f)}"
    for f in new:
        sizes = [t.get_fontsize() for ax in f.axes for t in ax.texts]
        assert min(sizes) >= 9, f"{f.axes[0].texts[0].get_text()!r}...: {min(sizes)} pt"


def test_text_that_prints_under_7_points_is_found():
    "A figure prints at the text width: 8 points in a 6.4-inch figure print at 6.8."
    fig, ax = D.canvas(10, 4, 2.0)
    D.label(ax, 2, 2, "big enough", size=9)
    assert small_text(fig) == []
    ax.set_xticks([0, 5]); ax.set_yticks([]); ax.axis("on")
    ax.tick_params(labelsize=8)                      # tick labels count too
    assert small_text(fig) == ["'0' (6.8 pt)", "'5' (6.8 pt)"]
    wide, ax2 = plt.subplots(figsize=(2 * D.WIDTH, 2))  # printed at half its size
    ax2.set_title("a title", fontsize=12); ax2.set_xticks([]); ax2.set_yticks([])
    assert small_text(wide) == ["'a title' (5.1 pt)"]


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


def test_lsh_bands_draw_the_real_signatures_and_buckets():
    from minigpt.data import lsh_candidates, signatures
    docs = near_copies()
    fig = D.lsh_bands(docs, bands=4, rows=3)
    sig = signatures(docs, 12)
    assert np.array_equal(fig.signatures, sig)
    drawn = texts(fig).split("\n")
    assert all(str(int(v)) in drawn for v in sig.flat)       # every value written
    for b in range(4):                    # a bucket per band, as lsh_candidates fills it
        pairs = lsh_candidates(sig[:, b * 3:(b + 1) * 3], 1, 3)
        for i in range(3):
            for j in range(i + 1, 3):
                assert (fig.buckets[b, i] == fig.buckets[b, j]) == ((i, j) in pairs)
    shared = {(i, j) for b in range(4) for i in range(3) for j in range(i + 1, 3)
              if fig.buckets[b, i] == fig.buckets[b, j]}
    assert shared == lsh_candidates(sig, 4, 3) and (0, 1) in shared


def test_bpe_merges_follow_the_real_encoder():
    from minigpt.tokenizer import bpe_encode_chunk, merged_ranks
    tok = tiny_tokenizer()
    for word in (" lowest", " newer", "wid"):
        steps = D.bpe_steps(tok, word)
        piece = word.encode()
        assert steps[0] == (None, list(piece))                    # the bytes
        assert steps[-1][1] == tok.encode_ordinary(word)          # the tokens
        for idx, ids in steps:
            assert tok.decode_bytes(ids) == piece
            if idx is not None:                   # the merges up to idx, no more
                assert ids == bpe_encode_chunk(piece, merged_ranks(tok.merges[:idx - 255]))
                assert idx in ids
    assert [i for i, _ in D.bpe_steps(tok, " lowest")] == [None, 256, 257, 258, 261, 262, 268]
    assert "merge 268:  \u2423lowe + st" in texts(D.bpe_merges(tok, " lowest"))


def test_static_cache_draws_the_slots_and_the_mask():
    from minigpt.generate import padding_mask, positions_of
    lens, new, S = (3, 5), 3, 10
    fig = D.static_cache(lens, new, S)
    steps, w = fig.steps, max(lens)
    for b, n in enumerate(lens):             # what each slot is, pass by pass
        pad = w - n
        for r in range(new + 1):
            want = [3] * pad + [1] * (w + r - 1 - pad) + [2] + [0] * (S - w - r)
            if r == 0: want = [3] * pad + [2] * n + [0] * (S - w)
            assert D.drawn(fig, f"row {b}").astype(int).tolist()[r] == want
    assert [s["slot"] for s in steps] == [None] + list(range(w, w + new))
    # hiding the empty slots and the padding gives the logits of the whole text
    model, ids = steps[0]["model"], steps[0]["ids"]
    valid = torch.zeros_like(ids, dtype=torch.bool)
    for b, n in enumerate(lens): valid[b, w - n:] = True
    with torch.no_grad():
        for r in range(1, new + 1):
            v = valid[:, :w + r]
            full = model(ids[:, :w + r], positions=positions_of(v),
                         mask=padding_mask(v, w + r))[0][:, -1]
            assert torch.allclose(steps[r]["logits"], full, atol=1e-5)


def test_sandbox_draws_what_run_check_does():
    import math, sys
    from minigpt.evaluate import SANDBOX
    fig = D.sandbox(timeout=1.0)
    assert {k: r["outcome"] for k, (r, _) in fig.runs.items()} == {
        "passed": "passed", "failed": "failed", "timed out": "timed out"}
    argv, kw = fig.runs["passed"][1]
    assert argv[0] == sys.executable and argv[argv.index(SANDBOX) - 1] == "-c"
    assert kw["env"] == {} and kw["start_new_session"] and kw["cwd"].name.startswith("minigpt-sandbox-")
    t = texts(fig)
    assert "python -I -B -X utf8 -c SANDBOX" in t and "environment: {}" in t
    assert f"RLIMIT_CPU: {math.ceil(1.0) + 1} s" in t and "RLIMIT_AS: 1,024 MiB" in t
    assert "its own session and process group" in t and "AssertionError" in t
    import ast
    refused = next(ast.literal_eval(node.value) for node in ast.parse(SANDBOX).body
                   if isinstance(node, ast.Assign) and node.targets[0].id == "REFUSED")
    assert all(event.rstrip("._") in t for event in refused)   # every refused event
    assert "RLIMIT_NPROC" in t and "import _posixsubprocess" in t and "pipe: calls" in t


def test_gguf_layout_matches_an_independent_reader(tiny_gguf):
    gguf = pytest.importorskip("gguf")
    fig = D.gguf_layout(tiny_gguf)
    f, r = fig.sections, gguf.GGUFReader(tiny_gguf)
    assert f["data"] == r.data_offset and f["data"] % 32 == 0
    assert [i["name"] for i in f["infos"]] == [t.name for t in r.tensors]
    assert [f["data"] + i["offset"] for i in f["infos"]] == [t.data_offset for t in r.tensors]
    assert [i["nbytes"] for i in f["infos"]] == [int(t.n_bytes) for t in r.tensors]
    assert [kv["key"] for kv in f["kvs"]] == [k for k in r.fields if not k.startswith("GGUF.")]
    assert f["size"] == tiny_gguf.stat().st_size
    t = texts(fig)
    assert f"{f['data']:,}\u2013{f['size'] - 1:,}" in t           # the data's bytes
    assert f"{f['n_tensors']} tensors, {f['n_kv']} metadata entries" in t


def test_server_draws_the_real_routes_queue_and_events(monkeypatch):
    pytest.importorskip("fastapi")
    import minigpt.serve as S
    from minigpt.model import GPT
    fig = D.server(("To", " be"))
    assert set(fig.routes) == {("GET", "/"), ("GET", "/v1/models"),
                               ("POST", "/v1/completions"), ("POST", "/v1/chat/completions")}
    tok = tiny_tokenizer()       # a real Engine decodes as many requests as drawn
    monkeypatch.setattr(S, "load_run", lambda run, device=None: (
        GPT(GPTConfig(vocab_size=272, block_size=16, n_layer=1, n_head=2, d_model=8)), tok))
    assert S.Engine("runs/x").max_batch == fig.max_batch == S.MAX_BATCH
    assert f"a batch of up to {S.MAX_BATCH} requests:" in texts(fig)
    assert fig.events[0].startswith('data: {\u2026 "delta": {"role": "assistant"')
    assert '"delta": {"content": " be"}' in fig.events[2]
    assert '"finish_reason": "stop"' in fig.events[-2] and fig.events[-1] == "data: [DONE]"
    assert all(e.startswith("data: ") for e in D.sse_events()) and \
        D.sse_events()[-1] == S.sse("[DONE]")


@pytest.mark.parametrize("world", [2, 4])
def test_tensor_parallel_shapes_come_from_the_real_split(world):
    import inspect
    import torch.distributed as dist
    from minigpt.scale import train_tensor_parallel
    source = inspect.getsource(train_tensor_parallel)          # the split drawn is the chapter's
    assert '"fc": ColwiseParallel()' in source and '"proj": RowwiseParallel()' in source
    s = D.tensor_parallel(DEMO, world=world, batch=8).shapes
    d, d_ff = DEMO.d_model, DEMO.d_ff
    assert s["local"]["fc.weight"] == (d_ff // world, d)
    assert s["local"]["proj.weight"] == (d, d_ff // world)
    assert s["hidden"] == (8, DEMO.block_size, d_ff // world)
    assert s["y"] == s["x"] == (8, DEMO.block_size, d)
    assert s["comms"] == {"all_reduce": 1}                # one all-reduce, after proj
    assert not dist.is_initialized()


def test_run_directory_marks_what_a_resume_reads(tiny_run):
    import hashlib
    from minigpt.checkpoint import CHECKPOINTS, MANIFEST, STATE, WEIGHTS
    data, run = tiny_run
    digest = lambda: {p: hashlib.sha256(p.read_bytes()).hexdigest()
                      for p in run.rglob("*") if p.is_file()}
    before = digest()
    fig = D.run_directory(data, run)
    assert digest() == before                             # traced on a copy
    newest, kept = f"{CHECKPOINTS}/step-000030", f"{CHECKPOINTS}/step-000020"
    assert {p for p, _ in fig.tree} >= {"config.json", "tokenizer.json", "metrics.jsonl",
                                        WEIGHTS, "best.safetensors", newest, kept}
    assert fig.read == {"config.json", "tokenizer.json", "metrics.jsonl", f"{newest}/{MANIFEST}",
                        f"{newest}/{WEIGHTS}", f"{newest}/{STATE}"}
    assert fig.written == {"metrics.jsonl"}                # trimmed to the checkpoint
    assert fig.marks[f"{kept}/{STATE}"] == [] and fig.marks["metrics.jsonl"] == ["read", "rewritten"]
    assert "optimizer, scaler, sampler, rng, progress" in texts(fig)
