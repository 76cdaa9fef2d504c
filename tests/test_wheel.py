"The package as `pip install` delivers it: a wheel, installed without the repository."
import pytest

import minigpt
from wheel_smoke import build_wheel, install_and_run, wheel_metadata


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    return build_wheel(tmp_path_factory.mktemp("dist"))


def test_wheel_holds_every_module(wheel):
    from pathlib import Path
    names, _ = wheel_metadata(wheel)
    package = Path(minigpt.__file__).parent    # modules, and any file they read
    files = sorted(p.name for p in package.iterdir() if p.is_file() and p.suffix != ".pyc")
    for f in files:
        assert f"minigpt/{f}" in names, f"{f} is not in the wheel: list it in package-data"
    assert not any(n.startswith(("nbs/", "tests/", "book/")) for n in names)


def test_wheel_declares_dependencies_and_command(wheel):
    names, meta = wheel_metadata(wheel)
    assert f"Version: {minigpt.__version__}" in meta
    for dep in ("torch>=2.4", "tiktoken", "numpy"):
        assert f"Requires-Dist: {dep}" in meta, dep
    assert "License-Expression: Apache-2.0" in meta
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), "the wheel has no LICENSE"
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    import zipfile
    with zipfile.ZipFile(wheel) as z:
        assert "minigpt = minigpt.cli:main" in z.read(entry).decode()


def test_installed_command_runs(wheel, tmp_path):
    out = install_and_run(wheel, tmp_path / "venv", "--version")
    assert out.strip() == f"minigpt {minigpt.__version__}"
