#!/usr/bin/env python3
"""`make demo`: medtrt's fused pre- and post-processing on generated images, end to end.

Generates a ragged batch of grayscale, RGB and CT-like 16-bit images (no downloads), turns them
into MedNIST- and CheXNet-shaped network inputs with resize_normalize, checks each against a
float64 NumPy computation written here, runs topk on logits, and prints a table. Later issues
extend this into export -> build -> infer on a trained model.

Each output is compared with medtrt.reference.preprocess, the float64 NumPy restatement of the
op's contract (not the compiled kernel).
"""

from __future__ import annotations

import sys
import time

import numpy as np

import medtrt
from medtrt._native import cuda_ready
from medtrt.ops import resize_normalize, topk
from medtrt.reference import preprocess

MEDNIST_LABELS = ["AbdomenCT", "BreastMRI", "CXR", "ChestCT", "Hand", "HeadCT"]


def phantom(rng: np.random.Generator, h: int, w: int, dtype: type, channels: int = 0) -> np.ndarray:
    """A disc with a ring and noise, like a head CT slice, scaled to the dtype's range."""
    yy, xx = np.mgrid[0:h, 0:w]
    r = np.hypot((yy - h / 2) / (h / 2), (xx - w / 2) / (w / 2))
    img = 0.3 * (r < 0.8) + 0.6 * ((r > 0.7) & (r < 0.8)) + 0.05 * rng.standard_normal((h, w))
    img = np.clip(img, 0, 1)
    high = 255 if dtype == np.uint8 else 4095
    out = (img * high).astype(dtype)
    return np.repeat(out[..., None], channels, axis=2) if channels else out


def main() -> int:
    rng = np.random.default_rng(2026)
    info = medtrt.build_info()
    gpu_ok, why = cuda_ready()
    print(f"medtrt {medtrt.__version__}: CUDA kernels compiled={info['cuda_compiled']} "
          f"({info['cuda_architectures'] or 'none'}); GPU: {'yes' if gpu_ok else 'no - ' + why}")
    print("Kernels run here: CPU twins" + (" and CUDA" if gpu_ok else "") + "\n")

    images = [
        ("64x64 u8 gray", phantom(rng, 64, 64, np.uint8)),
        ("517x3 u8 gray", phantom(rng, 517, 3, np.uint8)),
        ("1023x767 u8 RGB", phantom(rng, 1023, 767, np.uint8, channels=3)),
        ("512x512 u16 CT", phantom(rng, 512, 512, np.uint16)),
    ]
    presets = [
        ("MedNIST 1x64x64", dict(out_size=(64, 64), channels=1)),
        ("CheXNet 3x224x224", dict(out_size=(224, 224), channels=3, mean=[0.485, 0.456, 0.406],
                                   std=[0.229, 0.224, 0.225])),
        ("CT window 1x64x64 f16", dict(out_size=(64, 64), channels=1, rescale=(1.0, -1024.0),
                                       window=(40.0, 400.0), dtype="float16")),
    ]
    stored_dtypes = {"CT window 1x64x64 f16": (np.uint16,)}  # HU windows apply to CT pixels only
    header = f"{'input':18s} {'preset':24s} {'out shape':>16s} {'ms':>7s} {'range':>17s} {'max |err|':>10s}"
    print(header)
    print("-" * len(header))
    worst = 0.0
    for preset_name, kw in presets:
        ref_kw = {k: v for k, v in kw.items() if k != "dtype"}
        for dtype in stored_dtypes.get(preset_name, (np.uint8, np.uint16)):  # one per batch
            group = [(name, img) for name, img in images if img.dtype == dtype]
            t0 = time.perf_counter()
            out = resize_normalize([img for _, img in group], **kw)
            ms = (time.perf_counter() - t0) * 1e3 / len(group)
            for (name, img), got in zip(group, out):
                ref = preprocess([img], **ref_kw)[0]
                err = float(np.abs(got.astype(np.float64) - ref).max())
                budget = 1e-3 if kw.get("dtype") == "float16" else 1e-5 / min(kw.get("std", [1.0]))
                worst = max(worst, err / budget)
                shape = "x".join(map(str, got.shape))
                print(f"{name:18s} {preset_name:24s} {shape:>16s} {ms:7.2f} "
                      f"[{got.min():+.3f}, {got.max():+.3f}] {err:10.2e}")

    logits = rng.normal(0, 3, size=(4, 6)).astype(np.float32)
    scores, indices = topk(logits, 3)
    print("\ntopk(softmax, k=3) over MedNIST classes:")
    for row in range(len(logits)):
        best = ", ".join(f"{MEDNIST_LABELS[i]} {s:.3f}" for s, i in zip(scores[row], indices[row]))
        print(f"  sample {row}: {best}")

    ok = worst <= 1.0
    verdict = "PASS: every output is" if ok else "FAIL: not every output is"
    print(f"\n{verdict} within its tolerance of the float64 reference (1e-5 float32 scaled by "
          f"1/std, 1e-3 float16); worst at {worst:.2f}x its tolerance")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
