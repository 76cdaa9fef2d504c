"""The whole pipeline on a GPU: prepare, train (bf16, fp16, compiled, Llama-shaped), resume,
generate, evaluate, fine-tune and chat, each checked to have run on the device.

    python -m pytest -q tests/test_cuda.py                           # on a CUDA machine
    MINIGPT_TEST_DEVICE=cpu python -m pytest -q tests/test_cuda.py   # the same tests here

MINIGPT_TEST_DEVICE names the device (default `cuda`; also `cuda:1`, `mps`, `cpu`). Where it
is not available the module is skipped (an error instead with MINIGPT_TEST_REQUIRE_DEVICE=1,
as tools/gpu_check.sh sets), and on a machine without an NVIDIA driver it is
skipped before PyTorch is imported, so that a plain `pytest` on a CPU machine pays nothing.
The fp16 case needs CUDA; the `--compile` case runs on CUDA, elsewhere only with
MINIGPT_TEST_COMPILE=1 (inductor on a CPU compiles C++ for minutes).

The command line runs as a separate process through `python -m minigpt`'s own entry
(`runpy`, as `-m` does), wrapped so that the process reports, as it exits, the most CUDA
memory PyTorch allocated in it: that, not the text a command prints, is how these tests see
that a command used the GPU; one command with `--device cpu` is the control that reads 0.
Models are tiny (2 layers, d_model 64): the module takes a few minutes on a CPU, well under
that on a GPU.
"""
import os
import shutil
import sys

import pytest

DEV = os.environ.get("MINIGPT_TEST_DEVICE", "cuda")
KIND = DEV.split(":")[0]


def _why_unavailable() -> str | None:
    "Why DEV cannot be used here, or None; answers without torch where no driver is."
    if KIND not in ("cuda", "mps", "cpu"):
        pytest.fail(f"MINIGPT_TEST_DEVICE={DEV!r}: use cuda, cuda:N, mps or cpu", pytrace=False)
    if KIND == "cuda" and not (shutil.which("nvidia-smi") or any(os.path.exists(p) for p in (
            "/dev/nvidiactl", "/dev/nvidia0", "/proc/driver/nvidia/version"))):
        return "no NVIDIA driver on this machine (MINIGPT_TEST_DEVICE=cpu runs these tests here)"
    import torch
    if KIND == "cuda":
        if not torch.cuda.is_available():
            return f"torch {torch.__version__} sees no CUDA device"
        index = int(DEV.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            return f"{DEV}: only {torch.cuda.device_count()} CUDA device(s)"
    if KIND == "mps" and not torch.backends.mps.is_available():
        return "torch sees no MPS device"
    return None


_reason = _why_unavailable()
if _reason and os.environ.get("MINIGPT_TEST_REQUIRE_DEVICE") == "1":   # tools/gpu_check.sh
    pytest.fail(f"MINIGPT_TEST_REQUIRE_DEVICE=1 but {DEV} is unavailable: {_reason}",
                pytrace=False)
if _reason: pytest.skip(_reason, allow_module_level=True)

# deterministic cuBLAS for the exact-resume test; read when cuBLAS starts, so set it first
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import json
import math
import re
import subprocess
from contextlib import contextmanager
from pathlib import Path

import torch

from minigpt.checkpoint import load_run
from minigpt.device import (autocast, choose_precision, cpu_has_bf16, default_device,
                            resolve_device)
from minigpt.generate import SamplingConfig, decode_steps, generate
from minigpt.loader import prepare
from minigpt.model import GPT, GPTConfig
from minigpt.train import TrainConfig, train

pytestmark = pytest.mark.cuda   # `-m "not cuda"` leaves the module out

ROOT = Path(__file__).resolve().parent.parent
CUDA = KIND == "cuda"
# bf16 where the device computes in it (CUDA, MPS, a CPU with bf16 units); else fp32
HAS_BF16 = (torch.cuda.is_bf16_supported() if CUDA else KIND == "mps" or cpu_has_bf16())
MIXED = "bf16" if HAS_BF16 else "fp32"
NO_BF16 = f"{DEV} has no bf16 arithmetic (minigpt refuses to emulate it)"
VOCAB = 512
# the chat examples of `minigpt tasks` reach ~220 tokens of this tokenizer: 384 leaves room
MODEL = dict(vocab_size=VOCAB, block_size=384, n_layer=2, n_head=4, d_model=64)
LLAMA = dict(norm="rmsnorm", mlp="swiglu", pos="rope", n_kv_head=2, tie_weights=False,
             bias=False)
CLI_MODEL = ["--preset", "cpu", *(a for k, v in MODEL.items() if k != "vocab_size"
                                  for a in ("--set", f"{k}={v}"))]
CLI_TRAIN = ["--seq-len", "64", "--batch-size", "8", "--warmup-steps", "2", "--lr", "3e-3"]
PEAK = "minigpt-test: peak CUDA bytes "
# `python -m minigpt ARGS`, reporting at exit how much CUDA memory the process allocated
DRIVER = f"""
import runpy, sys
try: runpy.run_module("minigpt", run_name="__main__", alter_sys=True)
finally:                       # also on SystemExit, the way every command ends
    torch = sys.modules.get("torch")
    used = torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized()
    peak = (sum(map(torch.cuda.max_memory_allocated, range(torch.cuda.device_count())))
            if used else 0)
    print("{PEAK}%d" % peak, file=sys.stderr)
"""


@pytest.fixture(scope="module", autouse=True)
def device_env():
    "In this process the library's default device is DEV; the precision is not forced."
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MINIGPT_DEVICE", DEV)
        mp.delenv("MINIGPT_PRECISION", raising=False)
        yield


def child_env(**extra) -> dict:
    "The environment of a command: no MINIGPT_DEVICE/PRECISION, the package importable."
    env = {k: v for k, v in os.environ.items()
           if k not in ("MINIGPT_DEVICE", "MINIGPT_PRECISION")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    return env | extra


def minigpt(*args, input=None, env=None):
    """Run `python -m minigpt ARGS`: (completed process, peak CUDA bytes in it). The child
    gets no MINIGPT_DEVICE, so only its --device flag can put it on the GPU."""
    r = subprocess.run([sys.executable, "-c", DRIVER, *map(str, args)], capture_output=True,
                       text=True, input=input, env=child_env(**(env or {})), timeout=600)
    found = re.findall(rf"^{PEAK}(\d+)$", r.stderr, flags=re.M)
    assert found, f"the child did not report its memory (rc {r.returncode}):\n{r.stderr}"
    r.stderr = r.stderr.replace(f"{PEAK}{found[-1]}\n", "")
    return r, int(found[-1])


def ok(r):
    "The output of a command that must succeed, with its stderr on failure."
    assert r.returncode == 0, f"rc {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    return r.stdout


def assert_on_device(peak: int, what: str):
    "The process allocated CUDA memory (when DEV is CUDA; nothing to see elsewhere)."
    if CUDA: assert peak > 0, f"{what}: no CUDA memory was allocated: it did not run on {DEV}"


@contextmanager
def cuda_peak():
    "Measure this process's peak CUDA memory over the block: yields a dict with 'bytes'."
    out = {"bytes": 0}
    if CUDA:
        torch.cuda.synchronize(DEV); torch.cuda.reset_peak_memory_stats(DEV)
    yield out
    if CUDA:
        torch.cuda.synchronize(DEV); out["bytes"] = torch.cuda.max_memory_allocated(DEV)


def train_config(**kw) -> TrainConfig:
    "A small TrainConfig."
    return TrainConfig(**(dict(batch_size=16, seq_len=128, warmup_steps=10, lr=3e-3,
                               eval_every=30, eval_batches=4, log_every=10) | kw))


def model_cfg(**kw) -> GPTConfig:
    return GPTConfig.preset("cpu", **(MODEL | kw))


def same_weights(a: Path, b: Path) -> tuple[bool, float]:
    "(bit for bit equal, largest absolute difference) of two safetensors files."
    from safetensors.torch import load_file
    x, y = load_file(str(a)), load_file(str(b))
    assert x.keys() == y.keys()
    diff = max((x[k].double() - y[k].double()).abs().max().item() for k in x)
    return all(torch.equal(x[k], y[k]) for k in x), diff


@contextmanager
def exact_fp32():
    "True fp32 matrix products (no TF32), as the cache/no-cache comparison needs."
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try: yield
    finally: torch.set_float32_matmul_precision(before)


# --- data and runs, made once --------------------------------------------------------------

@pytest.fixture(scope="module")
def data(tmp_path_factory):
    "The built-in Shakespeare corpus with a 512-token BPE (about 5 s on two cores)."
    out = tmp_path_factory.mktemp("data") / "shakespeare"
    prepare("shakespeare", out, vocab_size=VOCAB, workers=min(8, os.cpu_count() or 1))
    return out


@pytest.fixture(scope="module")
def base_run(data, tmp_path_factory):
    """A GPT-2-shaped run trained in-process in bf16 (fp32 where the device has no bf16):
    (run dir, result, peak CUDA bytes)."""
    run = tmp_path_factory.mktemp("runs") / "base"
    with cuda_peak() as peak:
        result = train(data, run, model_cfg(), train_config(max_steps=60, precision=MIXED),
                       progress_bar=False, device=DEV)
    return run, result, peak["bytes"]


@pytest.fixture(scope="module")
def llama_run(data, tmp_path_factory):
    "A Llama-shaped run trained through the command line: (run dir, stdout, peak bytes)."
    run = tmp_path_factory.mktemp("runs") / "llama"
    sets = [a for k, v in LLAMA.items()
            for a in ("--set", f"{k}={v if isinstance(v, str) else json.dumps(v)}")]
    r, peak = minigpt("train", "--data", data, "--out", run, "--device", DEV, *CLI_MODEL,
                      *sets, *CLI_TRAIN, "--max-steps", 30, "--eval-every", 30)
    return run, ok(r), peak


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    "`minigpt tasks`: instruction examples (sft.jsonl) and held-out ones beside them."
    out = tmp_path_factory.mktemp("tasks")
    r, _ = minigpt("tasks", "--out", out, "--examples", 64, "--heldout", 8)
    ok(r)
    return out / "sft.jsonl"


@pytest.fixture(scope="module")
def sft_run(base_run, tasks, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "sft"
    r, peak = minigpt("sft", "--run", base_run[0], "--data", tasks, "--out", out,
                      "--device", DEV, "--steps", 20, "--batch-size", 4)
    return out, ok(r), peak


@pytest.fixture(scope="module")
def dpo_run(sft_run, tasks, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "dpo"
    r, peak = minigpt("dpo", "--run", sft_run[0], "--data", tasks, "--out", out,
                      "--device", DEV, "--steps", 10, "--batch-size", 4)
    return out, ok(r), peak


# --- the device and the precision ----------------------------------------------------------

def test_defaults_pick_the_device_and_precision(monkeypatch):
    assert resolve_device().type == KIND                     # MINIGPT_DEVICE=DEV
    assert resolve_device(DEV) == torch.device(DEV)
    device = torch.device(DEV)
    if CUDA:
        assert default_device().type == "cuda"
        assert choose_precision(device) == ("bf16" if torch.cuda.is_bf16_supported()
                                            else "fp16")
    monkeypatch.setenv("MINIGPT_PRECISION", "fp32")
    assert choose_precision(device) == "fp32"
    if HAS_BF16: assert choose_precision(device, "bf16") == "bf16"   # a request wins


def test_info_names_the_gpu():
    r = subprocess.run([sys.executable, "-m", "minigpt", "info"], capture_output=True,
                       text=True, timeout=120, cwd=ROOT, env=child_env())
    out = ok(r)
    if CUDA: assert f"cuda: {torch.cuda.device_count()} x " in out, out
    if "runs on:" in out:                 # the default device of a command
        assert re.search(r"runs on: (cuda|mps|cpu)", out).group(1) == default_device().type


# --- training ------------------------------------------------------------------------------

@pytest.mark.skipif(not HAS_BF16, reason=NO_BF16)
def test_train_bf16(base_run):
    run, result, peak = base_run
    assert result["precision"] == "bf16" and result["device"].startswith(KIND)
    assert_on_device(peak, "train in bf16")
    assert result["step"] == 60 and result["reason"] == "max_steps"
    assert result["val_loss"] < math.log(VOCAB) - 0.5        # it learned something
    assert result["tokens_per_s"] > 0 and 0 < result["mfu"] < 1
    for name in ("config.json", "model.safetensors", "best.safetensors",
                 "checkpoints/step-000060/state.pt"):
        assert (run / name).exists(), name


@pytest.mark.skipif(not CUDA, reason="fp16 training with a GradScaler needs CUDA")
def test_train_fp16_with_grad_scaler(data, tmp_path):
    run = tmp_path / "fp16"
    with cuda_peak() as peak:
        result = train(data, run, model_cfg(), train_config(max_steps=20, eval_every=20,
                                                             precision="fp16"),
                       progress_bar=False, device=DEV)
    assert result["precision"] == "fp16" and result["device"].startswith("cuda")
    assert_on_device(peak["bytes"], "train in fp16")
    assert math.isfinite(result["loss"]) and math.isfinite(result["val_loss"])
    scaler = torch.load(run / "checkpoints/step-000020/state.pt",
                        weights_only=True)["scaler"]
    assert scaler, "the saved GradScaler state is empty: the scaler was disabled"
    assert scaler["scale"] > 0 and math.isfinite(scaler["scale"])


@pytest.mark.skipif(not CUDA and os.environ.get("MINIGPT_TEST_COMPILE") != "1",
                    reason="torch.compile is checked on CUDA (elsewhere set "
                           "MINIGPT_TEST_COMPILE=1: inductor compiles C++ for minutes)")
def test_train_compiled(data, tmp_path):
    run, cache = tmp_path / "compiled", tmp_path / "inductor"
    r, peak = minigpt("train", "--data", data, "--out", run, "--device", DEV, "--compile",
                      *CLI_MODEL, *CLI_TRAIN, "--max-steps", 10, "--eval-every", 10,
                      env={"TORCHINDUCTOR_CACHE_DIR": str(cache)})
    assert "stopped by max_steps at step 10" in ok(r)
    assert_on_device(peak, "train --compile")
    assert json.loads((run / "config.json").read_text())["train"]["compile"] is True
    assert cache.exists() and any(p.is_file() for p in cache.rglob("*")), \
        "inductor wrote no code: the step was not compiled"


def test_train_llama_shape(llama_run):
    run, out, peak = llama_run
    assert "stopped by max_steps at step 30" in out
    assert_on_device(peak, "train a Llama-shaped model")
    saved = json.loads((run / "config.json").read_text())["model"]
    assert {k: saved[k] for k in LLAMA} == LLAMA


def test_resume_is_exact(data, tmp_path):
    """8 steps in one go and 4 + `--resume` to 8 end in the same weights, bit for bit, in
    fp32 with deterministic kernels. Where the device does not repeat even a plain run bit
    for bit, the test says so and asks for the resumed run to be as close as a rerun."""
    cfg = dict(max_steps=8, eval_every=4, eval_batches=2, precision="fp32")
    def whole(name):
        train(data, tmp_path / name, model_cfg(), train_config(**cfg), progress_bar=False,
              device=DEV)
        return tmp_path / name / "model.safetensors"
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        once = whole("once")
        split = tmp_path / "split"
        first = train(data, split, model_cfg(), train_config(**cfg), stop_at=4,
                      progress_bar=False, device=DEV)
        assert first["step"] == 4 and first["reason"] == "stop_at"
        second = train(data, split, resume=True, progress_bar=False, device=DEV)
        assert second["step"] == 8 and second["device"].startswith(KIND)
        equal, diff = same_weights(once, split / "model.safetensors")
        if not equal:
            again_equal, noise = same_weights(once, whole("again"))
            assert not again_equal, (f"two plain runs agree bit for bit but the resumed run "
                                     f"differs by up to {diff:.3g}: resuming is not exact")
            assert diff <= 10 * noise + 1e-6, (f"resumed run differs by {diff:.3g}, a rerun "
                                               f"by {noise:.3g}")
            pytest.xfail(f"{DEV} does not repeat fp32 training bit for bit (a rerun differs "
                         f"by {noise:.3g}); the resumed run is as close ({diff:.3g})")
    finally:
        torch.use_deterministic_algorithms(False)


# --- generation ----------------------------------------------------------------------------

@pytest.mark.parametrize("shape", ["gpt2", "llama"])
def test_greedy_with_cache_equals_without(shape, request):
    run = request.getfixturevalue("base_run" if shape == "gpt2" else "llama_run")[0]
    model, tok = load_run(run, device=DEV)
    assert next(model.parameters()).device.type == KIND
    assert next(model.parameters()).dtype == torch.float32
    # a batch with left padding, an empty prompt, and enough tokens to slide the window
    prompts = ["ROMEO:\n", "To be, or not to be", ""]
    cfg = SamplingConfig(max_new_tokens=model.cfg.block_size + 40, temperature=0,
                         stop_at_eot=False)
    with exact_fp32(), cuda_peak() as peak:
        cached = generate(model, tok, prompts, cfg, use_cache=True)
        plain = generate(model, tok, prompts, cfg, use_cache=False)
    assert_on_device(peak["bytes"], "generate")
    assert all(len(t) > 0 for t in cached)
    assert cached == plain


COMPILE_HERE = CUDA or os.environ.get("MINIGPT_TEST_COMPILE") == "1"
NO_COMPILE = ("torch.compile is checked on CUDA (elsewhere set MINIGPT_TEST_COMPILE=1: "
              "inductor compiles C++ for minutes)")


@pytest.mark.skipif(not COMPILE_HERE, reason=NO_COMPILE)
@pytest.mark.parametrize("shape", ["gpt2", "llama"])
def test_compiled_decoding_equals_eager(shape, request):
    "Fixed-shape steps, compiled (CUDA graphs on a GPU), draw the eager steps' tokens in fp32."
    run = request.getfixturevalue("base_run" if shape == "gpt2" else "llama_run")[0]
    model, tok = load_run(run, device=DEV)
    prompts = ["ROMEO:\n", "To be, or not to be", ""]      # padded rows; the window slides
    cfg = SamplingConfig(max_new_tokens=model.cfg.block_size + 40, temperature=0,
                         stop_at_eot=False)
    with exact_fp32(), cuda_peak() as peak:
        eager = generate(model, tok, prompts, cfg)
        compiled = generate(model, tok, prompts, cfg, compile=True)
        again = generate(model, tok, prompts[:1], cfg, compile=True)   # another batch size
    assert_on_device(peak["bytes"], "compiled decoding")
    assert compiled == eager and again[0] == eager[0]
    with autocast(resolve_device(DEV), MIXED):              # and in the device's precision
        assert all(generate(model, tok, prompts, cfg, compile=True))


@pytest.mark.skipif(not CUDA, reason="only CUDA reports the waits (set_sync_debug_mode)")
@pytest.mark.parametrize("temperature", [0, 0.8])
def test_decode_steps_never_wait_for_the_gpu(base_run, temperature):
    "After the first step (which copies the prompts), the loop queues work and never waits."
    model, tok = load_run(base_run[0], device=DEV)
    cfg = SamplingConfig(max_new_tokens=model.cfg.block_size + 8, temperature=temperature,
                         top_k=50, top_p=0.95, seed=0, stop_at_eot=False)   # slides, too
    steps = decode_steps(model, [tok.encode("ROMEO:"), tok.encode("To be")], cfg,
                         vocab_size=tok.vocab_size)
    first = next(steps)
    torch.cuda.set_sync_debug_mode("error")       # a synchronising call raises
    try: rest = [t for t, _ in steps]
    finally: torch.cuda.set_sync_debug_mode(0)
    assert len(rest) == cfg.max_new_tokens - 1 and first[0].device.type == "cuda"


def test_activation_checkpointing_same_gradients():
    "Recomputing the blocks in backward changes neither the loss nor a gradient."
    dev = resolve_device(DEV)
    torch.manual_seed(0)
    model = GPT(model_cfg(**LLAMA, dropout=0.1)).to(dev).train()
    x, y = (torch.randint(0, VOCAB, (4, 64), device=dev) for _ in range(2))
    def loss_and_grads(recompute: bool):
        model.activation_checkpointing = recompute
        model.zero_grad(set_to_none=True); torch.manual_seed(1)     # the same dropout
        loss = model(x, y)[1]
        loss.backward()
        return loss.item(), [p.grad for p in model.parameters()]
    torch.use_deterministic_algorithms(True)      # fp32, kernels that add in a fixed order
    try:
        with exact_fp32():
            (l0, g0), (l1, g1) = loss_and_grads(False), loss_and_grads(True)
    finally:
        torch.use_deterministic_algorithms(False)
    assert l0 == l1
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in zip(g0, g1))


def test_sampling_with_a_seed_repeats(base_run):
    model, tok = load_run(base_run[0], device=DEV)
    cfg = lambda seed: SamplingConfig(max_new_tokens=64, temperature=1.0, top_k=50,
                                      top_p=0.95, seed=seed, stop_at_eot=False)
    a = generate(model, tok, ["ROMEO:", "JULIET:"], cfg(7))
    b = generate(model, tok, ["ROMEO:", "JULIET:"], cfg(7))
    assert a == b
    assert generate(model, tok, ["ROMEO:", "JULIET:"], cfg(8)) != a   # the seed matters
    assert generate(model, tok, "ROMEO:", cfg(7)) == generate(model, tok, "ROMEO:", cfg(7))


def test_generate_command_with_a_seed_repeats(base_run):
    args = ["generate", "--run", base_run[0], "--device", DEV, "--prompt", "ROMEO:",
            "--max-new-tokens", 48, "--temperature", 0.9, "--top-p", 0.9, "--seed", 3]
    (r1, peak), (r2, _) = minigpt(*args), minigpt(*args)
    assert ok(r1) == ok(r2) and r1.stdout.startswith("ROMEO:")
    assert len(r1.stdout.strip()) > len("ROMEO:")
    assert_on_device(peak, "minigpt generate")


@pytest.mark.skipif(not COMPILE_HERE, reason=NO_COMPILE)
def test_generate_command_compiled(base_run):
    "`--compile` streams the text that the eager steps stream (greedy, the device's precision)."
    args = ["generate", "--run", base_run[0], "--device", DEV, "--prompt", "ROMEO:",
            "--max-new-tokens", 64, "--temperature", 0, "--precision", "fp32"]
    (eager, _), (compiled, peak) = minigpt(*args), minigpt(*args, "--compile")
    assert ok(compiled) == ok(eager) and len(eager.stdout.strip()) > len("ROMEO:")
    assert_on_device(peak, "minigpt generate --compile")


@pytest.mark.skipif(not CUDA, reason="the control for the CUDA measurement")
def test_device_cpu_keeps_a_command_off_the_gpu(base_run):
    r, peak = minigpt("generate", "--run", base_run[0], "--device", "cpu", "--prompt",
                      "ROMEO:", "--max-new-tokens", 8, "--temperature", 0)
    ok(r)
    assert peak == 0, f"--device cpu allocated {peak} bytes of CUDA memory"


# --- evaluation, fine-tuning, chat ---------------------------------------------------------

def eval_numbers(out: str) -> dict:
    return {k: float(v) for k, v in re.findall(r"^(\w+)\s+(-?[\d.]+)$", out, flags=re.M)}


def test_eval_command(base_run):
    run = base_run[0]
    r, peak = minigpt("eval", "--run", run, "--device", DEV, "--precision", "fp32",
                      "--items", 20)
    fp32 = eval_numbers(ok(r))
    assert_on_device(peak, "minigpt eval")
    assert {"loss", "perplexity", "bits_per_byte", "next_line_acc"} <= fp32.keys(), r.stdout
    assert math.isclose(fp32["perplexity"], math.exp(fp32["loss"]), rel_tol=1e-3)
    assert fp32["loss"] < math.log(VOCAB) and 0 <= fp32["next_line_acc"] <= 1
    if not HAS_BF16: return                                  # nothing more to compare
    r, peak = minigpt("eval", "--run", run, "--device", DEV, "--precision", "bf16",
                      "--task", "perplexity")
    bf16 = eval_numbers(ok(r))
    assert_on_device(peak, "minigpt eval --precision bf16")
    assert abs(bf16["loss"] - fp32["loss"]) < 0.05, (bf16, fp32)


def test_sft_command(sft_run):
    out, stdout, peak = sft_run
    assert_on_device(peak, "minigpt sft")
    assert "before: answer accuracy" in stdout and "after:  answer accuracy" in stdout
    assert re.search(r"SFT loss \d+\.\d+; run in ", stdout), stdout
    assert (out / "best.safetensors").exists()


def test_dpo_command(dpo_run):
    out, stdout, peak = dpo_run
    assert_on_device(peak, "minigpt dpo")
    assert re.search(r"reward accuracy [\d.]+, margin -?[\d.]+; run in ", stdout), stdout
    assert json.loads((out / "config.json").read_text())["finetune"]["method"] == "dpo"


def test_chat_command(dpo_run):
    r, peak = minigpt("chat", "--run", dpo_run[0], "--device", DEV, "--max-new-tokens", 12,
                      input="Who speaks these lines? Answer ROMEO or JULIET.\n"
                            "Which play is this?\n\n")
    out = ok(r)
    assert_on_device(peak, "minigpt chat")
    assert out.count("model> ") == 2, out
