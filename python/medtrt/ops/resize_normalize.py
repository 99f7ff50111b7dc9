"""resize_normalize: stored pixels to the network input in one fused pass."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from medtrt._lazy import require
from medtrt._native import native
from medtrt.ops._common import cuda_stream, dtype_name, is_tensor, placement, require_cuda

__all__ = ["resize_normalize", "resize_normalize_mixed"]

_OP = "resize_normalize"


def resize_normalize(
    images: Any,
    out_size: int | Sequence[int],
    *,
    channels: int = 1,
    scale: float | None = None,
    window: Sequence[float] | None = None,
    rescale: Sequence[float] | None = None,
    mean: float | Sequence[float] = 0.0,
    std: float | Sequence[float] = 1.0,
    dtype: Any = "float32",
    out: Any = None,
) -> Any:
    """Resize and normalise a (possibly ragged) batch of stored images.

    Args:
        images: a list of 2-D (H, W) or 3-D (H, W, C) arrays with C in {1, 3}, uint8, uint16,
            int16 or float32 (one dtype per batch), each its own size; or one [B, H, W] /
            [B, H, W, C] array.
            NumPy arrays and CPU tensors run the CPU kernel; CUDA tensors run the CUDA kernel on
            torch's current stream of their device.
        out_size: output (height, width), or one int for a square output.
        channels: output channels, 1 or 3. A gray input is replicated to 3 channels; an RGB
            input becomes gray with ITU-R BT.601 weights when channels=1.
        scale: multiplier applied after ``rescale``; default 1/255 (uint8), 1/65535 (uint16),
            1 (int16, float32: e.g. DICOM values after the modality rescale).
        window: (center, width): maps [center - width/2, center + width/2] to [0, 1] with
            clipping, instead of ``scale`` (CT windowing).
        rescale: (slope, intercept), applied first (DICOM modality LUT).
        mean, std: scalars or one value per output channel; output = (x - mean) / std.
        dtype: "float32" or "float16" output.
        out: CUDA path only: a preallocated contiguous tensor of the output shape and dtype.

    Returns:
        [B, channels, out_h, out_w] array: NumPy for NumPy input, a tensor on the input's
        device for tensor input.

    The intensity transform is applied to stored pixels, then the bilinear resize (half-pixel
    centres, as torch interpolate with align_corners=False, antialias=False), then mean/std.
    """
    items = _as_image_list(images)
    out_dtype = dtype_name(dtype)
    options = make_options(out_size, channels=channels, scale=scale, window=window,
                           rescale=rescale, mean=mean, std=std, dtype=out_dtype)
    where = placement(items, _OP)
    if where.startswith("torch-cuda"):
        return _resize_normalize_cuda(items, options, out_dtype, out)
    if out is not None:
        raise ValueError(f"{_OP}: out= is accepted for CUDA tensors only; got {where} input")
    if where == "torch-cpu":
        torch = require("torch")
        return torch.from_numpy(native().resize_normalize_cpu([t.numpy() for t in items], options))
    return native().resize_normalize_cpu(items, options)


def make_options(out_size: int | Sequence[int], *, channels: int = 1,
                 scale: float | None = None, window: Sequence[float] | None = None,
                 rescale: Sequence[float] | None = None, mean: float | Sequence[float] = 0.0,
                 std: float | Sequence[float] = 1.0, dtype: Any = "float32") -> Any:
    """The compiled options object for ``resize_normalize``'s keyword arguments (the C++
    validator checks the values when it is used)."""
    return native().ResizeNormalizeOptions(
        out_size=_size_pair(out_size),
        channels=channels,
        scale=None if scale is None else float(scale),
        window=_pair(window, "window", "(center, width)"),
        rescale=_pair(rescale, "rescale", "(slope, intercept)"),
        mean=_values(mean),
        std=_values(std),
        dtype=dtype_name(dtype),
    )


def resize_normalize_mixed(images: Sequence[np.ndarray], out_size: int | Sequence[int], *,
                           chunk: int = 512, **kwargs: Any) -> np.ndarray:
    """``resize_normalize`` for NumPy images that differ in stored dtype (8-bit JPEGs next to
    16-bit PNGs, say): one call per dtype, in chunks of ``chunk`` images, results in input order.
    Same keyword arguments; the default scale still follows each image's own dtype."""
    if len(images) == 0:
        return resize_normalize([], out_size, **kwargs)  # raises the usual empty-batch error
    groups: dict[np.dtype, list[int]] = {}
    for i, img in enumerate(images):
        groups.setdefault(np.asarray(img).dtype, []).append(i)
    out: np.ndarray | None = None
    for idx in groups.values():
        for start in range(0, len(idx), chunk):
            part = idx[start:start + chunk]
            y = resize_normalize([images[i] for i in part], out_size, **kwargs)
            if out is None:
                out = np.empty((len(images), *y.shape[1:]), y.dtype)
            out[part] = y
    assert out is not None
    return out


def _resize_normalize_cuda(items: list[Any], options: Any, out_dtype_name: str, out: Any) -> Any:
    torch = require("torch")
    require_cuda(_OP)
    c = native()
    tensors = [t.contiguous() for t in items]
    device = tensors[0].device
    specs = [(tuple(t.shape), dtype_name(t.dtype)) for t in tensors]
    shape = tuple(c.resize_normalize_check(specs, options))
    out_dtype = getattr(torch, out_dtype_name)  # validated by resize_normalize_check
    if out is None:
        out = torch.empty(shape, dtype=out_dtype, device=device)
    elif not (
        is_tensor(out)
        and out.device == device
        and tuple(out.shape) == shape
        and out.dtype == out_dtype
        and out.is_contiguous()
    ):
        got = (
            f"{tuple(out.shape)} {out.dtype} on {out.device}"
            f"{'' if out.is_contiguous() else ' (not contiguous)'}"
            if is_tensor(out)
            else type(out).__name__
        )
        raise ValueError(
            f"{_OP}: out must be a contiguous {out_dtype} tensor of shape {shape} on {device}; "
            f"got {got}"
        )
    descs = torch.empty(len(tensors) * c.IMAGE_DESC_BYTES, dtype=torch.uint8, device=device)
    with torch.cuda.device(device):
        c.resize_normalize_cuda(
            [(t.data_ptr(), tuple(t.shape), name) for t, (_, name) in zip(tensors, specs)],
            options,
            out.data_ptr(),
            descs.data_ptr(),
            cuda_stream(device),
        )
    return out


def _as_image_list(images: Any) -> list[Any]:
    if isinstance(images, (list, tuple)):
        return list(images)
    ndim = getattr(images, "ndim", None)
    if ndim in (3, 4):
        return list(images)  # views, no copy
    if ndim is not None:
        raise ValueError(
            f"{_OP}: expected a list of images or one [B, H, W] / [B, H, W, C] array; got a "
            f"{ndim}-D array of shape {tuple(images.shape)} (wrap a single image in a list)"
        )
    raise TypeError(
        f"{_OP}: expected a list of images or one [B, H, W] / [B, H, W, C] array; "
        f"got {type(images).__name__}"
    )


def _size_pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        return int(size), int(size)
    pair = tuple(int(s) for s in size)
    if len(pair) != 2:
        raise ValueError(f"{_OP}: out_size must be an int or (height, width); got {size!r}")
    return pair  # type: ignore[return-value]


def _pair(value: Sequence[float] | None, name: str, form: str) -> tuple[float, float] | None:
    if value is None:
        return None
    pair = tuple(float(v) for v in value)
    if len(pair) != 2:
        raise ValueError(f"{_OP}: {name} must be {form}; got {tuple(value)!r}")
    return pair  # type: ignore[return-value]


def _values(value: float | Sequence[float]) -> list[float]:
    return [float(v) for v in np.atleast_1d(np.asarray(value, dtype=np.float64)).ravel()]
