"""The demo model's train/held-out split, images and PyTorch FP32 reference outputs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medtrt.data import read_image
from medtrt.reference import predict
from medtrt.train import training_split


@dataclass(frozen=True)
class HeldOut:
    train_paths: list[Path]
    images: list[np.ndarray]  # the held-out test split, stored pixels
    labels: np.ndarray
    reference_probs: np.ndarray  # PyTorch FP32 reference path


def held_out(demo_model) -> HeldOut:
    split = training_split(demo_model.metrics)
    images = [read_image(p) for p in split.test.paths]
    ref = predict(demo_model.checkpoint, images)
    return HeldOut(list(split.train.paths), images, np.asarray(split.test.labels), ref.probs)


def onnx_probs(path, images, preset) -> np.ndarray:
    import onnxruntime as ort

    from medtrt.ops import resize_normalize
    from medtrt.reference import activate

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = resize_normalize(images, **preset.preprocess_kwargs())
    return activate(session.run(None, {session.get_inputs()[0].name: x})[0], preset.activation)
