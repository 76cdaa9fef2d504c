"""GGUF export (minigpt.gguf), checked by independent readers: the `gguf` package
reads the file back, and llama.cpp (through llama-cpp-python) tokenizes, computes
logits and decodes greedily from it, for both model shapes llama.cpp runs."""
import json
import math

import numpy as np
import pytest
import torch

from minigpt.checkpoint import save_weights
from minigpt.data import load_shakespeare
from minigpt.generate import SamplingConfig, decode_steps, generate
from minigpt.tokenizer import BYTE_CHARS
from minigpt.gguf import (F16, F32, Q8_0, export_gguf,
                          write_gguf)
from minigpt.model import GPT, GPTConfig
from minigpt.common import ASSISTANT, CHAT_TOKENS, END, ENDOFTEXT, PAD, USER
from minigpt.export import CHAT_TEMPLATE
from minigpt.finetune import add_chat_tokens, chat_ids
from minigpt.tokenizer import (GPT2_PATTERN, GPT4_PATTERN, BPETokenizer,
                               save_tokenizer)

gguf = pytest.importorskip("gguf", reason="the gguf package reads the files "
                           "back: pip install -e '.[gguf]'")
try: import llama_cpp
except ImportError: llama_cpp = None
needs_llama = pytest.mark.skipif(
    llama_cpp is None, reason="llama_cpp is not importable: pip install -e "
    "'.[gguf]' (it compiles llama.cpp) to check the files with it")

# Text that tokenizers get wrong: many scripts, emoji sequences, combining
# marks, runs of white space of every kind, digits of several systems,
# contractions in any case, punctuation runs, code.
HARD_TEXTS = [
    "Hello world! It's a test; we'LL see, DON'T we? I'M sure you'Re right.",
    "Привет, мир! Ελληνικά κείμενα. שלום עולם. مرحبا بالعالم. नमस्ते दुनिया।",
    "日本語のテキスト、中文文本。한국어 텍스트. ภาษาไทย ครับ. Ẓ̌ ä ö ü ß ﬁ",
    "emoji 👍🏽 👩‍👩‍👧‍👦 🏳️‍🌈 ❤️‍🔥 🇫🇷🇩🇪 *️⃣ 1️⃣",
    "e\u0301 a\u0308\u0323 Z\u0351\u0354\u0355 combining marks",
    "   leading spaces\tand\ttabs\t\t\nnew\n\n\nlines  \n  \r\n\r\nCRLF  ",
    "trailing spaces     ",
    "\u00a0no-break\u00a0space, ideographic\u3000space, thin\u2009space, "
    "em\u2003space, line\u2028separator, \u200bzero-width",
    "digits 1234567890 12 123 1234 3.14159 1,000,000 ٠١٢٣٤٥ ０１２３ ²³ ½ Ⅻ",
    "x = f(a[0], b.c) + 42  # comment\n    return {'k': [1, 2, 3]}\n",
    "!!!??? ... --- *** ((( ))) >>> <<< ''' \"\"\" ``` @@@ ### $$$",
    "ROMEO:\nBut soft, what light through yonder window breaks?\n",
    "mixed123abc ABC123 a1b2c3 _under_score CamelCase snake_case",
    "'s 's 'S 't 'T 're 'Re 'RE 've 'VE 'm 'M 'll 'Ll 'd 'D 'x '",
    "\x00\x01\x1f\x7f control \x0b\x0c bytes",
    "",
]

MULTILINGUAL = "\n".join(HARD_TEXTS[1:5] + HARD_TEXTS[7:9]) + "\n"


@pytest.fixture(scope="module")
def training_text():
    docs = load_shakespeare().docs[:40]
    return "\n".join(d.text for d in docs) + MULTILINGUAL * 20


@pytest.fixture(scope="module")
def tokenizers(training_text):
    "A GPT-4-pattern and a GPT-2-pattern BPE tokenizer, trained here."
    return {pattern: BPETokenizer.train([training_text], 700, pattern)
            for pattern in (GPT4_PATTERN, GPT2_PATTERN)}


def spread_weights(model: GPT, seed: int) -> GPT:
    """Weights with O(1) logits and no entry left at its default (a norm of
    ones or a zero bias would hide a weight written in the wrong place)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if p.dim() == 1 and "bias" not in name: p.copy_(1 + 0.2 * noise)
            elif p.dim() == 1: p.copy_(0.1 * noise)
            elif "emb" in name: p.copy_(noise)
            else: p.copy_(noise / math.sqrt(p.shape[1]))
    return model.eval()


LLAMA = dict(norm="rmsnorm", mlp="swiglu", pos="rope", bias=False)
SHAPES = {   # name -> GPTConfig fields besides vocab_size
    "llama-gqa-untied": dict(LLAMA, n_head=4, n_kv_head=2, tie_weights=False,
                             d_ff=80, rope_base=5000.0, norm_eps=1e-6),
    "llama-tied": dict(LLAMA, n_head=4, tie_weights=True, d_ff=128),
    "gpt2": dict(n_head=4, d_ff=128),
    "gpt2-gqa-untied": dict(n_head=4, n_kv_head=1, tie_weights=False,
                            d_ff=96),
}


@pytest.fixture(scope="module")
def models(tokenizers):
    "Each shape as a random model: (model, tokenizer); vocab padded by 3."
    tok = tokenizers[GPT4_PATTERN]
    out = {}
    for seed, (name, fields) in enumerate(SHAPES.items()):
        cfg = GPTConfig(vocab_size=tok.vocab_size + 3, block_size=64,
                        n_layer=2, d_model=64, **fields)
        out[name] = (spread_weights(GPT(cfg), seed), tok)
    return out


@pytest.fixture(scope="module")
def files(models, tmp_path_factory):
    "(shape, dtype) -> the GGUF file written by write_gguf."
    folder = tmp_path_factory.mktemp("gguf")
    return {(name, dtype): _write(model, tok, folder / f"{name}-{dtype}.gguf",
                                  dtype)
            for name, (model, tok) in models.items()
            for dtype in ("f32", "f16", "q8_0")}


def _write(model, tok, path, dtype):
    write_gguf(model, tok, path, dtype)
    return path


def field(reader, key):
    return reader.fields[key].contents()


# --- read back with the gguf package -----------------------------------------

@pytest.mark.parametrize("name", SHAPES)
def test_metadata_read_back(models, files, name):
    model, tok = models[name]
    cfg = model.cfg
    r = gguf.GGUFReader(files[name, "f16"])
    arch = "llama" if name.startswith("llama") else "gpt2"
    assert field(r, "general.architecture") == arch
    assert field(r, "general.file_type") == 1
    assert field(r, f"{arch}.context_length") == cfg.block_size
    assert field(r, f"{arch}.embedding_length") == cfg.d_model
    assert field(r, f"{arch}.block_count") == cfg.n_layer
    assert field(r, f"{arch}.feed_forward_length") == cfg.d_ff
    assert field(r, f"{arch}.attention.head_count") == cfg.n_head
    assert field(r, f"{arch}.attention.head_count_kv") == cfg.n_kv_head
    if arch == "llama":
        assert field(r, "llama.rope.freq_base") == pytest.approx(cfg.rope_base)
        assert field(r, "llama.attention.layer_norm_rms_epsilon") == \
            pytest.approx(cfg.norm_eps)
    else:
        assert field(r, "gpt2.attention.layer_norm_epsilon") == \
            pytest.approx(cfg.norm_eps)
    # the tokenizer: every token's text maps back to its bytes
    u2b = {c: b for b, c in BYTE_CHARS.items()}
    tokens = field(r, "tokenizer.ggml.tokens")
    types = field(r, "tokenizer.ggml.token_type")
    assert len(tokens) == len(types) == cfg.vocab_size
    specials = {i: s for s, i in tok.special_tokens.items()}
    for i, (text, ttype) in enumerate(zip(tokens, types)):
        if i in specials: assert (text, ttype) == (specials[i], 3)
        elif i in tok.vocab:
            assert bytes(u2b[c] for c in text) == tok.vocab[i] and ttype == 1
        else: assert ttype == 5                  # padding of the vocabulary
    merges = field(r, "tokenizer.ggml.merges")
    assert [tuple(bytes(u2b[c] for c in part) for part in m.split(" "))
            for m in merges] == [(tok.vocab[a], tok.vocab[b])
                                 for a, b in tok.merges]
    assert field(r, "tokenizer.ggml.pre") == "dbrx"
    eot = tok.special_tokens[ENDOFTEXT]
    assert field(r, "tokenizer.ggml.eos_token_id") == eot
    assert field(r, "tokenizer.ggml.bos_token_id") == eot
    assert field(r, "tokenizer.ggml.padding_token_id") == tok.special_tokens[PAD]
    assert not field(r, "tokenizer.ggml.add_bos_token")
    assert r.fields["tokenizer.ggml.add_bos_token"].types == [
        gguf.GGUFValueType.BOOL]


@pytest.mark.parametrize("dtype", ["f32", "f16", "q8_0"])
@pytest.mark.parametrize("name", ["gpt2-gqa-untied", "llama-gqa-untied"])
def test_tensors_read_back(models, files, name, dtype):
    "Names, dimensions (ne0 first), types and data of every tensor."
    model, _ = models[name]
    r = gguf.GGUFReader(files[name, dtype])
    got = {t.name: t for t in r.tensors}
    sd = model.state_dict()
    n = model.cfg.n_layer
    if name.startswith("gpt2"):
        expected = {"token_embd.weight": "tok_emb.weight",
                    "position_embd.weight": "pos_emb.weight",
                    "output_norm.weight": "norm_f.weight",
                    "output_norm.bias": "norm_f.bias",
                    "output.weight": "lm_head.weight"}
        for i in range(n):
            for ours, theirs in [("norm1", "attn_norm"), ("attn.qkv", "attn_qkv"),
                                 ("attn.proj", "attn_output"),
                                 ("norm2", "ffn_norm"), ("mlp.fc", "ffn_up"),
                                 ("mlp.proj", "ffn_down")]:
                for kind in ("weight", "bias"):
                    expected[f"blk.{i}.{theirs}.{kind}"] = \
                        f"blocks.{i}.{ours}.{kind}"
    else:   # q and k are cut from qkv and reordered: llama.cpp checks them
        expected = {"token_embd.weight": "tok_emb.weight",
                    "output_norm.weight": "norm_f.weight",
                    "output.weight": "lm_head.weight"}
        for i in range(n):
            for ours, theirs in [("norm1", "attn_norm"), ("attn.proj", "attn_output"),
                                 ("norm2", "ffn_norm"), ("mlp.gate", "ffn_gate"),
                                 ("mlp.up", "ffn_up"), ("mlp.proj", "ffn_down")]:
                expected[f"blk.{i}.{theirs}.weight"] = f"blocks.{i}.{ours}.weight"
        assert {f"blk.{i}.attn_{x}.weight" for i in range(n) for x in "qkv"} \
            == set(got) - set(expected)
    assert set(expected) <= set(got)
    for gname, ours in expected.items():
        w, t = sd[ours].float().numpy(), got[gname]
        assert list(t.shape) == list(w.shape[::-1]), gname
        want = (F32 if w.ndim == 1 or dtype == "f32" else
                F16 if dtype == "f16" or w.shape[-1] % 32 else Q8_0)
        assert int(t.tensor_type) == want, gname
        data = np.asarray(t.data)
        if want == F32: assert np.array_equal(data.reshape(w.shape), w)
        elif want == F16:
            assert np.array_equal(data.reshape(w.shape), w.astype(np.float16))
        else:     # bit-exact with ggml's reference quantiser (gguf's port)
            ref = gguf.quants.quantize(w, gguf.GGMLQuantizationType.Q8_0)
            assert np.array_equal(data.reshape(ref.shape), ref), gname
    if dtype == "q8_0":    # d_ff=80 rows are not blocks of 32: f16 instead
        fallback = [t for t in r.tensors if t.name.endswith("ffn_down.weight")]
        assert all(int(t.tensor_type) == (F16 if model.cfg.d_ff % 32 else Q8_0)
                   for t in fallback)


def test_export_from_run_dir(models, tmp_path):
    "export_gguf reads a run directory; bad requests are one-line errors."
    model, tok = models["llama-tied"]
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"model": model.cfg.to_dict()}))
    save_tokenizer(tok, run / "tokenizer.json")
    save_weights(model, run / "model.safetensors")
    out = export_gguf(run, tmp_path / "m.gguf", "f32")
    r = gguf.GGUFReader(out)
    emb = {t.name: t for t in r.tensors}["token_embd.weight"]
    assert np.array_equal(np.asarray(emb.data), model.tok_emb.weight.detach().numpy())
    assert "output.weight" not in {t.name for t in r.tensors}    # tied
    with pytest.raises(ValueError, match="exists already"):
        export_gguf(run, out, "f32")
    with pytest.raises(ValueError, match="use one of f32, f16, q8_0"):
        export_gguf(run, tmp_path / "n.gguf", "bf16")
    assert export_gguf(run, out, "f16", force=True) == out
    assert field(gguf.GGUFReader(out), "general.file_type") == 1
    bad = GPT(GPTConfig(vocab_size=tok.vocab_size, n_layer=1, d_model=32,
                        n_head=2, norm="rmsnorm"))          # RMSNorm + GELU
    with pytest.raises(ValueError, match="GPTConfig.norm='rmsnorm'"):
        write_gguf(bad, tok, tmp_path / "bad.gguf")
    assert not (tmp_path / "bad.gguf").exists()


# --- llama.cpp itself ---------------------------------------------------------

F32_CACHE = 0        # GGML_TYPE_F32: llama.cpp's KV cache is f16 by default


def load(path):
    "llama.cpp on `path`, every position's logits kept, an f32 KV cache."
    return llama_cpp.Llama(model_path=str(path), n_ctx=64, logits_all=True,
                           verbose=False, type_k=F32_CACHE, type_v=F32_CACHE,
                           n_threads=1)   # spinning threads crawl on a busy CPU


@needs_llama
@pytest.mark.parametrize("pattern", [GPT4_PATTERN, GPT2_PATTERN],
                         ids=["gpt4-dbrx", "gpt2"])
def test_llama_cpp_tokenizes_as_we_do(tokenizers, tmp_path, training_text,
                                      pattern):
    tok = tokenizers[pattern]
    cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=1,
                    d_model=32, n_head=2, d_ff=64)
    path = _write(GPT(cfg), tok, tmp_path / "t.gguf", "f32")
    llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    lines = training_text.splitlines(keepends=True)[::97]   # corpus sample
    for text in HARD_TEXTS + lines:
        ours = tok.encode(text)
        theirs = llm.tokenize(text.encode(), add_bos=False, special=False)
        assert theirs == ours, (text, theirs, ours)
        assert llm.detokenize(theirs) == text.encode()
    # special-token strings: text unless asked for, then the control token
    eot = tok.special_tokens[ENDOFTEXT]
    text = f"a{ENDOFTEXT}b"
    assert llm.tokenize(text.encode(), add_bos=False, special=False) == \
        tok.encode(text, disallowed_special=())
    assert llm.tokenize(text.encode(), add_bos=False, special=True) == \
        tok.encode(text, allowed_special="all")
    assert eot in tok.encode(text, allowed_special="all")


# Largest |logit difference| accepted, as a fraction of the logits' standard
# deviation. f32: the llama shape differs by summation order only (measured
# ~1e-5); llama.cpp's CPU GELU reads a table at the f16-rounded input
# (ggml's GGML_GELU_FP16), a relative error up to 2^-11 per activation, so
# the gpt2 shape differs by ~1e-3. f16 rounds the weights besides; q8_0
# rounds them to 8 bits per block and llama.cpp's q8_0 product rounds the
# activations to 8 bits too (ggml quantises each input row to q8_0):
# measured 0.06-0.09 on these models. A misplaced or unpermuted weight
# changes the logits by about their spread (1.0).
LOGIT_TOL = {"f32": 1e-4, "f16": 1e-2, "q8_0": 0.15}
GELU_TABLE_TOL = 3e-3


def logit_tol(name, dtype):
    return max(LOGIT_TOL[dtype], GELU_TABLE_TOL if "gpt2" in name else 0)


def our_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids]))[0][0].double().numpy()   # (T, V)


@needs_llama
@pytest.mark.parametrize("dtype", ["f32", "f16", "q8_0"])
@pytest.mark.parametrize("name", SHAPES)
def test_llama_cpp_logits_equal_ours(models, files, name, dtype):
    model, tok = models[name]
    ids = torch.randint(0, tok.vocab_size, (48,),
                        generator=torch.Generator().manual_seed(1)).tolist()
    ref = our_logits(model, ids)
    llm = load(files[name, dtype])
    llm.eval(ids)
    theirs = np.array(llm.scores[:len(ids)], dtype=np.float64)
    diff = np.abs(theirs - ref).max() / ref.std()
    assert diff < logit_tol(name, dtype), (name, dtype, diff)


def llama_greedy(llm, ids, n, banned):
    "llama.cpp's greedy continuation (its top-k=1 sampler), up to <eot>."
    ban = lambda _, scores: np.where(np.isin(np.arange(len(scores)), banned),
                                     -np.inf, scores).astype(scores.dtype)
    out = []
    for t in llm.generate(ids, top_k=1, temp=0.0, logits_processor=
                          llama_cpp.LogitsProcessorList([ban])):
        if t == llm.token_eos() or len(out) == n: break
        out.append(t)
    return out


def our_greedy(model, tok, ids, n):
    "minigpt's greedy continuation: the steps of `generate`, up to <eot>."
    eot, out = tok.special_tokens[ENDOFTEXT], []
    banned = (tok.special_tokens[PAD],)
    for nxt, _ in decode_steps(model, [ids], SamplingConfig(
            max_new_tokens=n, temperature=0), True, tok.vocab_size, banned):
        if int(nxt[0]) == eot: break
        out.append(int(nxt[0]))
    return out


PROMPTS = ["ROMEO:\nBut soft", "To be, or not", "Привет 👍 123"]


GREEDY_CASES = [*((name, "f32") for name in SHAPES),
                ("llama-gqa-untied", "f16"), ("gpt2", "f16"),
                ("llama-tied", "q8_0")]


@needs_llama
@pytest.mark.parametrize("name,dtype", GREEDY_CASES)
def test_llama_cpp_greedy_equals_ours(models, files, name, dtype):
    """The same greedy tokens (and text, from `generate`) in f32 for the llama
    shape; otherwise the two may part only where our top two logits are
    closer than twice the logit tolerance (see `logit_tol`)."""
    model, tok = models[name]
    llm = load(files[name, dtype])
    banned = [tok.special_tokens[PAD], *range(tok.vocab_size,
                                              model.cfg.vocab_size)]
    for prompt in PROMPTS:
        ids = tok.encode(prompt)
        ours = our_greedy(model, tok, ids, 16)
        theirs = llama_greedy(llm, ids, 16, banned)
        if dtype == "f32" and "gpt2" not in name:
            assert theirs == ours, (prompt, theirs, ours)
            assert generate(model, tok, prompt, SamplingConfig(
                max_new_tokens=16, temperature=0)) == tok.decode(theirs)
            continue
        k = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b),
                 None)
        if k is None:
            assert len(theirs) == len(ours); continue
        z = our_logits(model, ids + ours[:k])[-1]
        margin = z[ours[k]] - z[theirs[k]]
        assert margin < 2 * logit_tol(name, dtype) * z.std(), (prompt, k, margin)


# --- a chat model: its template travels in the file ----------------------------

CHAT = [{"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Who is Juliet?"},
        {"role": "assistant", "content": "A Capulet."},
        {"role": "user", "content": "ROMEO: But soft, what light?"}]


@pytest.fixture(scope="module")
def chat_file(tokenizers, tmp_path_factory):
    """A Llama-shaped chat model (the role tokens added) as f32 GGUF. Its head never picks
    <|user|> or <|assistant|> (their rows are zero: logit 0 against O(1) others), so that
    llama.cpp, which stops only at end-of-generation tokens, and minigpt, which stops at
    any role token, stop at the same place."""
    tok = add_chat_tokens(tokenizers[GPT4_PATTERN])
    cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=128, n_layer=2, d_model=64,
                    **SHAPES["llama-gqa-untied"])
    model = spread_weights(GPT(cfg), 7)
    with torch.no_grad():
        for role in (USER, ASSISTANT):
            model.lm_head.weight[tok.special_tokens[role]] = 0
    path = tmp_path_factory.mktemp("chat") / "chat-f32.gguf"
    write_gguf(model, tok, path, "f32")
    return model, tok, path


def test_the_chat_template_is_in_the_file(chat_file):
    _, tok, path = chat_file
    r = gguf.GGUFReader(path)
    assert field(r, "tokenizer.chat_template") == CHAT_TEMPLATE
    assert field(r, "tokenizer.ggml.eot_token_id") == tok.special_tokens[END]


@needs_llama
def test_llama_cpp_chat_completion_uses_our_template_and_replies_as_we_do(chat_file):
    model, tok, path = chat_file
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=128, verbose=False,
                          type_k=F32_CACHE, type_v=F32_CACHE, n_threads=1)
    assert llm.chat_format == "chat_template.default"     # ours, not a guessed one
    ours = chat_ids(tok, ["Answer briefly.\n\nWho is Juliet?", "A Capulet.",
                          "ROMEO: But soft, what light?"])
    n_new = 24
    reply = llm.create_chat_completion(CHAT, temperature=0.0, top_k=1, max_tokens=n_new)
    assert reply["usage"]["prompt_tokens"] == len(ours)
    cfg = SamplingConfig(max_new_tokens=n_new, temperature=0.0, stop=CHAT_TOKENS)
    expected = generate(model, tok, ours, cfg)
    assert expected, "an empty reply would make the check weak"
    # a random model draws lone bytes of UTF-8: we print U+FFFD for them, llama.cpp nothing
    assert reply["choices"][0]["message"]["content"] == expected.replace("\ufffd", "")
