"""What an INT8 bundle runs on a CPU: the candidates and the rule that picks one.

An INT8 bundle's precision ONNX is laid out for TensorRT; on a CPU, ONNX Runtime runs that graph
slower than FP32. ``int8_cpu_candidates(bundle)`` lists what may run instead, each derived from
the precision ONNX (``medtrt.precision.cpu_int8``, cached on disk):

- ``cpu-int8``: the CPU INT8 graph (uint8 activations x int8 weights in ``QLinearConv``), only
  where the CPU has integer dot-product instructions (VNNI or AMX-INT8: ``medtrt.cpu``);
- ``fp32``: FP32 compute with the INT8-rounded weights, always.

``medtrt.runtime.cpu_choice.cpu_candidates`` offers them, each in ONNX Runtime and OpenVINO
beside the precision ONNX itself in OpenVINO (which runs the TensorRT layout in INT8 on such
CPUs), to the probe that times every candidate on this machine and runs the fastest: so what
runs is never slower than the FP32 graph here, as measured. ``backend="onnxruntime"`` runs the
precision ONNX as it is (the TensorRT graph whose accuracy the build checked).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from medtrt.artifacts import Bundle
from medtrt.cpu import has_int8_dot
from medtrt.precision.cpu_int8 import cpu_graph_path

__all__ = ["CpuCandidate", "FP32_NOTE", "INT8_NOTE", "NO_INT8_DOT_NOTE", "int8_cpu_candidates"]

INT8_NOTE = ("running INT8: the CPU INT8 graph (uint8 activations x int8 weights in "
             "QLinearConv) derived from the bundle's precision ONNX")
FP32_NOTE = "FP32 compute with the INT8-rounded weights of the bundle's precision ONNX"
NO_INT8_DOT_NOTE = (f"INT8 bundle on a CPU without VNNI/AMX: running FP32 ({FP32_NOTE}); INT8 "
                    "runs faster than FP32 in ONNX Runtime only with integer dot-product "
                    "instructions")


@dataclass(frozen=True)
class CpuCandidate:
    """A graph an INT8 bundle may run in ONNX Runtime on this CPU: ``name`` ("cpu-int8" or
    "fp32"), the ONNX file, and what running it means."""

    name: str
    graph: Path
    note: str


def int8_cpu_candidates(bundle: Bundle) -> list[CpuCandidate]:
    """The graphs ``bundle`` (INT8, read with ``Bundle.read``) may run on this CPU: the CPU INT8
    graph first where the CPU has VNNI/AMX (``medtrt.cpu.has_int8_dot``), and always the FP32
    graph (alone, with ``NO_INT8_DOT_NOTE``, where it has neither). Derived on first use into
    the medtrt cache, keyed by the precision ONNX's sha256."""
    if bundle.precision != "int8":
        raise ValueError(f"int8_cpu_candidates: {bundle.path} is a {bundle.precision} bundle; its "
                         "precision ONNX runs as it is")
    onnx_path = bundle.require_precision_onnx("its CPU graphs are derived from it")
    sha = bundle.precision_onnx.sha256
    fp32 = cpu_graph_path(onnx_path, "fp32", sha256=sha)
    if not has_int8_dot():
        return [CpuCandidate("fp32", fp32, NO_INT8_DOT_NOTE)]
    return [CpuCandidate("cpu-int8", cpu_graph_path(onnx_path, "cpu-int8", sha256=sha),
                         INT8_NOTE),
            CpuCandidate("fp32", fp32, f"running FP32 ({FP32_NOTE})")]
