# Two entry points for a newcomer: `make demo` and `make test`. Both create .venv on first use,
# install pinned dependencies (constraints.txt) and build medtrt's compiled core into it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
# setuptools + wheel: tensorrt-rtx-cu13 is an sdist on PyPI, built here without isolation.
BUILD_TOOLS := scikit-build-core pybind11 cmake ninja setuptools wheel
SOURCES := $(shell find csrc python cmake -type f -not -name '*.pyc') CMakeLists.txt pyproject.toml

.PHONY: demo test test-fast model bench-ops clean

demo: $(VENV)/.installed
	$(PY) tools/demo.py

test: $(VENV)/.installed
	$(PY) -m pytest

test-fast: $(VENV)/.installed
	$(PY) -m pytest -m "not slow"

# The synthetic set + trained + exported demo model (cached per code version in .cache/medtrt).
model: $(VENV)/.installed
	$(PY) -c "from medtrt.train import cached_demo_model as c; d = c('.cache/medtrt'); print(d.checkpoint); print(d.onnx)"

bench-ops: $(VENV)/.installed
	$(PY) tools/bench_ops.py

$(VENV)/.tools: constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c constraints.txt $(BUILD_TOOLS)
	touch $@

# Non-editable install with a persistent build dir (build/), so a rebuild is incremental.
$(VENV)/.installed: $(VENV)/.tools $(SOURCES) constraints.txt
	$(PIP) install -q --no-build-isolation -c constraints.txt ".[test]"
	touch $@

clean:
	rm -rf build dist $(VENV)
