#!/usr/bin/env bash
# One call on a lent GPU machine (see ../.library/device): build the extension there, run the
# gpu-marked tests (a skip is a failure here), compute-sanitizer over them, and the op benchmark.
# Results land in $OUT (default ./gpu_check_out), at most 6 files; the last lines are a summary.
#   usage (device tool): bash tools/gpu_check.sh
set -uo pipefail
OUT=${OUT:-$PWD/gpu_check_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1 MEDTRT_REQUIRE_GPU=1
export PATH="/usr/local/cuda/bin:$PATH"
PY=${PY:-python3}
status=()

{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; nvcc --version | tail -2
  $PY -c "import sysconfig, os; h = sysconfig.get_paths()['include']; print('Python.h:', os.path.exists(h + '/Python.h'))"
} 2>&1 | tee "$OUT/env.txt"

# Build for the GPU at hand only (faster than the five default architectures).
CMAKE_ARGS="-DCMAKE_CUDA_ARCHITECTURES=${MEDTRT_CUDA_ARCHITECTURES:-90}" \
  timeout 300 $PY -m pip install -q --no-build-isolation --no-deps . >"$OUT/build.log" 2>&1 \
  || { tail -40 "$OUT/build.log"; echo "BUILD FAILED"; exit 1; }
$PY -m medtrt info --json | tee -a "$OUT/env.txt"
$PY - <<'PYEOF' || { echo "CUDA NOT USABLE: stopping"; exit 1; }
import medtrt
info = medtrt.build_info()
assert info["cuda_compiled"], "extension built without CUDA"
assert info["cuda_device_count"] > 0, info["cuda_device_status"]
PYEOF

timeout 240 $PY -m pytest -m gpu -p no:cacheprovider -q -rs tests/ops 2>&1 | tee "$OUT/pytest_gpu.log"
status+=("pytest -m gpu: rc=${PIPESTATUS[0]}")

# The caching allocator hides overruns inside its blocks from memcheck: turn it off here.
for tool in memcheck synccheck initcheck racecheck; do
  echo "==== $tool" >>"$OUT/sanitizer.log"
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout 300 compute-sanitizer --tool "$tool" \
    --target-processes all --error-exitcode 99 --print-limit 50 \
    $PY -m pytest -m gpu -p no:cacheprovider -q -x -k "not large_batch" tests/ops \
    >>"$OUT/sanitizer.log" 2>&1
  status+=("compute-sanitizer $tool: rc=$?")
done
tail -c 8000000 "$OUT/sanitizer.log" >"$OUT/sanitizer.tail" && mv "$OUT/sanitizer.tail" "$OUT/sanitizer.log"

timeout 300 $PY tools/bench_ops.py --gpu-only --out "$OUT/bench_ops_gpu.json" 2>&1 | tee "$OUT/bench_ops.log"
status+=("bench_ops: rc=${PIPESTATUS[0]}")

echo "==== summary"
printf '%s\n' "${status[@]}"
