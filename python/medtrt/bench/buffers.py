"""Engine mode's buffers: what a compute stage is bound to and called over in `medtrt bench`, in
place of the Pipeline's slots (one slot: the bench makes one call at a time)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from medtrt._lazy import require

__all__ = ["BufferView", "CudaBuffers", "HostBuffers"]


@dataclass(frozen=True)
class BufferView:
    """One call's batch in the bench's buffers (a ``medtrt.runtime.stages.StageView``)."""

    slot: int
    batch: int
    stream: int
    input: int
    logits: int


class HostBuffers:
    """A CPU stage's buffers: NumPy arrays the bench allocated, found by the addresses in the
    view, as the Pipeline's ``host_input``/``host_logits`` find a slot's (a ``StageHost``)."""

    stream = 0  # no CUDA stream on the CPU

    def __init__(self, input_shape: tuple[int, ...], classes: int) -> None:
        self.input_shape, self.classes = tuple(input_shape), classes
        self._arrays: dict[int, np.ndarray] = {}

    def put(self, x: np.ndarray, dtype: str) -> int:
        """A copy of ``x`` as ``dtype`` in a buffer of its own; its address."""
        return self._keep(np.array(x, dtype=dtype, order="C"))

    def empty(self, rows: int, dtype: str) -> int:
        return self._keep(np.empty((rows, self.classes), dtype))

    def read(self, address: int, rows: int) -> np.ndarray:
        return self._find(address, rows).astype(np.float32)

    def host_input(self, view: BufferView) -> np.ndarray:
        return self._find(view.input, view.batch)

    def host_logits(self, view: BufferView) -> np.ndarray:
        return self._find(view.logits, view.batch)

    def clear(self) -> None:
        self._arrays.clear()

    def sync(self) -> None:
        pass

    def _keep(self, a: np.ndarray) -> int:
        self._arrays[a.ctypes.data] = a
        return a.ctypes.data

    def _find(self, address: int, rows: int) -> np.ndarray:
        if address not in self._arrays:
            raise ValueError(f"no bench buffer at {address:#x}")
        return self._arrays[address][:rows]


class CudaBuffers:
    """A CUDA stage's buffers: torch tensors on its device, written on a CUDA stream of the
    backend's own, which the stage is called on and ``sync`` waits for (torch's current stream
    is the legacy default stream, on which TensorRT adds synchronisations). Tensors are made on
    that stream, so the copies are ordered before the calls and their memory is not reused while
    a call may still read it."""

    def __init__(self, input_shape: tuple[int, ...], classes: int, device: str) -> None:
        self.input_shape, self.classes = tuple(input_shape), classes
        self.torch, self.device = require("torch"), device
        self.cuda_stream = self.torch.cuda.Stream(device=device)
        self.stream = self.cuda_stream.cuda_stream
        self._tensors: dict[int, Any] = {}

    def put(self, x: np.ndarray, dtype: str) -> int:
        torch = self.torch
        with torch.cuda.stream(self.cuda_stream):
            t = torch.from_numpy(np.ascontiguousarray(x))
            return self._keep(t.to(self.device, getattr(torch, dtype)))

    def empty(self, rows: int, dtype: str) -> int:
        torch = self.torch
        with torch.cuda.stream(self.cuda_stream):
            return self._keep(torch.empty((rows, self.classes), dtype=getattr(torch, dtype),
                                          device=self.device))

    def read(self, address: int, rows: int) -> np.ndarray:
        self.sync()
        return self._tensors[address][:rows].float().cpu().numpy()

    def host_input(self, view: BufferView) -> np.ndarray:
        raise RuntimeError("a CUDA stage reads view.input on the device, not a host array")

    host_logits = host_input

    def clear(self) -> None:
        self._tensors.clear()

    def sync(self) -> None:
        self.cuda_stream.synchronize()

    def _keep(self, t: Any) -> int:
        t = t.contiguous()
        self._tensors[t.data_ptr()] = t
        return t.data_ptr()
