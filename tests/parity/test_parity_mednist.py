"""Parity of every CPU-runnable MedNIST artifact with the PyTorch FP32 reference (held-out set).

Logits: RMS error <= k x PyTorch's own error at that precision, max |dlogit| <= a fixed ceiling;
classification: top-1 agreement and max |dprob| (thresholds: medtrt.testing.PARITY). The
per-sample bounds (ceiling, max |dprob|) may be broken on at most 2 % of the samples, and there
only within 1.5 x PyTorch's own error at that precision on the same sample.
Top-1 agreement and the accuracy drop count every sample. The artifacts run through
medtrt.Engine (ONNX Runtime backend), the product path.
"""

from __future__ import annotations

import numpy as np
import pytest

from medtrt.reference import activate
from medtrt.testing import (PARITY, agreement, assert_agreement, assert_like_baseline,
                            assert_logit_parity, outside_bounds)
from helpers.parity import engine_logits

PRECISIONS = ("fp32", "fp16", "int8")


@pytest.fixture(scope="module")
def outputs(mednist_case):
    return {p: engine_logits(mednist_case.onnx[p], mednist_case.images, backend="onnxruntime")
            for p in PRECISIONS}


# A sample may break the per-sample bounds only where PyTorch's own run at that precision is near
# them too (within FACTOR x its error on that sample), and on at most MAX_BEYOND of the samples.
MAX_BEYOND, FACTOR = 0.02, 1.5


def within_bounds(case, candidate, precision):
    """The samples the per-sample bounds apply to, after checking the others against PyTorch.

    How many samples break the bounds depends on the trained model, which differs between CPUs
    (AVX2 and AVX-512 kernels round differently in training). On a model trained on an Intel Xeon,
    one held-out image moved by 0.50 in probability under medtrt's INT8 and by 0.47 under
    PyTorch's own fake quantization, another by 0.18 and 0.14; on an AMD EPYC none beyond 0.062.
    """
    t, n = PARITY[precision], len(case.reference)
    beyond = outside_bounds(candidate, case.reference,
                            ceiling=t["ceiling"] * float(case.reference.std()),
                            max_prob_diff=t["max_prob_diff"])
    assert len(beyond) <= MAX_BEYOND * n, (
        f"{precision} ONNX is beyond the per-sample bounds on {len(beyond)} of {n} samples "
        f"({list(beyond[:8])}); at most {MAX_BEYOND:.0%} may be")
    assert_like_baseline(candidate, case.reference, case.baselines[precision], beyond,
                         factor=FACTOR, name=f"{precision} ONNX")
    return np.setdiff1d(np.arange(n), beyond), beyond


@pytest.mark.parametrize("precision", PRECISIONS)
def test_logits_within_k_times_pytorch_own_error(mednist_case, outputs, precision):
    case, t = mednist_case, PARITY[precision]
    keep, beyond = within_bounds(case, outputs[precision], precision)
    rep = assert_logit_parity(outputs[precision], case.reference, case.baselines[precision],
                              k=t["k"], ceiling=float("inf"), name=f"{precision} ONNX")  # RMS: all
    kept = assert_logit_parity(outputs[precision][keep], case.reference[keep],
                               case.baselines[precision][keep], k=float("inf"),
                               ceiling=t["ceiling"] * float(case.reference.std()),
                               labels=case.preset.labels, name=f"{precision} ONNX")
    print(f"{precision}: logit RMS {rep.rms_error:.3g} = {rep.ratio:.2f} x PyTorch's own "
          f"{rep.baseline_rms_error:.3g}; max |dlogit| {kept.max_abs_error:.3g} (all samples "
          f"{rep.max_abs_error:.3g}; beyond the bounds, within {FACTOR} x PyTorch's: "
          f"{beyond.tolist()})")


@pytest.mark.parametrize("precision", PRECISIONS)
def test_classification_agreement(mednist_case, outputs, precision):
    case, t = mednist_case, PARITY[precision]
    keep, _ = within_bounds(case, outputs[precision], precision)
    probs = activate(outputs[precision], "softmax")
    ref = activate(case.reference, "softmax")
    rep = assert_agreement(probs[keep], ref[keep], min_top1=t["min_top1"],
                           max_prob_diff=t["max_prob_diff"], labels=case.preset.labels,
                           name=f"{precision} ONNX")
    every = agreement(probs, ref, labels=case.preset.labels)  # top-1 over every sample
    assert every.top1_agreement >= t["min_top1"], (
        f"{precision}: top-1 agreement {every.top1_agreement:.4f} < {t['min_top1']} "
        f"(samples {list(every.disagreements[:8])})")
    drop = np.mean(ref.argmax(1) == case.labels) - np.mean(probs.argmax(1) == case.labels)
    assert drop <= 0.005, f"{precision}: accuracy drops {drop:.4f} against the labels"
    print(f"{precision}: top-1 agreement {every.top1_agreement:.4f}, max |dprob| "
          f"{rep.max_abs_prob_diff:.3g} (all samples {every.max_abs_prob_diff:.3g}), accuracy "
          f"drop {drop:+.4f}")


def test_the_yardstick_is_not_trivial(mednist_case):
    """PyTorch's own errors are real, non-zero and ordered FP32 < FP16 < INT8 (a zero baseline
    would make every k-check fail; a swapped one would make it meaningless)."""
    b, ref = mednist_case.baselines, mednist_case.reference
    rms = {p: float(np.sqrt(np.mean((b[p] - ref) ** 2))) for p in PRECISIONS}
    assert 0 < rms["fp32"] < rms["fp16"] < rms["int8"], rms
