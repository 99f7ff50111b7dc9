"""Calibration: image selection, caches (JSON and TensorRT text), methods. The cross-check
against ONNX Runtime's own entropy calibrator is tests/tools/test_ortcheck.py."""

from __future__ import annotations

import json
import struct

import numpy as np
import onnx
import pytest

from helpers.calibration import (calibration_sample, former_histograms, histogram_state,
                                 real_histograms)
from helpers.heldout import held_out
from medtrt._native import native
from medtrt.data import read_image
from medtrt.export import read_metadata
from medtrt.ops import resize_normalize_mixed
from medtrt.precision import Calibration, CalibrationConfig, calibrate, read_cache, write_trt_cache
from medtrt.precision.calibrate import collect_histograms, compute_amax, load_images
from medtrt.train import training_split


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


# ---- the faster path (issue #22) against the former one, bit for bit -----------------------

def test_collection_equals_the_former_path_bit_for_bit(demo_model):
    """Every tensor of the plan, 32 images: IOBinding into reused arrays and the single-pass
    fill give the histograms that fresh session.run outputs and the two-pass fill gave."""
    tensors, batches, hists = real_histograms(demo_model)
    former = former_histograms(demo_model.onnx, tensors, batches)
    assert len(tensors) > 200 and "image" in tensors
    for t in tensors:
        assert histogram_state(hists[t]) == histogram_state(former[t]), t


def test_calibrate_thresholds_equal_the_former_path_bit_for_bit(demo_model):
    """calibrate() end to end (30 images in batches of 8: the last, shorter batch is bound
    anew) against the former collection and the reference search, entropy_amax."""
    tensors = list(real_histograms(demo_model)[0])
    pick = ["image"] + tensors[1::24] + [tensors[-1]]
    paths = training_split(demo_model.metrics).train.paths[:60]
    config = CalibrationConfig(num_images=30, batch_size=8)
    cal = calibrate(demo_model.onnx, paths, pick, config)
    chosen = load_images(paths, 30, seed=config.seed)
    kwargs = read_metadata(demo_model.onnx)[0].preprocess_kwargs()
    batches = [resize_normalize_mixed([read_image(p) for p in chosen[i:i + 8]], **kwargs)
               for i in range(0, 30, 8)]
    former = former_histograms(demo_model.onnx, pick, batches)
    for t in pick:
        want = native().entropy_amax(former[t], config.start_bin, config.quantized_bins)[0]
        assert np.float64(cal.amax[t]).tobytes() == np.float64(want).tobytes(), t
        assert cal.stats[t]["merges"] == former[t].merges
    assert compute_amax(former, CalibrationConfig(method="percentile")) == {
        t: native().percentile_amax(former[t], 99.99) for t in pick}


def test_a_fixed_batch_graph_is_padded_and_cut_as_before(rng, tmp_path):
    """A graph fixed to batch 4, batches of 10 and 3 rows: chunks of 4 with the last padded by
    copies of its last row, outputs cut back to the real rows, the input itself as a tensor."""
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [4, 3, 5])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [4, 3, 5])
    nodes = [onnx.helper.make_node("Relu", ["x"], ["r"]),
             onnx.helper.make_node("Neg", ["r"], ["n"]),
             onnx.helper.make_node("Mul", ["n", "x"], ["y"])]
    graph = onnx.helper.make_graph(nodes, "fixed", [x], [y])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)],
                                   ir_version=8)
    onnx.save(model, str(tmp_path / "fixed.onnx"))
    batches = [rng.normal(size=(10, 3, 5)).astype(np.float32),
               rng.normal(size=(3, 3, 5)).astype(np.float32) * 4]
    tensors = ["x", "r", "n", "y"]
    hists = collect_histograms(tmp_path / "fixed.onnx", tensors, lambda: iter(batches), bins=64)
    former = former_histograms(tmp_path / "fixed.onnx", tensors, batches, bins=64)
    for t in tensors:
        assert histogram_state(hists[t]) == histogram_state(former[t]), t
    assert hists["x"].total == 13 * 15
