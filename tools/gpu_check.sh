#!/usr/bin/env bash
# Everything only a GPU can prove, in ONE call of the lent machine (../.library/device): at most
# 10 minutes a call and 8 files back. Nothing here has a second chance, so every step runs under
# one deadline and every outcome (pass, fail, timeout, out of time, unsupported, skipped) lands
# in summary.json, which is written whatever happens (trap on EXIT).
#
#   here, once per commit:   make gpu-wheel      # .whl/: medtrt for sm_90 (cp312) + MONAI
#   on the lent machine:     run(command="MEDTRT_COMMIT=<sha> bash tools/gpu_check.sh",
#                                carry=[".whl"], timeout_s=600)
#   anywhere, no GPU:        bash tools/gpu_check.sh --dry-run OUTDIR   (< 2 min; make test runs it)
#
# Budget: 540 s from the script's start (GPU_CHECK_BUDGET overrides it), 60 s under the call's
# 600 s limit. Each step's timeout is min(its cap, time left - 15 s kept for the summary); a step
# that would get under 10 s is recorded "out_of_time" and not started. Caps and what a step is
# expected to take on an H100/H200 (seconds):
#
#   step            cap   expected  what it proves
#   env              20      2      GPU, driver, torch/torchvision/nvcc versions
#   build            60     15      the carried wheel imports with CUDA and sees the GPU
#   (build-source)  240    150      only if the wheel does not import: build sm_90 there
#   model           150     60      demo model trained there (GPU tests and benches use it)
#   tests           180     90      -m gpu tests/ops tests/runtime: kernels vs CPU twins,
#                                   CUDA Pipeline vs host twin, overlap, flat memory, torch stage
#   sanitize-probe   60     15      compute-sanitizer works on this machine (else "unsupported")
#   memcheck         60     30      tools/gpu_sanitize.py, MEDTRT_EXACT_ALLOC=1, medtrt's kernels
#   synccheck        60     20        "
#   initcheck        60     30        "
#   bench-ops        60     30      kernel bandwidth vs device-to-device copy bandwidth
#   bench-pipeline   90     45      end-to-end / compute-only at batch 256 (goal >= 0.95)
#   parity           90     40      -m gpu tests/parity/test_parity_gpu.py (torch GPU rows)
#   bench           120     70      medtrt bench, GPU backends, engine/pipeline/files modes
#                        -----
#                          ~440 expected (build from source instead of the wheel: ~575, so the
#                               last steps would be recorded out_of_time, never dropped)
#
# Files back ($OUT, at most 8): summary.json, junit.xml, bench_ops_gpu.json,
# bench_pipeline_gpu.json, bench.json, gpu_check.log, rest.tar.gz (everything else).
set -uo pipefail
cd "$(dirname "$0")/.."

DRY=0
if [ "${1:-}" = "--dry-run" ]; then
  DRY=1
  OUT=${2:?usage: gpu_check.sh --dry-run OUTDIR}
fi
OUT=${OUT:-$PWD/gpu_check_out}
BUDGET=${GPU_CHECK_BUDGET:-540}
RESERVE=15
END=$((SECONDS + BUDGET))
PY=${PY:-python3}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
LOG=$OUT/gpu_check.log
STEPS=$WORK/steps.jsonl
: >"$LOG"
: >"$STEPS"
export PYTHONUNBUFFERED=1 PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1
export PATH="/usr/local/cuda/bin:$PATH" MEDTRT_CACHE=${MEDTRT_CACHE:-$WORK/cache}
export PY WORK DRY  # read by the step functions, which run in child shells
[ "$DRY" = 1 ] || export MEDTRT_REQUIRE_GPU=1  # a skip outside conftest's list fails

# record NAME STATUS RC SECONDS TIMEOUT [NOTE]: one line of steps.jsonl
record() {
  $PY -c 'import json, sys; n, s, rc, sec, t, note = sys.argv[1:7]
print(json.dumps({"name": n, "status": s, "rc": int(rc) if rc else None, "seconds": int(sec),
                  "timeout_s": int(t) if t else None, "note": note}))' \
    "$1" "$2" "${3:-}" "${4:-0}" "${5:-}" "${6:-}" >>"$STEPS"
}

# step NAME CAP COMMAND...: COMMAND under the deadline, output to the log, outcome recorded.
# Returns COMMAND's exit code (125 when it was not started for lack of time).
step() {
  local name=$1 cap=$2
  shift 2
  local left=$((END - SECONDS - RESERVE))
  if [ "$left" -lt 10 ]; then
    echo "==== $name: out of time (${left}s left)" >>"$LOG"
    record "$name" out_of_time "" 0 "" "not started: ${left}s left of the ${BUDGET}s budget"
    return 125
  fi
  local t=$((cap < left ? cap : left)) start=$SECONDS rc status
  echo "==== $name (timeout ${t}s, ${left}s left): $*" >>"$LOG"
  # through bash -c, so COMMAND may be one of the exported functions below
  timeout --kill-after=5 "$t" bash -c '"$@"' step "$@" >>"$LOG" 2>&1
  rc=$?
  case $rc in
    0) status=pass ;;
    124 | 137) status=timeout ;;
    *) status=fail ;;
  esac
  record "$name" "$status" "$rc" $((SECONDS - start)) "$t" "${NOTE:-}"
  return $rc
}

skip() { record "$1" skip "" 0 "" "$2"; }

finish() {
  local rc=$?
  trap - EXIT
  $PY tools/gpu_summary.py --work "$WORK" --out "$OUT" --budget "$BUDGET" \
    --elapsed "$SECONDS" --dry-run "$DRY" --commit "${MEDTRT_COMMIT:-unknown}" \
    || echo "gpu_summary.py failed (rc $?): summary.json may be missing" >&2
  rm -rf "$WORK"
  exit "$rc"
}
trap finish EXIT

# ---- env -------------------------------------------------------------------------------------
env_info() {
  { nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader \
      || echo "no nvidia-smi"; } >"$WORK/nvidia-smi.csv" 2>&1
  { command -v nvcc >/dev/null && nvcc --version | tail -1 || echo "no nvcc"; } \
    >"$WORK/nvcc.txt" 2>&1
  $PY -c 'import json, platform, importlib.metadata as m
v = {"python": platform.python_version()}
for p in ("torch", "torchvision", "onnxruntime", "numpy", "monai"):
    try:
        v[p] = m.version(p)
    except m.PackageNotFoundError:
        v[p] = None
print(json.dumps(v))' >"$WORK/versions.json"
}
export -f env_info
step env 20 env_info

GPU=0
if [ "$DRY" = 0 ] && nvidia-smi -L >/dev/null 2>&1; then GPU=1; fi

# ---- build -----------------------------------------------------------------------------------
import_check() {  # medtrt imports, has CUDA and sees a device (dry run: imports only)
  $PY - "$DRY" <<'PYEOF'
import json, sys
import medtrt
info = medtrt.build_info()
print(json.dumps(info))
if sys.argv[1] == "0":
    assert info["cuda_compiled"], "extension built without CUDA"
    assert info["cuda_device_count"] > 0, info["cuda_device_status"]
PYEOF
}
install_wheels() {
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && PYTHONPATH=/tmp/site import_check
}
build_source() {
  CMAKE_ARGS="-DCMAKE_CUDA_ARCHITECTURES=90" $PY -m pip install -q --no-build-isolation \
    --no-deps --target /tmp/site-src . && PYTHONPATH=/tmp/site-src:/tmp/site import_check
}
export -f import_check install_wheels build_source
if [ "$DRY" = 1 ]; then
  NOTE="dry run: the installed medtrt imported; no wheel installed" step build 60 import_check
elif ls .whl/medtrt-*.whl >/dev/null 2>&1 && NOTE="carried wheel" step build 60 install_wheels; then
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
else
  # MONAI alone: a medtrt wheel pip refuses (another Python) would abort a joint install
  ls .whl/monai-*.whl >/dev/null 2>&1 && $PY -m pip install -q --no-index --no-deps \
    --no-compile --target /tmp/site .whl/monai-*.whl >>"$LOG" 2>&1
  NOTE="the wheel was missing or did not import" step build-source 240 build_source \
    || { echo "medtrt does not import with CUDA: nothing else can run" >>"$LOG"; exit 1; }
  export PYTHONPATH=/tmp/site-src:/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi

# ---- GPU steps -------------------------------------------------------------------------------
NO_GPU="no GPU (dry run)"
[ "$DRY" = 0 ] && [ "$GPU" = 0 ] && NO_GPU="nvidia-smi sees no GPU"
gpu() {  # gpu NAME CAP COMMAND...: a step that needs the GPU
  if [ "$GPU" = 1 ]; then step "$@"; else skip "$1" "$NO_GPU"; return 0; fi
}
PYTEST=($PY -m pytest -p no:cacheprovider -q -rs --durations=10 -m gpu)

gpu model 150 $PY -c "from medtrt.demo import cached_demo_model as c
print(c(progress=False).checkpoint)"
MODEL=$(ls -d "$MEDTRT_CACHE"/mednist-demo-*/model.pt 2>/dev/null | head -1)

gpu tests 180 "${PYTEST[@]}" --junitxml="$WORK/junit-tests.xml" tests/ops tests/runtime

# Sanitizers over one short driver of medtrt's kernels and the Pipeline, with exact-size
# buffers (MEDTRT_EXACT_ALLOC=1) and torch's caching allocator off, filtered to medtrt's kernels.
# racecheck is left out: it finds shared-memory hazards only, and the kernels use none.
sanitize() {  # sanitize TOOL [FILTER...]
  local tool=$1
  shift
  MEDTRT_EXACT_ALLOC=1 PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool "$tool" \
    --error-exitcode 99 --print-limit 50 "$@" --log-file "$WORK/sanitizer-$tool.txt" \
    $PY tools/gpu_sanitize.py --device cuda
}
FILTER=(--kernel-name kns=medtrt)
sanitize_probe() {  # sanitize_probe [FILTER...]
  compute-sanitizer --tool memcheck "$@" --error-exitcode 99 \
    $PY -c "import torch; print(float(torch.ones(8, device='cuda').sum()))"
}
export -f sanitize sanitize_probe
if [ "$GPU" = 1 ] && command -v compute-sanitizer >/dev/null; then
  step sanitize-probe 60 sanitize_probe "${FILTER[@]}"
  probe=$?
  if [ $probe -ne 0 ] && tail -50 "$LOG" | grep -qi "unrecognized\|invalid.*kernel-name\|unknown option"; then
    FILTER=()  # this compute-sanitizer has no kernel filter: check every kernel
    sed -i '$d' "$STEPS"  # the retry's record replaces the refused attempt's
    NOTE="retried without --kernel-name" step sanitize-probe 60 sanitize_probe "${FILTER[@]}"
    probe=$?
  fi
  for tool in memcheck synccheck initcheck; do
    if [ $probe -eq 0 ]; then
      NOTE="filter: ${FILTER[*]:-none}" step "$tool" 60 sanitize "$tool" "${FILTER[@]}"
    else
      record "$tool" unsupported "" 0 "" "compute-sanitizer refused this machine (see probe)"
    fi
  done
else
  why=$NO_GPU
  [ "$GPU" = 1 ] && why="compute-sanitizer is not on PATH"
  for s in sanitize-probe memcheck synccheck initcheck; do skip "$s" "$why"; done
fi
if [ "$DRY" = 1 ]; then  # the driver's host half, so it cannot rot
  NOTE="dry run: the driver on the host device" MEDTRT_EXACT_ALLOC=1 \
    step sanitize-driver-host 60 $PY tools/gpu_sanitize.py --device cpu
fi

gpu bench-ops 60 $PY tools/bench_ops.py --gpu-only --repeats 7 --out "$OUT/bench_ops_gpu.json"
gpu bench-pipeline 90 $PY tools/bench_pipeline.py --device cuda:0 --precision fp16 --batch 256 \
  --batches 20 --repeats 2 --slots 2,3 --graphs --checkpoint "${MODEL:-missing}" \
  --out "$OUT/bench_pipeline_gpu.json"
gpu parity 90 "${PYTEST[@]}" --junitxml="$WORK/junit-parity.xml" tests/parity/test_parity_gpu.py
gpu bench 120 $PY -m medtrt bench "${MODEL:-missing}" --mode engine,pipeline,files \
  --batch 32,256 --duration 1 --repeats 1 -q \
  --backends torch-cuda-fp32,torch-cuda-fp16,torch-cuda-fp16+nvjpeg --out "$WORK/bench"
[ -f "$WORK/bench/bench.json" ] && cp "$WORK/bench/bench.json" "$OUT/bench.json"
exit 0
