"""Slow float64 NumPy references for the ops, written independently of the kernels."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

GRAY_WEIGHTS = np.array([0.299, 0.587, 0.114])


def _taps(out_size: int, in_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    src = (np.arange(out_size, dtype=np.float64) + 0.5) * (in_size / out_size) - 0.5
    src = np.maximum(src, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    return i0, i1, src - i0


def bilinear(x: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Half-pixel bilinear resize of an [H, W, C] float64 image (align_corners=False)."""
    y0, y1, ly = _taps(out_h, x.shape[0])
    x0, x1, lx = _taps(out_w, x.shape[1])
    ly = ly[:, None, None]
    lx = lx[None, :, None]
    top = x[y0][:, x0] * (1 - lx) + x[y0][:, x1] * lx
    bottom = x[y1][:, x0] * (1 - lx) + x[y1][:, x1] * lx
    return top * (1 - ly) + bottom * ly


def intensity(
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
            scale = 1 / 255 if img.dtype == np.uint8 else 1 / 65535
        x = x * scale
    return x


def resize_normalize(
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
    out_h, out_w = out_size
    mean_a = np.broadcast_to(np.asarray(mean, np.float64), (channels,))
    std_a = np.broadcast_to(np.asarray(std, np.float64), (channels,))
    out = np.empty((len(images), channels, out_h, out_w))
    for b, img in enumerate(images):
        x = intensity(img, channels, scale=scale, window=window, rescale=rescale)
        r = bilinear(x, out_h, out_w)
        if r.shape[2] == 1 and channels == 3:
            r = np.repeat(r, 3, axis=2)
        out[b] = (r.transpose(2, 0, 1) - mean_a[:, None, None]) / std_a[:, None, None]
    return out


def activate(logits: np.ndarray, activation: str) -> np.ndarray:
    x = logits.astype(np.float64)
    if activation == "softmax":
        e = np.exp(x - x.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
    if activation == "sigmoid":
        return 1.0 / (1.0 + np.exp(-x))
    return x


def check_topk(
    scores: np.ndarray,
    indices: np.ndarray,
    logits: np.ndarray,
    k: int,
    activation: str,
    *,
    atol: float = 1e-6,
    rtol: float = 1e-5,
) -> None:
    """Asserts that (scores, indices) are a correct top-k of ``logits`` (finite values).

    Checks against float64 probabilities: the k scores equal the k best reference scores, each
    returned index really has its returned score, indices are distinct, and the returned order
    is by score descending with equal scores in ascending index order. Exact index equality is
    required wherever the reference separates neighbours by more than the tolerance, so only
    genuine float32 near-ties may be ordered either way.
    """
    from medtrt.testing import assert_close

    ref = activate(logits, activation)
    b = logits.shape[0]
    assert scores.shape == (b, k) and indices.shape == (b, k)
    assert scores.dtype == np.float32 and indices.dtype == np.int32
    order = np.lexsort((np.broadcast_to(np.arange(ref.shape[1]), ref.shape), -ref), axis=1)[:, :k]
    expected_scores = np.take_along_axis(ref, order, axis=1)
    assert_close(scores, expected_scores, atol=atol, rtol=rtol, name="top-k scores")
    assert_close(scores, np.take_along_axis(ref, indices.astype(np.int64), axis=1),
                 atol=atol, rtol=rtol, name="score of each returned index")
    for row in range(b):
        assert len(set(indices[row].tolist())) == k, f"row {row}: repeated index {indices[row]}"
        s, i = scores[row], indices[row]
        assert np.all(s[:-1] >= s[1:]), f"row {row}: scores not descending {s}"
        tied = s[:-1] == s[1:]
        assert np.all(i[:-1][tied] < i[1:][tied]), f"row {row}: tie not broken by index {s} {i}"
    tol = atol + rtol * np.abs(ref)
    sorted_ref = -np.sort(-ref, axis=1)
    gap_ok = np.ones((b, k), dtype=bool)  # position j is unambiguous if separated on both sides
    gaps = sorted_ref[:, :-1] - sorted_ref[:, 1:]
    near = gaps <= 2 * np.take_along_axis(tol, np.argsort(-ref, axis=1), axis=1)[:, :-1]
    gap_ok[:, : min(k, near.shape[1])] &= ~near[:, :k]
    gap_ok[:, 1:] &= ~near[:, : k - 1]
    mismatch = gap_ok & (indices != order)
    assert not mismatch.any(), (
        f"indices differ from the reference at unambiguous positions {np.argwhere(mismatch)[:5]}: "
        f"got {indices[mismatch][:5]}, expected {order[mismatch][:5]}"
    )
