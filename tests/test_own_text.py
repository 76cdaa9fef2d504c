"""The reader's own text through `minigpt data stats` and `minigpt prepare`, run as a user runs
them: one long plain-text file, stories separated by `<|endoftext|>` lines, a folder of .txt
files, a .jsonl file, and a corpus that a cleaning rule removes whole; then the fine-tuning
tasks (`minigpt tasks`) and the next-line benchmark on the reader's own scripts and prose.
Every corpus is built here from the built-in Shakespeare; none is committed."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from minigpt.data import load_shakespeare

BIN = Path(sys.executable).parent


def run(*args):
    exe = shutil.which("minigpt", path=str(BIN)) or "minigpt"
    return subprocess.run([exe, *map(str, args)], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def plays() -> str:
    "The plays as one text, headings and all, as a reader might have them in a file."
    return "".join(d.text for d in load_shakespeare().docs)


def stage_rows(stdout: str) -> dict:
    "{stage: documents} from the table `minigpt data stats` prints."
    rows = {}
    for line in stdout.splitlines():
        for stage in ("loaded", "cleaned", "train", "validation"):
            if line.startswith(stage):
                rows[stage] = int(line[len(stage):].split()[-3].replace(",", ""))
    return rows


def prepare(corpus: Path, out: Path, *options):
    r = run("prepare", "--corpus", corpus, "--vocab-size", 512, "--out", out, "--workers", 1,
            *options)
    assert r.returncode == 0, r.stderr
    return r, json.loads((out / "meta.json").read_text())


def assert_both_splits(meta: dict, min_train_docs: int = 1):
    train, val = meta["splits"]["train"], meta["splits"]["val"]
    assert train["documents"] >= min_train_docs and val["documents"] >= 1, meta["splits"]
    assert train["tokens"] > val["tokens"] > 0, meta["splits"]


def test_one_long_plain_text_file(tmp_path, plays):
    "A 1 MB play text is a corpus of pieces, not one document that a rule drops."
    book = tmp_path / "plays.txt"
    book.write_text(plays[:1_000_000], encoding="utf-8")
    r = run("data", "stats", "--corpus", book)
    assert r.returncode == 0, r.stderr
    rows = stage_rows(r.stdout)
    assert rows["loaded"] >= 80 and rows["cleaned"] == rows["loaded"], r.stdout
    assert rows["train"] >= 70 and rows["validation"] >= 5, r.stdout
    assert "plays.txt/0000" in r.stdout and "cleaning:" in r.stdout
    r, meta = prepare(book, tmp_path / "data")
    assert_both_splits(meta, min_train_docs=70)
    assert meta["split"] == "by document"
    assert f"train: {meta['splits']['train']['documents']:,} documents" in r.stdout
    from minigpt.loader import open_data
    data = open_data(tmp_path / "data")
    assert len(data.train) == meta["splits"]["train"]["tokens"]


def test_stories_separated_by_endoftext(tmp_path, plays):
    "The TinyStories format from a local path: one document per story."
    scenes = [d.text[:600] for d in load_shakespeare().docs[:40]]
    stories = tmp_path / "stories.txt"
    stories.write_text("\n<|endoftext|>\n".join(scenes) + "\n<|endoftext|>\n")
    r = run("data", "stats", "--corpus", stories)
    assert r.returncode == 0, r.stderr
    assert stage_rows(r.stdout)["loaded"] == 40, r.stdout
    _, meta = prepare(stories, tmp_path / "data")
    assert_both_splits(meta)
    assert meta["splits"]["train"]["documents"] + meta["splits"]["val"]["documents"] == 40


def test_a_short_text_gets_a_validation_split_by_position(tmp_path, plays):
    "30 KB without separators: three pieces, too few to split by hash; cut by position."
    excerpt = tmp_path / "excerpt.txt"
    excerpt.write_text(plays[:30_000])
    r, meta = prepare(excerpt, tmp_path / "data")
    assert_both_splits(meta)
    assert meta["split"] == "by position" and "split by position" in r.stdout
    val_share = meta["splits"]["val"]["characters"] / 30_000
    assert 0.08 < val_share < 0.12, val_share


def test_folder_of_text_files_and_jsonl(tmp_path, plays):
    "A folder of .txt files, and a .jsonl whose long record is cut into pieces."
    folder = tmp_path / "texts"
    folder.mkdir()
    for i in range(4):
        (folder / f"part{i}.txt").write_text(plays[i * 40_000:(i + 1) * 40_000])
    r = run("data", "stats", "--corpus", folder)
    assert r.returncode == 0, r.stderr
    assert stage_rows(r.stdout)["loaded"] == 16 and "part0.txt/0000" in r.stdout, r.stdout
    _, meta = prepare(folder, tmp_path / "folder-data")
    assert_both_splits(meta)

    records = [{"text": plays[200_000 + i * 3_000:200_000 + (i + 1) * 3_000]} for i in range(30)]
    records.append({"text": plays[400_000:450_000]})          # a long record: five pieces
    jsonl = tmp_path / "records.jsonl"
    jsonl.write_text("".join(json.dumps(rec) + "\n" for rec in records))
    r = run("data", "stats", "--corpus", jsonl)
    assert r.returncode == 0, r.stderr
    assert stage_rows(r.stdout)["loaded"] == 35 and "records/31/0004" in r.stdout, r.stdout
    _, meta = prepare(jsonl, tmp_path / "jsonl-data")
    assert_both_splits(meta)


def test_a_rule_that_removes_everything_is_an_error(tmp_path, plays):
    "Short notes under the 200-character rule: exit 1, the rule named, no shards, old data kept."
    notes = tmp_path / "notes.txt"
    notes.write_text("\n<|endoftext|>\n".join(f"Note {i}: buy quills and ink." for i in range(20)))
    r = run("data", "stats", "--corpus", notes)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "cleaning rule 'shorter than 200 chars' removed every remaining document" in r.stderr
    assert "--min-chars" in r.stderr
    r = run("prepare", "--corpus", notes, "--vocab-size", 512, "--out", tmp_path / "none")
    assert r.returncode == 1 and "shorter than 200 chars" in r.stderr
    assert not (tmp_path / "none").exists()
    # the option the error names makes the same notes a corpus
    r = run("data", "stats", "--corpus", notes, "--min-chars", 10)
    assert r.returncode == 0, r.stderr
    assert stage_rows(r.stdout)["cleaned"] == 20
    # a failed prepare into a folder that holds a good preparation leaves it as it was
    good = tmp_path / "good"
    (tmp_path / "good.txt").write_text(plays[:30_000])
    prepare(tmp_path / "good.txt", good)
    saved = {p.name: p.read_bytes() for p in good.iterdir()}
    r = run("prepare", "--corpus", notes, "--vocab-size", 512, "--out", good)
    assert r.returncode == 1
    assert {p.name: p.read_bytes() for p in good.iterdir()} == saved


def scene_folders(root: Path, plays: list[str]) -> Path:
    "A folder per play, a .txt file per scene: a reader's own scripts, in several works."
    for d in load_shakespeare().docs:
        play, scene = d.id.split("/")
        if play in plays:
            (root / play).mkdir(parents=True, exist_ok=True)
            (root / play / f"{scene}.txt").write_text(d.text)
    return root


def test_tasks_from_your_own_scripts(tmp_path):
    "`minigpt tasks` on a folder of scripts: the works are its folders, a work is a text."
    folder = scene_folders(tmp_path / "scripts", ["hamlet", "macbeth", "the-tempest"])
    r = run("tasks", "--corpus", folder, "--out", tmp_path / "tasks", "--examples", 8,
            "--heldout", 4)
    assert r.returncode == 0, r.stderr
    for name, n in (("sft", 8), ("heldout", 4)):
        records = [json.loads(line) for line in (tmp_path / "tasks" / f"{name}.jsonl").open()]
        assert len(records) == n
        assert records[0]["instruction"].startswith("Who speaks these lines?")
        which = records[1]
        assert which["instruction"].startswith("Which text are these lines from? Answer ")
        assert set(which["options"]) <= {"Hamlet", "Macbeth", "The Tempest"}
        assert which["output"] in which["options"]


def test_tasks_and_benchmark_on_prose(tmp_path):
    """Prose without speakers: the task builder says what it needs, and the next-line
    benchmark is built from the prepared validation split all the same."""
    scenes = [d.text for d in load_shakespeare().docs[:60]]
    prose = ["\n".join(line for line in s.splitlines() if not line.endswith(":"))
             for s in scenes]                                   # no NAME: lines left
    stories = tmp_path / "stories.txt"
    stories.write_text("\n<|endoftext|>\n".join(prose) + "\n")
    r = run("tasks", "--corpus", stories, "--out", tmp_path / "tasks")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "the tasks need a line NAME: (in capitals) above each speech" in r.stderr
    assert not (tmp_path / "tasks").exists()
    _, meta = prepare(stories, tmp_path / "data")
    from minigpt.evaluate import next_line_items, split_texts
    from minigpt.loader import open_data
    data = open_data(tmp_path / "data")
    texts = split_texts(data.val, data.tokenizer)
    assert len(texts) == meta["splits"]["val"]["documents"] >= 2
    items = next_line_items(texts, 20)
    assert len(items) == 20
    for it in items:
        assert len(it["choices"]) == 4 and not it["choices"][it["label"]].endswith(":")
        answer = it["choices"][it["label"]]
        assert any(answer in t for t in texts)
