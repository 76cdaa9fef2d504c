"""Build the wheel, install it in a brand-new virtualenv and run `minigpt --version` there.

    python tools/wheel_smoke.py [WORKDIR]

This is what a user gets from `pip install .`: it proves the package is complete without
the repository beside it. The new virtualenv installs the wheel without its dependencies (the
command's `--version` needs none, and a second PyTorch would cost minutes and gigabytes); the
dependencies it declares are checked in the wheel's metadata instead.
"""
import subprocess
import sys
import tempfile
import venv
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE_DATA = ["minigpt/chat.html"]   # files of the package that are not Python


def build_wheel(out: Path) -> Path:
    "Build the project's wheel into `out`; return its path."
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out), str(ROOT)],
                   check=True, capture_output=True, text=True)
    wheels = sorted(out.glob("minigpt-*.whl"))
    if not wheels: raise SystemExit(f"wheel_smoke: no wheel was written to {out}")
    return wheels[-1]


def wheel_metadata(wheel: Path) -> tuple[list[str], str]:
    "The files in `wheel` and the text of its METADATA."
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
        return names, z.read(meta).decode()


def install_and_run(wheel: Path, env_dir: Path, *args: str) -> str:
    "Install `wheel` in a new virtualenv at `env_dir`; run `minigpt *args` there; return stdout."
    venv.EnvBuilder(with_pip=True).create(env_dir)
    bin_dir = env_dir / ("Scripts" if sys.platform == "win32" else "bin")
    subprocess.run([str(bin_dir / "python"), "-m", "pip", "install", "--quiet", "--no-deps", str(wheel)],
                   check=True)
    r = subprocess.run([str(bin_dir / "minigpt"), *args], check=True, capture_output=True, text=True,
                       cwd=env_dir)  # not the repository: only the installed package is importable
    return r.stdout


def main(argv) -> int:
    work = Path(argv[0]) if argv else Path(tempfile.mkdtemp(prefix="minigpt-wheel-"))
    wheel = build_wheel(work / "dist")
    names, meta = wheel_metadata(wheel)
    print(f"wheel_smoke: built {wheel.name} ({len(names)} files)")
    missing = [f for f in PACKAGE_DATA if f not in names]
    if missing: raise SystemExit(f"wheel_smoke: the wheel lacks {', '.join(missing)} (pyproject's package-data)")
    out = install_and_run(wheel, work / "venv", "--version").strip()
    print(f"wheel_smoke: installed in a new virtualenv; `minigpt --version` printed {out!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
