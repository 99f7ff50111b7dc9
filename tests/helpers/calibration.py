"""A small calibration sample of the demo model, shared by the calibration and ortcheck tests."""

from __future__ import annotations

import onnx

from helpers.heldout import held_out
from medtrt.data import read_image
from medtrt.ops import resize_normalize
from medtrt.precision import plan_qdq
from medtrt.precision.calibrate import collect_histograms


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
