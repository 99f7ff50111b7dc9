"""Measurements: how far a candidate's outputs are from a reference's, and how good they are.

Agreement of two probability arrays (top-1 for softmax models, per-label threshold decisions
for sigmoid ones) with the worst sample named; logit errors against a reference and a baseline;
per-label ROC AUC; reliability bins and expected calibration error; the single-label and
multi-label metric sets of ``medtrt eval``. Each function measures and returns; none decides
pass or fail (``medtrt build``, the accuracy gate and ``medtrt.testing`` do). Inputs holding
NaN or infinity are refused with ``medtrt.errors.NonFiniteError`` (a ``ValueError``) that says
which input, how many values and which sample first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from medtrt.errors import NonFiniteError
from medtrt.reference import activate

__all__ = ["AgreementReport", "LogitReport", "agreement", "auroc", "classification_metrics",
           "describe", "logit_errors", "multilabel_metrics", "per_sample_errors",
           "reliability", "require_finite", "to_numpy"]


def to_numpy(x: Any) -> np.ndarray:
    """A NumPy view/copy of an array, a CPU/CUDA tensor, or a scalar/sequence."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def require_finite(x: Any, what: str, *, fix: str = "") -> np.ndarray:
    """``x`` as float64 when every value is finite; else NonFiniteError naming ``what``, the NaN
    and infinite counts, how many samples (rows) hold them and the first one, then ``fix``."""
    a = to_numpy(x).astype(np.float64)
    bad = ~np.isfinite(a)
    if not bad.any():
        return a
    nan = int(np.isnan(a).sum())
    rows = bad.reshape(len(a), -1).any(1) if a.ndim else bad.reshape(1)
    first = int(np.argmax(rows))
    msg = (f"{what} hold non-finite values: {nan} NaN and {int(bad.sum()) - nan} infinite in "
           f"{int(rows.sum())} of {len(rows)} samples (first: sample {first})")
    raise NonFiniteError(msg + (f"; {fix}" if fix else ""))


def _pair(candidate: Any, reference: Any, what: str, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Two finite float64 arrays of one [N, C] shape."""
    a = to_numpy(candidate)
    r = to_numpy(reference)
    if a.shape != r.shape or a.ndim != 2:
        raise ValueError(f"{where}: expected two equal [N, C] {what} arrays; got {a.shape} and "
                         f"{r.shape}")
    return (require_finite(a, f"{where}: the candidate {what}"),
            require_finite(r, f"{where}: the reference {what}"))


def describe(probs: np.ndarray, activation: str, threshold: float = 0.5,
             labels: tuple[str, ...] | None = None) -> str:
    """One prediction in words: the top label (softmax) or the labels above threshold."""
    def name(i: int) -> str:
        return labels[i] if labels and i < len(labels) else f"class {i}"

    if activation == "softmax":
        i = int(np.argmax(probs))
        return f"{name(i)} ({probs[i]:.4f})"
    on = [f"{name(i)} ({probs[i]:.3f})" for i in np.flatnonzero(probs > threshold)]
    return "{" + ", ".join(on) + "}" if on else "{} (no label above threshold)"


# --------------------------------------------------------------------------- agreement


@dataclass(frozen=True)
class AgreementReport:
    """How far a candidate's predictions are from a reference's, per sample."""

    samples: int
    top1_agreement: float  # softmax: argmax equal; sigmoid: every label's decision equal
    decision_agreement: float  # fraction of (sample, label) threshold decisions equal (sigmoid)
    max_abs_prob_diff: float
    mean_abs_prob_diff: float
    worst_index: int  # sample with the largest |dprob| (a disagreeing sample first)
    worst_candidate: str
    worst_reference: str
    disagreements: tuple[int, ...]
    metric: str = "top1"  # the agreement that fits the activation: "top1" or "label decisions"

    @property
    def agreement(self) -> float:
        """top-1 agreement (softmax) or per-label decision agreement (sigmoid)."""
        return self.top1_agreement if self.metric == "top1" else self.decision_agreement

    def row(self) -> dict[str, Any]:
        return {"samples": self.samples, "top1_agreement": self.top1_agreement,
                "decision_agreement": self.decision_agreement,
                "max_abs_prob_diff": self.max_abs_prob_diff,
                "mean_abs_prob_diff": self.mean_abs_prob_diff, "worst_index": self.worst_index,
                "worst_candidate": self.worst_candidate, "worst_reference": self.worst_reference}


def agreement(candidate_probs: Any, reference_probs: Any, *, activation: str = "softmax",
              threshold: float = 0.5, labels: tuple[str, ...] | None = None) -> AgreementReport:
    """Compare two [N, C] probability arrays (see AgreementReport).

    Softmax: top-1 (argmax) agreement. Sigmoid: a label is positive above ``threshold`` (as
    ``Engine.infer`` decides); per-label decision agreement and all-labels-equal per sample.
    """
    a, r = _pair(candidate_probs, reference_probs, "probabilities", "agreement")
    if a.shape[0] == 0:
        raise ValueError("agreement: expected two equal non-empty [N, C] arrays; got 0 samples")
    diff = np.abs(a - r)
    if activation == "softmax":
        same = a.argmax(1) == r.argmax(1)
        decisions = float(same.mean())
    else:
        same_label = (a > threshold) == (r > threshold)
        same = same_label.all(1)
        decisions = float(same_label.mean())
    per_sample = diff.max(1)
    pool = np.flatnonzero(~same) if (~same).any() else np.arange(len(a))
    worst = int(pool[np.argmax(per_sample[pool])])
    return AgreementReport(
        samples=len(a), top1_agreement=float(same.mean()), decision_agreement=decisions,
        max_abs_prob_diff=float(diff.max()), mean_abs_prob_diff=float(diff.mean()),
        worst_index=worst, worst_candidate=describe(a[worst], activation, threshold, labels),
        worst_reference=describe(r[worst], activation, threshold, labels),
        disagreements=tuple(int(i) for i in np.flatnonzero(~same)),
        metric="top1" if activation == "softmax" else "label decisions")


# --------------------------------------------------------------------------- logits


@dataclass(frozen=True)
class LogitReport:
    rms_error: float  # RMS of (candidate - reference) logits
    baseline_rms_error: float  # RMS of (baseline - reference): the framework's own error
    ratio: float  # rms_error / baseline_rms_error
    max_abs_error: float
    worst_index: int  # sample with the largest logit error
    worst_candidate: str = ""  # the two predictions on that sample, in words
    worst_reference: str = ""


def logit_errors(candidate: Any, reference: Any, baseline: Any | None = None, *,
                 activation: str = "softmax",
                 labels: tuple[str, ...] | None = None) -> LogitReport:
    """RMS and max |dlogit| of [N, C] ``candidate`` logits against ``reference``, the RMS of
    ``baseline`` (e.g. PyTorch itself at that precision) against the same reference, and the
    predictions on the worst sample (after ``activation``)."""
    c, r = _pair(candidate, reference, "logits", "logit_errors")
    d = c - r
    rms = float(np.sqrt(np.mean(d * d))) if d.size else 0.0
    if baseline is None:
        base = float("nan")
    else:
        b = require_finite(baseline, "logit_errors: the baseline logits")
        if b.shape != r.shape:
            raise ValueError(f"logit_errors: baseline shape {b.shape} differs from {r.shape}")
        base = float(np.sqrt(np.mean((b - r) ** 2))) if b.size else 0.0
    ratio = rms / base if base > 0 else (0.0 if rms == 0 else float("inf"))
    if not d.size:
        return LogitReport(rms, base, ratio, 0.0, 0)
    worst = int(np.abs(d).max(1).argmax())
    pc, pr = (activate(x[worst:worst + 1], activation)[0] for x in (c, r))
    return LogitReport(rms, base, ratio, float(np.abs(d).max()), worst,
                       describe(pc, activation, 0.5, labels), describe(pr, activation, 0.5, labels))


def per_sample_errors(logits: Any, reference: Any,
                      activation: str = "softmax") -> tuple[np.ndarray, np.ndarray]:
    """Per sample of two [N, C] logit arrays: max |dlogit| and max |dprob| (after
    ``activation``)."""
    a, r = _pair(logits, reference, "logit", "per_sample_errors")
    dprob = np.abs(activate(a, activation) - activate(r, activation)).max(1)
    return np.abs(a - r).max(1), dprob


# --------------------------------------------------------------------------- ranking, calibration


def auroc(labels: Any, scores: Any) -> np.ndarray:
    """Per-column ROC AUC of ``scores`` [N, L] for binary ``labels`` [N, L] (ties count half).

    A column with only one class present gives NaN.
    """
    y = to_numpy(labels).astype(bool)
    s = to_numpy(scores)
    if y.shape != s.shape or y.ndim != 2:
        raise ValueError(f"auroc: labels {y.shape} and scores {s.shape} must be equal [N, L]")
    s = require_finite(s, "auroc: the scores")
    out = np.full(y.shape[1], np.nan)
    for j in range(y.shape[1]):
        pos, neg = int(y[:, j].sum()), int((~y[:, j]).sum())
        if pos == 0 or neg == 0:
            continue
        order = np.argsort(s[:, j], kind="mergesort")
        ranks = np.empty(len(s))
        # Average ranks over ties (1-based), then the Mann-Whitney U statistic.
        _, first, counts = np.unique(s[order, j], return_index=True, return_counts=True)
        ranks[order] = np.repeat(first + (counts + 1) / 2.0, counts)
        out[j] = (ranks[y[:, j]].sum() - pos * (pos + 1) / 2.0) / (pos * neg)
    return out


def reliability(confidence: np.ndarray, outcome: np.ndarray,
                n_bins: int) -> tuple[list[dict[str, Any]], float]:
    """Equal-width confidence bins over [0, 1] (count, observed frequency of ``outcome``, mean
    confidence; for a reliability diagram) and the expected calibration error."""
    confidence = require_finite(confidence, "reliability: the confidences")
    outcome = np.asarray(outcome, np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, n_bins - 1)
    bins, ece = [], 0.0
    for b in range(n_bins):
        members = which == b
        count = int(members.sum())
        acc = float(outcome[members].mean()) if count else None
        conf = float(confidence[members].mean()) if count else None
        if count:
            ece += count / len(confidence) * abs(acc - conf)
        bins.append({"low": float(edges[b]), "high": float(edges[b + 1]), "count": count,
                     "accuracy": acc, "confidence": conf})
    return bins, float(ece)


# --------------------------------------------------------------------------- metric sets


def _nan_to_none(x: float) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)


def _f1(precision: float, recall: float) -> float:
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def multilabel_metrics(targets: np.ndarray, probs: np.ndarray, labels: tuple[str, ...], *,
                       threshold: float = 0.5, ece_bins: int = 15) -> dict[str, Any]:
    """Per label: AUROC, and at ``threshold`` (positive when prob > threshold, as
    ``Engine.infer`` decides) precision/recall/F1 and TP/FN/FP/TN, over the images where that
    label is known (``targets`` 1/0, NaN unknown); macro means over labels with figures; exact
    match (every known label of an image right); ECE over all known (image, label) pairs."""
    targets = np.asarray(targets, np.float64)
    probs = np.asarray(probs)
    if probs.ndim != 2 or probs.shape != targets.shape or probs.shape[1] != len(labels):
        raise ValueError(f"expected targets and probs [N, {len(labels)}]; got {targets.shape}, "
                         f"{probs.shape}")
    probs = require_finite(probs, "multilabel_metrics: the probabilities")
    known = ~np.isnan(targets)
    truth = targets == 1
    decided = probs > threshold
    per_label = {}
    for j, name in enumerate(labels):
        k = known[:, j]
        y, d = truth[k, j], decided[k, j]
        tp, fp = int((y & d).sum()), int((~y & d).sum())
        fn, tn = int((y & ~d).sum()), int((~y & ~d).sum())
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        a = auroc(y[:, None], probs[k, j][:, None])[0] if k.any() else np.nan
        per_label[name] = {"auroc": _nan_to_none(a), "precision": precision, "recall": recall,
                           "f1": _f1(precision, recall), "positives": tp + fn,
                           "negatives": fp + tn, "tp": tp, "fn": fn, "fp": fp, "tn": tn}
    aurocs = [m["auroc"] for m in per_label.values() if m["auroc"] is not None]
    f1s = [m["f1"] for m in per_label.values() if m["positives"]]
    right = (truth == decided) | ~known
    bins, ece = reliability(probs[known], truth[known].astype(np.float64), ece_bins)
    return {
        "images": len(probs),
        "threshold": threshold,
        "macro_auroc": float(np.mean(aurocs)) if aurocs else None,
        "macro_f1": float(np.mean(f1s)) if f1s else 0.0,
        "exact_match": float(right.all(1).mean()) if len(probs) else 0.0,
        "label_accuracy": float(right[known].mean()) if known.any() else 0.0,
        "per_label": per_label,
        "ece": ece,
        "reliability": bins,
    }


def classification_metrics(labels: np.ndarray, probs: np.ndarray, classes: tuple[str, ...], *,
                           ece_bins: int = 15) -> dict[str, Any]:
    """Accuracy, per-class precision/recall/F1/support, confusion matrix (rows: truth, columns:
    prediction) and expected calibration error of the top-1 confidence over ``ece_bins`` equal
    bins, with the per-bin figures for a reliability diagram."""
    labels = np.asarray(labels, np.int64)
    probs = np.asarray(probs)
    if probs.ndim != 2 or len(probs) != len(labels) or probs.shape[1] != len(classes):
        raise ValueError(f"expected probs [N, {len(classes)}] for {len(labels)} labels; got "
                         f"{probs.shape}")
    probs = require_finite(probs, "classification_metrics: the probabilities")
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
        per_class[name] = {"precision": precision, "recall": recall,
                           "f1": _f1(precision, recall), "support": actual}
    correct = pred == labels
    bins, ece = reliability(probs.max(1), correct.astype(np.float64), ece_bins)
    return {
        "images": n,
        "accuracy": float(correct.mean()) if n else 0.0,
        "macro_f1": float(np.mean([m["f1"] for m in per_class.values()])),
        "per_class": per_class,
        "confusion": confusion.tolist(),
        "ece": ece,
        "reliability": bins,
    }
