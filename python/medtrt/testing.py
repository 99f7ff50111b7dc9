"""Comparison helpers for tests and parity checks: one place that decides and explains."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["PARITY", "AgreementReport", "CloseReport", "LogitReport", "agreement", "assert_agreement",
           "assert_auroc_change", "assert_close", "assert_like_baseline", "assert_logit_parity",
           "auroc", "logit_errors", "outside_bounds", "to_numpy"]


def to_numpy(x: Any) -> np.ndarray:
    """A NumPy view/copy of an array, a CPU/CUDA tensor, or a scalar/sequence."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        return x.detach().cpu().numpy()
    return np.asarray(x)


@dataclass(frozen=True)
class CloseReport:
    max_abs_error: float
    max_rel_error: float
    worst_index: tuple[int, ...]
    mismatched: int
    total: int


def assert_close(
    actual: Any,
    expected: Any,
    *,
    atol: float = 0.0,
    rtol: float = 0.0,
    name: str = "value",
    equal_nan: bool = True,
) -> CloseReport:
    """Assert |actual - expected| <= atol + rtol * |expected| elementwise (in float64).

    On failure the message names the worst element (largest excess over its tolerance): its
    index, both values, absolute and relative error, and how many elements failed. NaN matches
    NaN only when ``equal_nan``; infinities must match exactly. Returns the error summary.
    """
    a = to_numpy(actual)
    e = to_numpy(expected)
    if a.shape != e.shape:
        raise AssertionError(f"{name}: shape {a.shape} differs from expected shape {e.shape}")
    a64 = a.astype(np.float64)
    e64 = e.astype(np.float64)
    a_nan, e_nan = np.isnan(a64), np.isnan(e64)
    both_nan = a_nan & e_nan if equal_nan else np.zeros_like(a_nan)
    same_inf = np.isinf(e64) & (a64 == e64)
    with np.errstate(invalid="ignore", over="ignore"):
        err = np.abs(a64 - e64)
        err[both_nan | same_inf] = 0.0
        err[(a_nan | e_nan) & ~both_nan] = np.inf
        tol = atol + rtol * np.abs(e64)
        tol[~np.isfinite(tol)] = 0.0
        excess = err - tol
        rel = np.where(err == 0.0, 0.0, err / np.maximum(np.abs(e64), np.finfo(np.float64).tiny))
    bad = excess > 0
    total = int(a.size)
    if total == 0:
        return CloseReport(0.0, 0.0, (), 0, 0)
    flat = int(np.argmax(excess)) if bad.any() else int(np.argmax(err))
    worst = tuple(int(i) for i in np.unravel_index(flat, a.shape))
    report = CloseReport(float(err.max()), float(rel.max()), worst, int(bad.sum()), total)
    if bad.any():
        raise AssertionError(
            f"{name}: {report.mismatched} of {total} elements exceed atol={atol:g} + "
            f"rtol={rtol:g}*|expected|; worst at index {worst}: actual {a64[worst]!r}, "
            f"expected {e64[worst]!r}, abs error {err[worst]:.3g}, rel error {rel[worst]:.3g} "
            f"(max abs error {report.max_abs_error:.3g})"
        )
    return report


# --------------------------------------------------------------------------- parity checks
# Shared by tests/parity, `medtrt build`'s accuracy gate and the demo's parity table: each
# returns a report (so callers can print tables) and each assert_* raises with the worst sample.


def _activate(logits: np.ndarray, activation: str) -> np.ndarray:
    from medtrt.reference import activate

    return activate(np.asarray(logits, dtype=np.float64), activation)


def _describe(probs: np.ndarray, activation: str, threshold: float,
              labels: tuple[str, ...] | None) -> str:
    """One prediction in words: the top label (softmax) or the labels above threshold."""
    def name(i: int) -> str:
        return labels[i] if labels and i < len(labels) else f"class {i}"

    if activation == "softmax":
        i = int(np.argmax(probs))
        return f"{name(i)} ({probs[i]:.4f})"
    on = [f"{name(i)} ({probs[i]:.3f})" for i in np.flatnonzero(probs > threshold)]
    return "{" + ", ".join(on) + "}" if on else "{} (no label above threshold)"


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
    """Compare two [N, C] probability arrays (see AgreementReport)."""
    a = to_numpy(candidate_probs).astype(np.float64)
    r = to_numpy(reference_probs).astype(np.float64)
    if a.shape != r.shape or a.ndim != 2 or a.shape[0] == 0:
        raise ValueError(f"agreement: expected two equal non-empty [N, C] arrays; got "
                         f"{a.shape} and {r.shape}")
    if not (np.isfinite(a).all() and np.isfinite(r).all()):
        bad = int(np.flatnonzero(~(np.isfinite(a).all(1) & np.isfinite(r).all(1)))[0])
        raise AssertionError(f"agreement: non-finite probabilities at sample {bad}: candidate "
                             f"{a[bad]}, reference {r[bad]}")
    diff = np.abs(a - r)
    if activation == "softmax":
        same = a.argmax(1) == r.argmax(1)
        decisions = float(same.mean())
    else:
        same_label = (a > threshold) == (r > threshold)  # positive above, as Engine.infer decides
        same = same_label.all(1)
        decisions = float(same_label.mean())
    per_sample = diff.max(1)
    pool = np.flatnonzero(~same) if (~same).any() else np.arange(len(a))
    worst = int(pool[np.argmax(per_sample[pool])])
    return AgreementReport(
        samples=len(a), top1_agreement=float(same.mean()), decision_agreement=decisions,
        max_abs_prob_diff=float(diff.max()), mean_abs_prob_diff=float(diff.mean()),
        worst_index=worst, worst_candidate=_describe(a[worst], activation, threshold, labels),
        worst_reference=_describe(r[worst], activation, threshold, labels),
        disagreements=tuple(int(i) for i in np.flatnonzero(~same)),
        metric="top1" if activation == "softmax" else "label decisions")


def assert_agreement(candidate_probs: Any, reference_probs: Any, *, min_top1: float,
                     max_prob_diff: float, activation: str = "softmax", threshold: float = 0.5,
                     labels: tuple[str, ...] | None = None, name: str = "candidate") -> AgreementReport:
    """Top-1 (or all-label decision) agreement >= ``min_top1`` and max |dprob| <= ``max_prob_diff``.

    The failure message names the worst sample, its index and both predictions.
    """
    rep = agreement(candidate_probs, reference_probs, activation=activation,
                    threshold=threshold, labels=labels)
    problems = []
    if rep.top1_agreement < min_top1:
        problems.append(f"agreement {rep.top1_agreement:.4f} < {min_top1} "
                        f"({len(rep.disagreements)} of {rep.samples} samples differ, e.g. "
                        f"{list(rep.disagreements[:8])})")
    if rep.max_abs_prob_diff > max_prob_diff:
        problems.append(f"max |dprob| {rep.max_abs_prob_diff:.4g} > {max_prob_diff:g}")
    if problems:
        raise AssertionError(f"{name}: " + "; ".join(problems) + f". Worst sample {rep.worst_index}: "
                             f"{name} predicts {rep.worst_candidate}, reference predicts "
                             f"{rep.worst_reference}")
    return rep


@dataclass(frozen=True)
class LogitReport:
    rms_error: float  # RMS of (candidate - reference) logits
    baseline_rms_error: float  # RMS of (baseline - reference): the framework's own error
    ratio: float  # rms_error / baseline_rms_error
    max_abs_error: float
    worst_index: int  # sample with the largest logit error


def logit_errors(candidate: Any, reference: Any, baseline: Any | None = None) -> LogitReport:
    c = to_numpy(candidate).astype(np.float64)
    r = to_numpy(reference).astype(np.float64)
    if c.shape != r.shape:
        raise ValueError(f"logit_errors: shapes {c.shape} and {r.shape} differ")
    d = c - r
    rms = float(np.sqrt(np.mean(d * d)))
    if baseline is None:
        base = float("nan")
    else:
        b = to_numpy(baseline).astype(np.float64)
        if b.shape != r.shape:
            raise ValueError(f"logit_errors: baseline shape {b.shape} differs from {r.shape}")
        base = float(np.sqrt(np.mean((b - r) ** 2)))
    ratio = rms / base if base > 0 else (0.0 if rms == 0 else float("inf"))
    worst = int(np.abs(d).max(1).argmax()) if d.size else 0
    return LogitReport(rms, base, ratio, float(np.abs(d).max()) if d.size else 0.0, worst)


def assert_logit_parity(candidate: Any, reference: Any, baseline: Any, *, k: float,
                        ceiling: float, activation: str = "softmax",
                        labels: tuple[str, ...] | None = None,
                        name: str = "candidate") -> LogitReport:
    """Logit RMS error vs the reference <= k x the baseline's (the framework itself at that
    precision, e.g. PyTorch FP16 vs PyTorch FP32) and max |dlogit| <= ``ceiling``.

    The failure message names the worst sample and the two predictions.
    """
    rep = logit_errors(candidate, reference, baseline)
    problems = []
    if not rep.rms_error <= k * rep.baseline_rms_error:
        problems.append(f"logit RMS error {rep.rms_error:.4g} > {k:g} x baseline "
                        f"{rep.baseline_rms_error:.4g} (ratio {rep.ratio:.2f})")
    if not rep.max_abs_error <= ceiling:
        problems.append(f"max |dlogit| {rep.max_abs_error:.4g} > ceiling {ceiling:g}")
    if problems:
        c = to_numpy(candidate)[rep.worst_index]
        r = to_numpy(reference)[rep.worst_index]
        raise AssertionError(
            f"{name}: " + "; ".join(problems) + f". Worst sample {rep.worst_index}: {name} "
            f"predicts {_describe(_activate(c[None], activation)[0], activation, 0.5, labels)}, "
            f"reference {_describe(_activate(r[None], activation)[0], activation, 0.5, labels)}; "
            f"logits {np.array2string(np.asarray(c), precision=3)} vs "
            f"{np.array2string(np.asarray(r), precision=3)}")
    return rep


def auroc(labels: Any, scores: Any) -> np.ndarray:
    """Per-column ROC AUC of ``scores`` [N, L] for binary ``labels`` [N, L] (ties count half).

    A column with only one class present gives NaN.
    """
    y = to_numpy(labels).astype(bool)
    s = to_numpy(scores).astype(np.float64)
    if y.shape != s.shape or y.ndim != 2:
        raise ValueError(f"auroc: labels {y.shape} and scores {s.shape} must be equal [N, L]")
    out = np.full(y.shape[1], np.nan)
    for j in range(y.shape[1]):
        pos, neg = int(y[:, j].sum()), int((~y[:, j]).sum())
        if pos == 0 or neg == 0:
            continue
        order = np.argsort(s[:, j], kind="mergesort")
        sorted_s = s[order, j]
        ranks = np.empty(len(s))
        # Average ranks over ties (1-based), then the Mann-Whitney U statistic.
        _, first, counts = np.unique(sorted_s, return_index=True, return_counts=True)
        avg = first + (counts + 1) / 2.0
        ranks[order] = np.repeat(avg, counts)
        out[j] = (ranks[y[:, j]].sum() - pos * (pos + 1) / 2.0) / (pos * neg)
    return out


def assert_auroc_change(labels: Any, candidate_probs: Any, reference_probs: Any, *,
                        max_change: float, names: tuple[str, ...] | None = None,
                        name: str = "candidate") -> np.ndarray:
    """Per-label |AUROC(candidate) - AUROC(reference)| <= ``max_change``; returns the changes.

    Labels with one class only in ``labels`` are skipped (NaN); at least one must be scorable.
    """
    a, r = auroc(labels, candidate_probs), auroc(labels, reference_probs)
    change = np.abs(a - r)
    scorable = ~np.isnan(change)
    if not scorable.any():
        raise ValueError("assert_auroc_change: every label has a single class in `labels`")
    worst = int(np.nanargmax(change))
    if change[worst] > max_change:
        label = names[worst] if names else f"label {worst}"
        raise AssertionError(f"{name}: AUROC of {label} changed by {change[worst]:.4f} > "
                             f"{max_change} ({r[worst]:.4f} -> {a[worst]:.4f}); "
                             f"{int((change > max_change).sum())} labels over the limit")
    return change


def _per_sample_errors(x: Any, reference: Any, activation: str) -> tuple[np.ndarray, np.ndarray]:
    """Per sample: max |dlogit| and max |dprob| of ``x`` against ``reference``."""
    a = to_numpy(x).astype(np.float64)
    r = to_numpy(reference).astype(np.float64)
    if a.shape != r.shape or a.ndim != 2:
        raise ValueError(f"expected two equal [N, C] logit arrays; got {a.shape} and {r.shape}")
    dprob = np.abs(_activate(a, activation) - _activate(r, activation)).max(1)
    return np.abs(a - r).max(1), dprob


def outside_bounds(logits: Any, reference: Any, *, ceiling: float, max_prob_diff: float,
                   activation: str = "softmax") -> np.ndarray:
    """Indices of the samples on which ``logits`` break a per-sample bound against
    ``reference``: max |dlogit| > ``ceiling`` or max |dprob| > ``max_prob_diff``.

    Where a model moves a few samples far under any implementation at a precision (PyTorch's own
    fake quantization too), hold the candidate to that baseline on them
    (``assert_like_baseline``) and keep their number small, or the bounds say nothing.
    """
    dlogit, dprob = _per_sample_errors(logits, reference, activation)
    return np.flatnonzero((dlogit > ceiling) | (dprob > max_prob_diff))


def assert_like_baseline(candidate: Any, reference: Any, baseline: Any, samples: Any, *,
                         factor: float = 1.25, activation: str = "softmax",
                         name: str = "candidate") -> None:
    """On each of ``samples``: the candidate's max |dlogit| and max |dprob| against the reference
    are at most ``factor`` x the baseline's on the same sample."""
    idx = np.asarray(samples, dtype=np.int64)
    if idx.size == 0:
        return
    c_logit, c_prob = _per_sample_errors(to_numpy(candidate)[idx], to_numpy(reference)[idx],
                                         activation)
    b_logit, b_prob = _per_sample_errors(to_numpy(baseline)[idx], to_numpy(reference)[idx],
                                         activation)
    rows = zip(idx, c_logit, b_logit, c_prob, b_prob)
    bad = [(int(i), cl, bl, cp, bp) for i, cl, bl, cp, bp in rows
           if cl > factor * bl or cp > factor * bp]
    if bad:
        i, cl, bl, cp, bp = bad[0]
        raise AssertionError(f"{name}: on {len(bad)} sample(s) the error is more than {factor:g} x "
                             f"the baseline's on the same sample, e.g. "
                             f"sample {i}: max |dlogit| {cl:.4g} vs baseline {bl:.4g}, max |dprob| "
                             f"{cp:.4g} vs {bp:.4g}")


# Parity thresholds per precision, against the PyTorch FP32 reference on the same pre-processed
# inputs. k: the artifact's logit RMS error may be at most k x PyTorch's own at that precision
# (FP32: PyTorch FP32 vs float64; FP16: PyTorch FP16; INT8: PyTorch fake-quantized with medtrt's
# recipe, see medtrt.reference.lowp). ceiling: max |dlogit| in units of the reference logits'
# standard deviation. Single-label: top-1 agreement and max |dprob|. Multi-label: per-label
# threshold-decision agreement and per-label AUROC change.
PARITY: dict[str, dict[str, float]] = {
    "fp32": {"k": 4.0, "ceiling": 3e-5, "min_top1": 0.999, "max_prob_diff": 1e-4,
             "min_decisions": 0.999, "max_auroc_change": 0.005},
    "fp16": {"k": 2.0, "ceiling": 0.015, "min_top1": 0.995, "max_prob_diff": 1e-2,
             "min_decisions": 0.995, "max_auroc_change": 0.005},
    "int8": {"k": 3.0, "ceiling": 0.75, "min_top1": 0.99, "max_prob_diff": 0.15,
             "min_decisions": 0.99, "max_auroc_change": 0.005},
}
