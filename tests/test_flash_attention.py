"""FlashAttention's tiled forward pass (chapter 4, `minigpt.attention.flash_attention`)
equals PyTorch's SDPA on random shapes and blocks, with and without the causal mask, and
its peak memory grows linearly with T where the naive attention's grows quadratically."""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from minigpt.attention import attention, causal_mask, flash_attention, peak_memory

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@st.composite
def shapes(draw):
    "Batch, heads, Tq <= Tk (causal_mask's convention), width, blocks, mask."
    Tk = draw(st.integers(1, 40))
    return dict(B=draw(st.integers(1, 3)), H=draw(st.integers(1, 3)),
                Tq=draw(st.integers(1, Tk)), Tk=Tk, d=draw(st.integers(1, 24)),
                block_q=draw(st.integers(1, 48)), block_k=draw(st.integers(1, 48)),
                causal=draw(st.booleans()), seed=draw(st.integers(0, 2**16)))


@settings(max_examples=40, deadline=None)
@given(shapes())
def test_flash_attention_equals_sdpa(c):
    g = torch.Generator().manual_seed(c["seed"])
    q = torch.randn(c["B"], c["H"], c["Tq"], c["d"], generator=g, dtype=torch.float64)
    k, v = (torch.randn(c["B"], c["H"], c["Tk"], c["d"], generator=g,
                        dtype=torch.float64) for _ in range(2))
    mask = causal_mask(c["Tq"], c["Tk"]) if c["causal"] else None
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    out = flash_attention(q, k, v, c["causal"], c["block_q"], c["block_k"])
    assert out.dtype == q.dtype and out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    # in float32 too, accumulating in float32
    out32 = flash_attention(q.float(), k.float(), v.float(), c["causal"], c["block_q"],
                            c["block_k"])
    torch.testing.assert_close(out32, ref.float(), rtol=0, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_flash_attention_on_the_inputs_device_and_dtype(device):
    q, k, v = torch.randn(3, 2, 2, 37, 16, device=device)
    mask = causal_mask(37, device=device)
    for dtype in (torch.float32, torch.bfloat16):
        qd, kd, vd = q.to(dtype), k.to(dtype), v.to(dtype)
        out = flash_attention(qd, kd, vd, causal=True, block_q=8, block_k=16)
        assert out.dtype == dtype and out.device == q.device
        ref = F.scaled_dot_product_attention(qd.float(), kd.float(), vd.float(),
                                             attn_mask=mask)
        # what is lost is at most the final rounding to the input's precision
        eps = torch.finfo(dtype).eps
        assert ((out.float() - ref).abs() <= ref.abs() * eps + 1e-5).all()


def test_bad_input_gets_a_clear_error():
    q = torch.randn(1, 1, 5, 8)
    with pytest.raises(ValueError, match="Tq <= Tk"):
        flash_attention(q, q[..., :3, :], q[..., :3, :], causal=True)
    with pytest.raises(ValueError, match="same width"):
        flash_attention(q, q[..., :4], q)
    with pytest.raises(ValueError, match="block sizes"):
        flash_attention(q, q, q, block_k=0)


@pytest.mark.parametrize("device", DEVICES)
def test_memory_naive_quadratic_tiled_linear(device):
    d, block = 32, 64
    lengths = [128, 256, 512]
    naive, tiled = {}, {}
    for T in lengths:
        q, k, v = torch.randn(3, 1, 1, T, d, device=device)
        attention(q, k, v); flash_attention(q, k, v, block_q=block, block_k=block)
        naive[T] = peak_memory(attention, q, k, v)     # after a warm-up call
        tiled[T] = peak_memory(flash_attention, q, k, v, block_q=block, block_k=block)
    for T, T2 in zip(lengths, lengths[1:]):
        # naive: the T x T scores and weights dominate, 4x per doubling of T
        assert naive[T2] - naive[T] >= 0.95 * 2 * 4 * (T2 * T2 - T * T)
        assert naive[T2] / naive[T] > 3.5
        # tiled: only the output and log-sum-exp grow, 4 (d + 1) bytes a query
        grown = 4 * (T2 - T) * (d + 1)
        assert abs((tiled[T2] - tiled[T]) - grown) <= 0.05 * grown + 2048
        assert tiled[T2] / tiled[T] < 2
    assert tiled[512] < naive[512] / 4
