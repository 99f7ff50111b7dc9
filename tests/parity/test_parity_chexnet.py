"""Multi-label parity (chexnet preset: 14 sigmoid labels, 224x224, 3 channels) against the
PyTorch FP32 reference: per-label AUROC change and threshold-decision agreement.

The model is CheXNet-shaped but synthetic (tests/helpers/chexnet.py): the demo model's backbone
and a 14-label head fitted on synthetic multi-labels; labels of the 256 test images are synthetic.
"""

from __future__ import annotations

import numpy as np
import pytest

from medtrt.reference import activate
from medtrt.testing import PARITY, assert_agreement, assert_auroc_change, auroc
from helpers.parity import engine_logits

PRECISIONS = ("fp32", "fp16", "int8", "int8-float-concat")


@pytest.fixture(scope="module")
def outputs(chexnet_case):
    return {p: activate(engine_logits(chexnet_case.onnx[p], chexnet_case.images,
                                      backend="onnxruntime"), "sigmoid") for p in PRECISIONS}


def test_reference_model_is_informative(chexnet_case):
    """The check means something only if the reference ranks the labels well above chance."""
    a = auroc(chexnet_case.labels, activate(chexnet_case.reference, "sigmoid"))
    assert np.nanmin(a) > 0.7, a


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_auroc_and_decisions(chexnet_case, outputs, precision):
    case, t = chexnet_case, PARITY[precision]
    ref = activate(case.reference, "sigmoid")
    change = assert_auroc_change(case.labels, outputs[precision], ref,
                                 max_change=t["max_auroc_change"], names=case.preset.labels,
                                 name=f"{precision} ONNX")
    rep = assert_agreement(outputs[precision], ref, activation="sigmoid", min_top1=0.0,
                           max_prob_diff=1.0, labels=case.preset.labels, name=f"{precision} ONNX")
    assert rep.decision_agreement >= t["min_decisions"], (
        f"{precision}: decision agreement {rep.decision_agreement:.4f}; worst sample "
        f"{rep.worst_index}: {rep.worst_candidate} vs reference {rep.worst_reference}")
    print(f"{precision}: max AUROC change {np.nanmax(change):.4f}, decisions "
          f"{rep.decision_agreement:.4f}")


def test_int8_measured_against_the_floor_it_reaches(chexnet_case, outputs):
    """INT8 (entropy, shared Concat scales: `medtrt build --int8` defaults) on this model:
    measured max AUROC change 0.0098 and decision agreement 0.980 on these 256 images, short
    of the 0.005 / 0.99 targets (see test_int8_meets_the_target). Guarded here at 0.015 / 0.97
    so a regression shows; the gap is reported in docs/parity.md."""
    case = chexnet_case
    ref = activate(case.reference, "sigmoid")
    change = assert_auroc_change(case.labels, outputs["int8"], ref, max_change=0.015,
                                 names=case.preset.labels, name="int8 ONNX")
    rep = assert_agreement(outputs["int8"], ref, activation="sigmoid", min_top1=0.0,
                           max_prob_diff=1.0, labels=case.preset.labels, name="int8 ONNX")
    assert rep.decision_agreement >= 0.97, rep
    print(f"int8: max AUROC change {np.nanmax(change):.4f}, decisions {rep.decision_agreement:.4f}")


def _int8_target(case, probs, name):
    t = PARITY["int8"]
    ref = activate(case.reference, "sigmoid")
    change = assert_auroc_change(case.labels, probs, ref, max_change=t["max_auroc_change"],
                                 names=case.preset.labels, name=name)
    rep = assert_agreement(probs, ref, activation="sigmoid", min_top1=0.0, max_prob_diff=1.0,
                           labels=case.preset.labels, name=name)
    assert rep.decision_agreement >= t["min_decisions"], (
        f"{name}: decision agreement {rep.decision_agreement:.4f}; worst sample "
        f"{rep.worst_index}: {rep.worst_candidate} vs reference {rep.worst_reference}")
    print(f"{name}: max AUROC change {np.nanmax(change):.4f}, decisions "
          f"{rep.decision_agreement:.4f}")


@pytest.mark.xfail(strict=True, reason="known gap: INT8 with the default recipe (shared Concat "
                   "scales, every layer INT8) on the synthetic CheXNet-shaped model changes one "
                   "label's AUROC by ~0.01 (target 0.005); see docs/parity.md")
def test_int8_default_recipe_meets_the_target(chexnet_case, outputs):
    _int8_target(chexnet_case, outputs["int8"], "int8 ONNX")


def test_int8_float_concat_fp16_stem_and_head_meets_the_target(chexnet_case, outputs):
    """`medtrt build --int8 --concat float --keep-fp16 stem,head`: Concat left in floating point
    (DenseNet's features are quantized once, at the next convolution, instead of twice) and the
    stem convolution and the classifier in FP16; 119 of 121 weighted layers stay INT8.
    Measured 0.0043 / 0.994 here, and 0.0048 / 0.993 on 256 fresh images (docs/parity.md)."""
    _int8_target(chexnet_case, outputs["int8-float-concat"], "int8 ONNX (float concat, FP16 stem+head)")
