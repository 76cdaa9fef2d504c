"""The book's settings module (nbs/book_settings.py): both sets of sizes are
valid, and a trained run is reused only when its whole configuration matches."""
import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "nbs"))    # the chapters import it from there

import book_settings                      # noqa: E402
from conftest import write_plays_jsonl    # noqa: E402
from minigpt.model import GPTConfig       # noqa: E402
from minigpt.train import TrainConfig     # noqa: E402

MODEL = GPTConfig.preset("cpu", n_layer=1, d_model=32, n_head=2,
                         block_size=32, vocab_size=300)
TRAIN = TrainConfig(batch_size=2, max_steps=4, warmup_steps=2, eval_every=2,
                    eval_batches=1, log_every=1, precision="fp32")


@pytest.mark.parametrize("book", [True, False])
def test_both_sizes_of_the_runs_are_valid_configs(book):
    s = book_settings.sizes(book)
    TrainConfig(**s.pretrain_run)
    TrainConfig(**s.shared_run_train)


def test_the_book_and_the_test_share_no_run():
    assert (book_settings.sizes(True).shared_run_name
            != book_settings.sizes(False).shared_run_name)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("book")
    text = write_plays_jsonl(root / "plays.jsonl", 30)
    return book_settings.prepare_or_reuse(root / "data", str(text), 300)


@pytest.fixture
def trainings(monkeypatch):
    "Each call of `train` that train_or_reuse makes: its keyword arguments."
    calls, real = [], book_settings.train
    def counted(*args, **kw):
        calls.append(kw)
        return real(*args, **kw)
    monkeypatch.setattr(book_settings, "train", counted)
    return calls


def test_prepared_data_is_reused(data, monkeypatch):
    monkeypatch.setattr(book_settings, "prepare", lambda *a, **kw: 1 / 0)
    assert book_settings.prepare_or_reuse(data, "unused", 300) == data


def test_a_run_with_the_same_settings_is_reused(data, tmp_path, trainings):
    run = book_settings.train_or_reuse(data, tmp_path / "run", MODEL, TRAIN)
    assert len(trainings) == 1
    weights = (run / "model.safetensors").read_bytes()
    assert book_settings.train_or_reuse(data, run, MODEL, TRAIN) == run
    assert len(trainings) == 1                         # not trained again
    assert (run / "model.safetensors").read_bytes() == weights


@pytest.mark.parametrize("model, train, named", [
    (MODEL, replace(TRAIN, lr=2e-3), "train.lr"),                 # not steps
    (MODEL, replace(TRAIN, max_steps=6), "train.max_steps"),
    (replace(MODEL, n_layer=2), TRAIN, "model.n_layer")])
def test_a_run_with_other_settings_is_an_error(data, tmp_path, trainings,
                                               model, train, named):
    run = book_settings.train_or_reuse(data, tmp_path / "run", MODEL, TRAIN)
    weights = (run / "model.safetensors").read_bytes()
    with pytest.raises(ValueError, match=rf"{named}=.*asked.*Delete it"):
        book_settings.train_or_reuse(data, run, model, train)
    assert len(trainings) == 1                         # neither reused...
    assert (run / "model.safetensors").read_bytes() == weights  # ...nor lost


def test_an_unfinished_run_is_resumed(data, tmp_path, trainings):
    run = tmp_path / "run"
    book_settings.train(data, run, MODEL, TRAIN, stop_at=2,
                        progress_bar=False)
    book_settings.train_or_reuse(data, run, MODEL, TRAIN)
    assert trainings[-1]["resume"] is True
    last = (run / "metrics.jsonl").read_text().splitlines()[-1]
    assert json.loads(last)["step"] == TRAIN.max_steps
