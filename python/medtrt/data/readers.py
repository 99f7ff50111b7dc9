"""Image readers: JPEG and PNG (8/16-bit) via Pillow, DICOM via pydicom.

Every reader returns the stored pixels as a NumPy array ready for
``medtrt.ops.resize_normalize``: uint8 or uint16 (H, W) or (H, W, 3) for JPEG/PNG; for DICOM the
modality values (uint8/uint16/int16 as stored, or float32 after a non-trivial RescaleSlope /
RescaleIntercept), or float32 in [0, 1] when the file's window is applied on request.

The format is decided by the file's first bytes, not its extension. Anything that cannot be
read raises ``medtrt.errors.ImageReadError`` naming the file and the reason;
``iter_images`` turns those into per-file results and goes on. ``decode_image`` does what
``read_image`` does for an encoded file held in memory (a request body, say).
"""

from __future__ import annotations

import io
import logging
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medtrt.errors import ImageReadError, MissingDependencyError

__all__ = ["read_image", "read_dicom", "decode_image", "iter_images", "list_images",
           "ReadResult", "IMAGE_SUFFIXES", "sniff"]

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".dcm", ".dicom")

_JPEG = b"\xff\xd8\xff"
_PNG = b"\x89PNG\r\n\x1a\n"


def sniff(head: bytes) -> str | None:
    """'jpeg', 'png', 'dicom' or None from a file's first 132 bytes."""
    if head.startswith(_JPEG):
        return "jpeg"
    if head.startswith(_PNG):
        return "png"
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    return None


def read_image(path: str | os.PathLike[str], *, apply_window: bool = False,
               frame: int | None = 0, data: bytes | memoryview | None = None) -> np.ndarray:
    """Read one image file; see the module docstring for what comes back.

    Args:
        path: a JPEG, PNG or DICOM file.
        apply_window: DICOM only: map the file's first WindowCenter/WindowWidth to [0, 1]
            (float32, clipped), with the same formula as resize_normalize's ``window``.
        frame: DICOM only: which frame of a multi-frame file to return (default the first);
            None refuses multi-frame files.
        data: the file's bytes, already read (e.g. a Ray Dataset's ``bytes`` column): decoded
            from memory, ``path`` only names the file (its suffix and the error messages, which
            are those of the file on disk).
    """
    p = Path(path)
    if data is None:
        try:
            with open(p, "rb") as f:
                head = f.read(132)
        except OSError as exc:
            raise ImageReadError(p, exc.strerror or str(exc)) from exc
    else:
        head = bytes(data[:132])
    if not head:
        raise ImageReadError(p, "the file is empty (0 bytes)")
    kind = sniff(head)
    if kind == "dicom" or (kind is None and p.suffix.lower() in (".dcm", ".dicom")):
        return read_dicom(p, apply_window=apply_window, frame=frame, data=data)
    if kind is None:
        raise ImageReadError(p, f"not a JPEG, PNG or DICOM file (starts with {head[:8]!r})")
    return _read_pillow(p, kind, data)


def decode_image(data: bytes, *, name: str = "<bytes>", apply_window: bool = False,
                 frame: int | None = 0) -> np.ndarray:
    """``read_image`` for an encoded JPEG, PNG or DICOM file held in memory; ``name`` stands for
    the path in an ``ImageReadError`` (which image of a request, say)."""
    if not data:
        raise ImageReadError(name, "the data is empty (0 bytes)")
    return read_image(name, apply_window=apply_window, frame=frame, data=data)


def _source(path: Path, data: bytes | memoryview | None) -> Path | io.BytesIO:
    """What Pillow or pydicom opens: the file, or its bytes already read."""
    return path if data is None else io.BytesIO(data)


def _read_pillow(path: Path, kind: str, data: bytes | memoryview | None = None) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(_source(path, data)) as im:
            im.load()  # decode now: truncated data fails here, not later
            mode = im.mode
            if mode in ("L", "RGB"):
                arr = np.asarray(im)
            elif mode in ("I;16", "I;16B", "I;16L"):
                arr = np.asarray(im).astype(np.uint16)
            elif mode == "I":  # 32-bit container; PNG-16 often decodes this way
                arr = np.asarray(im)
                if arr.min() < 0 or arr.max() > 65535:
                    raise ImageReadError(path, f"32-bit integer pixels outside 0..65535 "
                                               f"({arr.min()}..{arr.max()})")
                arr = arr.astype(np.uint16)
            elif mode in ("1", "P", "LA", "PA"):
                arr = np.asarray(im.convert("RGB" if mode in ("P", "PA") else "L"))
            elif mode in ("RGBA", "CMYK", "YCbCr", "RGBX"):
                arr = np.asarray(im.convert("RGB"))
            else:
                raise ImageReadError(path, f"unsupported {kind.upper()} pixel mode {mode!r}")
    except ImageReadError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        reason = str(exc) or type(exc).__name__
        if data is not None:  # Pillow names its file object: say "the data" instead
            reason = re.sub(r"<_io\.BytesIO object at 0x[0-9a-f]+>", "the data", reason)
        if "truncated" in reason.lower() or "image file is truncated" in reason:
            reason = f"truncated {kind.upper()} data ({reason})"
        raise ImageReadError(path, f"corrupt {kind.upper()}: {reason}") from exc
    if arr.ndim == 3 and arr.shape[2] == 3 and _is_gray(arr):
        arr = arr[..., 0]  # an RGB file of a grayscale image: keep one channel
    return np.ascontiguousarray(arr)


def _is_gray(rgb: np.ndarray) -> bool:
    return bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())


def read_dicom(path: str | os.PathLike[str], *, apply_window: bool = False,
               frame: int | None = 0, data: bytes | memoryview | None = None) -> np.ndarray:
    """Read a DICOM image: modality values, MONOCHROME1 inverted, optional window (see
    read_image; ``data``: the file's bytes, already read)."""
    try:
        import pydicom
        from pydicom.errors import InvalidDicomError
    except ImportError as exc:
        raise MissingDependencyError(
            "pydicom is needed for reading DICOM files but is not installed; "
            "install it with: pip install 'medtrt[dicom]'") from exc
    p = Path(path)
    try:
        ds = pydicom.dcmread(_source(p, data))
    except (InvalidDicomError, OSError, EOFError, ValueError, KeyError) as exc:
        raise ImageReadError(p, f"corrupt DICOM: {exc or type(exc).__name__}") from exc
    if "PixelData" not in ds:
        raise ImageReadError(p, "DICOM file has no pixel data (PixelData element missing)")
    try:
        pixels = ds.pixel_array
    except Exception as exc:  # pydicom raises many types: missing codec, bad length, ...
        raise ImageReadError(p, f"cannot decode DICOM pixel data "
                                f"(transfer syntax {ds.file_meta.get('TransferSyntaxUID', '?')}): "
                                f"{exc}") from exc
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    samples = int(getattr(ds, "SamplesPerPixel", 1) or 1)
    if frames > 1:
        if frame is None:
            raise ImageReadError(p, f"multi-frame DICOM ({frames} frames); pass frame=<index> "
                                    "to read one frame")
        if not 0 <= frame < frames:
            raise ImageReadError(p, f"frame {frame} requested, file has {frames} frames")
        pixels = pixels[frame]
    expected_ndim = 3 if samples == 3 else 2
    if pixels.ndim != expected_ndim:
        raise ImageReadError(p, f"unexpected pixel array shape {pixels.shape} for "
                                f"SamplesPerPixel={samples}, NumberOfFrames={frames}")
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).upper()
    if samples == 3:
        if photometric.startswith("YBR"):
            from pydicom.pixels import convert_color_space

            pixels = convert_color_space(pixels, photometric, "RGB")
        return np.ascontiguousarray(pixels.astype(np.uint8) if pixels.dtype != np.uint16 else pixels)

    if photometric == "MONOCHROME1":  # high values are dark: flip within the stored range
        bits = int(getattr(ds, "BitsStored", pixels.dtype.itemsize * 8))
        if pixels.dtype.kind == "i":
            lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
        else:
            lo, hi = 0, (1 << bits) - 1
        pixels = (hi + lo - pixels.astype(np.int64)).astype(pixels.dtype)

    slope = float(getattr(ds, "RescaleSlope", 1.0) or 1.0)
    intercept = float(getattr(ds, "RescaleIntercept", 0.0) or 0.0)
    if slope != 1.0 or intercept != 0.0 or pixels.dtype.kind not in "ui" or \
            pixels.dtype.itemsize > 2 or pixels.dtype == np.int8:
        values = pixels.astype(np.float32) * np.float32(slope) + np.float32(intercept)
    else:
        values = pixels

    if apply_window:
        center, width = _dicom_window(ds, p)
        lo = center - width / 2
        values = np.clip((values.astype(np.float32) - np.float32(lo)) / np.float32(width), 0, 1)
        values = values.astype(np.float32)
    return np.ascontiguousarray(values)


def _dicom_window(ds: Any, path: Path) -> tuple[float, float]:
    if "WindowCenter" not in ds or "WindowWidth" not in ds:
        raise ImageReadError(path, "apply_window=True but the file has no WindowCenter/"
                                   "WindowWidth; pass window=(center, width) to resize_normalize")

    def first(v: Any) -> float:  # multi-valued (one window per preset): take the first
        return float(v[0]) if isinstance(v, Sequence) and not isinstance(v, (str, bytes)) else float(v)

    center, width = first(ds.WindowCenter), first(ds.WindowWidth)
    if width <= 0:
        raise ImageReadError(path, f"WindowWidth is {width}; expected > 0")
    return center, width


@dataclass(frozen=True)
class ReadResult:
    """One file of a batch read: either ``image`` or ``error`` is set."""

    path: Path
    image: np.ndarray | None = None
    error: ImageReadError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def list_images(root: str | os.PathLike[str], *, recursive: bool = True) -> list[Path]:
    """The image files (IMAGE_SUFFIXES, any case) under ``root``, sorted."""
    pattern = "**/*" if recursive else "*"
    return sorted(q for q in Path(root).glob(pattern)
                  if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES)


def iter_images(source: str | os.PathLike[str] | Iterable[str | os.PathLike[str]], *,
                recursive: bool = True, **read_kwargs: Any) -> Iterator[ReadResult]:
    """Read a directory (files with IMAGE_SUFFIXES, sorted) or a list of paths, one result per
    file. A file that cannot be read yields a result with ``error`` set; reading goes on."""
    if isinstance(source, (str, os.PathLike)) and Path(source).is_dir():
        paths: Iterable[Path] = list_images(source, recursive=recursive)
    elif isinstance(source, (str, os.PathLike)):
        paths = [Path(source)]
    else:
        paths = [Path(q) for q in source]
    for q in paths:
        try:
            yield ReadResult(q, image=read_image(q, **read_kwargs))
        except ImageReadError as exc:
            log.warning("%s", exc)
            yield ReadResult(q, error=exc)
