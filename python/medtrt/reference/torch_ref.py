"""The PyTorch reference path: stored images -> float64 NumPy pre-processing -> model -> top-k.

Pre-processing goes through medtrt.reference.preprocess (not the compiled op), so this path is
an independent check of everything the fast paths do.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medtrt._lazy import require
from medtrt.data import read_image
from medtrt.models import load
from medtrt.models.presets import Preset
from medtrt.reference.numpy_ref import activate, preprocess

__all__ = ["Prediction", "predict", "rank"]


@dataclass(frozen=True)
class Prediction:
    """Outputs for a batch of B images and a preset with C labels."""

    logits: np.ndarray  # float32 [B, C]
    probs: np.ndarray  # float64 [B, C]: softmax or sigmoid of the logits
    indices: np.ndarray  # int64 [B, k], best first, ties by lower index
    scores: np.ndarray  # float64 [B, k]
    preset: Preset

    @property
    def labels(self) -> list[list[str]]:
        return [[self.preset.labels[i] for i in row] for row in self.indices]

    @property
    def top1(self) -> np.ndarray:
        return self.indices[:, 0]


def rank(probs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices, scores) of the k best per row; equal scores in ascending index order."""
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(probs, order, axis=1)


def predict(model_or_checkpoint: Any, images: Sequence[Any], *, preset: Preset | None = None,
            k: int | None = None, batch_size: int = 64, device: str = "cpu") -> Prediction:
    """Run the reference path.

    Args:
        model_or_checkpoint: a checkpoint path (preset read from it) or a torch module
            (then ``preset`` is required).
        images: stored images (arrays as for resize_normalize) or file paths (read with
            medtrt.data.read_image; an unreadable file raises ImageReadError).
        k: top-k size; default min(5, number of labels).
        batch_size: images per forward pass.
        device: torch device of the model.
    """
    torch = require("torch")
    if isinstance(model_or_checkpoint, (str, os.PathLike)):
        model, loaded = load(model_or_checkpoint)
        preset = preset or loaded
    else:
        model = model_or_checkpoint
        if preset is None:
            raise ValueError("predict: pass preset= with a torch module (or pass a checkpoint path)")
    if len(images) == 0:
        raise ValueError("predict: expected at least one image; got an empty batch")
    k = min(5, preset.num_classes) if k is None else k
    if not 1 <= k <= preset.num_classes:
        raise ValueError(f"predict: k must be in [1, {preset.num_classes}]; got {k}")
    model = model.to(device).eval()
    kwargs = preset.preprocess_kwargs()
    out_size = kwargs.pop("out_size")
    logits = []
    for start in range(0, len(images), batch_size):
        chunk = [_load(x) for x in images[start:start + batch_size]]
        x = torch.from_numpy(preprocess(chunk, out_size, **kwargs).astype(np.float32))
        with torch.inference_mode():
            logits.append(model(x.to(device)).float().cpu().numpy())
    all_logits = np.concatenate(logits)
    probs = activate(all_logits, preset.activation)
    indices, scores = rank(probs, k)
    return Prediction(all_logits, probs, indices, scores, preset)


def _load(x: Any) -> np.ndarray:
    if isinstance(x, (str, os.PathLike)):
        return read_image(Path(x))
    return np.asarray(x)
