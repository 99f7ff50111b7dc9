"""Fused pre- and post-processing kernels (CPU twins always; CUDA when built with nvcc)."""

from __future__ import annotations

from medtrt.ops.resize_normalize import resize_normalize, resize_normalize_mixed
from medtrt.ops.topk import topk

__all__ = ["resize_normalize", "resize_normalize_mixed", "topk"]
