"""tools/ortcheck.py: ONNX Runtime's entropy calibrator on medtrt's tensors and batches, its
threshold search restated, and the step-by-step decomposition of the difference."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from helpers.calibration import calibration_sample
from medtrt._native import native
from medtrt.precision import CalibrationConfig
from medtrt.precision.calibrate import compute_amax

TOOLS = Path(__file__).resolve().parents[2] / "tools"


@pytest.fixture(scope="module")
def ortcheck():
    sys.path.insert(0, str(TOOLS))
    try:
        import ortcheck
    finally:
        sys.path.remove(str(TOOLS))
    return ortcheck


@pytest.fixture(scope="module")
def small(demo_model):
    return calibration_sample(demo_model)


def test_onnxruntime_cross_check(demo_model, small, ortcheck):
    """ONNX Runtime's entropy calibrator on the same tensors and batches. medtrt's restatement of
    its threshold search reproduces its thresholds exactly; where the two methods see the same
    distribution (the network input: non-negative, no spike at zero) they agree within a few
    bins; on ReLU outputs ONNX Runtime clips far lower, and the decomposition shows the gap
    closing once its Q construction is replaced by TensorRT's (docs/precision.md: 'Calibration
    vs ONNX Runtime')."""
    pick, _, batches, hists = small
    ours = compute_amax(hists, CalibrationConfig())
    ort = ortcheck.onnxruntime_entropy(demo_model.onnx, pick, batches)
    theirs = ort.amax
    assert set(theirs) == set(ort.histograms) == set(pick)
    for t in pick:
        assert ortcheck.ort_threshold(ort.histograms[t]) == pytest.approx(theirs[t], rel=1e-6), t
    w = max(hists["image"].bin_width, ort.bin_width["image"])
    assert abs(ours["image"] - theirs["image"]) <= 3 * w
    relu = [t for t in pick if hists[t].counts[0] > 0.3 * hists[t].total]
    assert relu, "expected at least one ReLU output among the picked tensors"
    report = ortcheck.decompose(ort, ours, {t: h.bin_width for t, h in hists.items()},
                                relu_like={t: t in relu for t in pick})
    assert report["steps"]["ort"]["fraction_reproducing_onnxruntime"] == 1.0
    for t in relu:
        assert theirs[t] < 0.8 * ours[t], (t, theirs[t], ours[t])
        for step in ("exact_q", "abs"):
            assert report["per_tensor"][t][step] == pytest.approx(ours[t], rel=0.1), (t, step)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_signed_histogram_folds_to_medtrt_layout(seed, ortcheck):
    """ONNX Runtime's signed histogram over [-T, T], folded to |x|, is medtrt's histogram when
    the layouts coincide (T = max |x|, 2 x 2048 bins), and gives medtrt's threshold."""
    rng = np.random.default_rng(seed)
    x = np.maximum(rng.normal(0.3, 1.0, 200_000), 0).astype(np.float32)
    h = native().AbsHistogram(2048)
    h.add(x)
    top = np.float32(np.abs(x).max())
    counts, edges = np.histogram(x, 4096, range=(-top, top))
    signed = ortcheck.SignedHistogram(counts.astype(np.int64), edges, float(x.min()),
                                      float(x.max()))
    folded = ortcheck.fold_abs(signed)
    assert folded.bins == 2048 and folded.range == pytest.approx(h.range)
    assert folded.total == h.total
    assert np.abs(np.asarray(folded.counts, np.int64) - np.asarray(h.counts, np.int64)).sum() <= 64
    trt = native().entropy_amax(h, 128, 128)[0]
    assert native().entropy_amax(folded, 128, 128)[0] == pytest.approx(trt, rel=1e-3)
    # ReLU-like data: ONNX Runtime's search clips far below TensorRT's method; either of its
    # two departures undone (TensorRT's Q construction, or the zero spike replaced) closes it.
    assert ortcheck.ort_threshold(signed) < 0.8 * trt
    assert ortcheck.ort_threshold(signed, exact_q=True) == pytest.approx(trt, rel=0.1)
    assert ortcheck.ort_threshold(signed, replace_zero_spike=True) == pytest.approx(trt, rel=0.12)
