"""Precision written into the ONNX graph (TensorRT 11 is strongly typed: no builder flags).

``fp16``: an FP16 graph with sensitive ops kept in FP32. ``calibrate``: activation ranges of
the FP32 graph on calibration images (entropy, max or percentile). ``qdq``: explicit INT8
Q/DQ nodes with those ranges. ``gate``: INT8 accuracy gate with per-layer sensitivity and FP16
fallback layers. ``debug``: layer-by-layer FP32 vs INT8 comparison with Polygraphy.
"""

from __future__ import annotations

from medtrt.precision.calibrate import Calibration, CalibrationConfig, calibrate, read_cache, write_trt_cache
from medtrt.precision.fp16 import to_fp16
from medtrt.precision.gate import GateConfig, GateResult, accuracy_gate
from medtrt.precision.qdq import QdqPlan, QdqRecipe, insert_qdq, keep_in_fp16, plan_qdq, resolve_layers

__all__ = ["Calibration", "CalibrationConfig", "GateConfig", "GateResult", "QdqPlan", "QdqRecipe",
           "accuracy_gate", "calibrate", "insert_qdq", "keep_in_fp16", "plan_qdq", "read_cache",
           "resolve_layers", "to_fp16", "write_trt_cache"]
