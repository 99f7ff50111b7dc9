"""Calibration samples of the demo model, shared by the calibration, entropy and ortcheck tests,
and the former collection path (before issue #22) that the current one must equal bit for bit."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import onnx

from helpers.heldout import held_out
from medtrt._native import native
from medtrt.data import read_image
from medtrt.ops import resize_normalize
from medtrt.precision import plan_qdq
from medtrt.precision.calibrate import _augmented_session, collect_histograms, run_batches
from medtrt.train import training_split


def calibration_sample(demo_model) -> tuple[list[str], list, list, dict]:
    """64 training images in 4 batches and the |x| histograms of a handful of tensors (input,
    ReLU outputs, a Concat input): (tensors, paths, batches, histograms)."""
    tensors = list(plan_qdq(onnx.load(str(demo_model.onnx))).tensors)
    pick = ["image", tensors[20], tensors[60], tensors[100]]
    paths = held_out(demo_model).train_paths[:64]
    batches = [resize_normalize([read_image(p) for p in paths[i:i + 16]], 64)
               for i in range(0, 64, 16)]
    hists = collect_histograms(demo_model.onnx, pick, lambda: iter(batches))
    return pick, paths, batches, hists


@functools.cache
def _all_tensors_sample(onnx_path: Path, paths: tuple[Path, ...]) -> tuple[list[str], list, dict]:
    tensors = list(plan_qdq(onnx.load(str(onnx_path))).tensors)
    batches = [resize_normalize([read_image(p) for p in paths[i:i + 16]], 64)
               for i in range(0, len(paths), 16)]
    return tensors, batches, collect_histograms(onnx_path, tensors, lambda: iter(batches))


def real_histograms(demo_model, n: int = 32) -> tuple[list[str], list, dict]:
    """Every tensor of the Q/DQ plan (241 on the demo model) over ``n`` training images in
    batches of 16: (tensors, batches, histograms). Computed once per process."""
    paths = training_split(demo_model.metrics).train.paths[:n]
    return _all_tensors_sample(Path(demo_model.onnx), tuple(paths))


def former_histograms(onnx_path, tensors, batches, bins: int = 2048) -> dict:
    """collect_histograms as it was before issue #22: fresh outputs from ``session.run`` for
    each batch and the two-pass fill (``AbsHistogram.add_reference``)."""
    c = native()
    session = _augmented_session(Path(onnx_path), tensors)
    hists = {t: c.AbsHistogram(bins) for t in tensors}
    for batch in batches:
        for outputs in run_batches(session, batch, len(batch), tensors):
            c.histogram_add_many([(hists[t], np.ascontiguousarray(o, dtype=np.float32))
                                  for t, o in zip(tensors, outputs)], reference=True)
    return hists


def histogram_state(h) -> tuple:
    """Everything a histogram holds, for exact comparison."""
    return (h.counts.tobytes(), h.range, h.max_abs, h.total, h.nan_count, h.merges)
