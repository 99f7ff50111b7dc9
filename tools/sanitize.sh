#!/usr/bin/env bash
# make sanitize: the compiled core built CPU-only (Debug) with sanitizers, each build in a folder of
# its own, and the tests that drive medtrt._C directly run against it. Any sanitizer report
# stops the run (halt_on_error) and fails it; so does any test failure.
#
#   1. AddressSanitizer + UndefinedBehaviorSanitizer (+ float-cast-overflow): the C++-facing
#      tests and the property-based driver with many examples (MEDTRT_HYPOTHESIS=sanitize).
#   2. ThreadSanitizer, without OpenMP (libgomp is not instrumented, so its own synchronisation
#      would read as races): the Pipeline's multi-threaded paths (slots taken and given back
#      across threads, blocking acquire, submissions from up to 8 threads).
#
#   PY=.venv/bin/python bash tools/sanitize.sh        (make sanitize does this)
#
# Each build is installed with pip --target into build/sanitize-*/site and put first on
# PYTHONPATH, so the main environment's packages (numpy, hypothesis, torch) serve it. Python is
# not instrumented: the runtime (and libstdc++, whose __cxa_throw ASan intercepts) is preloaded,
# and ASan's leak check is off (CPython keeps allocations at exit).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
start=$SECONDS

# build NAME FLAGS [CMAKE_DEFINE...]: the core with FLAGS into build/sanitize-NAME/site
build() {
  local name=$1 flags=$2 site=build/sanitize-$1/site t0=$SECONDS
  shift 2
  echo "==== building the $name core (CPU only, Debug) into $site"
  mkdir -p "build/sanitize-$name"
  if ! $PY -m pip --disable-pip-version-check install -q --no-build-isolation --no-deps \
    --upgrade --target "$site" -C build-dir="build/sanitize-$name/{wheel_tag}" \
    -C cmake.build-type=Debug -C cmake.define.MEDTRT_ENABLE_CUDA=OFF \
    -C "cmake.define.CMAKE_CXX_FLAGS=$flags" -C "cmake.define.CMAKE_MODULE_LINKER_FLAGS=$flags" \
    "$@" . >"build/sanitize-$name/build.log" 2>&1; then
    tail -40 "build/sanitize-$name/build.log"
    echo "the $name build failed"
    exit 1
  fi
  local so
  so=$(ls "$site"/medtrt/_C*.so)
  echo "built in $((SECONDS - t0)) s: $so"
  SITE=$PWD/$site
}

# run RUNTIME PYTEST_ARGS...: pytest against the last build, with its runtime preloaded.
# --capture=sys: a sanitizer writes its report to file descriptor 2 and then ends the process,
# so pytest must not be capturing that descriptor (the report would be lost with its buffer).
run() {
  local runtime=$1
  shift
  LD_PRELOAD="$(gcc -print-file-name="$runtime") $(gcc -print-file-name=libstdc++.so)" \
    PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}" $PY - "$SITE" <<'PYEOF'
import sys
import medtrt._C as c
assert c.__file__.startswith(sys.argv[1]), f"the sanitized build is not the one imported: {c.__file__}"
print("importing", c.__file__)
PYEOF
  LD_PRELOAD="$(gcc -print-file-name="$runtime") $(gcc -print-file-name=libstdc++.so)" \
    PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}" \
    $PY -m pytest -p no:cacheprovider -q -rs --capture=sys "$@"
}

build asan-ubsan "-fsanitize=address,undefined,float-cast-overflow -fno-sanitize-recover=all -fno-omit-frame-pointer"
ASAN_OPTIONS=detect_leaks=0:halt_on_error=1:abort_on_error=1:detect_stack_use_after_return=1 \
  UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 MEDTRT_HYPOTHESIS=sanitize \
  run libasan.so tests/ops tests/runtime/test_pipeline.py tests/precision/test_entropy.py \
  tests/test_native_properties.py

build tsan "-fsanitize=thread -fno-omit-frame-pointer" -C cmake.define.MEDTRT_ENABLE_OPENMP=OFF
TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1" \
  run libtsan.so tests/runtime/test_pipeline.py tests/test_native_properties.py -k "pipeline"

echo "==== make sanitize: green in $((SECONDS - start)) s"
