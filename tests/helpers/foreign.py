"""ONNX graphs medtrt did not export, made here without downloads: plain ``torch.onnx.export`` of
a small conv classifier (briefly fitted) and of the demo model with a final Sigmoid, and
hand-built graphs that are not image classifiers."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch

from medtrt.data import read_image
from medtrt.ops import resize_normalize


def plain_export(model: torch.nn.Module, example: torch.Tensor, path: Path, **kwargs) -> Path:
    """``torch.onnx.export(model, (example,), path, **kwargs)``, its chatter silenced: what a
    user without medtrt would run (default names, torch's own external data file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(model.eval(), (example,), str(path), **kwargs)
    finally:
        quiet.setLevel(level)
    return path


def small_classifier(classes: int, *, channels: int = 3) -> torch.nn.Module:
    """conv-BN-ReLU-pool x2, global average pool, linear, Softmax: a conv classifier unlike
    DenseNet (no Concat)."""
    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(channels, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(32, classes), nn.Softmax(dim=1))


def fit(model: torch.nn.Module, paths: list[Path], labels: list[int], preset, *,
        steps: int = 120, seed: int = 0) -> torch.nn.Module:
    """A few Adam steps on the pre-processed images (NLL on the model's own probabilities), so
    its predictions are confident enough for top-1 parity; returns it in eval mode."""
    torch.manual_seed(seed)
    x = torch.from_numpy(resize_normalize([read_image(p) for p in paths],
                                          **preset.preprocess_kwargs()))
    y = torch.as_tensor(labels)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    rng = np.random.default_rng(seed)
    model.train()
    for _ in range(steps):
        idx = torch.from_numpy(rng.choice(len(x), size=32, replace=False))
        loss = torch.nn.functional.nll_loss(torch.log(model(x[idx]) + 1e-8), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def reference_probs(model: torch.nn.Module, images: list[np.ndarray], preset) -> np.ndarray:
    """The source model's own outputs (its final Softmax/Sigmoid included) on the images,
    pre-processed as Engine does."""
    x = torch.from_numpy(resize_normalize(images, **preset.preprocess_kwargs()))
    with torch.inference_mode():
        return model.eval()(x).numpy()


def graph(inputs: dict[str, list], outputs: dict[str, list], nodes: list) -> onnx.ModelProto:
    """A float32 graph with these inputs/outputs (name -> shape) and nodes, opset 18."""
    def info(name, shape):
        return onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, shape)

    g = onnx.helper.make_graph(nodes, "g", [info(k, v) for k, v in inputs.items()],
                               [info(k, v) for k, v in outputs.items()])
    return onnx.helper.make_model(g, opset_imports=[onnx.helper.make_opsetid("", 18)])
