"""The float64 NumPy reference for medtrt's pre- and post-processing.

Restates the contracts of medtrt.ops.resize_normalize and medtrt.ops.topk's activations without
the compiled core: what the kernels are tested against, and the pre-processing of the PyTorch
reference path.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["preprocess", "activate"]

GRAY_WEIGHTS = np.array([0.299, 0.587, 0.114])


def _taps(out_size: int, in_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    src = (np.arange(out_size, dtype=np.float64) + 0.5) * (in_size / out_size) - 0.5
    src = np.maximum(src, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    return i0, i1, src - i0


def _bilinear(x: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Half-pixel bilinear resize of an [H, W, C] float64 image (align_corners=False)."""
    y0, y1, ly = _taps(out_h, x.shape[0])
    x0, x1, lx = _taps(out_w, x.shape[1])
    ly = ly[:, None, None]
    lx = lx[None, :, None]
    top = x[y0][:, x0] * (1 - lx) + x[y0][:, x1] * lx
    bottom = x[y1][:, x0] * (1 - lx) + x[y1][:, x1] * lx
    return top * (1 - ly) + bottom * ly


def _intensity(
    img: np.ndarray,
    channels: int,
    *,
    scale: float | None = None,
    window: tuple[float, float] | None = None,
    rescale: tuple[float, float] | None = None,
) -> np.ndarray:
    """Stored image -> transformed [H, W, C'] float64, before resize (C' = 3 only for RGB->RGB)."""
    x = img.astype(np.float64)
    if x.ndim == 2:
        x = x[..., None]
    if x.shape[2] == 3 and channels == 1:
        x = (x * GRAY_WEIGHTS).sum(axis=2, keepdims=True)
    if rescale is not None:
        x = x * rescale[0] + rescale[1]
    if window is not None:
        center, width = window
        x = np.clip((x - (center - width / 2)) / width, 0.0, 1.0)
    else:
        if scale is None:
            scale = {np.dtype(np.uint8): 1 / 255, np.dtype(np.uint16): 1 / 65535}.get(img.dtype, 1.0)
        x = x * scale
    return x


def preprocess(
    images: Sequence[np.ndarray],
    out_size: tuple[int, int],
    *,
    channels: int = 1,
    scale: float | None = None,
    window: tuple[float, float] | None = None,
    rescale: tuple[float, float] | None = None,
    mean: float | Sequence[float] = 0.0,
    std: float | Sequence[float] = 1.0,
) -> np.ndarray:
    """The contract of medtrt.ops.resize_normalize, restated in float64 NumPy.

    Same arguments (out_size as (height, width)); returns float64 [B, channels, H, W]. Slow
    and independent of the compiled kernels: the reference they are tested against.
    """
    out_h, out_w = out_size
    mean_a = np.broadcast_to(np.asarray(mean, np.float64), (channels,))
    std_a = np.broadcast_to(np.asarray(std, np.float64), (channels,))
    out = np.empty((len(images), channels, out_h, out_w))
    for b, img in enumerate(images):
        x = _intensity(img, channels, scale=scale, window=window, rescale=rescale)
        r = _bilinear(x, out_h, out_w)
        if r.shape[2] == 1 and channels == 3:
            r = np.repeat(r, 3, axis=2)
        out[b] = (r.transpose(2, 0, 1) - mean_a[:, None, None]) / std_a[:, None, None]
    return out


def activate(logits: np.ndarray, activation: str) -> np.ndarray:
    """Softmax (max-subtracted), sigmoid or identity per row, in float64."""
    x = logits.astype(np.float64)
    if activation == "softmax":
        e = np.exp(x - x.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
    if activation == "sigmoid":
        return 1.0 / (1.0 + np.exp(-x))
    return x
