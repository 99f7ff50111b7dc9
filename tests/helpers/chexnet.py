"""A CheXNet-shaped multi-label model for the parity suite, made from the demo model.

Training a 224x224 DenseNet-121 on 2 CPU cores is too slow for CI, and a randomly initialised
one is useless for parity (its features hardly depend on the image, so INT8 noise swamps them).
So: the DenseNet-121 backbone of the trained MedNIST demo model, adapted to the chexnet preset's
input (gray replicated to 3 channels, ImageNet mean/std: conv0's weights spread over the three
channels and rescaled by each channel's std, the constant mean shift folded into norm0's running
mean), and a 14-label sigmoid head fitted by logistic regression on its pooled features over
synthetic images with synthetic multi-labels (each label positive for a fixed random subset of
the 6 synthetic classes, 10% of labels flipped per image so AUROC is not saturated).

Made once per demo-model version and cached beside it (export alone takes ~45 s here).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

N_FIT, N_CALIB, N_TEST = 192, 128, 256
FLIP = 0.10


@dataclass(frozen=True)
class ChexnetParity:
    root: Path
    checkpoint: Path
    onnx: Path
    calib_paths: list[Path]
    test_images: list[np.ndarray]
    test_labels: np.ndarray  # [N, 14] bool


def _images_and_labels(n: int, seed: int) -> tuple[list[np.ndarray], np.ndarray]:
    from medtrt.data.synth import CLASSES, render

    rng = np.random.default_rng(seed)
    members = np.random.default_rng(7).random((len(CLASSES), 14)) < 0.4
    members[0, members.sum(0) == 0] = True  # every label positive for some class
    classes = rng.integers(0, len(CLASSES), n)
    images = [render(CLASSES[c], rng) for c in classes]
    labels = members[classes] ^ (rng.random((n, 14)) < FLIP)
    return images, labels


def _adapt_backbone(torch, mednist, chexnet, preset) -> None:
    state = {k: v for k, v in mednist.state_dict().items() if not k.startswith("class_layers.out")}
    w = state["features.conv0.weight"]  # [64, 1, 7, 7], input u in [0, 1]
    mean = torch.tensor(preset.mean, dtype=w.dtype)
    std = torch.tensor(preset.std, dtype=w.dtype)
    # x_c = (u - m_c) / s_c  =>  sum_c (w s_c / 3) x_c = w u - mean(m) * w (interior pixels)
    state["features.conv0.weight"] = w.repeat(1, 3, 1, 1) * (std / 3).view(1, 3, 1, 1)
    shift = mean.mean() * w.sum(dim=(1, 2, 3))
    state["features.norm0.running_mean"] = state["features.norm0.running_mean"] - shift
    missing = chexnet.load_state_dict(state, strict=False).missing_keys
    assert sorted(missing) == ["class_layers.out.bias", "class_layers.out.weight"], missing


def _fit_head(features: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-label L2-regularised logistic regression on centred features scaled by one global
    factor (gradient descent, float64), folded back to raw-feature weights. (Per-feature
    standardisation would blow up near-constant features and their quantization noise.)"""
    mu, sigma = features.mean(0), float(features.std(0).mean()) + 1e-12
    z = (features - mu) / sigma
    y = labels.astype(np.float64)
    w = np.zeros((z.shape[1], y.shape[1]))
    b = np.zeros(y.shape[1])
    lam = 1e-2
    lr = 1.0 / (np.linalg.norm(z, 2) ** 2 / (4 * len(z)) + lam)  # 1 / Lipschitz constant
    for _ in range(1000):
        p = 1.0 / (1.0 + np.exp(-(z @ w + b)))
        w -= lr * (z.T @ (p - y) / len(z) + lam * w)
        b -= lr * (p - y).mean(0)
    weight = (w / sigma).T
    bias = b - (mu / sigma) @ w
    return weight.astype(np.float32), bias.astype(np.float32)


def chexnet_parity(demo_model) -> ChexnetParity:
    import torch
    from PIL import Image

    from medtrt.export import export_onnx
    from medtrt.models import get_preset, load
    from medtrt.models.checkpoint import create, save
    from medtrt.ops import resize_normalize

    key = hashlib.sha256(Path(__file__).read_bytes() + demo_model.root.name.encode()).hexdigest()[:12]
    root = demo_model.root.parent / f"chexnet-parity-{key}"
    images, labels = _images_and_labels(N_FIT + N_TEST, seed=11)
    calib = [root / "calib" / f"{i:03d}.png" for i in range(N_CALIB)]
    done = ChexnetParity(root, root / "model.pt", root / "model.onnx", calib,
                         images[N_FIT:], labels[N_FIT:])
    if done.onnx.is_file() and all(p.is_file() for p in calib):
        return done
    tmp = root.with_name(root.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "calib").mkdir(parents=True)
    preset = get_preset("chexnet")
    mednist, _ = load(demo_model.checkpoint)
    model = create("chexnet", seed=0)
    _adapt_backbone(torch, mednist, model, preset)
    x = resize_normalize(images[:N_FIT], **preset.preprocess_kwargs())
    with torch.inference_mode():
        feats = []
        for s in range(0, N_FIT, 32):
            f = model.features(torch.from_numpy(x[s:s + 32]))
            feats.append(torch.nn.functional.adaptive_avg_pool2d(torch.relu(f), 1).flatten(1).numpy())
    weight, bias = _fit_head(np.concatenate(feats).astype(np.float64), labels[:N_FIT])
    with torch.no_grad():
        model.class_layers.out.weight.copy_(torch.from_numpy(weight))
        model.class_layers.out.bias.copy_(torch.from_numpy(bias))
    save(model, preset, tmp / "model.pt", made_by="tests/helpers/chexnet.py")
    export_onnx(tmp / "model.pt", tmp / "model.onnx")
    for i, p in enumerate(calib):  # calibration images: the fitting split
        Image.fromarray(images[i]).save(tmp / "calib" / p.name)
    (tmp / "labels.json").write_text(json.dumps({"flip": FLIP, "n_fit": N_FIT}) + "\n")
    if root.exists():
        shutil.rmtree(root)
    tmp.rename(root)
    return done
