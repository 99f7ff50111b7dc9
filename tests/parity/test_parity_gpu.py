"""GPU rows of the parity suite: the torch GPU path (medtrt's pipeline with the PyTorch compute
stage) and TensorRT engines where full TensorRT and a GPU exist. Same thresholds as the CPU rows
(medtrt.testing.PARITY); skipped without a GPU (marker ``gpu``) or TensorRT (marker ``trt``)."""

from __future__ import annotations

import numpy as np
import pytest

from helpers.parity import engine_logits
from medtrt.reference import activate
from medtrt.testing import PARITY, assert_agreement, assert_logit_parity

pytestmark = pytest.mark.gpu


def _check(case, logits, precision, name, record_property):
    t = PARITY[precision]
    rms = lambda x: float(np.sqrt(np.mean((x - case.reference) ** 2)))  # noqa: E731
    record_property("rms_logit_error", rms(logits))
    record_property("pytorch_rms_logit_error", rms(case.baselines[precision]))
    record_property("top1_agreement", float(np.mean(logits.argmax(1) == case.reference.argmax(1))))
    assert_logit_parity(logits, case.reference, case.baselines[precision], k=t["k"],
                        ceiling=t["ceiling"] * float(case.reference.std()),
                        labels=case.preset.labels, name=name)
    assert_agreement(activate(logits, "softmax"), activate(case.reference, "softmax"),
                     min_top1=t["min_top1"], max_prob_diff=t["max_prob_diff"],
                     labels=case.preset.labels, name=name)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_torch_gpu_pipeline(mednist_case, precision, record_property):
    logits = engine_logits(mednist_case.checkpoint, mednist_case.images, backend="torch",
                           device=0, precision=precision)
    _check(mednist_case, logits, precision, f"torch GPU {precision}", record_property)


@pytest.mark.trt
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_tensorrt_engine(demo_model, mednist_case, precision, tmp_path, record_property):
    pytest.importorskip("tensorrt", reason="full TensorRT is not installed (TensorRT-RTX has no "
                                           "target for data-centre GPUs)")
    from helpers.heldout import held_out
    from medtrt.build import BuildOptions, build
    from medtrt.precision import CalibrationConfig

    calib = None
    if precision == "int8":
        calib = tmp_path / "calib"
        calib.mkdir()
        for i, p in enumerate(held_out(demo_model).train_paths[:256]):
            (calib / f"{i:04d}{p.suffix}").symlink_to(p)
    r = build(demo_model.onnx, tmp_path / "bundle",
              BuildOptions(precision=precision, batch=(1, 32, 256), flavour="tensorrt",
                           calib=str(calib) if calib else None,
                           calibration=CalibrationConfig(num_images=256)))
    logits = engine_logits(r.engine, mednist_case.images, device=0, backend="tensorrt")
    _check(mednist_case, logits, precision, f"TensorRT {precision}", record_property)
