"""Artifacts and references for the parity suite (tests/parity).

Every artifact sees the same images; the PyTorch references see exactly the pre-processed
tensors medtrt's Engine computes (``medtrt.ops.resize_normalize``, bit-identical to the kernels'
CPU twins), so the comparisons measure the model, not the pre-processing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx


@dataclass
class ParityCase:
    preset: object
    images: list
    x: np.ndarray  # pre-processed inputs
    labels: np.ndarray  # [N] class indices or [N, L] booleans
    reference: np.ndarray  # PyTorch FP32 logits
    baselines: dict = field(default_factory=dict)  # precision -> PyTorch logits at it
    onnx: dict = field(default_factory=dict)  # precision -> ONNX path
    checkpoint: Path | None = None


def build_artifacts(fp32_onnx: Path, calib_paths, out: Path, calib_images: int, method: str = "entropy"):
    from medtrt.precision import (CalibrationConfig, QdqRecipe, calibrate, insert_qdq, plan_qdq,
                                  to_fp16)

    fp32 = onnx.load(str(fp32_onnx))
    plan = plan_qdq(fp32)
    cal = calibrate(fp32_onnx, calib_paths, plan.tensors,
                    CalibrationConfig(method=method, num_images=calib_images))
    insert_qdq(fp32, cal.amax, plan=plan, out=out / "model.int8.onnx")
    to_fp16(fp32_onnx, out / "model.fp16.onnx")
    # `medtrt build --int8 --concat float --keep-fp16 stem,head`: its tensors are a subset of the
    # default plan's, calibrated on the same images (per-tensor histograms: the same thresholds).
    accurate, _ = QdqRecipe(concat="float", keep_fp16=("stem", "head")).apply(fp32, cal.amax)
    onnx.save(accurate, str(out / "model.int8-float-concat.onnx"))
    return {"fp32": fp32_onnx, "fp16": out / "model.fp16.onnx", "int8": out / "model.int8.onnx",
            "int8-float-concat": out / "model.int8-float-concat.onnx"}


def engine_logits(path, images, **kwargs) -> np.ndarray:
    """Logits through medtrt's product path: Engine(...).infer(images)."""
    from medtrt import Engine

    with Engine(path, **kwargs) as engine:
        r = engine.infer(images, return_probs=True)
    assert not r.errors
    return r.logits
