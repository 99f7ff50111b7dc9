"""Slow NumPy restatement of TensorRT's entropy calibration (as NVIDIA pytorch-quantization's
``_compute_amax_entropy`` writes it), independent of medtrt's C++ implementation."""

from __future__ import annotations

import numpy as np


def entropy_amax(counts: np.ndarray, bin_width: float, start_bin: int = 128,
                 num_quantized_bins: int = 128) -> float:
    bins = counts.astype(np.float64).copy()
    bins[0] = bins[1]
    divergences, arguments = [], []
    for i in range(start_bin, len(bins) + 1):
        space = np.linspace(0, i, num=num_quantized_bins + 1)
        digitized = np.digitize(np.arange(i), space) - 1
        digitized[bins[:i] == 0] = -1
        q_counts = np.zeros(num_quantized_bins)
        members = np.zeros(num_quantized_bins)
        for j, d in enumerate(digitized):
            if d != -1:
                q_counts[d] += bins[j]
                members[d] += 1
        q = np.zeros(i)
        for j, d in enumerate(digitized):
            if d != -1:
                q[j] = q_counts[d] / members[d]
        p = bins[:i].copy()
        p[-1] += bins[i:].sum()
        p /= p.sum()
        q = q / q.sum() if q.sum() > 0 else q
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(p > 0, p * np.log(p / q), 0.0)
        divergences.append(terms.sum() if np.all(q[p > 0] > 0) else np.inf)
        arguments.append(i)
    divergences = np.asarray(divergences)
    last_argmin = len(divergences) - 1 - int(np.argmin(divergences[::-1]))
    return arguments[last_argmin] * bin_width
