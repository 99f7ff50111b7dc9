"""Calibration: image selection, caches (JSON and TensorRT text), methods. The cross-check
against ONNX Runtime's own entropy calibrator is tests/tools/test_ortcheck.py."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from helpers.calibration import calibration_sample
from helpers.heldout import held_out
from medtrt.precision import Calibration, CalibrationConfig, calibrate, read_cache, write_trt_cache
from medtrt.precision.calibrate import compute_amax, load_images


@pytest.fixture(scope="module")
def small(demo_model):
    """64 training images, a handful of tensors (input, ReLU outputs, a Concat input)."""
    return calibration_sample(demo_model)


def test_methods(small):
    pick, _, _, hists = small
    for method in ("entropy", "max", "percentile"):
        amax = compute_amax(hists, CalibrationConfig(method=method))
        for t in pick:
            assert 0 < amax[t] <= hists[t].max_abs
    mx = compute_amax(hists, CalibrationConfig(method="max"))
    assert mx == {t: pytest.approx(hists[t].max_abs) for t in pick}
    assert mx["image"] == pytest.approx(1.0, abs=1 / 255)  # uint8 images scaled to [0, 1]
    with pytest.raises(ValueError, match=r"calibration method must be one of"):
        CalibrationConfig(method="kl")


def test_cache_round_trip_and_refusal(demo_model, small, tmp_path):
    pick, paths, _, _ = small
    cal = calibrate(demo_model.onnx, paths, pick, CalibrationConfig(num_images=32, batch_size=8))
    assert cal.images == 32 and set(cal.amax) == set(pick)
    path = cal.write(tmp_path / "c.json")
    again = read_cache(path, expect_sha256=cal.source_onnx_sha256)
    assert again.amax == cal.amax and again.config == cal.config and again.images == 32
    with pytest.raises(ValueError, match=r"made from a different ONNX"):
        read_cache(path, expect_sha256="f" * 64)
    (tmp_path / "bad.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ValueError, match=r"is not a medtrt calibration cache"):
        read_cache(tmp_path / "bad.json")
    with pytest.raises(FileNotFoundError, match=r"does not exist"):
        read_cache(tmp_path / "absent.json")


def test_trt_text_cache(tmp_path):
    cal = Calibration({"image": 1.0, "relu_3": 6.35}, CalibrationConfig(), "0" * 64, 10)
    lines = write_trt_cache(cal, tmp_path / "c.cache", trt_version="10.8.0").read_text().splitlines()
    assert lines[0] == "TRT-100800-EntropyCalibration2"
    assert lines[1] == f"image: {struct.pack('>f', np.float32(1 / 127)).hex()}"
    assert struct.unpack(">f", bytes.fromhex(lines[2].split(": ")[1]))[0] == np.float32(6.35 / 127)


def test_image_selection(demo_model, tmp_path):
    paths = held_out(demo_model).train_paths
    a = load_images(paths, 50, seed=3)
    assert a == load_images(paths, 50, seed=3) != load_images(paths, 50, seed=4)
    assert len(set(a)) == 50
    with pytest.raises(ValueError, match=r"holds 2 images; 5 were asked for"):
        load_images(paths[:2], 5)
