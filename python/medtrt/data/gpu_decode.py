"""Batched JPEG decode on the GPU with nvJPEG (through ``torchvision.io.decode_jpeg``).

``NvjpegDecoder.decode(paths)`` returns the stored pixels of every file as a ``DeviceImage``
(a CUDA tensor, H x W uint8 for gray, H x W x 3 for colour: the layout ``resize_normalize``
reads), decoded on the decoder's own stream; the medtrt pipeline reads them in place after that
stream (``Pipeline.submit(..., resident=True, producer=decoder.stream_handle)``).

What nvJPEG cannot decode goes through the CPU readers (``medtrt.data.read_image``) and is
uploaded: PNG, DICOM, and any JPEG that nvJPEG refuses (a batch that fails is retried image by
image, so one odd file never costs the others their GPU decode). A file that no reader can read
becomes that item's ``ImageReadError``, as on the CPU path.

The pixels equal the CPU readers' only up to the JPEG decoders' own differences (nvJPEG and
libjpeg round their IDCT and colour conversion differently, typically by one grey level); an
RGB file of a grey image stays 3-channel here (the CPU reader keeps one channel), which
``resize_normalize`` maps to the same grey values.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from medtrt.errors import ImageReadError, MissingDependencyError
from medtrt.data.readers import read_image

__all__ = ["DeviceImage", "NvjpegDecoder", "device_image", "nvjpeg_status", "upload"]

_JPEG = b"\xff\xd8\xff"
_TYPESTR = {"uint8": "|u1", "uint16": "<u2", "int16": "<i2", "float32": "<f4"}


class DeviceImage:
    """A contiguous CUDA tensor's pixels and the pixel type the pipeline reads them as, exposed
    through ``__cuda_array_interface__`` (the pipeline's resident path reads that). uint16 is
    carried in an int16 tensor (torch has no uint16 arithmetic); only the bits matter here."""

    __slots__ = ("tensor", "dtype", "shape")

    def __init__(self, tensor: Any, dtype: str) -> None:
        if dtype not in _TYPESTR:
            raise ValueError(f"DeviceImage: dtype must be one of {sorted(_TYPESTR)}; got {dtype!r}")
        if not tensor.is_cuda or not tensor.is_contiguous():
            raise ValueError("DeviceImage: expected a contiguous CUDA tensor")
        self.tensor, self.dtype, self.shape = tensor, dtype, tuple(int(d) for d in tensor.shape)

    @property
    def __cuda_array_interface__(self) -> dict[str, Any]:
        return {"shape": self.shape, "typestr": _TYPESTR[self.dtype], "strides": None,
                "data": (int(self.tensor.data_ptr()), False), "version": 2}

    def __repr__(self) -> str:
        return f"DeviceImage({self.dtype}, shape={self.shape}, device={self.tensor.device})"


def device_image(tensor: Any, device: str) -> DeviceImage:
    """A torch tensor (any device) as a DeviceImage on ``device``: float64/float16/bfloat16
    become float32; integer types other than uint8/uint16/int16 are refused, as on the host."""
    import torch

    if tensor.dtype in (torch.float64, torch.float16, torch.bfloat16):
        tensor = tensor.float()
    names = {torch.uint8: "uint8", torch.int16: "int16", torch.float32: "float32"}
    if getattr(torch, "uint16", None) is not None and tensor.dtype == torch.uint16:
        tensor, dtype = tensor.view(torch.int16), "uint16"
    elif tensor.dtype in names:
        dtype = names[tensor.dtype]
    else:
        raise ValueError(f"a tensor of {tensor.dtype} cannot be an image; expected uint8, "
                         "uint16, int16 or float32 pixels")
    return DeviceImage(tensor.to(device).contiguous(), dtype)


def upload(image: np.ndarray, device: str) -> DeviceImage:
    """A host image (uint8/uint16/int16/float32) as a DeviceImage on ``device``, copied on the
    current stream."""
    import torch

    bits = image.view(np.int16) if image.dtype == np.uint16 else image
    return DeviceImage(torch.from_numpy(np.ascontiguousarray(bits)).to(device), str(image.dtype))


def _tiny_jpeg() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def nvjpeg_status(device: Any = "cuda:0") -> tuple[bool, str]:
    """(True, "") when a one-image decode with nvJPEG works on ``device``, else (False, why)."""
    try:
        import torch
    except ImportError:
        return False, "torch is not installed (pip install 'medtrt[torch]')"
    if not torch.cuda.is_available():
        return False, "no CUDA device visible to torch"
    try:
        import torchvision.io as tvio
    except ImportError:
        return False, ("torchvision is not installed (nvJPEG decode goes through torchvision.io; "
                       "pip install 'medtrt[nvjpeg]')")
    try:
        data = torch.frombuffer(bytearray(_tiny_jpeg()), dtype=torch.uint8)
        out = tvio.decode_jpeg([data], mode=tvio.ImageReadMode.UNCHANGED, device=device)
        torch.cuda.synchronize(device)
        if out[0].shape != (1, 8, 8):
            return False, f"a probe decode returned shape {tuple(out[0].shape)}, expected (1, 8, 8)"
    except Exception as exc:  # noqa: BLE001 - any failure means: not usable here, and why
        return False, f"torchvision's nvJPEG decode failed: {exc}"
    return True, ""


class NvjpegDecoder:
    """Decodes batches of image files to CUDA tensors; see the module docstring.

    Args:
        device: the index of the CUDA device the images are decoded on.
        threads: threads that read files (and CPU-decode what nvJPEG cannot); 0: the cores,
            at most 8.
    """

    def __init__(self, device: int = 0, threads: int = 0) -> None:
        self.device = f"cuda:{device}"
        ok, why = nvjpeg_status(self.device)
        if not ok:
            raise MissingDependencyError(f"nvJPEG decode is not available: {why}; "
                                         "use decode='cpu'")
        import torch
        import torchvision.io as tvio

        self.torch, self.tvio = torch, tvio
        self.stream = torch.cuda.Stream(device=self.device)
        self.threads = threads or min(8, os.cpu_count() or 1)
        self.pool = ThreadPoolExecutor(self.threads, thread_name_prefix="medtrt-nvjpeg")
        self.fallbacks = 0  # files that went through the CPU readers (not JPEG, refused, unreadable)

    @property
    def stream_handle(self) -> int:
        """The cudaStream_t the decoded images are written on (the pipeline waits for it)."""
        return int(self.stream.cuda_stream)

    def decode(self, paths: Sequence[str | os.PathLike[str]]) -> list[DeviceImage | ImageReadError]:
        """One DeviceImage (H x W or H x W x 3; uint8 from nvJPEG, the stored type from the CPU
        readers) or one ``ImageReadError`` per path, in order."""
        blobs = list(self.pool.map(_read_bytes, paths))
        out: list[Any] = [None] * len(paths)
        jpeg = [i for i, b in enumerate(blobs) if b is not None and b.startswith(_JPEG)]
        torch = self.torch
        with torch.cuda.stream(self.stream):
            decoded = self._decode_jpegs([blobs[i] for i in jpeg])
            for i, image in zip(jpeg, decoded):
                if image is not None:
                    out[i] = DeviceImage(image, "uint8")
            # Not JPEG, refused, or unreadable (the CPU reader names the reason).
            cpu = [i for i in range(len(paths)) if out[i] is None]
            self.fallbacks += len(cpu)
            for i, got in zip(cpu, self.pool.map(_read_cpu, [paths[i] for i in cpu])):
                out[i] = got if isinstance(got, ImageReadError) else upload(got, self.device)
        return out

    def close(self) -> None:
        self.pool.shutdown()

    # -- internals --------------------------------------------------------------------------------

    def _decode_jpegs(self, blobs: list[bytes]) -> list[Any]:
        """CHW uint8 from nvJPEG -> HW / HWC tensors; None where nvJPEG refused the file."""
        if not blobs:
            return []
        torch, tvio = self.torch, self.tvio
        data = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]
        mode = tvio.ImageReadMode.UNCHANGED
        try:
            chw = tvio.decode_jpeg(data, mode=mode, device=self.device)
        except Exception:  # noqa: BLE001 - the whole batch fails with one bad image: find it
            chw = []
            for d in data:
                try:
                    chw.append(tvio.decode_jpeg([d], mode=mode, device=self.device)[0])
                except Exception:  # noqa: BLE001 - the CPU reader says what is wrong with it
                    chw.append(None)
        return [None if t is None else _to_hwc(t) for t in chw]


def _to_hwc(chw: Any) -> Any:
    if chw.shape[0] == 1:
        return chw[0]  # a contiguous view
    if chw.shape[0] == 3:
        return chw.permute(1, 2, 0).contiguous()
    return None  # defensive: torchvision returns 1 or 3 channels; anything else goes to the CPU


def _read_bytes(path: str | os.PathLike[str]) -> bytes | None:
    """The file's bytes, or None when it cannot be read (the CPU reader then says why)."""
    try:
        return Path(path).read_bytes()
    except OSError:
        return None


def _read_cpu(path: str | os.PathLike[str]) -> np.ndarray | ImageReadError:
    try:
        return read_image(path)
    except ImageReadError as exc:
        return exc
