"""``medtrt eval``: accuracy, per-class metrics, calibration and agreement with a reference.

Runs any model ``medtrt.Engine`` opens (bundle, ONNX, checkpoint) and writes ``eval.json``,
``confusion.png``, ``reliability.png`` and ``summary.md``.

- Single-label (softmax) presets read a MedNIST-layout folder (one sub-folder per class):
  accuracy, per-class precision/recall/F1, confusion matrix, ECE of the top-1 confidence.
- Multi-label (sigmoid) presets read a CSV label table (``medtrt.data.labels``; default
  ``DATA/labels.csv``): per-label AUROC, and precision/recall/F1 and TP/FN/FP/TN at the preset's
  decision threshold; macro AUROC and F1; ECE of the per-label probabilities. Unknown labels
  (-1 / empty) are left out of that label's figures.

The figures themselves are ``medtrt.metrics``. An image the model gives NaN or infinite
probabilities is listed with the unreadable ones, not counted.
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
from medtrt.data import iter_images, read_label_table, scan_folder
from medtrt.metrics import agreement, classification_metrics, multilabel_metrics
from medtrt.models import load
from medtrt.reference import predict
from medtrt.runtime import Engine

__all__ = ["evaluate", "EvalResult"]


@dataclass(frozen=True)
class EvalResult:
    report: dict[str, Any]
    files: dict[str, Path]


@dataclass(frozen=True)
class _Dataset:
    paths: list[Path]
    truth: np.ndarray  # class index per image, or [N, L] targets (1, 0, NaN unknown)
    failures: list[dict[str, str]]
    missing_labels: tuple[str, ...] = ()  # model labels the label table does not annotate
    missing_files: int = 0  # label table rows whose file does not exist


@dataclass(frozen=True)
class _Outputs:
    probs: np.ndarray  # [N, C]; NaN where the model gave no output
    ok: np.ndarray  # [N] bool: the model gave this image finite probabilities
    reference: np.ndarray | None  # the reference checkpoint's probabilities, when asked for
    failures: list[dict[str, str]]
    latencies: list[float]  # seconds per image, per batch
    seconds: float


def evaluate(model: str | os.PathLike[str], data: str | os.PathLike[str], *,
             labels: str | os.PathLike[str] | None = None,
             reference: str | os.PathLike[str] | None = None, out: str | os.PathLike[str] = "eval",
             backend: str = "auto", device: Any = 0, batch_size: int = 64,
             progress: Callable[[int, int], None] | None = None,
             preset: Any = None) -> EvalResult:
    """Evaluate ``model`` on ``data``; see the module docstring.

    ``labels``: the CSV label table of a multi-label model (default ``data/labels.csv``; image
    paths in it are relative to ``data``). ``reference``: a checkpoint whose PyTorch FP32
    outputs the model is compared with on the same images. ``preset``: for an ONNX file medtrt
    did not export (see ``medtrt.Engine``). Unreadable or missing images are listed, not fatal.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with Engine(model, backend=backend, device=device, preset=preset) as engine:
        preset = engine.preset
        ds = _dataset(data, labels, preset)
        ref_model = _reference_model(reference, preset) if reference is not None else None
        outputs = _run(engine, ds.paths, ref_model, batch_size, progress)
        engine_info = {"model": str(model), "engine": repr(engine), "backend": engine.backend,
                       "precision": engine.precision}
    multilabel = preset.activation != "softmax"
    ok = outputs.ok
    if multilabel:
        metrics = multilabel_metrics(ds.truth[ok], outputs.probs[ok], preset.labels,
                                     threshold=preset.threshold)
        metrics["labels_not_in_table"] = list(ds.missing_labels)
    else:
        metrics = classification_metrics(ds.truth[ok], outputs.probs[ok], preset.labels)
    lat = np.asarray(outputs.latencies) * 1e3
    report: dict[str, Any] = {
        **engine_info, "task": "multi-label" if multilabel else "single-label",
        "data": str(data), **metrics,
        "images": len(ds.paths) + ds.missing_files,
        "evaluated": metrics["images"], "failed": ds.failures + outputs.failures,
        "latency_ms_per_image": {"batch_size": batch_size, "mean": float(lat.mean()),
                                 "p50": float(np.percentile(lat, 50)),
                                 "p95": float(np.percentile(lat, 95)),
                                 "p99": float(np.percentile(lat, 99))},
        "images_per_s": len(ds.paths) / outputs.seconds,
    }
    if reference is not None:
        report["reference"] = _compare_with_reference(
            reference, [p for p, good in zip(ds.paths, ok) if good], outputs.probs[ok],
            outputs.reference[ok], metrics, preset.labels, multilabel,
            ds.truth[ok] if multilabel else None, preset.threshold)
    return EvalResult(report, _write(report, preset, out))


def _dataset(data: str | os.PathLike[str], labels: str | os.PathLike[str] | None,
             preset: Any) -> _Dataset:
    """The images to evaluate and their truth: a label table (multi-label presets) or class
    folders (single-label)."""
    if preset.activation != "softmax":
        table = read_label_table(labels if labels is not None else Path(data) / "labels.csv",
                                 preset.labels, root=data)
        failures = [{"path": str(x), "error": "listed in the label table; file not found"}
                    for x in table.missing_files]
        return _Dataset(list(table.paths), table.targets, failures, tuple(table.missing_labels),
                        len(table.missing_files))
    if labels is not None:
        raise ValueError(f"a label table is for multi-label models; the {preset.name!r} "
                         "preset is single-label and reads class folders (drop --labels)")
    paths, truth = _class_folder(data, preset)
    return _Dataset(paths, truth, [])


def _reference_model(reference: str | os.PathLike[str], preset: Any) -> tuple[Any, Any]:
    """The reference checkpoint's model and preset; its labels must be the model's."""
    ref_model, ref_preset = load(reference)
    if tuple(ref_preset.labels) != tuple(preset.labels):
        raise ValueError(f"reference {reference} predicts {list(ref_preset.labels)}; the "
                         f"model predicts {list(preset.labels)}: pass the checkpoint the "
                         "model was exported from")
    return ref_model, ref_preset


def _run(engine: Any, paths: list[Path], ref: tuple[Any, Any] | None, batch_size: int,
         progress: Callable[[int, int], None] | None) -> _Outputs:
    """The model's (and the reference's) probabilities on ``paths``, in batches; each image is
    decoded once. Unreadable images, failed items and non-finite outputs are listed."""
    n = len(paths)
    probs = np.full((n, engine.preset.num_classes), np.nan, np.float32)
    ref_probs = probs.copy() if ref is not None else None
    done = np.zeros(n, bool)  # the model gave this image an output
    failures: list[dict[str, str]] = []
    latencies: list[float] = []
    start = time.perf_counter()
    for lo in range(0, n, batch_size):
        chunk = paths[lo:lo + batch_size]
        t0 = time.perf_counter()
        read = list(iter_images(chunk))
        good = [lo + i for i, x in enumerate(read) if x.ok]
        failures += [{"path": str(x.path), "error": str(x.error)} for x in read if not x.ok]
        images = [x.image for x in read if x.ok]
        if images:
            r = engine.infer(images, k=1, return_probs=True)
            probs[good] = r.probs
            done[good] = True
            for x in r.errors:
                done[good[x.index]] = False
                failures.append({"path": str(paths[good[x.index]]), "error": str(x.error)})
        latencies.append((time.perf_counter() - t0) / len(chunk))
        if ref is not None and images:
            ref_probs[good] = predict(ref[0], images, preset=ref[1]).probs
        if progress:
            progress(min(lo + batch_size, n), n)
    seconds = time.perf_counter() - start
    finite = np.isfinite(probs).all(1)
    failures += [{"path": str(paths[i]), "error": "the model's probabilities hold NaN or infinity "
                  "(an overflow at its precision?); left out of the metrics"}
                 for i in np.flatnonzero(done & ~finite)]
    return _Outputs(probs, done & finite, ref_probs, failures, latencies, seconds)


def _write(report: dict[str, Any], preset: Any, out: Path) -> dict[str, Path]:
    """eval.json, the confusion and reliability plots and summary.md in ``out``."""
    files = {"json": out / "eval.json", "confusion": out / "confusion.png",
             "reliability": out / "reliability.png", "summary": out / "summary.md"}
    files["json"].write_text(json.dumps(report, indent=2) + "\n")
    if report["task"] == "multi-label":
        _plot_label_counts(report["per_label"], files["confusion"])
        _plot_reliability(report["reliability"], report["ece"], files["reliability"],
                          xlabel="predicted probability (all labels)", ylabel="observed frequency")
        files["summary"].write_text(_summary_multilabel(report, preset.labels))
    else:
        _plot_confusion(np.asarray(report["confusion"]), preset.labels, files["confusion"])
        _plot_reliability(report["reliability"], report["ece"], files["reliability"])
        files["summary"].write_text(_summary(report, preset.labels))
    return files


def _class_folder(data: str | os.PathLike[str], preset: Any) -> tuple[list[Path], np.ndarray]:
    folder = scan_folder(data)
    unknown = [c for c in folder.classes if c not in preset.labels]
    if unknown:
        raise ValueError(f"{data}: class folders {unknown} are not labels of the model "
                         f"({list(preset.labels)}); rename them or evaluate another model")
    to_model = np.array([preset.labels.index(c) for c in folder.classes])
    return list(folder.paths), to_model[np.asarray(folder.labels, np.int64)]


def _compare_with_reference(reference: str | os.PathLike[str], paths: list[Path], probs: np.ndarray,
                            ref: np.ndarray, metrics: dict[str, Any], labels: tuple[str, ...],
                            multilabel: bool, targets: np.ndarray | None,
                            threshold: float) -> dict[str, Any]:
    """Agreement with the PyTorch FP32 reference's ``ref`` probabilities on the same images:
    top-1 (single-label) or threshold decisions and per-label AUROC change against the model's
    ``metrics`` (multi-label), and max |Δprob| with the worst image."""
    rep = agreement(probs, ref, activation="sigmoid" if multilabel else "softmax",
                    threshold=threshold)
    worst = int(np.abs(probs - ref).max(1).argmax())
    out: dict[str, Any] = {"checkpoint": str(reference)}
    if not multilabel:
        out["top1_agreement"] = rep.top1_agreement
    else:
        out["decision_agreement"] = rep.decision_agreement
        out["images_with_all_decisions_equal"] = rep.top1_agreement
        theirs = multilabel_metrics(targets, ref, labels, threshold=threshold)["per_label"]
        change = [None if metrics["per_label"][n]["auroc"] is None or theirs[n]["auroc"] is None
                  else metrics["per_label"][n]["auroc"] - theirs[n]["auroc"] for n in labels]
        out["auroc_change"] = change
        defined = [abs(c) for c in change if c is not None]
        out["max_abs_auroc_change"] = max(defined) if defined else None
    out.update({
        "max_abs_dprob": rep.max_abs_prob_diff,
        "mean_abs_dprob": rep.mean_abs_prob_diff,
        "worst": {"path": str(paths[worst]), "model": probs[worst].tolist(),
                  "reference": ref[worst].tolist()},
    })
    return out


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


def _plot_label_counts(per_label: dict[str, dict[str, Any]], path: Path) -> None:
    """Multi-label 'confusion': TP / FN / FP / TN per label, shaded by share of the label's images."""
    plt = _pyplot()
    names = list(per_label)
    cols = ("tp", "fn", "fp", "tn")
    counts = np.array([[per_label[n][c] for c in cols] for n in names], np.float64)
    share = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(5.0, 0.8 + 0.35 * len(names)))
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(4), ["TP", "FN", "FP", "TN"])
    ax.set_yticks(range(len(names)), names)
    for (i, j), v in np.ndenumerate(counts):
        ax.text(j, i, str(int(v)), ha="center", va="center", fontsize=8,
                color="white" if share[i, j] > 0.5 else "black")
    ax.set_title("decisions per label at the threshold")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_reliability(bins: list[dict[str, Any]], ece: float, path: Path, *,
                      xlabel: str = "top-1 confidence", ylabel: str = "accuracy") -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    used = [b for b in bins if b["count"]]
    ax.bar([(b["low"] + b["high"]) / 2 for b in used], [b["accuracy"] for b in used],
           width=[b["high"] - b["low"] for b in used], edgecolor="black", alpha=0.7,
           label=ylabel)
    ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
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


def _summary_multilabel(r: dict[str, Any], labels: tuple[str, ...]) -> str:
    macro = "n/a" if r["macro_auroc"] is None else f"{r['macro_auroc']:.4f}"
    lines = [f"# medtrt eval: {Path(r['model']).name}", "",
             f"- engine: `{r['engine']}`",
             f"- data: `{r['data']}` ({r['images']} images, {len(r['failed'])} unreadable or missing)",
             f"- macro AUROC **{macro}**, macro F1 {r['macro_f1']:.4f} at threshold "
             f"{r['threshold']:g}, exact match {r['exact_match']:.4f}, ECE {r['ece']:.4f}",
             f"- latency {r['latency_ms_per_image']['mean']:.2f} ms/image (p95 "
             f"{r['latency_ms_per_image']['p95']:.2f}) at batch {r['latency_ms_per_image']['batch_size']}, "
             f"{r['images_per_s']:.0f} images/s, decode included"]
    if r.get("labels_not_in_table"):
        lines.append(f"- not annotated in the label table: {', '.join(r['labels_not_in_table'])}")
    if "reference" in r:
        ref = r["reference"]
        change = "n/a" if ref["max_abs_auroc_change"] is None else f"{ref['max_abs_auroc_change']:.4f}"
        lines.append(f"- vs the PyTorch FP32 reference: decision agreement {ref['decision_agreement']:.4f}, "
                     f"max per-label AUROC change {change}, max |Δprob| {ref['max_abs_dprob']:.2e}")
    lines += ["", "| label | AUROC | precision | recall | F1 | positives | negatives |",
              "|---|---|---|---|---|---|---|"]
    for name in labels:
        m = r["per_label"][name]
        a = "n/a" if m["auroc"] is None else f"{m['auroc']:.4f}"
        lines.append(f"| {name} | {a} | {m['precision']:.4f} | {m['recall']:.4f} | {m['f1']:.4f} | "
                     f"{m['positives']} | {m['negatives']} |")
    return "\n".join(lines) + "\n"
