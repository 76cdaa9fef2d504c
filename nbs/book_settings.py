"""The book's own settings: the sizes of the chapters' runs, and the shared run.

Not part of the minigpt package (the library never imports it): chapters 6-10
import it at their top, e.g. `from book_settings import SETTINGS, shared_run`.
Every size has two values side by side in `sizes`: the book's full one, which
`make execute` uses (it sets MINIGPT_BOOK=1) to produce the outputs the book
prints, and a quick one for the test run of the notebooks (`nbdev-test`).
"""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

try: import fcntl          # file locks (Unix); elsewhere runs are not locked
except ImportError: fcntl = None

from minigpt.loader import prepare
from minigpt.model import GPTConfig
from minigpt.checkpoint import latest_checkpoint
from minigpt.train import TrainConfig, train

BOOK = bool(os.environ.get("MINIGPT_BOOK"))     # the book's full settings
ROOT = Path(__file__).resolve().parent.parent   # the repository


@dataclass(frozen=True)
class Settings:
    "Every size the chapters choose, named for what it sizes."
    pretrain_run: dict         # ch. 6: TrainConfig fields of the CPU run
    baseline_seconds: float    # ch. 6: training time of each baseline
    baseline_eval_every: int   # ch. 6: steps between their evaluations
    baseline_seeds: int        # ch. 6: seeds of each baseline
    val_batches: int | None    # ch. 6, 8: validation batches (None: all)
    shared_run_name: str       # ch. 7-10: the run in runs/ they share
    shared_run_train: dict     # ch. 7-10: its TrainConfig fields
    latency_tokens: int        # ch. 7: tokens timed with and without cache
    compile_backend: str       # ch. 7: torch.compile backend of the timed step
    int8_tokens: int           # ch. 7: tokens generated per int8 variant
    benchmark_items: int       # ch. 8: items of the next-line benchmark
    sample_prompts: int        # ch. 8: prompts of the sample statistics
    sample_tokens: int         # ch. 8: tokens generated per prompt
    sft_examples: int          # ch. 9: training examples of the tasks
    heldout_examples: int      # ch. 9: held-out examples of the tasks
    sft_steps: int             # ch. 9: steps of supervised fine-tuning
    dpo_steps: int             # ch. 9: steps of DPO
    lora_steps: int            # ch. 9: steps of SFT with LoRA
    rl_steps: int              # ch. 9: steps of RL
    finetune_seeds: int        # ch. 9: seeds of each fine-tuning method


def sizes(book: bool) -> Settings:
    "The book's full sizes if `book`, else the quick test's: (full, quick)."
    pick = lambda full, quick: full if book else quick
    return Settings(
        pretrain_run=pick(dict(max_time=600, fit_max_time=True,
                               warmup_steps=50, eval_every=50),
                          dict(max_steps=30, warmup_steps=10, eval_every=10,
                               eval_batches=4)),
        baseline_seconds=pick(90, 6),
        baseline_eval_every=pick(10, 2),
        baseline_seeds=pick(3, 2),
        val_batches=pick(None, 4),
        shared_run_name=pick("book-cpu", "test-cpu"),
        shared_run_train=pick(dict(max_steps=1200, warmup_steps=50,
                                   eval_every=100, keep_every=200),
                              dict(max_steps=40, warmup_steps=10,
                                   eval_every=20, eval_batches=4,
                                   keep_every=20)),
        latency_tokens=pick(250, 60),
        compile_backend=pick("inductor", "eager"),
        int8_tokens=pick(200, 30),
        benchmark_items=pick(400, 40),
        sample_prompts=pick(16, 4),
        sample_tokens=pick(100, 20),
        sft_examples=pick(4000, 200),
        heldout_examples=pick(400, 40),
        sft_steps=pick(300, 8),
        dpo_steps=pick(150, 6),
        lora_steps=pick(300, 8),
        rl_steps=pick(100, 4),
        finetune_seeds=pick(3, 2))


SETTINGS = sizes(BOOK)


@contextmanager
def _locked(path: Path):
    "Hold a lock beside `path`: one process at a time prepares or trains it."
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.name}.lock", "w") as lock:
        if fcntl: fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def prepare_or_reuse(data_dir, corpus: str = "shakespeare",
                     vocab_size: int = 4096) -> Path:
    "Prepare `corpus` into `data_dir` unless it is there already."
    data_dir = Path(data_dir)
    with _locked(data_dir):
        if not (data_dir / "meta.json").exists():
            prepare(corpus, data_dir, vocab_size=vocab_size, workers=2)
    return data_dir


def config_differences(run: Path, model_cfg: GPTConfig,
                       cfg: TrainConfig) -> list[str]:
    "Each setting in which the run saved in `run` differs from these."
    saved = json.loads((run / "config.json").read_text())
    pairs = {"model": (GPTConfig.from_dict(saved["model"]).to_dict(),
                       model_cfg.to_dict()),
             "train": (asdict(TrainConfig.from_dict(saved["train"])),
                       asdict(cfg))}
    return [f"{part}.{k}={old[k]!r} (asked: {v!r})"
            for part, (old, new) in pairs.items()
            for k, v in new.items() if old[k] != v]


def train_or_reuse(data_dir, run_dir, model_cfg: GPTConfig,
                   cfg: TrainConfig) -> Path:
    """Train the run in `run_dir`; resume it if unfinished; reuse it if done.
    A run saved with other settings is an error, never reused or replaced."""
    run = Path(run_dir)
    with _locked(run):
        if latest_checkpoint(run) is None:
            train(data_dir, run, model_cfg, cfg, progress_bar=False)
            return run
        differences = config_differences(run, model_cfg, cfg)
        if differences:
            raise ValueError(f"{run} holds a run with other settings: "
                             f"{'; '.join(differences)}. Delete it to train "
                             "it again with these, or choose another folder")
        rows = (run / "metrics.jsonl").read_text().splitlines()
        if json.loads(rows[-1])["step"] < cfg.max_steps:
            train(data_dir, run, resume=True, progress_bar=False)
    return run


def shared_data() -> Path:
    "The default corpus, prepared once into data/shakespeare."
    return prepare_or_reuse(ROOT / "data" / "shakespeare")


def shared_run() -> tuple[Path, Path]:
    "(data_dir, run_dir) of the CPU-preset run chapters 7-10 share."
    data_dir = shared_data()
    run_dir = ROOT / "runs" / SETTINGS.shared_run_name
    train_or_reuse(data_dir, run_dir, GPTConfig.preset("cpu"),
                   TrainConfig(**SETTINGS.shared_run_train))
    return data_dir, run_dir
