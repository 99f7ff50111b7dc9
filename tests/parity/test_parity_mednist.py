"""Parity of every CPU-runnable MedNIST artifact with the PyTorch FP32 reference (held-out set).

Logits: RMS error <= k x PyTorch's own error at that precision, max |dlogit| <= a fixed ceiling;
classification: top-1 agreement and max |dprob|; the thresholds are medtrt.testing.PARITY, the
same table as the GPU rows, and every sample counts. The demo model is trained reproducibly (the
same weights on every CI CPU), so the table holds on AVX2 and AVX-512 machines alike. The
artifacts run through medtrt.Engine (ONNX Runtime backend), the product path.
"""

from __future__ import annotations

import numpy as np
import pytest

from medtrt.reference import activate
from medtrt.testing import PARITY, agreement, assert_agreement, assert_logit_parity
from helpers.parity import engine_logits

PRECISIONS = ("fp32", "fp16", "int8")


@pytest.fixture(scope="module")
def outputs(mednist_case):
    return {p: engine_logits(mednist_case.onnx[p], mednist_case.images, backend="onnxruntime")
            for p in PRECISIONS}


@pytest.mark.parametrize("precision", PRECISIONS)
def test_logits_within_k_times_pytorch_own_error(mednist_case, outputs, precision):
    case, t = mednist_case, PARITY[precision]
    rep = assert_logit_parity(outputs[precision], case.reference, case.baselines[precision],
                              k=t["k"], ceiling=t["ceiling"] * float(case.reference.std()),
                              labels=case.preset.labels, name=f"{precision} ONNX")
    print(f"{precision}: logit RMS {rep.rms_error:.3g} = {rep.ratio:.2f} x PyTorch's own "
          f"{rep.baseline_rms_error:.3g}; max |dlogit| {rep.max_abs_error:.3g} (ceiling "
          f"{t['ceiling'] * float(case.reference.std()):.3g})")


@pytest.mark.parametrize("precision", PRECISIONS)
def test_classification_agreement(mednist_case, outputs, precision):
    case, t = mednist_case, PARITY[precision]
    probs = activate(outputs[precision], "softmax")
    ref = activate(case.reference, "softmax")
    rep = assert_agreement(probs, ref, min_top1=t["min_top1"], max_prob_diff=t["max_prob_diff"],
                           labels=case.preset.labels, name=f"{precision} ONNX")
    every = agreement(probs, ref, labels=case.preset.labels)
    drop = np.mean(ref.argmax(1) == case.labels) - np.mean(probs.argmax(1) == case.labels)
    assert drop <= 0.005, f"{precision}: accuracy drops {drop:.4f} against the labels"
    print(f"{precision}: top-1 agreement {every.top1_agreement:.4f}, max |dprob| "
          f"{rep.max_abs_prob_diff:.3g}, accuracy drop {drop:+.4f}")


def test_the_yardstick_is_not_trivial(mednist_case):
    """PyTorch's own errors are real, non-zero and ordered FP32 < FP16 < INT8 (a zero baseline
    would make every k-check fail; a swapped one would make it meaningless)."""
    b, ref = mednist_case.baselines, mednist_case.reference
    rms = {p: float(np.sqrt(np.mean((b[p] - ref) ** 2))) for p in PRECISIONS}
    assert 0 < rms["fp32"] < rms["fp16"] < rms["int8"], rms
