"""Comparison helpers for tests and parity checks: one place that decides and explains."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["CloseReport", "assert_close", "to_numpy"]


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
