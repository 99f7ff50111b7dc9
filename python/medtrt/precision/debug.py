"""Layer-by-layer comparison of two precision graphs with Polygraphy (ONNX Runtime, CPU).

When an INT8 (or FP16) graph misses the accuracy gate, the question is *where* its error grows.
``compare_layers`` marks every activation tensor that both graphs share (Q/DQ insertion and
FP16 fallback keep the FP32 graph's tensor names) as an output, runs both graphs on the same
pre-processed images through Polygraphy's ``OnnxrtRunner`` and ``Comparator``, and reports per
tensor, in graph order: the relative RMS error (||b - a|| / ||a||), the cosine similarity,
Polygraphy's pass/fail at the given tolerances, and the *growth*: the tensor's relative error
minus the largest one among the shared tensors its producer reads. The layers with the largest
growth are where the precision loss enters.

The same comparison from the shell, for one input, with Polygraphy alone::

    polygraphy run model.onnx --onnxrt --onnx-outputs mark all --save-outputs fp32.json
    polygraphy run model.int8.onnx --onnxrt --onnx-outputs mark all \\
        --load-outputs fp32.json --atol 1e-2 --rtol 1e-2
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medtrt._lazy import require
from medtrt.errors import MissingDependencyError
from medtrt.export import read_metadata
from medtrt.ops import resize_normalize_mixed
from medtrt.precision.gate import load_validation

__all__ = ["LayerDiff", "LayerReport", "compare_layers"]


@dataclass(frozen=True)
class LayerDiff:
    tensor: str
    producer: str  # node name in the reference graph
    op: str
    rel_error: float
    cosine: float
    growth: float
    passed: bool  # Polygraphy's verdict at (atol, rtol)


@dataclass
class LayerReport:
    reference: str
    candidate: str
    images: int
    atol: float
    rtol: float
    layers: list[LayerDiff]  # graph order
    output_rel_error: float
    seconds: float

    def worst(self, n: int = 10) -> list[LayerDiff]:
        """The ``n`` layers where the relative error grows most."""
        return sorted(self.layers, key=lambda d: -d.growth)[:n]

    def first_failing(self) -> LayerDiff | None:
        return next((d for d in self.layers if not d.passed), None)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["worst"] = [asdict(x) for x in self.worst()]
        return d

    def write(self, path: str | os.PathLike[str]) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        return path


def _shared_tensors(ref: Any, cand: Any) -> tuple[list[str], dict[str, Any]]:
    """Float activation tensors produced in both graphs, in the reference graph's order, and the
    reference node producing each."""
    cand_outputs = {o for n in cand.graph.node for o in n.output}
    skip = ("Constant", "Shape", "Gather", "Unsqueeze", "Squeeze")  # no float activations
    names, producer = [], {}
    for node in ref.graph.node:
        if node.op_type in skip:
            continue
        for o in node.output:
            if o and o in cand_outputs:
                names.append(o)
                producer[o] = node
    return names, producer


def _load_onnx(onnx: Any, path: str | os.PathLike[str]) -> Any:
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        return onnx.load(str(path))
    except Exception as exc:
        raise ValueError(f"{path} is not an ONNX file: {exc}") from exc


def compare_layers(reference_onnx: str | os.PathLike[str], candidate_onnx: str | os.PathLike[str],
                   images: str | os.PathLike[str] | Sequence[Any], *, num_images: int = 4,
                   atol: float = 1e-2, rtol: float = 1e-2, preset: Any = None) -> LayerReport:
    """Compare every shared layer output of ``candidate_onnx`` with ``reference_onnx``.

    ``images``: a folder or a list of paths/arrays; the first ``num_images`` are pre-processed
    with the reference graph's preset (``medtrt export`` metadata) and run one by one.
    """
    onnx = require("onnx")
    comparator = _polygraphy()  # a missing extra is reported before any work
    t0 = time.perf_counter()
    preset = preset or read_metadata(reference_onnx)[0]
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1; got {num_images}")
    if isinstance(images, (str, os.PathLike)) or all(isinstance(p, (str, os.PathLike)) for p in images):
        arrays, _, _ = load_validation(images, num_images, preset.labels)
    else:
        arrays = [np.asarray(p) for p in list(images)[:num_images]]
    x = resize_normalize_mixed(arrays, **preset.preprocess_kwargs())
    ref_model, cand_model = (_load_onnx(onnx, p) for p in (reference_onnx, candidate_onnx))
    names, producer = _shared_tensors(ref_model, cand_model)
    if not names:
        raise ValueError(f"{reference_onnx} and {candidate_onnx} share no tensor names; compare "
                         "graphs derived from the same export")
    feeds = [{ref_model.graph.input[0].name: x[i:i + 1]} for i in range(len(x))]
    ref_runs, cand_runs, passed_by_tensor = _run_both(comparator, ref_model, cand_model, names,
                                                      feeds, atol, rtol)
    rel, cos = _errors(names, ref_runs, cand_runs)
    grown = _error_growth(ref_model, set(names), rel)
    layers = [LayerDiff(n, producer[n].name, producer[n].op_type, rel[n], cos[n], grown[n],
                        passed_by_tensor.get(n, True)) for n in names]
    return LayerReport(str(reference_onnx), str(candidate_onnx), len(x), atol, rtol, layers,
                       rel.get(ref_model.graph.output[0].name, float("nan")),
                       time.perf_counter() - t0)


def _polygraphy() -> dict[str, Any]:
    """The Polygraphy pieces compare_layers uses, or an error naming the extra to install."""
    try:
        from polygraphy.backend.onnx import BytesFromOnnx, ModifyOutputs
        from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
        from polygraphy.comparator import Comparator, SimpleCompareFunc
        from polygraphy.logger import G_LOGGER
    except ImportError as exc:
        raise MissingDependencyError("layer comparison needs Polygraphy: pip install "
                                     "'medtrt[debug]' (or pip install polygraphy)") from exc
    return {"BytesFromOnnx": BytesFromOnnx, "ModifyOutputs": ModifyOutputs,
            "OnnxrtRunner": OnnxrtRunner, "SessionFromOnnx": SessionFromOnnx,
            "Comparator": Comparator, "SimpleCompareFunc": SimpleCompareFunc,
            "G_LOGGER": G_LOGGER}


def _run_both(pg: dict[str, Any], ref_model: Any, cand_model: Any, names: list[str],
              feeds: list[dict], atol: float,
              rtol: float) -> tuple[list[Any], list[Any], dict[str, bool]]:
    """Both graphs with every shared tensor marked as an output, through Polygraphy's ONNX
    Runtime runner and Comparator: (reference runs, candidate runs, pass/fail per tensor)."""
    runners = []
    for label, model in (("reference", ref_model), ("candidate", cand_model)):
        marked = pg["ModifyOutputs"](model, outputs=names, copy=True)
        session = pg["SessionFromOnnx"](pg["BytesFromOnnx"](marked),
                                        providers=["CPUExecutionProvider"])
        runners.append(pg["OnnxrtRunner"](session, name=label))
    logger = pg["G_LOGGER"]
    severity = logger.module_severity
    logger.module_severity = logger.CRITICAL  # medtrt reports; Polygraphy's per-tensor log is huge
    try:
        results = pg["Comparator"].run(runners, data_loader=feeds, warm_up=0)
        verdict = pg["Comparator"].compare_accuracy(
            results, compare_func=pg["SimpleCompareFunc"](atol=atol, rtol=rtol,
                                                          check_shapes=True))
    finally:
        logger.module_severity = severity
    passed_by_tensor: dict[str, bool] = {n: True for n in names}
    for per_func in verdict:  # one AccuracyResult per compare function
        for iterations in per_func.values():  # runner pair -> per-iteration {tensor: verdict}
            for it in iterations:
                for name, ok in it.items():
                    passed_by_tensor[name] = passed_by_tensor.get(name, True) and bool(ok)
    return results[0][1], results[1][1], passed_by_tensor


def _errors(names: list[str], ref_runs: list[Any],
            cand_runs: list[Any]) -> tuple[dict[str, float], dict[str, float]]:
    """Relative L2 error and cosine similarity of each tensor over all images."""
    rel, cos = {}, {}
    for n in names:
        a = np.concatenate([np.asarray(r[n], np.float64).ravel() for r in ref_runs])
        b = np.concatenate([np.asarray(r[n], np.float64).ravel() for r in cand_runs])
        na = np.linalg.norm(a)
        rel[n] = float(np.linalg.norm(b - a) / na) if na > 0 else float(np.linalg.norm(b))
        nb = np.linalg.norm(b)
        cos[n] = float(a @ b / (na * nb)) if na > 0 and nb > 0 else float(na == nb)
    return rel, cos


def _error_growth(ref_model: Any, shared: set[str], rel: dict[str, float]) -> dict[str, float]:
    """Each tensor's error minus the largest error among the nearest shared tensors feeding it
    (the error a layer adds rather than inherits)."""
    producer_of = {o: n for n in ref_model.graph.node for o in n.output}

    def upstream(tensor: str, depth: int = 0) -> float:
        node = producer_of.get(tensor)
        if node is None or depth > 8:
            return 0.0
        best = 0.0
        for i in node.input:
            if i in shared:
                best = max(best, rel[i])
            elif i in producer_of:
                best = max(best, upstream(i, depth + 1))
        return best

    return {n: rel[n] - upstream(n) for n in shared}
