"""Assertions for tests and parity checks: one place that decides and explains.

The measurements are ``medtrt.metrics`` (re-exported here for the tests that use them); each
``assert_*`` calls them and turns a miss into an AssertionError that names the worst sample.
Nothing in the product imports this module."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from medtrt.metrics import AgreementReport, LogitReport, agreement, auroc, logit_errors, to_numpy

__all__ = ["PARITY", "AgreementReport", "CloseReport", "LogitReport", "agreement",
           "assert_agreement", "assert_auroc_change", "assert_close", "assert_logit_parity",
           "auroc", "logit_errors", "to_numpy"]


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
# Each assert_* returns the measurement's report (so callers can print tables) and raises with
# the worst sample when a bound is missed.


def assert_agreement(candidate_probs: Any, reference_probs: Any, *, min_top1: float,
                     max_prob_diff: float, activation: str = "softmax", threshold: float = 0.5,
                     labels: tuple[str, ...] | None = None,
                     name: str = "candidate") -> AgreementReport:
    """Top-1 (or all-label decision) agreement >= ``min_top1`` and max |dprob| <=
    ``max_prob_diff``.

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
        raise AssertionError(f"{name}: " + "; ".join(problems) + f". Worst sample "
                             f"{rep.worst_index}: {name} predicts {rep.worst_candidate}, "
                             f"reference predicts {rep.worst_reference}")
    return rep


def assert_logit_parity(candidate: Any, reference: Any, baseline: Any, *, k: float,
                        ceiling: float, activation: str = "softmax",
                        labels: tuple[str, ...] | None = None,
                        name: str = "candidate") -> LogitReport:
    """Logit RMS error vs the reference <= k x the baseline's (the framework itself at that
    precision, e.g. PyTorch FP16 vs PyTorch FP32) and max |dlogit| <= ``ceiling``.

    The failure message names the worst sample and the two predictions.
    """
    rep = logit_errors(candidate, reference, baseline, activation=activation, labels=labels)
    problems = []
    if not rep.rms_error <= k * rep.baseline_rms_error:
        problems.append(f"logit RMS error {rep.rms_error:.4g} > {k:g} x baseline "
                        f"{rep.baseline_rms_error:.4g} (ratio {rep.ratio:.2f})")
    if not rep.max_abs_error <= ceiling:
        problems.append(f"max |dlogit| {rep.max_abs_error:.4g} > ceiling {ceiling:g}")
    if problems:
        c = np.asarray(to_numpy(candidate)[rep.worst_index])
        r = np.asarray(to_numpy(reference)[rep.worst_index])
        raise AssertionError(
            f"{name}: " + "; ".join(problems) + f". Worst sample {rep.worst_index}: {name} "
            f"predicts {rep.worst_candidate}, reference {rep.worst_reference}; logits "
            f"{np.array2string(c, precision=3)} vs {np.array2string(r, precision=3)}")
    return rep


def assert_auroc_change(labels: Any, candidate_probs: Any, reference_probs: Any, *,
                        max_change: float, names: tuple[str, ...] | None = None,
                        name: str = "candidate") -> np.ndarray:
    """Per-label |AUROC(candidate) - AUROC(reference)| <= ``max_change``; returns the changes.

    Labels with one class only in ``labels`` are skipped (NaN); at least one must be scorable.
    """
    a, r = auroc(labels, candidate_probs), auroc(labels, reference_probs)
    change = np.abs(a - r)
    if np.isnan(change).all():
        raise ValueError("assert_auroc_change: every label has a single class in `labels`")
    worst = int(np.nanargmax(change))
    if change[worst] > max_change:
        label = names[worst] if names else f"label {worst}"
        raise AssertionError(f"{name}: AUROC of {label} changed by {change[worst]:.4f} > "
                             f"{max_change} ({r[worst]:.4f} -> {a[worst]:.4f}); "
                             f"{int((change > max_change).sum())} labels over the limit")
    return change


# Parity thresholds per precision, against the PyTorch FP32 reference on the same pre-processed
# inputs. k: the artifact's logit RMS error may be at most k x PyTorch's own at that precision
# (FP32: PyTorch FP32 vs float64; FP16: PyTorch FP16; INT8: PyTorch fake-quantized with medtrt's
# recipe, see tests/helpers/lowp.py). ceiling: max |dlogit| in units of the reference logits'
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
