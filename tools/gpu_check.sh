#!/usr/bin/env bash
# One call on a lent GPU machine (see ../.library/device): build the extension there, run the
# gpu-marked tests, compute-sanitizer memcheck and racecheck over them, and the op benchmark.
# Everything lands in $OUT (default ./gpu_check_out); the last lines are a summary.
#   usage (device tool): bash tools/gpu_check.sh
set -uo pipefail
OUT=${OUT:-$PWD/gpu_check_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PY:-python3}
status=()

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/nvidia_smi.txt"
nvcc --version | tail -2

# Build for the GPU at hand only (faster than the five default architectures).
CMAKE_ARGS="-DCMAKE_CUDA_ARCHITECTURES=${MEDTRT_CUDA_ARCHITECTURES:-90}" \
  $PY -m pip install -q --no-build-isolation --no-deps . >"$OUT/build.log" 2>&1 \
  || { tail -40 "$OUT/build.log"; echo "BUILD FAILED"; exit 1; }
$PY -m medtrt info | tee "$OUT/medtrt_info.txt"

$PY -m pytest -m gpu -p no:cacheprovider -q -rs tests/ops 2>&1 | tee "$OUT/pytest_gpu.log"
status+=("pytest -m gpu: rc=${PIPESTATUS[0]}")

for tool in memcheck racecheck; do
  compute-sanitizer --tool "$tool" --target-processes all --error-exitcode 99 \
    $PY -m pytest -m gpu -p no:cacheprovider -q -x -k "not large_batch" tests/ops \
    >"$OUT/sanitizer_$tool.log" 2>&1
  rc=$?
  tail -5 "$OUT/sanitizer_$tool.log"
  status+=("compute-sanitizer $tool: rc=$rc")
done

$PY tools/bench_ops.py --out "$OUT/bench_ops_gpu.json" 2>&1 | tee "$OUT/bench_ops.log"
status+=("bench_ops: rc=${PIPESTATUS[0]}")

echo "==== summary"
printf '%s\n' "${status[@]}"
