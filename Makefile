# Two entry points for a newcomer: `make demo` and `make test`. Both create .venv on first use,
# install pinned dependencies (constraints.txt) and build medtrt's compiled core into it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
# setuptools + wheel: tensorrt-rtx-cu13 is an sdist on PyPI, built here without isolation.
BUILD_TOOLS := scikit-build-core pybind11 cmake ninja setuptools wheel
SOURCES := $(shell find csrc python cmake -type f -not -name '*.pyc') CMakeLists.txt pyproject.toml
# The environments of their own (below). Defined before `test:`, whose prerequisites make expands
# as it reads them.
TV_VENV := .venv-torchvision
TRITON_VENV := .venv-triton

.PHONY: demo test test-fast sanitize model bench-ops gpu-wheel gpu-check-dry clean \
	test-import-torchvision bench-triton

demo: $(VENV)/.installed
	$(PY) tools/demo.py

# The tests compare imported checkpoints with torchvision's and timm's own models, which run in
# their own environment (below); naming it makes its absence a failure, not a skip.
test: $(VENV)/.installed $(TV_VENV)/.installed $(TRITON_VENV)/.installed
	MEDTRT_TORCHVISION_PYTHON=$(TV_VENV)/bin/python MEDTRT_TRITON_PYTHON=$(TRITON_VENV)/bin/python \
		$(PY) -m pytest

# The compiled core built with AddressSanitizer + UndefinedBehaviorSanitizer (CPU only) into
# build/sanitize/site, and the tests that drive it directly run against it (tools/sanitize.sh).
sanitize: $(VENV)/.installed
	PY=$(PY) bash tools/sanitize.sh

test-fast: $(VENV)/.installed
	$(PY) -m pytest -m "not slow"

# The synthetic set + trained + exported demo model (cached per code version in .cache/medtrt).
model: $(VENV)/.installed
	$(PY) -c "from medtrt.demo import cached_demo_model as c; d = c('.cache/medtrt'); print(d.checkpoint); print(d.onnx)"

# The source libraries of `medtrt import` (torchvision, timm) for the tests' reference models
# (tools/byo_reference.py). They do not install beside medtrt's torch (2.13 CPU): their wheels
# here pair with torch 2.14.1, a CUDA build (5.5 GB; ~80 s to install from local wheels), so
# they get an environment of their own. medtrt is not installed there.
TV_PINS := torch==2.14.1 torchvision==0.29.1 timm==1.0.29 huggingface_hub==2.4.0 \
	safetensors==0.8.0 PyYAML==6.0.4 numpy==2.4.6
$(TV_VENV)/.installed: Makefile
	test -x $(TV_VENV)/bin/python || $(PYTHON) -m venv $(TV_VENV)
	$(TV_VENV)/bin/python -m pip install --disable-pip-version-check -q $(TV_PINS)
	touch $@

# Only the importer tests (a subset of `make test`).
test-import-torchvision: $(VENV)/.installed $(TV_VENV)/.installed
	MEDTRT_TORCHVISION_PYTHON=$(TV_VENV)/bin/python $(PY) -m pytest \
		tests/models/test_importers.py tests/test_byo.py

# The Triton Inference Server that serves generated repositories in the tests
# (tests/serving/test_live.py) and tools/bench_triton.py: the binary inside the nvidia-pytriton
# wheel (Python backend only), tritonclient, and medtrt as a deployment installs it, from the
# wheel of .venv's build (its build folder is reused: no second compile). Its own environment:
# pytriton pins numpy < 2 and tritonclient protobuf < 7, which .venv's numpy and onnx have passed.
TRITON_PINS := nvidia-pytriton==0.7.0 tritonclient[http,grpc]==2.73.0 numpy==1.26.4 \
	onnxruntime==1.31.1 pillow==13.0.0 pydicom==3.0.2 rich==15.0.0
$(TRITON_VENV)/.installed: Makefile $(VENV)/.installed
	test -x $(TRITON_VENV)/bin/python || $(PYTHON) -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/python -m pip install --disable-pip-version-check -q $(TRITON_PINS)
	rm -rf build/triton-wheel
	$(PIP) wheel -q --no-build-isolation --no-deps -w build/triton-wheel .
	$(TRITON_VENV)/bin/python -m pip install --disable-pip-version-check -q --no-deps \
		--force-reinstall build/triton-wheel/medtrt-*.whl
	touch $@

# Serving figures: 8 clients x 500 requests on each image model (benchmarks/results/).
bench-triton: $(VENV)/.installed $(TRITON_VENV)/.installed
	MEDTRT_TRITON_PYTHON=$(TRITON_VENV)/bin/python $(PY) tools/bench_triton.py

bench-ops: $(VENV)/.installed
	$(PY) tools/bench_ops.py

# What tools/gpu_check.sh carries to the lent GPU machine (Python 3.12 there, no registry):
# medtrt built here for sm_90 only (nvcc is here; the CUDA runtime is linked statically) and
# MONAI (the demo model). Built in a Python 3.12 environment of its own, with its own build dir.
GPU_PYTHON ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.12*/bin/python3.12) python3.12)
GPU_VENV := .venv-gpu-wheel
gpu-wheel:
	test -x $(GPU_VENV)/bin/python || $(GPU_PYTHON) -m venv $(GPU_VENV)
	$(GPU_VENV)/bin/python -m pip --disable-pip-version-check install -q -c constraints.txt $(BUILD_TOOLS)
	rm -f .whl/medtrt-*.whl
	$(GPU_VENV)/bin/python -m pip --disable-pip-version-check wheel -q --no-build-isolation \
	  --no-deps -w .whl -C build-dir=build/gpu-{wheel_tag} \
	  -C cmake.define.CMAKE_CUDA_ARCHITECTURES=90 .
	$(GPU_VENV)/bin/python -m pip --disable-pip-version-check download -q --no-deps \
	  --only-binary=:all: -d .whl -c constraints.txt monai
	ls -l .whl

# The GPU check's plumbing on this machine (no GPU): tests/tools/test_gpu_check.py runs it too.
gpu-check-dry: $(VENV)/.installed
	PY=$(PY) bash tools/gpu_check.sh --dry-run gpu_check_dry

$(VENV)/.tools: constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c constraints.txt $(BUILD_TOOLS)
	touch $@

# Non-editable install with a persistent build dir (build/), so a rebuild is incremental.
$(VENV)/.installed: $(VENV)/.tools $(SOURCES) constraints.txt
	$(PIP) install -q --no-build-isolation -c constraints.txt ".[test]"
	touch $@

clean:
	rm -rf build dist $(VENV) $(GPU_VENV) $(TV_VENV) $(TRITON_VENV) gpu_check_dry
