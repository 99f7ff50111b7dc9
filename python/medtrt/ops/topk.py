"""topk: activation (softmax / sigmoid / none) and the k best classes per row, fused."""

from __future__ import annotations

from typing import Any

from medtrt._lazy import require
from medtrt._native import native
from medtrt.ops._common import cuda_stream, dtype_name, is_tensor, require_cuda

__all__ = ["topk"]


def topk(logits: Any, k: int, *, activation: str = "softmax") -> tuple[Any, Any]:
    """Scores and class indices of the k best classes of each row.

    Args:
        logits: [B, C] float32 or float16; a NumPy array or a CPU tensor runs the CPU kernel,
            a CUDA tensor the CUDA kernel (one warp per row, torch's current stream).
        k: number of classes to return, 1 <= k <= C.
        activation: "softmax" (max-subtracted, numerically stable), "sigmoid" or "none".

    Returns:
        (scores float32 [B, k], indices int32 [B, k]), each row sorted by score descending,
        ties broken by the lower index, NaN scores last. NumPy in, NumPy out; tensors in,
        tensors on the same device out.
    """
    c = native()
    if not is_tensor(logits):
        return c.topk_cpu(logits, k, activation)
    torch = require("torch")
    if logits.device.type == "cpu":
        scores, indices = c.topk_cpu(logits.numpy(), k, activation)
        return torch.from_numpy(scores), torch.from_numpy(indices)
    if logits.device.type != "cuda":
        raise ValueError(f"topk: expected a NumPy array, a CPU or a CUDA tensor; got {logits.device}")
    require_cuda("topk")
    x = logits.contiguous()
    name = dtype_name(x.dtype)
    batch, kk = c.topk_check(tuple(x.shape), name, k, activation)
    scores = torch.empty((batch, kk), dtype=torch.float32, device=x.device)
    indices = torch.empty((batch, kk), dtype=torch.int32, device=x.device)
    with torch.cuda.device(x.device):
        c.topk_cuda(
            x.data_ptr(), tuple(x.shape), name, k, activation,
            scores.data_ptr(), indices.data_ptr(), cuda_stream(x.device),
        )
    return scores, indices
