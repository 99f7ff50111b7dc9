# Type stub for the private compiled core. Public API: medtrt.ops.
from typing import Any

import numpy as np

IMAGE_DESC_BYTES: int

def cuda_compiled() -> bool: ...
def cuda_device_count() -> int: ...
def cuda_device_status() -> str: ...
def cuda_driver_version() -> int: ...
def cuda_current_device() -> int: ...
def cuda_set_device(ordinal: int) -> None: ...
def cuda_restore_device(previous: int) -> None: ...
def build_info() -> dict[str, Any]: ...

class ResizeNormalizeOptions:
    def __init__(
        self,
        *,
        out_size: tuple[int, int],
        channels: int = 1,
        scale: float | None = None,
        window: tuple[float, float] | None = None,
        rescale: tuple[float, float] | None = None,
        mean: list[float] = ...,
        std: list[float] = ...,
        dtype: str = "float32",
    ) -> None: ...

def resize_normalize_cpu(images: list[np.ndarray], options: ResizeNormalizeOptions) -> np.ndarray: ...
def resize_normalize_check(
    images: list[tuple[tuple[int, ...], str]], options: ResizeNormalizeOptions
) -> tuple[int, int, int, int]: ...
def resize_normalize_cuda(
    images: list[tuple[int, tuple[int, ...], str]],
    options: ResizeNormalizeOptions,
    out: int,
    device_descs: int,
    stream: int,
    upload_descs: bool = True,
) -> None: ...
def topk_cpu(logits: np.ndarray, k: int, activation: str) -> tuple[np.ndarray, np.ndarray]: ...
def topk_check(shape: tuple[int, ...], dtype: str, k: int, activation: str) -> tuple[int, int]: ...
def topk_cuda(
    logits: int,
    shape: tuple[int, ...],
    dtype: str,
    k: int,
    activation: str,
    scores: int,
    indices: int,
    stream: int,
) -> None: ...
