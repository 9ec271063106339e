#!/usr/bin/env bash
# Reruns every CPU measurement the README quotes and writes their outputs, with the machine,
# versions and commit, to benchmarks/results/cpu_claims_<commit>.md (and the pytest-benchmark
# JSON of the batch-8 run beside it). Run it on an otherwise idle machine, from the repository
# root, with the package installed (`make setup`):
#
#     bash benchmarks/record_cpu_claims.sh
#
# About 10 minutes on a 2-vCPU VM (the demo is 3-4 of them).
set -euo pipefail
cd "$(dirname "$0")/.."
commit="$(git rev-parse --short HEAD)"
git diff --quiet HEAD -- csrc deeplabv2_ext python benchmarks || commit="${commit}-dirty"
out="$(pwd)/benchmarks/results/cpu_claims_${commit}.md"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

run() {  # run <what it measures> <command...>: the command, then its output, into $out
  local what="$1"; shift
  echo "== $what: $*" >&2
  { echo; echo "## $what"; echo; echo '```'; echo "\$ $*"; "$@" 2>&1; echo '```'; } | tee -a "$out" >&2
}

{
  echo "# CPU measurements quoted by the README"
  echo
  echo "- Date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "- Commit: $commit"
  echo "- CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), $(nproc) logical CPUs"
  echo "- $(python3 --version); torch $(python3 -c 'import torch; print(torch.__version__)');" \
       "pydensecrf2 $(python3 -c 'import importlib.metadata as m; print(m.version("pydensecrf2"))');" \
       "deeplabv2_ext $(python3 -P -c 'import deeplabv2_ext; print(deeplabv2_ext.__version__)')"
  echo "- Command: \`bash benchmarks/record_cpu_claims.sh\` (each section gives its own command)"
} > "$out"

(cd benchmarks
 run "dense_crf vs pydensecrf, 512x512, L=21, 1 thread (interleaved)" \
   python3 crf_interleaved.py --threads 1 --pairs 9
 run "dense_crf vs pydensecrf, 512x512, L=21, 2 threads (interleaved)" \
   python3 crf_interleaved.py --threads 2 --pairs 9
 run "what the CRF backward keeps, number weights" python3 crf_backward_memory.py
 run "what the CRF backward keeps, trainable=True" python3 crf_backward_memory.py --trainable
 run "4000x3000, L=5, 2 threads: time and peak memory" \
   python3 crf_large_image.py --threads 2)

json="$(pwd)/benchmarks/results/cpu_claims_${commit}_batch8.json"
run "batch 8 at 512x512, 2 threads (pytest-benchmark, variants one after the other)" \
  env CRF_BENCH_DEVICE=cpu CRF_BENCH_SIZES=512 CRF_BENCH_BATCHES=8 CRF_BENCH_ROUNDS=3 \
  CRF_BENCH_THREADS=2 pytest -q -p no:cacheprovider benchmarks/test_bench_densecrf.py \
  --benchmark-json="$json"
run "the batch-8 table" python3 benchmarks/summarize.py "$json"
run "the demo (time and mIoU without and with the CRF)" \
  env TQDM_DISABLE=1 deeplabv2 demo --check --output-dir "$scratch/demo"
echo "wrote $out" >&2
