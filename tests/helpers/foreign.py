"""ONNX graphs medtrt did not export, made here without downloads: plain ``torch.onnx.export`` of
a small conv classifier (briefly fitted), of the demo model with a final Sigmoid and of a MONAI
ResNet, and hand-built graphs that are not image classifiers; the images, calibration folder,
builds (TensorRT-RTX on the CPU) and Engine runs that tests/test_foreign.py and
tests/test_architectures.py share."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch

from medtrt import Engine
from medtrt.build import BuildOptions, BuildResult, build
from medtrt.data import read_image
from medtrt.ops import resize_normalize
from medtrt.precision import CalibrationConfig
from medtrt.testing import PARITY, assert_agreement


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


def resnet_classifier(classes: int) -> torch.nn.Module:
    """MONAI's ResNet in the resnet10 layout (one basic block per stage: an identity shortcut in
    the first stage, a 1x1 Conv + BN projection shortcut in the other three) at a quarter of its
    width, for 1×64×64 images (stride-2 stem), then Softmax: a residual network unlike DenseNet,
    cheap enough to fit on two CPU cores in seconds."""
    from monai.networks.nets import ResNet

    net = ResNet(block="basic", layers=[1, 1, 1, 1], block_inplanes=[16, 32, 64, 128],
                 spatial_dims=2, n_input_channels=1, conv1_t_stride=2, num_classes=classes)
    return torch.nn.Sequential(net, torch.nn.Softmax(dim=1))


def fit(model: torch.nn.Module, paths: list[Path], labels: list[int], preset, *,
        steps: int = 120, seed: int = 0) -> torch.nn.Module:
    """A few Adam steps on the pre-processed images (NLL on the model's own probabilities), so
    its predictions are confident enough for top-1 parity; returns it in eval mode.

    On one torch thread: on a busy 2-core machine (CI, workers sharing it) two OpenMP threads
    spin-wait against the other processes, measured 75 s instead of 8 s for the ResNet."""
    torch.manual_seed(seed)
    x = torch.from_numpy(resize_normalize([read_image(p) for p in paths],
                                          **preset.preprocess_kwargs()))
    y = torch.as_tensor(labels)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    rng = np.random.default_rng(seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model.train()
    try:
        for _ in range(steps):
            idx = torch.from_numpy(rng.choice(len(x), size=32, replace=False))
            loss = torch.nn.functional.nll_loss(torch.log(model(x[idx]) + 1e-8), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
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


def spread(items, n):
    """``n`` items evenly spread over ``items`` (the splits are ordered by class)."""
    return [items[i] for i in np.linspace(0, len(items) - 1, n).astype(int)]


def held_out_images(split, n: int = 48) -> list[np.ndarray]:
    """``n`` held-out images (stored pixels, every class) for the comparisons."""
    return [read_image(p) for p in spread(split.test.paths, n)]


def calibration_folder(split, root: Path, n: int = 64) -> Path:
    """A folder of links to ``n`` training images (every class), for --calib."""
    for i, p in enumerate(spread(split.train.paths, n)):
        (root / f"{i:03d}{p.suffix}").symlink_to(p)
    return root


def build_bundle(onnx_path: Path, out: Path, precision: str, preset, calib_dir: Path,
                 **kwargs) -> BuildResult:
    """``medtrt build`` with TensorRT-RTX (its builder runs on the CPU), 16 accuracy-check
    images and, for INT8, calibration on the 64 images of ``calib_dir``."""
    return build(onnx_path, out, BuildOptions(
        precision=precision, preset=preset, flavour="tensorrt_rtx", check_images=16,
        calib=str(calib_dir) if precision == "int8" else None,
        calibration=CalibrationConfig(num_images=64), **kwargs))


def engine_probs(path: Path, images: list[np.ndarray], **kwargs) -> np.ndarray:
    """Probabilities of ``Engine(path, device="cpu")`` on ``images`` (a bundle with
    backend="onnxruntime": its precision ONNX as it is, the graph TensorRT builds); no image may
    fail."""
    if Path(path).name.endswith(".engine"):
        kwargs.setdefault("backend", "onnxruntime")
    with Engine(path, device="cpu", **kwargs) as engine:
        r = engine.infer(images, return_probs=True)
    assert not r.errors
    return r.probs


def assert_parity(probs: np.ndarray, reference: np.ndarray, precision: str, name: str, *,
                  activation: str = "softmax") -> None:
    """``medtrt.testing.PARITY[precision]``: top-1 agreement (softmax) or per-label
    threshold-decision agreement (sigmoid), and max |dprob|."""
    bound = PARITY[precision]
    if activation == "softmax":
        assert_agreement(probs, reference, min_top1=bound["min_top1"],
                         max_prob_diff=bound["max_prob_diff"], name=name)
        return
    rep = assert_agreement(probs, reference, min_top1=0.0, max_prob_diff=bound["max_prob_diff"],
                           activation="sigmoid", name=name)
    assert rep.decision_agreement >= bound["min_decisions"], (
        f"{name}: decision agreement {rep.decision_agreement:.4f}; worst sample "
        f"{rep.worst_index}: {rep.worst_candidate} vs {rep.worst_reference}")
