"""Accuracy gate for INT8 builds: agreement with FP32 on a validation set, FP16 fallback layers.

``medtrt build --int8 --val DIR --min-agreement 0.99`` runs the Q/DQ graph and the FP32 graph in
ONNX Runtime (CPU) on the validation images, both pre-processed as at inference, and compares:
top-1 agreement for single-label (softmax) models, per-label threshold-decision agreement for
multi-label (sigmoid) ones. If the graph misses the gate:

1. every quantized layer (a node reading Q/DQ inputs) is ranked by the signal-to-quantization-
   noise ratio of its inputs on the FP32 activations (cheap: one FP32 pass);
2. for the ``candidates`` layers with the lowest SQNR, the sensitivity is measured: the graph is
   rebuilt with that one layer's Q/DQ removed and the layer in FP16, and run on ``probe_images``
   images (mean |dprob| against FP32, then agreement);
3. the layers whose removal helps most (and helps at all, against the all-INT8 graph on the same
   probe images) are kept in FP16 one at a time, re-checking the full validation set after each,
   until the gate holds or ``max_fp16_layers`` is reached.

Measuring every layer one at a time would cost one ONNX Runtime session and validation pass per
layer (121 convolutions in DenseNet-121); the SQNR ranking keeps it to ``candidates`` passes.
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

__all__ = ["GateConfig", "GateResult", "accuracy_gate", "load_validation"]

log = logging.getLogger(__name__)


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
    from medtrt.data import IMAGE_SUFFIXES, iter_images, list_images

    if isinstance(source, (str, os.PathLike)):
        root = Path(source)
        if not root.is_dir():
            raise FileNotFoundError(f"validation folder {root} does not exist (--val)")
        paths = list_images(root)
    else:
        paths = sorted(Path(p) for p in source)
    if not paths:
        raise ValueError(f"validation folder {source} holds no images ({', '.join(IMAGE_SUFFIXES)})")
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


def ort_probs(model: Any, x: np.ndarray, activation: str, batch_size: int = 32) -> np.ndarray:
    """Probabilities of an ONNX graph (path or ModelProto) on pre-processed ``x``, run in ONNX
    Runtime on the CPU in batches."""
    from medtrt.reference import activate

    ort = require("onnxruntime")
    data = str(model) if isinstance(model, (str, os.PathLike)) else model.SerializeToString()
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    out = [session.run(None, {name: x[s:s + batch_size]})[0] for s in range(0, len(x), batch_size)]
    return activate(np.concatenate(out), activation)


def _sqnr(fp32_path: Path, plan: Any, amax: dict[str, float], x: np.ndarray,
          batch_size: int) -> dict[str, float]:
    """Per quantized tensor: 10 log10(sum x^2 / sum (x - fakequant(x))^2) in dB, on ``x``."""
    from medtrt.precision.calibrate import _augmented_session

    scale = plan.scales(amax)
    tensors = [t for t in plan.tensors if scale[t] > 0]
    session = _augmented_session(fp32_path, tensors)
    name = session.get_inputs()[0].name
    signal = dict.fromkeys(tensors, 0.0)
    noise = dict.fromkeys(tensors, 0.0)
    for s in range(0, len(x), batch_size):
        outs = session.run(tensors, {name: x[s:s + batch_size]})
        for t, a in zip(tensors, outs):
            a = a.astype(np.float32, copy=False)
            q = np.clip(np.rint(a / scale[t]), -128, 127) * scale[t]
            signal[t] += float(np.square(a, dtype=np.float64).sum())
            noise[t] += float(np.square(a - q, dtype=np.float64).sum())
    return {t: (10 * np.log10(signal[t] / noise[t]) if noise[t] > 0 else float("inf"))
            for t in tensors}


def accuracy_gate(fp32_onnx: str | os.PathLike[str], amax: dict[str, float],
                  val: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], *,
                  preset: Any = None, config: GateConfig | None = None,
                  recipe: Any = None,
                  on_phase: Callable[[str], None] | None = None) -> tuple[Any, GateResult]:
    """Check (and if needed repair) the INT8 Q/DQ graph of ``fp32_onnx`` with ``amax``.

    ``recipe`` (a ``QdqRecipe``; default: shared Concat scales, no layer kept) is how the graph
    is quantized; its own FP16 layers are not candidates. Returns (the final Q/DQ ModelProto,
    with any FP16 fallback layers; the GateResult). The caller decides what a failed gate means
    (``medtrt build`` stops).
    """
    onnx = require("onnx")
    from medtrt.export import read_metadata
    from medtrt.ops import resize_normalize_mixed
    from medtrt.precision.qdq import FP16_OPS, QdqRecipe
    from medtrt.testing import agreement

    cfg = config or GateConfig()
    recipe = recipe or QdqRecipe()
    phase = on_phase or (lambda _s: None)
    t0 = time.perf_counter()
    fp32_onnx = Path(fp32_onnx)
    preset = preset or read_metadata(fp32_onnx)[0]
    fp32 = onnx.load(str(fp32_onnx))
    phase("accuracy gate: reading validation images")
    images, labels, bad = load_validation(val, cfg.images, preset.labels)
    kwargs = preset.preprocess_kwargs()
    x = np.concatenate([resize_normalize_mixed(images[s:s + cfg.batch_size], **kwargs)
                        for s in range(0, len(images), cfg.batch_size)])
    act = preset.activation
    ref = ort_probs(fp32_onnx, x, act, cfg.batch_size)
    probe = np.linspace(0, len(x) - 1, min(cfg.probe_images, len(x))).astype(int)

    def variant(fp16_layers: Sequence[str]) -> Any:
        return recipe.apply(fp32, amax, fp16_layers)[0]

    def score_of(p: np.ndarray, rs: np.ndarray) -> Any:
        rep = agreement(p, rs, activation=act, threshold=preset.threshold, labels=preset.labels)
        return rep, rep.agreement

    def check(model: Any, rows: np.ndarray | None = None) -> Any:
        xs, rs = (x, ref) if rows is None else (x[rows], ref[rows])
        p = ort_probs(model, xs, act, cfg.batch_size)
        return (*score_of(p, rs), p)

    phase("accuracy gate: checking the INT8 graph against FP32")
    kept: list[str] = []
    model = variant(kept)
    rep, score, probs = check(model)
    before = score
    steps = [{"fp16_layers": [], "agreement": score, "max_abs_prob_diff": rep.max_abs_prob_diff}]
    sensitivity: list[dict[str, Any]] = []
    if score < cfg.min_agreement and cfg.max_fp16_layers > 0 and cfg.candidates > 0:
        phase("accuracy gate: ranking layers by quantization SQNR")
        plan = recipe.plan(fp32)
        sqnr = _sqnr(fp32_onnx, plan, amax, x[probe], cfg.batch_size)
        op_of = {n.name: n.op_type for n in fp32.graph.node}
        layer_sqnr: dict[str, float] = {}
        for t, nodes in plan.consumers.items():
            for node in nodes:
                if op_of.get(node) in FP16_OPS and t in sqnr:
                    layer_sqnr[node] = min(layer_sqnr.get(node, np.inf), sqnr[t])
        ranked = sorted(layer_sqnr, key=layer_sqnr.get)[:cfg.candidates]
        for i, node in enumerate(ranked):
            phase(f"accuracy gate: sensitivity of {node} ({i + 1}/{len(ranked)})")
            r, s, _ = check(variant([node]), probe)
            sensitivity.append({"layer": node, "op": op_of[node], "sqnr_db": layer_sqnr[node],
                                "agreement_without_qdq": s,
                                "mean_abs_prob_diff_without_qdq": r.mean_abs_prob_diff})
        sensitivity.sort(key=lambda d: (-d["agreement_without_qdq"],
                                        d["mean_abs_prob_diff_without_qdq"]))
        base_rep, base_score = score_of(probs[probe], ref[probe])  # all-INT8, probe images
        helpful = [d for d in sensitivity
                   if d["agreement_without_qdq"] > base_score
                   or d["mean_abs_prob_diff_without_qdq"] < base_rep.mean_abs_prob_diff]
        for entry in helpful[:cfg.max_fp16_layers]:
            kept.append(entry["layer"])
            phase(f"accuracy gate: {len(kept)} layer(s) in FP16, re-checking")
            model = variant(kept)
            rep, score, probs = check(model)
            steps.append({"fp16_layers": list(kept), "agreement": score,
                          "max_abs_prob_diff": rep.max_abs_prob_diff})
            if score >= cfg.min_agreement:
                break
    accuracy = None
    if labels is not None and act == "softmax":
        accuracy = {"fp32": float(np.mean(ref.argmax(1) == labels)),
                    "int8": float(np.mean(probs.argmax(1) == labels))}
    result = GateResult(
        passed=score >= cfg.min_agreement, min_agreement=cfg.min_agreement, metric=rep.metric,
        images=len(x), unreadable=bad, agreement_before=before, agreement=score,
        max_abs_prob_diff=rep.max_abs_prob_diff, fp16_layers=kept,
        max_fp16_layers=cfg.max_fp16_layers, sensitivity=sensitivity, steps=steps,
        accuracy=accuracy,
        worst={"index": rep.worst_index, "int8": rep.worst_candidate, "fp32": rep.worst_reference},
        seconds=time.perf_counter() - t0)
    log.info("%s", result.summary())
    return model, result
