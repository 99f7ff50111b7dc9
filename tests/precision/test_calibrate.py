"""Calibration: image selection, caches (JSON and TensorRT text), methods, and the cross-check
against ONNX Runtime's own entropy calibrator."""

from __future__ import annotations

import json
import struct

import numpy as np
import onnx
import pytest

from helpers.heldout import held_out
from medtrt.data import read_image
from medtrt.ops import resize_normalize
from medtrt.precision import Calibration, CalibrationConfig, calibrate, plan_qdq, read_cache, write_trt_cache
from medtrt.precision.calibrate import collect_histograms, compute_amax, load_images
from medtrt._native import native
from medtrt.precision.ortcheck import SignedHistogram, decompose, fold_abs, onnxruntime_entropy, ort_threshold


@pytest.fixture(scope="module")
def small(demo_model):
    """64 training images, a handful of tensors (input, ReLU outputs, a Concat input)."""
    tensors = list(plan_qdq(onnx.load(str(demo_model.onnx))).tensors)
    pick = ["image", tensors[20], tensors[60], tensors[100]]
    paths = held_out(demo_model).train_paths[:64]
    batches = [resize_normalize([read_image(p) for p in paths[i:i + 16]], 64) for i in range(0, 64, 16)]
    hists = collect_histograms(demo_model.onnx, pick, lambda: iter(batches))
    return pick, paths, batches, hists


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


def test_onnxruntime_cross_check(demo_model, small):
    """ONNX Runtime's entropy calibrator on the same tensors and batches. medtrt's restatement of
    its threshold search reproduces its thresholds exactly; where the two methods see the same
    distribution (the network input: non-negative, no spike at zero) they agree within a few
    bins; on ReLU outputs ONNX Runtime clips far lower, and the decomposition shows the gap
    closing once its Q construction is replaced by TensorRT's (docs/precision.md: 'Calibration vs ONNX
    Runtime')."""
    pick, _, batches, hists = small
    ours = compute_amax(hists, CalibrationConfig())
    ort = onnxruntime_entropy(demo_model.onnx, pick, batches)
    theirs = ort.amax
    assert set(theirs) == set(ort.histograms) == set(pick)
    for t in pick:
        assert ort_threshold(ort.histograms[t]) == pytest.approx(theirs[t], rel=1e-6), t
    w = max(hists["image"].bin_width, ort.bin_width["image"])
    assert abs(ours["image"] - theirs["image"]) <= 3 * w
    relu = [t for t in pick if hists[t].counts[0] > 0.3 * hists[t].total]
    assert relu, "expected at least one ReLU output among the picked tensors"
    report = decompose(ort, ours, {t: h.bin_width for t, h in hists.items()},
                       relu_like={t: t in relu for t in pick})
    assert report["steps"]["ort"]["fraction_reproducing_onnxruntime"] == 1.0
    for t in relu:
        assert theirs[t] < 0.8 * ours[t], (t, theirs[t], ours[t])
        for step in ("exact_q", "abs"):
            assert report["per_tensor"][t][step] == pytest.approx(ours[t], rel=0.1), (t, step)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_signed_histogram_folds_to_medtrt_layout(seed):
    """ONNX Runtime's signed histogram over [-T, T], folded to |x|, is medtrt's histogram when
    the layouts coincide (T = max |x|, 2 x 2048 bins), and gives medtrt's threshold."""
    rng = np.random.default_rng(seed)
    x = np.maximum(rng.normal(0.3, 1.0, 200_000), 0).astype(np.float32)
    h = native().AbsHistogram(2048)
    h.add(x)
    top = np.float32(np.abs(x).max())
    counts, edges = np.histogram(x, 4096, range=(-top, top))
    signed = SignedHistogram(counts.astype(np.int64), edges, float(x.min()), float(x.max()))
    folded = fold_abs(signed)
    assert folded.bins == 2048 and folded.range == pytest.approx(h.range)
    assert folded.total == h.total
    assert np.abs(np.asarray(folded.counts, np.int64) - np.asarray(h.counts, np.int64)).sum() <= 64
    trt = native().entropy_amax(h, 128, 128)[0]
    assert native().entropy_amax(folded, 128, 128)[0] == pytest.approx(trt, rel=1e-3)
    # ReLU-like data: ONNX Runtime's search clips far below TensorRT's method; either of its
    # two departures undone (TensorRT's Q construction, or the zero spike replaced) closes it.
    assert ort_threshold(signed) < 0.8 * trt
    assert ort_threshold(signed, exact_q=True) == pytest.approx(trt, rel=0.1)
    assert ort_threshold(signed, replace_zero_spike=True) == pytest.approx(trt, rel=0.12)
