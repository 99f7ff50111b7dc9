"""``medtrt eval``: accuracy, per-class metrics, calibration and agreement with a reference.

Runs any model ``medtrt.Engine`` opens (bundle, ONNX, checkpoint) over a MedNIST-layout folder
(one sub-folder per class) and writes ``eval.json``, ``confusion.png``, ``reliability.png`` and
``summary.md``. Single-label (softmax) presets only for now: class folders carry one label per
image.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medtrt._lazy import require

__all__ = ["classification_metrics", "evaluate", "EvalResult"]


def classification_metrics(labels: np.ndarray, probs: np.ndarray, classes: tuple[str, ...], *,
                           ece_bins: int = 15) -> dict[str, Any]:
    """Accuracy, per-class precision/recall/F1/support, confusion matrix (rows: truth, columns:
    prediction) and expected calibration error of the top-1 confidence over ``ece_bins`` equal
    bins, with the per-bin figures for a reliability diagram."""
    labels = np.asarray(labels, np.int64)
    probs = np.asarray(probs, np.float64)
    if probs.ndim != 2 or len(probs) != len(labels) or probs.shape[1] != len(classes):
        raise ValueError(f"expected probs [N, {len(classes)}] for {len(labels)} labels; got {probs.shape}")
    n, c = probs.shape
    pred = probs.argmax(1)
    confusion = np.zeros((c, c), np.int64)
    np.add.at(confusion, (labels, pred), 1)
    per_class = {}
    for i, name in enumerate(classes):
        tp = int(confusion[i, i])
        predicted, actual = int(confusion[:, i].sum()), int(confusion[i].sum())
        precision = tp / predicted if predicted else 0.0
        recall = tp / actual if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {"precision": precision, "recall": recall, "f1": f1, "support": actual}
    confidence = probs.max(1)
    correct = pred == labels
    edges = np.linspace(0.0, 1.0, ece_bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, ece_bins - 1)
    bins, ece = [], 0.0
    for b in range(ece_bins):
        members = which == b
        count = int(members.sum())
        acc = float(correct[members].mean()) if count else None
        conf = float(confidence[members].mean()) if count else None
        if count:
            ece += count / n * abs(acc - conf)
        bins.append({"low": float(edges[b]), "high": float(edges[b + 1]), "count": count,
                     "accuracy": acc, "confidence": conf})
    return {
        "images": n,
        "accuracy": float(correct.mean()) if n else 0.0,
        "macro_f1": float(np.mean([m["f1"] for m in per_class.values()])),
        "per_class": per_class,
        "confusion": confusion.tolist(),
        "ece": float(ece),
        "reliability": bins,
    }


@dataclass(frozen=True)
class EvalResult:
    report: dict[str, Any]
    files: dict[str, Path]


def evaluate(model: str | os.PathLike[str], data: str | os.PathLike[str], *,
             reference: str | os.PathLike[str] | None = None, out: str | os.PathLike[str] = "eval",
             backend: str = "auto", device: Any = 0, batch_size: int = 64,
             progress: Callable[[int, int], None] | None = None) -> EvalResult:
    """Evaluate ``model`` on the class folders under ``data``; see the module docstring.

    ``reference``: a checkpoint whose PyTorch FP32 outputs the model is compared with (top-1
    agreement, max |Δprob|) on the same images. Unreadable images are listed, not fatal.
    """
    from medtrt import Engine
    from medtrt.data import scan_folder

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with Engine(model, backend=backend, device=device) as engine:
        preset = engine.preset
        if preset.activation != "softmax":
            raise ValueError(f"medtrt eval reads class folders (one label per image); the "
                             f"{preset.name!r} preset is multi-label ({preset.activation}), which "
                             "needs per-image label files: not supported yet")
        folder = scan_folder(data)
        unknown = [c for c in folder.classes if c not in preset.labels]
        if unknown:
            raise ValueError(f"{data}: class folders {unknown} are not labels of the model "
                             f"({list(preset.labels)}); rename them or evaluate another model")
        to_model = np.array([preset.labels.index(c) for c in folder.classes])
        paths = list(folder.paths)
        labels = to_model[np.asarray(folder.labels, np.int64)]
        probs = np.full((len(paths), preset.num_classes), np.nan, np.float32)
        failures: list[dict[str, str]] = []
        latencies: list[float] = []
        start = time.perf_counter()
        for lo in range(0, len(paths), batch_size):
            chunk = paths[lo:lo + batch_size]
            t0 = time.perf_counter()
            r = engine.infer(chunk, k=1, return_probs=True)
            latencies.append((time.perf_counter() - t0) / len(chunk))
            probs[lo:lo + len(chunk)] = r.probs
            failures += [{"path": str(x.source), "error": str(x.error)} for x in r.errors]
            if progress:
                progress(min(lo + batch_size, len(paths)), len(paths))
        wall = time.perf_counter() - start
        described = repr(engine)
        backend_used, precision = engine.backend, engine.precision

    ok = ~np.isnan(probs).any(1)
    metrics = classification_metrics(labels[ok], probs[ok], preset.labels)
    lat = np.asarray(latencies) * 1e3
    report: dict[str, Any] = {
        "model": str(model), "engine": described, "backend": backend_used, "precision": precision,
        "data": str(data), **metrics,
        "images": len(paths), "evaluated": metrics["images"], "failed": failures,
        "latency_ms_per_image": {"batch_size": batch_size, "mean": float(lat.mean()),
                                 "p50": float(np.percentile(lat, 50)),
                                 "p95": float(np.percentile(lat, 95)),
                                 "p99": float(np.percentile(lat, 99))},
        "images_per_s": len(paths) / wall,
    }
    if reference is not None:
        from medtrt.data import read_image
        from medtrt.reference import predict

        images = [read_image(p) for p, good in zip(paths, ok) if good]
        ref = predict(reference, images).probs
        dprob = np.abs(probs[ok] - ref)
        worst = int(dprob.max(1).argmax())
        report["reference"] = {
            "checkpoint": str(reference),
            "top1_agreement": float(np.mean(probs[ok].argmax(1) == ref.argmax(1))),
            "max_abs_dprob": float(dprob.max()),
            "mean_abs_dprob": float(dprob.mean()),
            "worst": {"path": str(np.asarray(paths, object)[ok][worst]),
                      "model": probs[ok][worst].tolist(), "reference": ref[worst].tolist()},
        }
    files = {"json": out / "eval.json", "confusion": out / "confusion.png",
             "reliability": out / "reliability.png", "summary": out / "summary.md"}
    files["json"].write_text(json.dumps(report, indent=2) + "\n")
    _plot_confusion(np.asarray(metrics["confusion"]), preset.labels, files["confusion"])
    _plot_reliability(metrics["reliability"], metrics["ece"], files["reliability"])
    files["summary"].write_text(_summary(report, preset.labels))
    return EvalResult(report, files)


def _pyplot() -> Any:
    matplotlib = require("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_confusion(confusion: np.ndarray, classes: tuple[str, ...], path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(1.0 + 0.7 * len(classes), 0.8 + 0.6 * len(classes)))
    ax.imshow(confusion, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    top = confusion.max() or 1
    for (i, j), v in np.ndenumerate(confusion):
        ax.text(j, i, str(v), ha="center", va="center", color="white" if v > top / 2 else "black")
    ax.set_title("confusion matrix")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_reliability(bins: list[dict[str, Any]], ece: float, path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    used = [b for b in bins if b["count"]]
    ax.bar([(b["low"] + b["high"]) / 2 for b in used], [b["accuracy"] for b in used],
           width=[b["high"] - b["low"] for b in used], edgecolor="black", alpha=0.7,
           label="accuracy")
    ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("top-1 confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(f"reliability (ECE {ece:.4f})")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _summary(r: dict[str, Any], classes: tuple[str, ...]) -> str:
    lines = [f"# medtrt eval: {Path(r['model']).name}", "",
             f"- engine: `{r['engine']}`",
             f"- data: `{r['data']}` ({r['images']} images, {len(r['failed'])} unreadable)",
             f"- accuracy **{r['accuracy']:.4f}**, macro F1 {r['macro_f1']:.4f}, "
             f"ECE {r['ece']:.4f}",
             f"- latency {r['latency_ms_per_image']['mean']:.2f} ms/image (p95 "
             f"{r['latency_ms_per_image']['p95']:.2f}) at batch {r['latency_ms_per_image']['batch_size']}, "
             f"{r['images_per_s']:.0f} images/s, decode included"]
    if "reference" in r:
        ref = r["reference"]
        lines.append(f"- vs the PyTorch FP32 reference: top-1 agreement {ref['top1_agreement']:.4f}, "
                     f"max |Δprob| {ref['max_abs_dprob']:.2e}")
    lines += ["", "| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    for name in classes:
        m = r["per_class"][name]
        lines.append(f"| {name} | {m['precision']:.4f} | {m['recall']:.4f} | {m['f1']:.4f} | {m['support']} |")
    return "\n".join(lines) + "\n"
