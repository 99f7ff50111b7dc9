"""Not collected by default (no test_ prefix): tests/test_gpu_machine.py runs it in a subprocess
to see which skips MEDTRT_REQUIRE_GPU=1 turns into failures."""

import pytest


def test_allowed_full_tensorrt():
    pytest.skip("full TensorRT is not installed (probe)")


def test_allowed_two_gpus():
    pytest.skip("needs two GPUs (probe)")


def test_not_allowed():
    pytest.skip("torchvision is missing (probe)")


@pytest.mark.xfail(reason="an expected failure is not a skip", strict=True)
def test_xfail():
    raise AssertionError("expected")
