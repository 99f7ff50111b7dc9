from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from helpers.cpu import cpu_summary

REPO = Path(__file__).resolve().parents[1]

# Every CPU graph a test loads with backend="auto" runs in ONNX Runtime: which runtime a test
# exercises must not depend on a per-machine measurement (nor should each test's graph pay for a
# probe). The choice itself is tested where it is unset (tests/runtime/test_cpu_choice.py), and
# OpenVINO where it is asked for by name. Set in the environment, so subprocesses (the CLI) see
# it too; a value already set wins.
os.environ.setdefault("MEDTRT_CPU_BACKEND", "onnxruntime")


def _gpu_skip_reason() -> str | None:
    from medtrt._native import cuda_ready

    ok, why = cuda_ready()
    if not ok:
        return why
    if importlib.util.find_spec("torch") is None:
        return "torch is not installed (GPU tests pass CUDA tensors)"
    import torch

    if not torch.cuda.is_available():
        return "torch sees no CUDA device"
    return None


def _trt_skip_reason() -> str | None:
    if importlib.util.find_spec("tensorrt") or importlib.util.find_spec("tensorrt_rtx"):
        return None
    return "neither tensorrt nor tensorrt_rtx is installed"


# On the GPU machine (MEDTRT_REQUIRE_GPU=1, set by tools/gpu_check.sh) a skip would read as a pass:
# every skip fails there except these, matched on the start of the skip reason; the summary of
# that run lists the ones that happened.
GPU_MACHINE_MAY_SKIP = {
    "trt: ": "no TensorRT of any flavour on the lent GPU machine (it cannot be installed there)",
    "full TensorRT is not installed": "full TensorRT comes only from NVIDIA's own index",
    "needs two GPUs": "the lent machine has one GPU",
}


def pytest_report_header(config: pytest.Config) -> str:
    return f"cpu: {cpu_summary()}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> object:
    outcome = yield
    report = outcome.get_result()
    if (os.environ.get("MEDTRT_REQUIRE_GPU") != "1" or not report.skipped
            or hasattr(report, "wasxfail")):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    reason = reason.removeprefix("Skipped: ")
    if not reason.startswith(tuple(GPU_MACHINE_MAY_SKIP)):
        report.outcome = "failed"
        report.longrepr = (f"MEDTRT_REQUIRE_GPU=1: skipped on the GPU machine ({reason}); only "
                           f"these may skip there: {sorted(GPU_MACHINE_MAY_SKIP)}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpu_reason = _gpu_skip_reason() if any("gpu" in i.keywords for i in items) else None
    if gpu_reason and os.environ.get("MEDTRT_REQUIRE_GPU") == "1":
        # On a GPU machine a silent skip would read as a pass (tools/gpu_check.sh sets this).
        raise pytest.UsageError(f"MEDTRT_REQUIRE_GPU=1 but GPU tests cannot run: {gpu_reason}")
    trt_reason = _trt_skip_reason() if any("trt" in i.keywords for i in items) else None
    for item in items:
        if "gpu" in item.keywords and gpu_reason:
            item.add_marker(pytest.mark.skip(reason=f"gpu: {gpu_reason}"))
        if "trt" in item.keywords and trt_reason:
            item.add_marker(pytest.mark.skip(reason=f"trt: {trt_reason}"))


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> "object":
    """A generator seeded per test (stable across runs, different between tests)."""
    import zlib

    import numpy as np

    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture(scope="session")
def demo_model():
    """The synthetic MedNIST set, the DenseNet-121 trained on it (2 epochs) and its verified ONNX.

    Built once per code version (generator, training, model and export code, settings, torch
    and MONAI versions) under .cache/medtrt or $MEDTRT_CACHE, and reused by every later run.
    """
    from medtrt.demo import cached_demo_model

    return cached_demo_model(os.environ.get("MEDTRT_CACHE") or REPO / ".cache" / "medtrt",
                             progress=False)


# The demo model's split, and what the tests that build from foreign graphs and imported
# checkpoints share (tests/test_foreign.py, test_architectures.py, test_byo.py): once a session.


@pytest.fixture(scope="session")
def split(demo_model):
    """The demo model's training split (train / val / test paths and labels)."""
    from medtrt.train import training_split

    return training_split(demo_model.metrics)


@pytest.fixture(scope="session")
def images(split):
    """48 held-out images (stored pixels, every class) the comparisons use."""
    from helpers.foreign import held_out_images

    return held_out_images(split)


@pytest.fixture(scope="session")
def calib_dir(split, tmp_path_factory):
    """A folder of links to 64 training images (every class), for --calib."""
    from helpers.foreign import calibration_folder

    return calibration_folder(split, tmp_path_factory.mktemp("calib"))


@pytest.fixture(scope="session")
def int8_bundle(demo_model, split, tmp_path_factory):
    """An INT8 bundle of the demo model that no machine's TensorRT runs (so it loads into ONNX
    Runtime on the CPU): its precision ONNX is medtrt's TensorRT Q/DQ layout, "max"-calibrated
    on 64 training images; profile batch 1, 8, 32."""
    from helpers.bundles import int8_bundle as make
    from helpers.foreign import spread

    return make(demo_model.onnx, tmp_path_factory.mktemp("int8-bundle"),
                spread(split.train.paths, 64))
