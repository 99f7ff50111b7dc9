"""What an INT8 bundle runs on a CPU: the candidates and the rule that picks one.

An INT8 bundle's precision ONNX is laid out for TensorRT; on a CPU, ONNX Runtime runs that graph
slower than FP32. ``int8_cpu_candidates(bundle)`` lists what may run instead, each derived from
the precision ONNX (``medtrt.precision.cpu_int8``, cached on disk):

- ``cpu-int8``: the CPU INT8 graph (uint8 activations x int8 weights in ``QLinearConv``), only
  where the CPU has integer dot-product instructions (VNNI or AMX-INT8: ``medtrt.cpu``);
- ``fp32``: FP32 compute with the INT8-rounded weights, always.

``fastest(candidates, shape)`` times them on this machine (interleaved runs, medians) and keeps
the winner's ONNX Runtime stage; ``choose`` is its rule on the timings: a candidate other than
FP32 runs only when it is measured at least ``margin`` faster than FP32, so what runs is never
slower than the FP32 graph here. ``medtrt.runtime.loader`` uses both for a bundle asked for with
``backend="auto"`` on the CPU; ``backend="onnxruntime"`` runs the precision ONNX as it is (the
TensorRT graph whose accuracy the build checked).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medtrt.artifacts import Bundle
from medtrt.cpu import has_int8_dot
from medtrt.precision.cpu_int8 import cpu_graph_path
from medtrt.runtime.stages import OnnxRuntimeStage

__all__ = ["CpuCandidate", "CpuChoice", "INT8_NOTE", "NO_INT8_DOT_NOTE", "FP32_NOTE", "choose",
           "fastest", "int8_cpu_candidates"]

log = logging.getLogger(__name__)

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


def choose(seconds: dict[str, float], *, reference: str = "fp32", margin: float = 0.05) -> str:
    """The candidate to run, from median seconds per batch: the fastest, where a candidate other
    than ``reference`` must be at least ``margin`` (a fraction) faster than it; the reference
    when no other is. Never slower than the reference, as measured."""
    if reference not in seconds:
        raise ValueError(f"choose: no timing for the reference {reference!r}; "
                         f"got {sorted(seconds)}")
    if not 0 <= margin < 1:
        raise ValueError(f"margin must be in [0, 1); got {margin}")
    bound = seconds[reference] * (1 - margin)
    faster = {k: v for k, v in seconds.items() if k != reference and v < bound}
    return min(faster, key=lambda k: (faster[k], k)) if faster else reference


@dataclass(frozen=True)
class CpuChoice:
    """What ``fastest`` picked: the candidate, its stage (open), the median seconds per batch of
    each candidate timed (empty when there was one candidate) and the batch timed."""

    candidate: CpuCandidate
    stage: OnnxRuntimeStage
    seconds: dict[str, float] = field(default_factory=dict)
    batch: int = 0

    def describe(self) -> str:
        """One line: what runs and why."""
        if not self.seconds:
            return self.candidate.note
        timed = ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in self.seconds.items())
        return f"{self.candidate.note} (measured at batch {self.batch}: {timed})"


def fastest(candidates: list[CpuCandidate], shape: tuple[int, ...], *, threads: int = 0,
            rounds: int = 4) -> CpuChoice:
    """Open each candidate in ONNX Runtime, time it on random float32 inputs of ``shape``
    (one warm-up run, then ``rounds`` runs interleaved with the others', the order reversed
    every other round: the first of a round measures slower), close all but the one ``choose``
    picks. One candidate: opened, not timed."""
    if not candidates:
        raise ValueError("fastest: no candidates")
    stages = {c.name: OnnxRuntimeStage(c.graph, threads=threads) for c in candidates}
    by_name = {c.name: c for c in candidates}
    if len(candidates) == 1:
        return CpuChoice(candidates[0], stages[candidates[0].name])
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    times: dict[str, list[float]] = {name: [] for name in stages}
    for step in range(rounds + 1):
        for name, stage in list(stages.items())[::1 if step % 2 else -1]:
            start = time.perf_counter()
            stage.session.run(None, {stage.input_name: x})
            if step:  # the first round warms up
                times[name].append(time.perf_counter() - start)
    seconds = {name: float(np.median(t)) for name, t in times.items()}
    winner = choose(seconds)
    for name, stage in stages.items():
        if name != winner:
            stage.close()
    return CpuChoice(by_name[winner], stages[winner], seconds, shape[0])
