#!/usr/bin/env bash
# One-shot check of deeplabv2_ext on a bare GPU machine (no network): build, CUDA tests, the rest
# of the tests, compute-sanitizer (memcheck + racecheck) for ASPP and DenseCRF, benchmarks +
# markdown summary.
#
#   bash benchmarks/gpu_check.sh --prep               (here, with the package index: fetches what
#                                                      the GPU machine lacks into build-gpu-deps/)
#   OUT=/some/dir bash benchmarks/gpu_check.sh        (there; run from anywhere; OUT defaults to
#                                                      ./gpu_out)
#
# pydensecrf (the reference of the CRF tests) is not on the GPU image and the machine has no
# network: --prep downloads the pydensecrf2 sdist and the pure-Python Cython wheel its setup.py
# requires into build-gpu-deps/ (ignored by git, so bring it along: e.g. the device tool's
# `carry`); the deps stage there builds pydensecrf from it with the machine's compiler, Cython only
# on the build's PYTHONPATH. Without build-gpu-deps/ the stage is skipped and the tests that need
# pydensecrf report themselves skipped.
#
# Every stage runs even when an earlier one failed; its rc and duration are recorded, a table is
# printed at the end and written to $OUT/summary.txt, and the script exits 1 if any stage failed.
# Knobs (env): GPU_CHECK_BUDGET_S (total seconds, default 540), SKIP_BUILD=1 (use the installed
# package), GPU_CHECK_FULL_TESTS=1 (second test stage = the whole suite instead of "not cuda"),
# BENCH_SHAPES (default "S1 S2 S3"), BENCH_DEVICE (default cuda), ASPP_BENCH_COMPILE=0 (no torch.compile baseline).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
DEPS_DIR="$REPO/build-gpu-deps"
PYDENSECRF_SDIST="pydensecrf2==1.1"
CYTHON_WHEEL="Cython==0.29.36"  # pydensecrf2 1.1's setup_requires, exactly

if [[ "${1:-}" == "--prep" ]]; then
    mkdir -p "$DEPS_DIR"
    python3 -m pip download --no-deps --no-binary=:all: -d "$DEPS_DIR" "$PYDENSECRF_SDIST"
    python3 -m pip download --no-deps --only-binary=:all: --implementation py --abi none \
        --platform any -d "$DEPS_DIR" "$CYTHON_WHEEL"
    ls -l "$DEPS_DIR"
    exit 0
fi
OUT="${OUT:-$REPO/gpu_out}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
BUDGET_S="${GPU_CHECK_BUDGET_S:-540}"
START=$(date +%s)
export PYTHONUNBUFFERED=1
# Run python helpers from outside the repo so that ./deeplabv2_ext (sources, no _C) cannot shadow
# the installed package.
PYRUN_DIR="$OUT"

STAGE_NAMES=()
STAGE_RCS=()
STAGE_SECS=()

elapsed() { echo $(( $(date +%s) - START )); }

# run_stage NAME CAP_SECONDS CMD...  -> runs CMD with stdout/stderr in $OUT/NAME.log, bounded by
# CAP_SECONDS and by what is left of the overall budget.
run_stage() {
    local name="$1" cap="$2"
    shift 2
    local left=$(( BUDGET_S - $(elapsed) ))
    local limit=$(( cap < left ? cap : left ))
    local t0 rc
    t0=$(date +%s)
    if (( limit < 5 )); then
        echo "[gpu_check] $name: skipped (time budget spent)" | tee "$OUT/$name.log"
        rc=124
    else
        echo "[gpu_check] $name: start (limit ${limit}s, elapsed $(elapsed)s)"
        if timeout --kill-after=15 "$limit" "$@" >"$OUT/$name.log" 2>&1; then rc=0; else rc=$?; fi
        if (( rc == 124 || rc == 137 )); then echo "[gpu_check] $name: TIMED OUT after ${limit}s" | tee -a "$OUT/$name.log"; fi
    fi
    STAGE_NAMES+=("$name")
    STAGE_RCS+=("$rc")
    STAGE_SECS+=("$(( $(date +%s) - t0 ))")
    echo "[gpu_check] $name: rc=$rc ($(( $(date +%s) - t0 ))s); last lines:"
    tail -n 5 "$OUT/$name.log" | sed 's/^/    /'
    return 0
}

# ------------------------------------------------------------------------------------ 1. env
env_info() {
    echo "== date"; date -u
    echo "== nvidia-smi"; nvidia-smi || echo "nvidia-smi unavailable"
    echo "== nvcc"; nvcc --version || echo "nvcc unavailable"
    echo "== compute-sanitizer"; compute-sanitizer --version || echo "compute-sanitizer unavailable"
    echo "== python/torch"
    (cd "$PYRUN_DIR" && python - <<'PY'
import sys, torch
print("python", sys.version.split()[0])
print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version())
print("cuda available", torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("device", p.name, f"sm_{p.major}{p.minor}", f"{p.total_memory / 2**30:.1f} GiB")
for mod in ("pytest", "pytest_benchmark", "hypothesis", "numpy", "pybind11", "ninja"):
    try:
        m = __import__(mod)
        print(mod, getattr(m, "__version__", "?"))
    except Exception as e:
        print(mod, "MISSING", type(e).__name__)
PY
    )
    echo "== source"
    git -C "$REPO" rev-parse HEAD 2>/dev/null || echo "git commit: unavailable (no .git)"
    git -C "$REPO" status --short 2>/dev/null | head -20 || true
    echo "tree sha256: $(cd "$REPO" && find csrc deeplabv2_ext setup.py pyproject.toml -type f \( -name '*.cpp' -o -name '*.cu' -o -name '*.cuh' -o -name '*.h' -o -name '*.py' -o -name '*.toml' \) 2>/dev/null | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -c1-16)"
    echo "== cpus"; nproc
}
export REPO OUT PYRUN_DIR
export -f env_info
run_stage env 60 bash -c env_info
cp "$OUT/env.log" "$OUT/env.txt" 2>/dev/null || true

# ------------------------------------------------------------------------------------ 2. deps
install_pydensecrf() {
    if python -c "import pydensecrf.densecrf" 2>/dev/null; then echo "pydensecrf already installed"; return 0; fi
    local sdist cython
    sdist=$(ls "$DEPS_DIR"/pydensecrf2-*.tar.gz 2>/dev/null | head -n 1)
    cython=$(ls "$DEPS_DIR"/Cython-*.whl 2>/dev/null | head -n 1)
    if [[ -z "$sdist" || -z "$cython" ]]; then
        echo "no $DEPS_DIR/pydensecrf2-*.tar.gz + Cython-*.whl (run --prep and bring the folder):" \
            "the tests that need pydensecrf will be skipped"
        return 0
    fi
    local cython_site
    cython_site=$(mktemp -d)
    python -m pip install --no-index --no-deps --target "$cython_site" "$cython"
    PYTHONPATH="$cython_site" python -m pip install --no-index --no-deps --no-build-isolation "$sdist"
    rm -rf "$cython_site"
    (cd "$PYRUN_DIR" && python -c "import pydensecrf.densecrf as d; print('pydensecrf from', d.__file__)")
}
export DEPS_DIR
export -f install_pydensecrf
run_stage deps 120 bash -c install_pydensecrf

# ------------------------------------------------------------------------------------ 3. build
build() {
    if [[ "${SKIP_BUILD:-0}" == "1" ]]; then echo "SKIP_BUILD=1: using the installed package"; else
        MAX_JOBS=16 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" \
            pip install --no-build-isolation --no-deps --no-index -v . >"$OUT/build.log" 2>&1 \
            || { echo "pip install failed; tail of build.log:"; tail -n 60 "$OUT/build.log"; return 1; }
        grep -iE "warning" "$OUT/build.log" | grep -viE "^ *(running|copying|creating)" | head -40 || true
    fi
    (cd "$PYRUN_DIR" && python -c "
import deeplabv2_ext, torch
print('installed at', deeplabv2_ext.__file__)
print('cuda_kernels_available', deeplabv2_ext.cuda_kernels_available())
assert not torch.cuda.is_available() or deeplabv2_ext.cuda_kernels_available(), 'built without CUDA kernels'
")
}
export -f build
run_stage install 270 bash -c build

# ------------------------------------------------------------------------------------ 4. tests
# -v -rfE: each outcome is in the log as it happens and the failures' summary at the end, even
# if the stage's time limit kills pytest before it writes the junit file; with pytest-timeout
# on the machine, one hung test costs 120 s, not the stage.
PER_TEST_TIMEOUT=()
python -c "import pytest_timeout" 2>/dev/null && PER_TEST_TIMEOUT=(--timeout=120 --timeout-method=thread)
run_stage tests_cuda 240 pytest tests -m cuda -v -rfE -p no:cacheprovider --durations=15 \
    "${PER_TEST_TIMEOUT[@]}" --junitxml="$OUT/junit_cuda.xml"
if [[ "${GPU_CHECK_FULL_TESTS:-0}" == "1" ]]; then
    run_stage tests_all 240 pytest tests -m "not cuda_on_cpu" -q -p no:cacheprovider --durations=15 \
        --junitxml="$OUT/junit_all.xml"
else  # together with tests_cuda this is the full suite (but the CUDA-on-CPU layer: CI runs it)
    run_stage tests_rest 150 pytest tests -m "not cuda and not cuda_on_cpu" -q -p no:cacheprovider --durations=15 \
        --junitxml="$OUT/junit_rest.xml"
fi

# ------------------------------------------------------------------------------------ 5. sanitizer
if command -v compute-sanitizer >/dev/null 2>&1; then
    run_stage memcheck 100 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck \
        --error-exitcode 1 --print-limit 30 python benchmarks/sanitize_aspp.py
    run_stage racecheck 45 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool racecheck \
        --error-exitcode 1 --print-limit 30 \
        python benchmarks/sanitize_aspp.py --tiny --modes fp32,fp16
    run_stage memcheck_crf 80 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck \
        --error-exitcode 1 --print-limit 30 python benchmarks/sanitize_densecrf.py
    run_stage racecheck_crf 45 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool racecheck \
        --error-exitcode 1 --print-limit 30 python benchmarks/sanitize_densecrf.py --tiny
else
    run_stage memcheck 5 sh -c 'echo "compute-sanitizer not found"; exit 127'
fi

# ------------------------------------------------------------------------------------ 6. benchmarks
# One pytest run per shape (each with its own JSON) so that a timeout loses one shape, not all.
BENCH_JSONS=()
for shape in ${BENCH_SHAPES:-S1 S2 S3}; do
    run_stage "bench_$shape" 200 env ASPP_BENCH_DEVICE="${BENCH_DEVICE:-cuda}" ASPP_BENCH_SHAPES="$shape" \
        pytest benchmarks/test_bench_aspp.py -q -p no:cacheprovider \
        --benchmark-json="$OUT/bench_gpu_$shape.json"
    BENCH_JSONS+=("$OUT/bench_gpu_$shape.json")
done
run_stage bench_crf 200 env CRF_BENCH_DEVICE="${BENCH_DEVICE:-cuda}" \
    pytest benchmarks/test_bench_densecrf.py -q -p no:cacheprovider \
    --benchmark-json="$OUT/bench_gpu_crf.json"
BENCH_JSONS+=("$OUT/bench_gpu_crf.json")
run_stage summarize 30 python benchmarks/summarize.py "${BENCH_JSONS[@]}" \
    --merge-json "$OUT/bench_gpu.json" -o "$OUT/bench_gpu.md"
cat "$OUT/bench_gpu.md" 2>/dev/null || true

# ------------------------------------------------------------------------------------ summary
FAILED=0
{
    printf '%-14s %6s %7s\n' stage rc seconds
    for i in "${!STAGE_NAMES[@]}"; do
        printf '%-14s %6s %7s\n' "${STAGE_NAMES[$i]}" "${STAGE_RCS[$i]}" "${STAGE_SECS[$i]}"
    done
    printf 'total %ss\n' "$(elapsed)"
} | tee "$OUT/summary.txt"
for rc in "${STAGE_RCS[@]}"; do
    if [[ "$rc" != "0" ]]; then FAILED=1; fi
done
exit "$FAILED"
