#!/usr/bin/env bash
# GPU checks on a lent machine (see ../.library/device), in phases that each fit one call:
#   test      build the extension there; the gpu-marked tests of tests/ops and tests/runtime
#             (a skip is a failure here; the demo model is trained there, on the GPU)
#   sanitize  compute-sanitizer memcheck/synccheck/initcheck/racecheck over the op tests and a
#             short run of the pipeline tests
#   bench     tools/bench_ops.py --gpu-only, tools/bench_pipeline.py (FP16, batch 256) and
#             medtrt bench: engine and pipeline modes interleaved in one run (torch CPU/CUDA/
#             compile, ORT CPU; pipeline/engine ratios), and files mode (Pillow decode in threads
#             and nvJPEG on the GPU) vs the seed baseline
# Default: all three (may not fit 10 minutes; then call once per phase: the build is reused).
# MONAI is not on that machine: carry it as a wheel, prepared here once with
#   echo /.whl/ >> .git/info/exclude; python3 -m pip download --no-deps --only-binary=:all: \
#     --python-version 3.12 --implementation cp --platform manylinux2014_x86_64 -d .whl monai==1.6.1
# and call with carry [".whl"]. Pass the commit, since that copy has no .git:
#   MEDTRT_COMMIT=<sha> bash tools/gpu_check.sh test
# Results land in $OUT (default ./gpu_check_out); the last lines are a summary.
set -uo pipefail
OUT=${OUT:-$PWD/gpu_check_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1 MEDTRT_REQUIRE_GPU=1
export PATH="/usr/local/cuda/bin:$PATH" MEDTRT_CACHE=${MEDTRT_CACHE:-/tmp/medtrt-cache}
PY=${PY:-python3}
PHASES=${*:-test sanitize bench}
status=()

if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || { echo "WHEELS FAILED"; exit 1; }
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi

{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; nvcc --version | tail -2
  echo "commit: ${MEDTRT_COMMIT:-unknown}"
} 2>&1 | tee -a "$OUT/env.txt"

# Build for the GPU at hand only (faster than the five default architectures); incremental.
CMAKE_ARGS="-DCMAKE_CUDA_ARCHITECTURES=${MEDTRT_CUDA_ARCHITECTURES:-90}" \
  timeout 300 $PY -m pip install -q --no-build-isolation --no-deps . >"$OUT/build.log" 2>&1 \
  || { tail -40 "$OUT/build.log"; echo "BUILD FAILED"; exit 1; }
$PY - <<'PYEOF' || { echo "CUDA NOT USABLE: stopping"; exit 1; }
import medtrt
info = medtrt.build_info()
assert info["cuda_compiled"], "extension built without CUDA"
assert info["cuda_device_count"] > 0, info["cuda_device_status"]
print(info)
PYEOF

for phase in $PHASES; do
  case $phase in
    test)
      timeout 420 $PY -m pytest -m gpu -p no:cacheprovider -q -rs --durations=10 \
        tests/ops tests/runtime tests/parity/test_parity_gpu.py 2>&1 | tee "$OUT/pytest_gpu.log"
      status+=("pytest -m gpu: rc=${PIPESTATUS[0]}") ;;
    sanitize)
      # The caching allocator hides overruns inside its blocks from memcheck: turn it off here.
      # MEDTRT_SANITIZER shortens the pipeline tests (fewer batches) under the tools' slowdown.
      for tool in memcheck synccheck initcheck racecheck; do
        echo "==== $tool" >>"$OUT/sanitizer.log"
        MEDTRT_SANITIZER=1 PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout 140 compute-sanitizer \
          --tool "$tool" --target-processes all --error-exitcode 99 --print-limit 50 \
          $PY -m pytest -m gpu -p no:cacheprovider -q -x -k "not large_batch and not overlap \
            and not 10000 and not engine and not nvjpeg and not cuda_tensor_input" tests/ops tests/runtime/test_pipeline_gpu.py \
          >>"$OUT/sanitizer.log" 2>&1
        status+=("compute-sanitizer $tool: rc=$?")
      done
      tail -c 8000000 "$OUT/sanitizer.log" >"$OUT/sanitizer.tail" && mv "$OUT/sanitizer.tail" "$OUT/sanitizer.log" ;;
    bench)
      timeout 200 $PY tools/bench_ops.py --gpu-only --out "$OUT/bench_ops_gpu.json" 2>&1 | tee "$OUT/bench_ops.log"
      status+=("bench_ops: rc=${PIPESTATUS[0]}")
      timeout 300 $PY tools/bench_pipeline.py --device cuda:0 --precision fp16 --batch 256 \
        --graphs --out "$OUT/bench_pipeline_gpu.json" 2>&1 | tee "$OUT/bench_pipeline.log"
      status+=("bench_pipeline: rc=${PIPESTATUS[0]}")
      MODEL=$(ls -d "$MEDTRT_CACHE"/mednist-demo-*/model.pt 2>/dev/null | head -1)
      # engine and pipeline interleaved in one run: mode_ratios holds pipeline/engine per backend
      timeout 300 $PY -m medtrt bench "$MODEL" --mode engine,pipeline --batch 1,32,256 --duration 2 \
        --repeats 2 -q --backends torch-cpu-fp32,torch-cuda-fp32,torch-cuda-fp16,torch-compile-cuda-fp16,ort-cpu-fp32 \
        --out "$OUT/bench-gpu-engine-pipeline" 2>&1 | tee "$OUT/bench_engine_pipeline.log"
      status+=("medtrt bench engine,pipeline: rc=${PIPESTATUS[0]}")
      timeout 240 $PY -m medtrt bench "$MODEL" --mode files --batch 32,256 --duration 2 \
        --repeats 2 -q --backends torch-cuda-fp16,torch-cuda-fp16+nvjpeg,ort-cpu-fp32 \
        --out "$OUT/bench-gpu-files" 2>&1 | tee "$OUT/bench_files.log"
      status+=("medtrt bench files: rc=${PIPESTATUS[0]}")
      ;;
    *) echo "unknown phase $phase (test | sanitize | bench)"; exit 2 ;;
  esac
done

echo "==== summary"
printf '%s\n' "${status[@]}"
