"""Argument normalisation shared by the op wrappers: container forms, torch detection, dtype
names. Value checks live in the C++ validators, so CPU and CUDA raise identical errors."""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from medtrt._lazy import require
from medtrt._native import cuda_ready

__all__ = ["is_tensor", "dtype_name", "placement", "cuda_stream", "require_cuda"]


def is_tensor(x: Any) -> bool:
    """True for a torch.Tensor; never imports torch (no torch loaded means no tensor exists)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def dtype_name(dtype: Any) -> str:
    """'float32' for np.float32, np.dtype('float32'), torch.float32 or 'float32'."""
    if isinstance(dtype, str):
        return dtype
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(dtype, torch.dtype):
        return str(dtype).removeprefix("torch.")
    try:
        return np.dtype(dtype).name
    except TypeError:
        return str(dtype)


def placement(items: list[Any], what: str) -> str:
    """'numpy', 'torch-cpu' or 'torch-cuda:<index>' for a batch; mixed batches are refused."""
    kinds = set()
    for x in items:
        if is_tensor(x):
            kinds.add("torch-cpu" if x.device.type == "cpu" else f"torch-{x.device}")
        else:
            kinds.add("numpy")
    if len(kinds) > 1:
        raise ValueError(
            f"{what}: expected every item in one place; got a mix of {sorted(kinds)} "
            "(move them to one device, or convert them all to NumPy, first)"
        )
    kind = kinds.pop() if kinds else "numpy"
    if kind.startswith("torch-") and kind != "torch-cpu" and not kind.startswith("torch-cuda"):
        raise ValueError(f"{what}: expected CPU or CUDA tensors; got {kind.removeprefix('torch-')}")
    return kind


def require_cuda(what: str) -> None:
    ok, why = cuda_ready()
    if not ok:
        raise RuntimeError(f"{what}: got CUDA tensors but the CUDA kernels cannot run: {why}")


def cuda_stream(device: Any) -> int:
    """Handle of torch's current stream on ``device`` (an int, as the extension takes it)."""
    torch = require("torch")
    return int(torch.cuda.current_stream(device).cuda_stream)
