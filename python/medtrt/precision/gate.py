"""Accuracy gate for INT8 builds: agreement with FP32 on a validation set, FP16 fallback layers.

``medtrt build --int8 --val DIR --min-agreement 0.99`` runs the Q/DQ graph and the FP32 graph in
ONNX Runtime (CPU) on the validation images, both pre-processed as at inference, and compares:
top-1 agreement for single-label (softmax) models, per-label threshold-decision agreement for
multi-label (sigmoid) ones. If the graph misses the gate:

1. every quantized layer (a node reading Q/DQ inputs) that can leave INT8 on its own is ranked
   by the signal-to-quantization-noise ratio of its inputs on the FP32 activations (cheap: one
   FP32 pass): weighted layers and pools (kept in FP16) and residual Adds (their shortcut read
   in floating point: the Add itself is exact in any float precision). Concat inputs are not
   candidates (``--concat float`` takes them out of INT8 all together);
2. for the ``candidates`` layers with the lowest SQNR, the sensitivity is measured: the graph is
   rebuilt with that one layer's Q/DQ removed (a weighted layer or pool also in FP16), and run
   on ``probe_images`` images (mean |dprob| against FP32, then agreement);
3. the layers whose removal helps most (and helps at all, against the all-INT8 graph on the same
   probe images) are kept in FP16 one at a time, re-checking the full validation set after each,
   until the gate holds or ``max_fp16_layers`` is reached.

A tensor read by several quantized layers (a ResNet block's input: its first convolution and
its identity shortcut) has one Q/DQ pair; taking one reader out of INT8 makes that reader alone
read the float tensor. Measuring every layer one at a time would cost one ONNX Runtime session
and validation pass per layer (121 convolutions in DenseNet-121); the SQNR ranking keeps it to
``candidates`` passes.
The outcome (passed or not, agreement before/after, the FP16 layers, every measurement) is
returned for the bundle JSON and the build summary.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medtrt._lazy import require
from medtrt.data import IMAGE_SUFFIXES, iter_images, list_images
from medtrt.export import read_metadata
from medtrt.metrics import AgreementReport, agreement, require_finite
from medtrt.ops import resize_normalize_mixed
from medtrt.precision.calibrate import _augmented_session, run_batches
from medtrt.precision.qdq import FP16_OPS, QdqRecipe
from medtrt.reference import activate

__all__ = ["GateConfig", "GateResult", "NON_FINITE_FIX", "accuracy_gate", "load_validation",
           "ort_logits", "ort_probs"]

log = logging.getLogger(__name__)

# Quantized layers the gate may take out of INT8 one at a time: weighted layers and pools run in
# FP16 (keep_in_fp16); an Add's only Q/DQ input is a residual shortcut (plan_qdq), left float.
CANDIDATE_OPS = (*FP16_OPS, "Add")

# What to try when a precision graph gives NaN or infinity where the FP32 graph does not
# ({fp32}: the FP32 ONNX, {graph}: the precision ONNX).
NON_FINITE_FIX = {
    "fp16": "an activation probably overflows FP16 (|x| > 65504): find the layer with `medtrt "
            "debug-layers {fp32} {graph} --data DIR`, then build in FP32 (no --fp16) or INT8 "
            "(--int8: the layers outside Q/DQ run in FP32)",
    "int8": "check the calibration data (--calib: real images like those deployed, not blank "
            "ones; recalibrate rather than reuse an old --calib-cache), keep the sensitive "
            "layers in FP16 (--keep-fp16 stem,head, --concat float) and find where the outputs "
            "go bad with `medtrt debug-layers {fp32} {graph} --data DIR`",
}


@dataclass(frozen=True)
class GateConfig:
    min_agreement: float = 0.99
    max_fp16_layers: int = 8
    candidates: int = 12
    images: int = 256
    probe_images: int = 64
    batch_size: int = 32

    def __post_init__(self) -> None:
        if not 0.0 < self.min_agreement <= 1.0:
            raise ValueError(f"--min-agreement must be in (0, 1]; got {self.min_agreement}")
        if self.max_fp16_layers < 0 or self.candidates < 0:
            raise ValueError("max_fp16_layers and candidates must be >= 0")
        if self.images < 1 or self.probe_images < 1 or self.batch_size < 1:
            raise ValueError("images, probe_images and batch_size must be >= 1")


@dataclass
class GateResult:
    passed: bool
    min_agreement: float
    metric: str  # "top1" (softmax) or "label decisions" (sigmoid)
    images: int
    unreadable: list[str]
    agreement_before: float
    agreement: float
    max_abs_prob_diff: float
    fp16_layers: list[str]
    max_fp16_layers: int
    sensitivity: list[dict[str, Any]] = field(default_factory=list)
    steps: list[dict[str, Any]] = field(default_factory=list)
    accuracy: dict[str, float] | None = None  # vs folder labels, when the folder has them
    worst: dict[str, Any] | None = None
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        kept = (f"; {len(self.fp16_layers)} layer(s) kept in FP16" if self.fp16_layers else "")
        return (f"gate {verdict}: {self.metric} agreement {self.agreement:.4f} "
                f"(min {self.min_agreement}, before fallback {self.agreement_before:.4f}) on "
                f"{self.images} images{kept}")


def load_validation(source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], n: int,
                    labels: Sequence[str]) -> tuple[list[np.ndarray], np.ndarray | None, list[str]]:
    """Up to ``n`` validation images (deterministic pick), their labels when every image sits in
    a folder named after a label of the model (else None), and the unreadable paths."""
    if isinstance(source, (str, os.PathLike)):
        root = Path(source)
        if not root.is_dir():
            raise FileNotFoundError(f"validation folder {root} does not exist (--val)")
        paths = list_images(root)
    else:
        paths = sorted(Path(p) for p in source)
    if not paths:
        raise ValueError(f"validation folder {source} holds no images "
                         f"({', '.join(IMAGE_SUFFIXES)})")
    if len(paths) > n:
        pick = np.random.default_rng(2).choice(len(paths), size=n, replace=False)
        paths = [paths[i] for i in sorted(pick)]
    results = list(iter_images(paths))  # one unreadable image is reported, not fatal
    images = [r.image for r in results if r.ok]
    kept = [r.path for r in results if r.ok]
    bad = [f"{r.path}: {r.error}" for r in results if not r.ok]
    if not images:
        raise ValueError(f"no readable validation images in {source}: {bad[:3]}")
    known = all(p.parent.name in labels for p in kept)
    y = np.array([list(labels).index(p.parent.name) for p in kept]) if known else None
    return images, y, bad


def ort_logits(model: Any, x: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Outputs (logits) of an ONNX graph (path or ModelProto) on pre-processed ``x``, run in ONNX
    Runtime on the CPU in batches."""
    ort = require("onnxruntime")
    data = str(model) if isinstance(model, (str, os.PathLike)) else model.SerializeToString()
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return np.concatenate([outs[0] for outs in run_batches(session, x, batch_size)])


def ort_probs(model: Any, x: np.ndarray, activation: str, batch_size: int = 32) -> np.ndarray:
    """Probabilities (``activation`` of ``ort_logits``) of an ONNX graph on ``x``."""
    return activate(ort_logits(model, x, batch_size), activation)


def _sqnr(fp32_path: Path, plan: Any, amax: dict[str, float], x: np.ndarray,
          batch_size: int) -> dict[str, float]:
    """Per quantized tensor: 10 log10(sum x^2 / sum (x - fakequant(x))^2) in dB, on ``x``."""
    scale = plan.scales(amax)
    tensors = [t for t in plan.tensors if scale[t] > 0]
    session = _augmented_session(fp32_path, tensors)
    signal = dict.fromkeys(tensors, 0.0)
    noise = dict.fromkeys(tensors, 0.0)
    for outs in run_batches(session, x, batch_size, tensors):
        for t, a in zip(tensors, outs):
            a = a.astype(np.float32, copy=False)
            q = np.clip(np.rint(a / scale[t]), -128, 127) * scale[t]
            signal[t] += float(np.square(a, dtype=np.float64).sum())
            noise[t] += float(np.square(a - q, dtype=np.float64).sum())
    return {t: (10 * np.log10(signal[t] / noise[t]) if noise[t] > 0 else float("inf"))
            for t in tensors}


class _Validation:
    """The validation images pre-processed once, the FP32 graph's probabilities on them, and
    how a Q/DQ variant of the graph (some layers kept in FP16) is made and measured."""

    def __init__(self, fp32_onnx: Path, amax: dict[str, float], recipe: Any, preset: Any,
                 cfg: GateConfig, images: list[np.ndarray]) -> None:
        self.fp32_onnx, self.amax, self.recipe, self.preset, self.cfg = (
            fp32_onnx, amax, recipe, preset, cfg)
        self.fp32 = require("onnx").load(str(fp32_onnx))
        kwargs = preset.preprocess_kwargs()
        self.x = np.concatenate([resize_normalize_mixed(images[s:s + cfg.batch_size], **kwargs)
                                 for s in range(0, len(images), cfg.batch_size)])
        logits = require_finite(
            ort_logits(fp32_onnx, self.x, cfg.batch_size),
            f"the outputs of the FP32 graph {fp32_onnx.name} on the validation images",
            fix="check the validation images and the exported model (medtrt export verifies it "
                "against PyTorch)")
        self.ref = activate(logits, preset.activation)
        self.probe = np.linspace(0, len(self.x) - 1, min(cfg.probe_images, len(self.x))).astype(int)

    def score(self, probs: np.ndarray, rows: np.ndarray | None = None) -> AgreementReport:
        ref = self.ref if rows is None else self.ref[rows]
        return agreement(probs, ref, activation=self.preset.activation,
                         threshold=self.preset.threshold, labels=self.preset.labels)

    def check(self, fp16_layers: Sequence[str],
              rows: np.ndarray | None = None) -> tuple[Any, AgreementReport, np.ndarray]:
        """The Q/DQ graph with ``fp16_layers`` in FP16, its agreement with FP32 (on ``rows`` of
        the validation set, default all) and its probabilities."""
        model = self.recipe.apply(self.fp32, self.amax, fp16_layers)[0]
        x = self.x if rows is None else self.x[rows]
        kept = f" ({len(fp16_layers)} layer(s) in FP16)" if fp16_layers else ""
        logits = require_finite(ort_logits(model, x, self.cfg.batch_size),
                                f"the outputs of the INT8 graph{kept} on the validation images",
                                fix=NON_FINITE_FIX["int8"].format(
                                    fp32=self.fp32_onnx, graph="NAME.int8.onnx (of a build without --val)"))
        probs = activate(logits, self.preset.activation)
        return model, self.score(probs, rows), probs


def _sensitivity(v: _Validation, phase: Callable[[str], None]) -> list[dict[str, Any]]:
    """The ``candidates`` quantized layers with the lowest input SQNR, each measured on the
    probe images with its Q/DQ removed (the layer in FP16); most helpful first."""
    phase("accuracy gate: ranking layers by quantization SQNR")
    plan = v.recipe.plan(v.fp32)
    sqnr = _sqnr(v.fp32_onnx, plan, v.amax, v.x[v.probe], v.cfg.batch_size)
    op_of = {n.name: n.op_type for n in v.fp32.graph.node}
    layer_sqnr: dict[str, float] = {}
    for t, nodes in plan.consumers.items():
        for node in nodes:
            if op_of.get(node) in CANDIDATE_OPS and t in sqnr:
                layer_sqnr[node] = min(layer_sqnr.get(node, np.inf), sqnr[t])
    ranked = sorted(layer_sqnr, key=layer_sqnr.get)[:v.cfg.candidates]
    out = []
    for i, node in enumerate(ranked):
        phase(f"accuracy gate: sensitivity of {node} ({i + 1}/{len(ranked)})")
        _, r, _ = v.check([node], v.probe)
        out.append({"layer": node, "op": op_of[node], "sqnr_db": layer_sqnr[node],
                    "agreement_without_qdq": r.agreement,
                    "mean_abs_prob_diff_without_qdq": r.mean_abs_prob_diff})
    out.sort(key=lambda d: (-d["agreement_without_qdq"], d["mean_abs_prob_diff_without_qdq"]))
    return out


def _step(fp16_layers: Sequence[str], rep: AgreementReport) -> dict[str, Any]:
    return {"fp16_layers": list(fp16_layers), "agreement": rep.agreement,
            "max_abs_prob_diff": rep.max_abs_prob_diff}


def accuracy_gate(fp32_onnx: str | os.PathLike[str], amax: dict[str, float],
                  val: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], *,
                  preset: Any = None, config: GateConfig | None = None,
                  recipe: Any = None,
                  on_phase: Callable[[str], None] | None = None) -> tuple[Any, GateResult]:
    """Check (and if needed repair) the INT8 Q/DQ graph of ``fp32_onnx`` with ``amax``.

    ``recipe`` (a ``QdqRecipe``; default: shared Concat scales, no layer kept) is how the graph
    is quantized; its own FP16 layers are not candidates. Returns (the final Q/DQ ModelProto,
    with any FP16 fallback layers; the GateResult). The caller decides what a failed gate means
    (``medtrt build`` stops). NaN or infinite outputs raise ``medtrt.errors.NonFiniteError``.
    """
    cfg = config or GateConfig()
    phase = on_phase or (lambda _s: None)
    t0 = time.perf_counter()
    fp32_onnx = Path(fp32_onnx)
    preset = preset or read_metadata(fp32_onnx)[0]
    phase("accuracy gate: reading validation images")
    images, labels, bad = load_validation(val, cfg.images, preset.labels)
    v = _Validation(fp32_onnx, amax, recipe or QdqRecipe(), preset, cfg, images)
    phase("accuracy gate: checking the INT8 graph against FP32")
    kept: list[str] = []
    model, rep, probs = v.check(kept)
    before = rep.agreement
    steps = [_step(kept, rep)]
    sensitivity: list[dict[str, Any]] = []
    if rep.agreement < cfg.min_agreement and cfg.max_fp16_layers > 0 and cfg.candidates > 0:
        sensitivity = _sensitivity(v, phase)
        base = v.score(probs[v.probe], v.probe)  # all-INT8, probe images
        helpful = [d for d in sensitivity if d["agreement_without_qdq"] > base.agreement
                   or d["mean_abs_prob_diff_without_qdq"] < base.mean_abs_prob_diff]
        for entry in helpful[:cfg.max_fp16_layers]:
            kept.append(entry["layer"])
            phase(f"accuracy gate: {len(kept)} layer(s) in FP16, re-checking")
            model, rep, probs = v.check(kept)
            steps.append(_step(kept, rep))
            if rep.agreement >= cfg.min_agreement:
                break
    accuracy = None
    if labels is not None and preset.activation == "softmax":
        accuracy = {"fp32": float(np.mean(v.ref.argmax(1) == labels)),
                    "int8": float(np.mean(probs.argmax(1) == labels))}
    result = GateResult(
        passed=rep.agreement >= cfg.min_agreement, min_agreement=cfg.min_agreement,
        metric=rep.metric, images=len(v.x), unreadable=bad, agreement_before=before,
        agreement=rep.agreement, max_abs_prob_diff=rep.max_abs_prob_diff, fp16_layers=kept,
        max_fp16_layers=cfg.max_fp16_layers, sensitivity=sensitivity, steps=steps,
        accuracy=accuracy,
        worst={"index": rep.worst_index, "int8": rep.worst_candidate, "fp32": rep.worst_reference},
        seconds=time.perf_counter() - t0)
    log.info("%s", result.summary())
    return model, result
