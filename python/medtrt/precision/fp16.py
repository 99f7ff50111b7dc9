"""FP16 ONNX: FP16 weights and activations, numerically sensitive ops kept in FP32.

Uses onnxconverter-common's float16 pass (a maintained library; ModelOpt AutoCast would pull
in a GPU-oriented dependency set for the same result on this graph). Softmax, reductions,
normalisations over many elements and exponentials stay in FP32 with casts around them, as
ModelOpt AutoCast does; the graph input/output stay FP32 unless ``keep_io_types=False``.
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any

from medtrt._lazy import require
from medtrt.errors import MissingDependencyError
from medtrt.onnxio import save_onnx

__all__ = ["to_fp16", "FP32_OPS"]

log = logging.getLogger(__name__)

# Kept in FP32: reductions and normalising ops whose sums overflow or lose precision in FP16.
FP32_OPS = ("Softmax", "LogSoftmax", "ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL2",
            "ReduceLogSumExp", "GlobalAveragePool", "LayerNormalization", "Exp", "Log", "Pow",
            "Sqrt", "TopK", "Range", "CumSum")


def to_fp16(model: Any, out: str | os.PathLike[str] | None = None, *, keep_io_types: bool = True,
            fp32_ops: tuple[str, ...] = FP32_OPS) -> Any:
    """Convert an FP32 ONNX model (path or ModelProto) to FP16; save to ``out`` when given.

    Returns the converted ModelProto. Weights below FP16's range are clamped to +-1e-7 by the
    converter (a count is logged), not flushed to zero.
    """
    onnx = require("onnx")
    try:
        from onnxconverter_common import float16
    except ImportError as exc:
        raise MissingDependencyError("onnxconverter-common is needed for FP16 conversion; "
                                     "install it with: pip install 'medtrt[onnx]'") from exc
    proto = onnx.load(str(model)) if isinstance(model, (str, os.PathLike)) else model
    present = {n.op_type for n in proto.graph.node}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        converted = float16.convert_float_to_float16(
            proto, keep_io_types=keep_io_types, op_block_list=[op for op in fp32_ops if op in present],
            disable_shape_infer=False)
    clamped = sum("truncated" in str(w.message) for w in caught)
    if clamped:
        log.info("fp16: %d weights below the FP16 range were clamped to +-1e-7", clamped)
    onnx.checker.check_model(converted)
    if out is not None:
        save_onnx(converted, out)
    return converted
