"""medtrt's entropy thresholds against ONNX Runtime's entropy calibrator, difference by difference.

Both claim the KL-divergence method of NVIDIA's 2017 INT8 talk, yet on ReLU outputs their
thresholds differ by 2x. ``onnxruntime_entropy`` runs ONNX Runtime's ``EntropyCalibrater`` on
exactly medtrt's tensors and batches and keeps its signed histograms. ``ort_threshold`` restates
ONNX Runtime's threshold search (read from ``onnxruntime/quantization/calibrate.py``,
``get_entropy_threshold``, and ``quant_utils.smooth_distribution``; same float32 arithmetic)
with its choices that differ from TensorRT's method made switchable, and ``decompose`` turns
them off one at a time on ONNX Runtime's own histograms:

0. ``ort``          -- all as ONNX Runtime does it; must reproduce its thresholds exactly;
1. ``exact_q``      -- Q built as TensorRT's method builds it: every bin in one of the
                       quantized groups (ONNX Runtime lumps the 2i+1 mod 256 leftover bins into
                       the last group and gives them no Q), group counts shared in floating
                       point (ONNX Runtime truncates them to int64) over the group's non-empty
                       bins only (ONNX Runtime also puts Q on empty ones);
2. ``zero_spike``   -- and the bin holding the exact zeros replaced by its neighbour, as TensorRT's
                       method does (ONNX Runtime keeps the spike of ReLU zeros);
3. ``abs``          -- the signed histogram folded to |x| and searched by medtrt's C++ core
                       (candidates from bin 128, no smoothing): TensorRT's method on ONNX
                       Runtime's histogram. What still differs from medtrt is only the histogram
                       layout (ONNX Runtime keeps its first batch's bin width and adds bins;
                       medtrt keeps 2048 bins and merges pairs as the range grows).

Each step's thresholds are compared with medtrt's within a tolerance in bin widths.

Research code outside the package: tools/bench_calibration.py (beside it) and
tests/tools/test_ortcheck.py import it.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from medtrt._lazy import require
from medtrt._native import native

__all__ = ["OrtEntropy", "SignedHistogram", "STEPS", "decompose", "fold_abs", "onnxruntime_entropy",
           "ort_threshold"]

STEPS = ("ort", "exact_q", "zero_spike", "abs")
_EPS = 0.0001  # ONNX Runtime's smoothing epsilon


@dataclass(frozen=True)
class SignedHistogram:
    """One tensor's histogram as ONNX Runtime keeps it: counts over [-T, T] (T = the largest |x|
    of its first batch, widened by whole bins when a later batch exceeds it), and min/max seen."""

    counts: np.ndarray  # int64, n bins (n even)
    edges: np.ndarray   # n + 1 edges, dtype of the activations (float32)
    min: float
    max: float

    @property
    def width(self) -> float:
        return float(self.edges[1] - self.edges[0])


@dataclass
class OrtEntropy:
    amax: dict[str, float]                   # ONNX Runtime's threshold, max(|lo|, |hi|)
    bin_width: dict[str, float]
    seconds: float                           # its whole calibration (collection + search)
    histograms: dict[str, SignedHistogram]


def onnxruntime_entropy(onnx_path: str | os.PathLike[str], tensors: Sequence[str],
                        batches: Sequence[np.ndarray], *, input_name: str = "image") -> OrtEntropy:
    """ONNX Runtime's own entropy calibration of exactly ``tensors`` on ``batches`` with bin
    settings matching medtrt's (4096 signed bins = 2048 per sign, 256 quantized = 128 per sign).
    Slow: its threshold search is pure Python."""
    require("onnxruntime")
    from onnxruntime.quantization import CalibrationDataReader
    from onnxruntime.quantization.calibrate import EntropyCalibrater

    wanted = set(tensors)

    class Exactly(EntropyCalibrater):
        def select_tensors_to_calibrate(self, model):  # the same tensors as medtrt, no more
            found, infos = super().select_tensors_to_calibrate(model)
            return {t for t in found if t in wanted}, infos

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(batches)

        def get_next(self):
            b = next(self.it, None)
            return None if b is None else {input_name: b}

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        cal = Exactly(str(onnx_path), op_types_to_calibrate=[],
                      augmented_model_path=f"{tmp}/aug.onnx", symmetric=True, num_bins=4096,
                      num_quantized_bins=256)
        cal.augment_graph()
        cal.create_inference_session()
        cal.collect_data(Reader())
        data = cal.compute_data()
        seconds = time.perf_counter() - t0
    amax = {t: float(max(abs(float(data[t].range_value[0])), abs(float(data[t].range_value[1]))))
            for t in tensors if t in data}
    hists = {t: SignedHistogram(np.asarray(h[0], dtype=np.int64), np.asarray(h[1]), float(h[2]),
                                float(h[3]))
             for t, h in cal.collector.histogram_dict.items() if t in wanted}
    return OrtEntropy(amax, {t: h.width for t, h in hists.items()}, seconds, hists)


def _smooth(p: np.ndarray) -> np.ndarray | None:
    """ONNX Runtime's smoothing: zeros become eps, the non-zero bins pay for it (float32)."""
    zero = (p == 0).astype(np.float32)
    nonzero = (p != 0).astype(np.float32)
    n_zero = zero.sum()
    n_nonzero = p.size - n_zero
    if not n_nonzero:
        return None
    out = p.astype(np.float32)
    out += _EPS * zero + (-(_EPS * float(n_zero) / float(n_nonzero))) * nonzero
    return out


def _kl(p: np.ndarray, q: np.ndarray) -> np.float32:
    """KL(p || q) of two unnormalised float32 distributions, in float32 like ONNX Runtime."""
    p = p / np.sum(p)
    q = q / np.sum(q)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = p * np.log(p / q)
    terms[(p == 0) & (q >= 0)] = 0
    terms[~((p > 0) & (q > 0))] = np.inf
    return np.float32(np.sum(terms))


def _q_ort(sliced: np.ndarray, nonzero: np.ndarray, groups: int) -> np.ndarray:
    size = sliced.size
    per = size // groups
    q = np.zeros(size, dtype=np.int64)
    if per == 0:
        return q
    body = groups * per
    counts = sliced[:body].reshape(groups, per).sum(axis=1)
    counts[-1] += sliced[body:].sum()
    members = nonzero[:body].reshape(groups, per).sum(axis=1)
    share = np.where(members > 0, counts // np.maximum(members, 1), 0)  # int64 truncation
    q[:body] = np.repeat(share, per)  # on every bin of the group, empty or not
    return q


def _q_exact(sliced: np.ndarray, nonzero: np.ndarray, groups: int) -> np.ndarray:
    size = sliced.size
    group = (np.arange(size) * groups) // size  # every bin in exactly one group
    counts = np.bincount(group, weights=sliced.astype(np.float64), minlength=groups)
    members = np.bincount(group, weights=nonzero.astype(np.float64), minlength=groups)
    share = np.divide(counts, members, out=np.zeros(groups), where=members > 0)
    return np.where(nonzero, share[group], 0.0)


def ort_threshold(h: SignedHistogram, quantized_bins: int = 256, *, exact_q: bool = False,
                  replace_zero_spike: bool = False) -> float:
    """ONNX Runtime's symmetric entropy threshold (max(|lo|, |hi|)) for one signed histogram;
    with both switches off it reproduces ``EntropyCalibrater`` exactly."""
    counts = h.counts.astype(np.int64).copy()
    n = counts.size
    zero = n // 2
    if replace_zero_spike and zero + 1 < n:
        counts[zero] = counts[zero + 1]
    half = quantized_bins // 2
    build_q = _q_exact if exact_q else _q_ort
    cumulative = np.concatenate([[0], np.cumsum(counts)])
    best, best_i = np.float32(np.inf), None
    for i in range(half, zero + 1):
        start, end = zero - i, min(zero + i + 1, n)
        sliced = counts[start:end]
        p = sliced.copy()
        p[0] += cumulative[start]
        p[-1] += cumulative[n] - cumulative[end]
        nonzero = p != 0
        q = build_q(sliced, nonzero, quantized_bins)
        ps, qs = _smooth(p), _smooth(q)
        div = np.float32(np.inf) if ps is None or qs is None else _kl(ps, qs)
        if div < best:  # first minimum, as np.argmin picks
            best, best_i = div, i
    if best_i is None:  # every candidate infinite: ONNX Runtime's argmin picks the first
        best_i = half
    lo = max(float(h.edges[zero - best_i]), h.min)
    hi = min(float(h.edges[min(zero + best_i + 1, n)]), h.max)
    return max(abs(lo), abs(hi))


def fold_abs(h: SignedHistogram) -> Any:
    """The signed histogram folded to a medtrt |x| histogram (``medtrt._C.AbsHistogram``)."""
    counts = h.counts.astype(np.uint64)
    zero = counts.size // 2
    folded = counts[zero:] + counts[:zero][::-1]
    top = float(h.edges[-1])
    seen = min(max(abs(h.min), abs(h.max)), top)
    return native().AbsHistogram.from_parts(folded, top, seen, 0, 0)


def _step_amax(step: str, h: SignedHistogram, start_bin: int, quantized_bins: int) -> float:
    if step == "ort":
        return ort_threshold(h, 2 * quantized_bins)
    if step == "exact_q":
        return ort_threshold(h, 2 * quantized_bins, exact_q=True)
    if step == "zero_spike":
        return ort_threshold(h, 2 * quantized_bins, exact_q=True, replace_zero_spike=True)
    if step == "abs":
        return float(native().entropy_amax(fold_abs(h), start_bin, quantized_bins)[0])
    raise ValueError(f"step must be one of {STEPS}; got {step!r}")


def decompose(ort: OrtEntropy, ours: dict[str, float], our_width: dict[str, float], *,
              relu_like: dict[str, bool] | None = None, tolerance_bins: float = 3.0,
              start_bin: int = 128, quantized_bins: int = 128) -> dict[str, Any]:
    """Per step of the module docstring: how many of medtrt's thresholds it meets within
    ``tolerance_bins`` (bin width = the coarser of the two histograms), the median signed
    relative difference (medtrt - step) / step, and per tensor the step's threshold. Step
    ``ort`` also reports how many of ONNX Runtime's actual thresholds it reproduces."""
    tensors = [t for t in ours if t in ort.histograms]
    relu_like = relu_like or {}
    per_tensor: dict[str, dict[str, float]] = {t: {} for t in tensors}
    steps: dict[str, Any] = {}
    for step in STEPS:
        within, signed, signed_relu, rel_abs = [], [], [], []
        for t in tensors:
            h = ort.histograms[t]
            a = _step_amax(step, h, start_bin, quantized_bins)
            per_tensor[t][step] = a
            width = max(our_width[t], h.width)
            within.append(abs(ours[t] - a) <= tolerance_bins * width)
            rel = (ours[t] - a) / max(a, 1e-12)
            rel_abs.append(abs(rel))
            (signed_relu if relu_like.get(t) else signed).append(rel)
        steps[step] = {
            "fraction_within_tolerance": float(np.mean(within)) if within else 0.0,
            "median_signed_rel_diff_relu": statistics.median(signed_relu) if signed_relu else None,
            "median_signed_rel_diff_other": statistics.median(signed) if signed else None,
            "median_abs_rel_diff": statistics.median(rel_abs) if rel_abs else None,
        }
    reproduced = [abs(per_tensor[t]["ort"] - ort.amax[t]) <= 1e-6 * max(ort.amax[t], 1e-12)
                  for t in tensors if t in ort.amax]
    steps["ort"]["fraction_reproducing_onnxruntime"] = (float(np.mean(reproduced)) if reproduced
                                                        else 0.0)
    return {"tolerance_bins": tolerance_bins, "tensors": len(tensors), "steps": steps,
            "per_tensor": per_tensor}
