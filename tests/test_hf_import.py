"""`minigpt import --hf FOLDER --out RUN` on folders that transformers and tokenizers wrote.

A tiny random GPT-2 (`GPT2LMHeadModel`) with a byte-level BPE trained by the `tokenizers`
library (so its bytes are numbered GPT-2's way: `!` is token 0), and a tiny Llama
(`LlamaForCausalLM`, grouped-query heads, an untied head) with a tokenizer split by Llama 3's
pattern, are imported; the run must give the ids of the HF tokenizer, the logits of
transformers and the same greedy text; the GPT-2 one is then fine-tuned, sampled and
exported back from the command line. Nothing is downloaded."""
import json
import shutil
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
import transformers  # noqa: E402
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402

from minigpt.checkpoint import load_run  # noqa: E402
from conftest import minigpt_in_process as minigpt  # noqa: E402
from minigpt.common import ENDOFTEXT  # noqa: E402
from minigpt.export import LLAMA3_PATTERN, load_hf, load_hf_tokenizer  # noqa: E402

transformers.logging.set_verbosity_error()
CORPUS = ["ROMEO: But, soft! what light through yonder window breaks?\nIt is the east, and "
          "Juliet is the sun. " * 4, "The year 1597, 42 lines, 3.14 and 2024-01-01.\n\n\tTabs "
          "and   spaces, don't we'll they're. " * 4, "café naïve straße 日本語 😀 Ωmega " * 3]
TEXTS = ["ROMEO: But, soft!", "  leading spaces,\ttabs\n\nnewlines\n", "digits 12345 67 8.9",
         "unicode: café 日本語 😀 👍🏽 ﬁ", "text <|endoftext|> more text", "<|endoftext|>",
         "don't SHOUT IT'S", "trailing   ", "\r\n", "a" * 40]


def train_tokenizer(pre_tokenizer) -> Tokenizer:
    "A byte-level BPE trained by `tokenizers`, <|endoftext|> added after the merges."
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer, tok.decoder = pre_tokenizer, decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=360, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.add_special_tokens([ENDOFTEXT])
    return tok


def gpt2_folder(path: Path) -> Path:
    tok = train_tokenizer(pre_tokenizers.ByteLevel(add_prefix_space=False))
    torch.manual_seed(0)
    eot = tok.token_to_id(ENDOFTEXT)
    transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=tok.get_vocab_size(), n_positions=64, n_embd=32, n_layer=2, n_head=4,
        bos_token_id=eot, eos_token_id=eot)).save_pretrained(path)
    transformers.GPT2TokenizerFast(tokenizer_object=tok, bos_token=ENDOFTEXT,
                                   eos_token=ENDOFTEXT).save_pretrained(path)
    tok.model.save(str(path))                     # vocab.json and merges.txt too,
    (path / "vocab.json").write_text(json.dumps(tok.get_vocab()))  # with <|endoftext|>
    return path


def llama_folder(path: Path) -> Path:
    tok = train_tokenizer(pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]))
    torch.manual_seed(0)
    eot = tok.token_to_id(ENDOFTEXT)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=tok.get_vocab_size() + 8, hidden_size=32, intermediate_size=64,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=64, rope_theta=500.0, tie_word_embeddings=False,
        bos_token_id=eot, eos_token_id=eot))
    with torch.no_grad():                 # norms away from 1, as a trained model's
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    model.save_pretrained(path)
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=ENDOFTEXT,
                                         eos_token=ENDOFTEXT).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("import")


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def imported(request, root):
    "(HF folder, imported run) of each shape, imported by the command line."
    make = gpt2_folder if request.param == "gpt2" else llama_folder
    folder, run = make(root / f"hf-{request.param}"), root / f"run-{request.param}"
    status, out, err = minigpt("import", "--hf", folder, "--out", run)
    assert status == 0, err
    assert str(run) in out
    return folder, run


def test_ids_are_the_hf_tokenizers(imported):
    folder, run = imported
    _, tok = load_run(run, device="cpu")
    hf_tok = transformers.AutoTokenizer.from_pretrained(folder)
    assert tok.special_tokens[ENDOFTEXT] == hf_tok.convert_tokens_to_ids(ENDOFTEXT)
    assert tok.vocab[0] != b"\x00"                  # GPT-2's byte order, not ours
    for text in TEXTS:
        ids = hf_tok(text, add_special_tokens=False)["input_ids"]
        assert tok.encode(text, allowed_special="all") == ids, text
        assert tok.decode(ids) == hf_tok.decode(ids), text


def test_logits_and_greedy_text_are_transformers(imported):
    folder, run = imported
    model, tok = load_run(run, device="cpu")
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    x = torch.randint(0, tok.vocab_size, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0], hf(x).logits, atol=1e-5, rtol=0)
    hf_tok = transformers.AutoTokenizer.from_pretrained(folder)
    for prompt in ("ROMEO:", "It is the east"):
        status, printed, err = minigpt("generate", "--run", run, "--prompt", prompt,
                                       "--temperature", "0", "--max-new-tokens", 10,
                                       "--no-stream", "--device", "cpu", "--precision", "fp32")
        assert status == 0, err
        ids = hf_tok(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
        new = hf.generate(ids, do_sample=False, max_new_tokens=10)[0, ids.shape[1]:].tolist()
        eot = tok.special_tokens[ENDOFTEXT]
        new = new[:new.index(eot)] if eot in new else new
        assert printed == prompt + hf_tok.decode(new) + "\n"


def test_vocab_and_merges_alone_give_the_same_tokenizer(imported, tmp_path):
    folder, _ = imported
    if not (folder / "merges.txt").exists():
        pytest.skip("the Llama folder has tokenizer.json only")
    full = load_hf_tokenizer(folder)
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        shutil.copy(folder / name, tmp_path / name)
    alone = load_hf_tokenizer(tmp_path)
    assert (alone.ranks, alone.special_tokens, alone.merges, alone.pattern) == \
        (full.ranks, full.special_tokens, full.merges, full.pattern)


def test_sharded_and_bin_weights_load_alike(imported, tmp_path):
    from safetensors.torch import load_file, save_file
    folder, _ = imported
    model, _ = load_hf(folder, device="cpu")
    state = load_file(folder / "model.safetensors")
    names = sorted(state)
    halves = {"model-00001-of-00002.safetensors": names[:len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    for kind in ("sharded", "bin"):
        other = tmp_path / kind
        shutil.copytree(folder, other)
        (other / "model.safetensors").unlink()
        if kind == "bin":
            torch.save(state, other / "pytorch_model.bin")
        else:
            for shard, keys in halves.items():
                save_file({k: state[k] for k in keys}, other / shard)
            index = {"weight_map": {k: s for s, keys in halves.items() for k in keys}}
            (other / "model.safetensors.index.json").write_text(json.dumps(index))
        back, _ = load_hf(other, device="cpu")
        x = torch.randint(0, 300, (1, 20), generator=torch.Generator().manual_seed(2))
        with torch.no_grad():
            assert torch.equal(back(x)[0], model(x)[0]), kind


def test_a_pretrained_gpt2_is_fine_tuned_sampled_and_exported(root, tmp_path):
    folder, run = root / "hf-gpt2", root / "run-gpt2"   # made by the `imported` fixture
    if not run.exists():
        pytest.skip("needs the imported GPT-2 run")
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"Say {w}.", "input": "", "output": w}) + "\n"
                            for w in ("soft", "light", "window", "east")))
    sft = tmp_path / "sft"
    status, _, err = minigpt("sft", "--run", run, "--data", data, "--out", sft, "--steps", 2,
                             "--batch-size", 2, "--device", "cpu", "--precision", "fp32")
    assert status == 0, err
    status, printed, err = minigpt("generate", "--run", sft, "--prompt", "ROMEO:",
                                   "--max-new-tokens", 8, "--seed", "0", "--no-stream")
    assert status == 0 and printed.startswith("ROMEO:"), err
    out = tmp_path / "hf-sft"
    status, _, err = minigpt("export", "--run", sft, "--format", "hf", "--out", out)
    assert status == 0, err
    model, tok = load_run(sft, device="cpu")
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    assert hf_tok("<|user|>hi ROMEO")["input_ids"] == tok.encode("<|user|>hi ROMEO",
                                                                  allowed_special="all")
    x = torch.randint(0, tok.vocab_size, (2, 30), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, model(x)[0], atol=1e-5, rtol=0)


def broken_copy(folder: Path, to: Path, drop=(), config=None, tokenizer=None) -> Path:
    "A copy of `folder` without the files `drop`, its config or tokenizer.json changed."
    shutil.copytree(folder, to)
    for name in drop:
        (to / name).unlink()
    for name, change in (("config.json", config), ("tokenizer.json", tokenizer)):
        if change:
            data = json.loads((to / name).read_text())
            change(data)
            (to / name).write_text(json.dumps(data))
    return to


def test_what_minigpt_cannot_reproduce_is_refused_by_name(imported, tmp_path):
    folder, run = imported
    if "gpt2" not in folder.name:
        pytest.skip("one shape is enough")
    cases = {
        "SentencePiece": broken_copy(folder, tmp_path / "sp", drop=(
            "tokenizer.json", "vocab.json", "merges.txt")),
        "no weights": broken_copy(folder, tmp_path / "noweights", drop=("model.safetensors",)),
        "model_type 'bert'": broken_copy(folder, tmp_path / "bert", config=lambda c: c.update(
            model_type="bert")),
        "scale_attn_by_inverse_layer_idx": broken_copy(
            folder, tmp_path / "scaled", config=lambda c: c.update(
                scale_attn_by_inverse_layer_idx=True)),
        "a normalizer (NFC)": broken_copy(folder, tmp_path / "nfc", tokenizer=lambda t: t.update(
            normalizer={"type": "NFC"})),
        "not special": broken_copy(folder, tmp_path / "plain", tokenizer=lambda t: t[
            "added_tokens"][0].update(special=False)),
    }
    (cases["SentencePiece"] / "tokenizer.model").write_bytes(b"\x0a\x00")
    for says, bad in cases.items():
        out = tmp_path / f"run-{bad.name}"
        status, _, err = minigpt("import", "--hf", bad, "--out", out)
        assert status == 1 and says in err and "Traceback" not in err, (says, err)
        assert not out.exists(), says
    status, _, err = minigpt("generate", "--run", folder, "--prompt", "a")
    assert status == 1
    assert err.strip().endswith(f"{folder} is a Hugging Face model folder, not a minigpt run: "
                                f"import it with minigpt import --hf {folder} --out RUN")


def test_an_existing_run_is_kept_unless_forced(imported, tmp_path):
    folder, run = imported
    if "gpt2" not in folder.name:
        pytest.skip("one shape is enough")
    out = tmp_path / "run"
    shutil.copytree(run, out)
    (out / "config.json").write_text('{"model": {}, "mine": 1}')
    status, _, err = minigpt("import", "--hf", folder, "--out", out)
    assert status == 1 and "--force" in err
    assert json.loads((out / "config.json").read_text())["mine"] == 1
    status, _, err = minigpt("import", "--hf", folder, "--out", out, "--force")
    assert status == 0, err
    assert load_run(out, device="cpu")[0].cfg.n_layer == 2
    (out / "checkpoints" / "step-000001").mkdir(parents=True)      # a trained run
    status, _, err = minigpt("import", "--hf", folder, "--out", out, "--force")
    assert status == 1 and "trained run" in err
