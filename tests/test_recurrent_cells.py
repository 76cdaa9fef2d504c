"""Chapter 5's step-by-step RNN and LSTM (`Recurrent`) against PyTorch's `nn.RNN` and `nn.LSTM`
with copied weights, on random shapes: outputs, final states and gradients. Float64, so that the
tolerance is tight and no TF32 kernel (cuDNN's default on a GPU) blurs the comparison."""
import pytest
import torch
import torch.nn as nn

from minigpt.model import Recurrent, RNNLanguageModel

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
F64 = torch.float64


def as_tuple(state): return state if isinstance(state, tuple) else (state,)


def random_shape(seed: int) -> dict:
    "Input width, hidden width, layers, batch and steps drawn from `seed`."
    g = torch.Generator().manual_seed(seed)
    draw = lambda lo, hi: int(torch.randint(lo, hi + 1, (1,), generator=g))
    return dict(d_in=draw(1, 20), H=draw(1, 24), L=draw(1, 3), B=draw(1, 6), T=draw(1, 40))


@pytest.fixture(autouse=True)
def one_thread():
    "Hundreds of tiny steps: one thread is as fast, and does not stall on a busy machine."
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["rnn", "lstm"])
@pytest.mark.parametrize("seed", range(5))
def test_matches_pytorch_on_random_shapes(seed, kind, device):
    s = random_shape(seed)
    torch.manual_seed(seed)
    ref = (nn.LSTM if kind == "lstm" else nn.RNN)(s["d_in"], s["H"], s["L"], batch_first=True)
    ours = Recurrent(s["d_in"], s["H"], s["L"], kind)
    ours.load_state_dict(ref.state_dict())            # the same names and shapes
    ref, ours = ref.to(device, F64), ours.to(device, F64)
    x = torch.randn(s["B"], s["T"], s["d_in"], dtype=F64, device=device)
    w = torch.randn(s["B"], s["T"], s["H"], dtype=F64, device=device)
    h0 = torch.randn(s["L"], s["B"], s["H"], dtype=F64, device=device)
    given = (h0, torch.randn_like(h0)) if kind == "lstm" else h0
    for start in (None, given):                       # zeros, then a given state
        results = []
        for m in (ref, ours):
            m.zero_grad()
            xs = x.clone().requires_grad_()
            out, final = m(xs, start)
            (out * w).sum().backward()
            results.append([out, *as_tuple(final), xs.grad, *(p.grad for p in m.parameters())])
        for a, b in zip(*results, strict=True):
            assert a.shape == b.shape and a.device == b.device
            torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("kind", ["rnn", "lstm"])
def test_state_handed_on_continues_the_sequence(kind):
    torch.manual_seed(0)
    m = Recurrent(5, 7, n_layer=2, kind=kind).double()
    x = torch.randn(3, 11, 5, dtype=F64)
    with torch.no_grad():
        whole, final = m(x)
        first, mid = m(x[:, :4])
        rest, final2 = m(x[:, 4:], mid)
    torch.testing.assert_close(torch.cat([first, rest], 1), whole)
    for a, b in zip(as_tuple(final2), as_tuple(final), strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("kind", ["rnn", "lstm"])
def test_same_seed_same_model_fused_or_not(kind):
    "`fused=False` draws the same parameters in the same order: one seed, one model."
    models = []
    for fused in (True, False):
        torch.manual_seed(3)
        models.append(RNNLanguageModel(50, 12, 2, kind=kind, fused=fused))
    a, b = (dict(m.named_parameters()) for m in models)
    assert a.keys() == b.keys()
    for name in a: assert torch.equal(a[name], b[name]), name
    idx = torch.randint(0, 50, (2, 13))
    (la, sa), (lb, sb) = (m(idx, idx) for m in models)
    torch.testing.assert_close(lb, la, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sb, sa)


def test_fused_default_is_pytorchs_layer():
    "Chapter 6 trains the default: PyTorch's LSTM, with the parameters it always had."
    m = RNNLanguageModel(4096, 256, n_layer=6)
    assert type(m.rnn) is nn.LSTM
    assert sum(p.numel() for p in m.parameters()) == 4096 * 256 + 6 * 8 * (256 * 256 + 256)


def test_bad_input_says_what_to_do():
    m = Recurrent(8, 4)
    with pytest.raises(ValueError, match=r"expected \(batch, time >= 1, 8\)"):
        m(torch.randn(2, 3, 7))
    with pytest.raises(ValueError, match=r"expected \(batch, time >= 1, 8\)"):
        m(torch.randn(2, 0, 8))
    with pytest.raises(ValueError, match="use lstm or rnn"):
        Recurrent(8, 4, kind="gru")
