"""`minigpt export --format hf` on runs of both shapes, checked by transformers itself.

Tiny runs are prepared and trained with the command line (GPT-2 shape and Llama shape with
grouped-query heads and an untied head), exported, and loaded with `AutoModelForCausalLM` and
`AutoTokenizer`: the logits must be ours, greedy `generate` must give the tokens that
`minigpt generate --temperature 0` prints, the tokenizer must give our ids on the hard texts
of chapter 10, and `load_hf` must give the model back. Nothing is downloaded."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
import transformers  # noqa: E402

from conftest import write_plays_jsonl  # noqa: E402
from minigpt.checkpoint import load_run, save_weights  # noqa: E402
from conftest import minigpt_in_process as minigpt  # noqa: E402
from minigpt.export import load_hf, probe_texts  # noqa: E402
from minigpt.model import GPT, GPTConfig  # noqa: E402
from minigpt.common import ENDOFTEXT, PAD  # noqa: E402
from minigpt.tokenizer import load_tokenizer, save_tokenizer  # noqa: E402

transformers.logging.set_verbosity_error()
BIN = Path(sys.executable).parent / "minigpt"
SMALL = ["--set", "n_layer=2", "--set", "d_model=32", "--set", "n_head=4",
         "--set", "block_size=64", "--seq-len", "32", "--batch-size", "2",
         "--precision", "fp32", "--device", "cpu", "--eval-every", "2"]
SHAPES = {"gpt2": [],
          "llama": ["--set", "norm=rmsnorm", "--set", "mlp=swiglu", "--set", "pos=rope",
                    "--set", "n_kv_head=2", "--set", "bias=false",
                    "--set", "tie_weights=false", "--set", "rope_base=500"]}
PROMPTS = ["ROMEO:", "First Citizen:\nWe", "O"]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    corpus = write_plays_jsonl(root / "plays.jsonl", 2)
    r = subprocess.run([str(BIN), "prepare", "--corpus", str(corpus), "--vocab-size", "320",
                        "--workers", "1", "--out", str(root / "data")],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    return root


@pytest.fixture(scope="module", params=list(SHAPES))
def exported(request, root):
    "(run, exported folder) of a tiny run of each shape, trained by `minigpt train`."
    run, out = root / f"run-{request.param}", root / f"hf-{request.param}"
    r = subprocess.run([str(BIN), "train", "--data", str(root / "data"), "--out", str(run),
                        "--max-steps", "2", *SMALL, *SHAPES[request.param]],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    status, stdout, err = minigpt("export", "--run", run, "--format", "hf", "--out", out)
    assert status == 0, err
    assert "config.json" in stdout and "tokenizer.json" in stdout
    return run, out


def test_transformers_computes_our_logits(exported):
    run, out = exported
    model, tok = load_run(run, device="cpu")
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    want = "GPT2LMHeadModel" if model.cfg.pos == "learned" else "LlamaForCausalLM"
    assert type(hf).__name__ == want
    x = torch.randint(0, tok.vocab_size, (3, 48), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, model(x)[0], atol=1e-5, rtol=0)


def test_greedy_generate_gives_the_tokens_of_minigpt_generate(exported):
    run, out = exported
    tok = load_tokenizer(run / "tokenizer.json")
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    for prompt in PROMPTS:
        status, printed, err = minigpt("generate", "--run", run, "--prompt", prompt,
                                       "--temperature", "0", "--max-new-tokens", 12,
                                       "--no-stream", "--device", "cpu", "--precision", "fp32")
        assert status == 0, err
        ids = hf_tok(prompt, return_tensors="pt")["input_ids"]
        assert ids[0].tolist() == tok.encode(prompt)
        new = hf.generate(ids, do_sample=False, max_new_tokens=12)[0, ids.shape[1]:].tolist()
        eot = tok.special_tokens[ENDOFTEXT]
        new = new[:new.index(eot)] if eot in new else new
        assert tok.special_tokens[PAD] not in new
        assert printed == prompt + tok.decode(new) + "\n"


def test_auto_tokenizer_gives_our_ids_on_hard_text(exported):
    run, out = exported
    tok = load_tokenizer(run / "tokenizer.json")
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(out / "tokenizer.json"))
    assert hf_tok.eos_token_id == tok.special_tokens[ENDOFTEXT]
    for t in (hf_tok, fast):
        for text in probe_texts():
            control = t(text)["input_ids"]
            assert control == tok.encode(text, allowed_special="all"), text
            plain = t(text, split_special_tokens=True)["input_ids"]
            assert plain == tok.encode(text, disallowed_special=()), text
            assert t.decode(control) == tok.decode(control), text


def test_load_hf_gives_the_model_back(exported):
    run, out = exported
    model, tok = load_run(run, device="cpu")
    back, back_tok = load_hf(out, device="cpu")
    assert back.cfg == model.cfg
    assert (back_tok.ranks, back_tok.special_tokens, back_tok.merges) == \
        (tok.ranks, tok.special_tokens, tok.merges)
    x = torch.randint(0, tok.vocab_size, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(back(x)[0], model(x)[0])


def test_export_refuses_bad_input_in_one_line(exported, tmp_path):
    run, out = exported
    status, _, err = minigpt("export", "--run", tmp_path / "nothing", "--out", tmp_path / "a")
    assert status == 1 and "no such run directory" in err and "Traceback" not in err
    # a non-empty folder is refused, and left as it was; --force writes into it
    before = {f.name: f.stat().st_mtime_ns for f in out.iterdir()}
    status, _, err = minigpt("export", "--run", run, "--format", "hf", "--out", out)
    assert status == 1 and "is not empty" in err and "--force" in err
    assert {f.name: f.stat().st_mtime_ns for f in out.iterdir()} == before
    status, _, err = minigpt("export", "--run", run, "--out", out, "--force")
    assert status == 0, err
    status, _, err = minigpt("export", "--run", run, "--format", "onnx", "--out", tmp_path / "b")
    assert status == 2 and "invalid choice" in err


def test_a_shape_no_hf_architecture_has_is_refused_before_writing(root, tmp_path):
    "A run with sinusoidal positions (saved with the checkpoint helpers): one line, no folder."
    run = tmp_path / "sinusoidal"
    tok = load_tokenizer(root / "data" / "tokenizer.json")
    cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=1, n_head=2,
                    d_model=32, pos="sinusoidal")
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"model": cfg.to_dict()}))
    save_tokenizer(tok, run / "tokenizer.json")
    save_weights(GPT(cfg), run / "model.safetensors")
    status, _, err = minigpt("export", "--run", run, "--out", tmp_path / "out")
    assert status == 1 and "GPTConfig.pos='sinusoidal'" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_a_config_field_no_family_knows_is_refused_by_both_exports(root, tmp_path):
    """A field added to GPTConfig but not to the model-family table (chapter 5's FAMILIES) is
    refused by the Hugging Face and the GGUF export alike, before any file: exported, it would
    be left out, and the other program would compute another model."""
    from dataclasses import dataclass

    from minigpt.gguf import write_gguf
    from minigpt.export import export_hf

    @dataclass
    class WithQKNorm(GPTConfig):
        qk_norm: bool = True

    tok = load_tokenizer(root / "data" / "tokenizer.json")
    model = GPT(WithQKNorm(vocab_size=tok.vocab_size, block_size=32, n_layer=1, n_head=2,
                           d_model=32))
    with pytest.raises(ValueError, match="GPTConfig.qk_norm: no model family"):
        export_hf(model, tok, tmp_path / "hf")
    with pytest.raises(ValueError, match="GPTConfig.qk_norm: no model family"):
        write_gguf(model, tok, tmp_path / "m.gguf")
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def chat_export(root, exported):
    "(fine-tuned run, its export): `minigpt sft` for two steps on a few examples, exported."
    run, _ = exported
    examples = [{"instruction": f"Who speaks line {k}?", "input": "", "output": name}
                for k, name in enumerate(["Romeo", "Juliet", "Hamlet", "Ophelia"] * 3)]
    data = root / f"sft-{run.name}.jsonl"
    data.write_text("".join(json.dumps(e) + "\n" for e in examples))
    heldout = root / f"heldout-{run.name}.jsonl"
    heldout.write_text("".join(json.dumps(e) + "\n" for e in examples[:2]))
    sft, out = root / f"sft-{run.name}", root / f"hf-sft-{run.name}"
    status, _, err = minigpt("sft", "--run", run, "--data", data, "--heldout", heldout,
                             "--out", sft, "--steps", 2, "--batch-size", 2,
                             "--device", "cpu", "--precision", "fp32")
    assert status == 0, err
    status, _, err = minigpt("export", "--run", sft, "--format", "hf", "--out", out)
    assert status == 0, err
    return sft, out


def test_an_exported_chat_model_chats_in_transformers(chat_export):
    "apply_chat_template gives our template's ids, and generate from them our reply."
    from minigpt.common import CHAT_TOKENS
    from minigpt.finetune import chat_ids
    from minigpt.generate import SamplingConfig, generate
    sft, out = chat_export
    model, tok = load_run(sft, device="cpu")
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Who speaks line 1?"},
                {"role": "assistant", "content": "Juliet"},
                {"role": "user", "content": "Who speaks line 2?"}]
    ids = hf_tok.apply_chat_template(messages, add_generation_prompt=True,
                                     return_tensors="pt", return_dict=True)["input_ids"]
    ours = chat_ids(tok, ["Be brief.\n\nWho speaks line 1?", "Juliet", "Who speaks line 2?"])
    assert ids[0].tolist() == ours
    new = hf.generate(ids, do_sample=False, max_new_tokens=12)[0, ids.shape[1]:].tolist()
    stops = [tok.special_tokens[s] for s in CHAT_TOKENS + (ENDOFTEXT,)]
    cut = min([new.index(s) for s in stops if s in new], default=len(new))
    reply = generate(model, tok, ours, SamplingConfig(max_new_tokens=12, temperature=0,
                                                      stop=CHAT_TOKENS))
    assert tok.decode(new[:cut]) == reply
