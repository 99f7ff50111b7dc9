"""Precision written into the ONNX graph (TensorRT 11 is strongly typed: no builder flags).

``fp16``: an FP16 graph with sensitive ops kept in FP32. ``calibrate``: activation ranges of
the FP32 graph on calibration images (entropy, max or percentile). ``qdq``: explicit INT8
Q/DQ nodes with those ranges.
"""

from __future__ import annotations

from medtrt.precision.calibrate import Calibration, CalibrationConfig, calibrate, read_cache, write_trt_cache
from medtrt.precision.fp16 import to_fp16
from medtrt.precision.qdq import QdqPlan, insert_qdq, plan_qdq

__all__ = ["Calibration", "CalibrationConfig", "QdqPlan", "calibrate", "insert_qdq", "plan_qdq",
           "read_cache", "to_fp16", "write_trt_cache"]
