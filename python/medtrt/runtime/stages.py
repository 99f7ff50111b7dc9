"""Compute stages of the pipeline: network input -> logits for one slot's batch.

Every stage is a ``Stage``: it is bound once to what it runs inside (``bind``: the compiled
``Pipeline``, or ``medtrt bench``'s engine-mode buffers; a ``StageHost``), then called with a
``StageView`` (slot index, batch size, the slot's stream handle and the addresses of its network
input and logits buffers) after the upload and ``resize_normalize`` are enqueued on that stream.
It enqueues the network on the same stream, reading ``view.input`` and writing ``view.logits`` in
place, and returns without waiting. ``close`` frees what it holds (after the host has drained).
``medtrt.runtime.loader`` picks and builds the stage for a file.

- ``OnnxRuntimeStage``: CPU; the slot buffers are host memory (NumPy views).
- ``OpenVinoStage``: OpenVINO's own runtime on the CPU, over the same host views.
- ``TorchStage``: the PyTorch model on the CPU (host views) or on a CUDA GPU, where it runs on
  the slot's stream (``torch.cuda.ExternalStream``) over tensors that alias the slot's buffers;
  FP32 or FP16; optional CUDA graph per (slot, batch size).
- ``TensorRTStage``: one execution context per slot; ``set_input_shape``,
  ``set_tensor_address`` on the slot's buffers, ``execute_async_v3`` on the slot's stream.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from medtrt import _native
from medtrt._lazy import require

__all__ = ["OnnxRuntimeStage", "OpenVinoStage", "Stage", "StageHost", "StageView",
           "TensorRTStage", "TorchStage", "cuda_alias", "on_cuda_device"]

_TYPESTR = {"float32": "<f4", "float16": "<f2"}
_CAPTURE_LOCK = threading.Lock()
log = logging.getLogger(__name__)


class StageView(Protocol):
    """One call's batch: ``medtrt._C.SlotView``, or the bench's view of its own buffers.
    ``input``/``logits`` are addresses (device memory on a GPU, host memory on the CPU),
    ``stream`` a CUDA stream handle (0 on the CPU)."""

    @property
    def slot(self) -> int: ...
    @property
    def batch(self) -> int: ...
    @property
    def stream(self) -> int: ...
    @property
    def input(self) -> int: ...
    @property
    def logits(self) -> int: ...


class StageHost(Protocol):
    """What a stage is bound to: the model's input shape (C, H, W) and class count, and on the
    CPU the NumPy arrays behind a view's buffers ([batch, C, H, W] input, [batch, classes]
    logits, of the stage's dtypes)."""

    @property
    def input_shape(self) -> tuple[int, ...]: ...
    @property
    def classes(self) -> int: ...
    def host_input(self, view: StageView) -> np.ndarray: ...
    def host_logits(self, view: StageView) -> np.ndarray: ...


@runtime_checkable
class Stage(Protocol):
    """A compute stage: ``name`` (the backend), ``device`` ("cpu" or "cuda:N"), the dtypes it
    reads and writes ("float32" or "float16"), ``bind`` once, call per batch, ``close``."""

    name: str
    device: str
    input_dtype: str
    logits_dtype: str

    def bind(self, pipeline: StageHost) -> None: ...
    def __call__(self, view: StageView) -> None: ...
    def close(self) -> None: ...


@contextmanager
def on_cuda_device(index: int) -> Iterator[None]:
    """CUDA device ``index`` current for the calling thread inside the block, the previous one
    restored after (TensorRT deserializes and executes on the current device), unless the
    process has not used it (restoring would create a context there)."""
    c = _native.native()  # looked up per call (tests stand in for it)
    previous = c.cuda_current_device()
    if previous != index:
        c.cuda_set_device(index)
    try:
        yield
    finally:
        if previous != index:
            c.cuda_restore_device(previous)


def cuda_alias(address: int, shape: tuple[int, ...], dtype: str, device: str) -> Any:
    """A torch tensor over a pipeline device buffer (no copy; the pipeline owns the memory)."""
    torch = require("torch")

    class _Buffer:
        __cuda_array_interface__ = {"data": (address, False), "shape": shape,
                                    "typestr": _TYPESTR[dtype], "version": 2}

    t = torch.as_tensor(_Buffer(), device=device)
    if t.data_ptr() != address:  # torch copied (another device?): writes would be lost
        raise RuntimeError(f"torch copied the slot buffer at {address:#x} instead of aliasing "
                           f"it; is the pipeline on {device}?")
    return t


class OnnxRuntimeStage:
    """ONNX Runtime on the CPU for an ONNX file (FP32, FP16 or Q/DQ INT8), or a serialized
    graph (bytes). ``threads``: its intra-op threads (0: ONNX Runtime's default, one per
    core)."""

    name = "onnxruntime"
    device = "cpu"

    def __init__(self, onnx_path: str | Path | bytes, *, threads: int = 0) -> None:
        ort = require("onnxruntime")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        model = onnx_path if isinstance(onnx_path, bytes) else str(onnx_path)
        self.session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        inp, out = self.session.get_inputs()[0], self.session.get_outputs()[0]
        self.input_name = inp.name
        self.input_dtype = "float16" if inp.type == "tensor(float16)" else "float32"
        self.logits_dtype = "float16" if out.type == "tensor(float16)" else "float32"
        self.pipeline: StageHost | None = None

    def bind(self, pipeline: StageHost) -> None:
        self.pipeline = pipeline

    def __call__(self, view: StageView) -> None:
        x = self.pipeline.host_input(view)
        self.pipeline.host_logits(view)[...] = self.session.run(None, {self.input_name: x})[0]

    def close(self) -> None:
        self.session = None


class OpenVinoStage:
    """OpenVINO's own runtime (the ``openvino`` wheel) on the CPU for an ONNX file (FP32, FP16
    or Q/DQ INT8) or a serialized graph (bytes); ``threads``: its ``INFERENCE_NUM_THREADS``
    (0: OpenVINO's default, one per core).

    The native runtime, not ONNX Runtime's OpenVINO execution provider: the provider comes in
    ``onnxruntime-openvino``, a wheel that installs the ``onnxruntime`` package itself (it would
    replace the ONNX Runtime this project pins with its own older one, 1.24.1, carrying its own
    OpenVINO, 2025.4.1: 263 MB unpacked), and it was no faster: the same speed as this stage
    within run-to-run spread, FP32 and INT8 (docs/runtime.md, "CPU backends").

    Compiled with:

    - ``PERFORMANCE_HINT=LATENCY``: one stream, every thread on each call. The Pipeline calls a
      stage synchronously, one batch per caller; THROUGHPUT splits the cores into streams that
      only pay off with requests in flight at once (one request at a time, it was slower here:
      docs/runtime.md).
    - ``INFERENCE_PRECISION_HINT=f32``: on CPUs with AVX512_BF16 or AMX, OpenVINO's default
      inference precision is bf16 (on this project's Xeon it moved the demo model's logits by
      up to 0.16). FP32 here means FP32, as in ONNX Runtime, so parity holds; Q/DQ INT8 graphs
      still run OpenVINO's int8 kernels, and an FP16 graph computes in f32 from its f16 weights.
    - The graph's batch dimension as exported: a dynamic batch compiles once for every batch
      size (the Engine's chunks vary); a fixed one is padded to by the Engine.

    A compiled model is thread-safe, an infer request is not: one request per pipeline slot
    (made at the slot's first call), so callers in several threads, each in its own slot, never
    share one. Input is read in place (``share_inputs``); logits are copied out.
    """

    name = "openvino"
    device = "cpu"

    def __init__(self, onnx_path: str | Path | bytes, *, threads: int = 0) -> None:
        ov = require("openvino")
        core = ov.Core()
        model = core.read_model(onnx_path if isinstance(onnx_path, bytes) else str(onnx_path))
        if len(model.inputs) != 1 or len(model.outputs) != 1:
            raise ValueError(f"expected a graph with one input and one output; got "
                             f"{len(model.inputs)} inputs and {len(model.outputs)} outputs")
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self.compiled = core.compile_model(model, "CPU", config)
        self.input_dtype = self._dtype(ov, self.compiled.inputs[0].get_element_type())
        self.logits_dtype = self._dtype(ov, self.compiled.outputs[0].get_element_type())
        self.threads = threads
        self.pipeline: StageHost | None = None
        self._requests: dict[int, Any] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _dtype(ov: Any, element_type: Any) -> str:
        if element_type == ov.Type.f32:
            return "float32"
        if element_type == ov.Type.f16:
            return "float16"
        raise ValueError(f"graph I/O tensor of type {element_type}; medtrt feeds float32 or "
                         "float16")

    def bind(self, pipeline: StageHost) -> None:
        self.pipeline = pipeline

    def _request(self, slot: int) -> Any:
        request = self._requests.get(slot)
        if request is None:
            with self._lock:  # dict insertion from two slots' first calls at once
                request = self._requests.setdefault(slot, self.compiled.create_infer_request())
        return request

    def __call__(self, view: StageView) -> None:
        request = self._request(view.slot)
        request.infer({0: self.pipeline.host_input(view)}, share_inputs=True)
        self.pipeline.host_logits(view)[...] = request.get_output_tensor(0).data

    def close(self) -> None:
        self._requests.clear()
        self.compiled = None


class TorchStage:
    """The PyTorch reference model as the compute stage (CPU, or CUDA on the slot's stream).
    ``compile``: run it through ``torch.compile`` (compiled at the first call of each shape).
    ``channels_last``: the model's weights and each batch in NHWC memory order (what oneDNN's
    CPU convolutions prefer; measured 8% faster eager on a 2-core Xeon for the demo model)."""

    name = "torch"

    def __init__(self, model: Any, device: str, *, half: bool = False,
                 cuda_graphs: bool = False, compile: bool = False,
                 channels_last: bool = False) -> None:
        self.torch = require("torch")
        self.device = device
        self.cuda = device.startswith("cuda")
        if half and not self.cuda:
            raise ValueError("the torch backend runs FP16 on a CUDA GPU only; use precision='fp32' "
                             "on the CPU")
        if cuda_graphs and not self.cuda:
            raise ValueError("cuda_graphs=True needs a CUDA device")
        self.model = model.to(device).eval()
        self.channels_last = channels_last
        if channels_last:
            self.model = self.model.to(memory_format=self.torch.channels_last)
        if half:
            self.model = self.model.half()
        elif self.cuda and self.torch.backends.cudnn.allow_tf32:
            # PyTorch runs cuDNN convolutions in TF32 by default (10-bit mantissa): FP32 here
            # means FP32, so the parity checks hold. Process-wide: cuDNN reads the flag at launch.
            log.info("torch FP32 stage on %s: turning off cuDNN TF32 (torch.backends.cudnn."
                     "allow_tf32 = False) so FP32 convolutions run in FP32", device)
            self.torch.backends.cudnn.allow_tf32 = False
        if compile:
            self.model = self.torch.compile(self.model)
        self.input_dtype = self.logits_dtype = "float16" if half else "float32"
        self.cuda_graphs = cuda_graphs
        self.pipeline: StageHost | None = None
        self.shape: tuple[int, int, int] = (1, 1, 1)
        self.classes = 0
        self._graphs: dict[tuple[int, int, int, int], tuple[Any, Any]] = {}
        self._pools: dict[int, Any] = {}
        self._lock = threading.Lock()  # CPU: one forward at a time (intra-op threads do the rest)

    def bind(self, pipeline: StageHost) -> None:
        self.pipeline = pipeline
        self.shape = tuple(pipeline.input_shape)
        self.classes = pipeline.classes

    def close(self) -> None:
        """Drops the captured graphs, their memory pools and the model (after the host has
        drained)."""
        self._graphs.clear()
        self._pools.clear()
        self.model = None

    def __call__(self, view: StageView) -> None:
        torch = self.torch
        if not self.cuda:
            x = torch.from_numpy(self.pipeline.host_input(view))
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with self._lock, torch.inference_mode():
                y = self.model(x)
            self.pipeline.host_logits(view)[...] = y.numpy()
            return
        x = self._alias(view.input, (view.batch, *self.shape), self.input_dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        out = self._alias(view.logits, (view.batch, self.classes), self.logits_dtype)
        stream = torch.cuda.ExternalStream(view.stream, device=self.device)
        if self.cuda_graphs:
            self._replay(view, x, out, stream)
            return
        with torch.cuda.stream(stream), torch.inference_mode():
            out.copy_(self.model(x))

    def _alias(self, address: int, shape: tuple[int, ...], dtype: str) -> Any:
        return cuda_alias(address, shape, dtype, self.device)

    def _replay(self, view: StageView, x: Any, out: Any, stream: Any) -> None:
        torch = self.torch
        key = (view.slot, view.batch, view.input, view.logits)
        entry = self._graphs.get(key)
        if entry is None:
            with _CAPTURE_LOCK:  # one capture at a time in the process (torch's rule)
                entry = self._capture(key, view, x, out, stream)
        with torch.cuda.stream(stream):
            entry[0].replay()

    def _capture(self, key: tuple[int, int, int, int], view: StageView, x: Any, out: Any,
                 stream: Any) -> tuple[Any, Any]:
        """Captures the model for one (slot, batch, buffers). Graphs of a slot share one memory
        pool (its replays are serialised on its stream); graphs for buffers the slot no longer
        has are dropped. Suits fixed batch sizes: each new size is one more capture."""
        torch = self.torch
        for old in [k for k in self._graphs if k[0] == view.slot and k[2:] != key[2:]]:
            del self._graphs[old]
        pool = self._pools.setdefault(view.slot, torch.cuda.graph_pool_handle())
        # Capture on a side stream that first waits for this slot's pre-processing; warm-up
        # runs first (cuDNN picks its algorithms outside the capture).
        side = torch.cuda.Stream(device=self.device)
        side.wait_stream(stream)
        with torch.cuda.stream(side), torch.inference_mode():
            for _ in range(2):
                out.copy_(self.model(x))
        graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(graph, pool=pool, stream=side,
                                                      capture_error_mode="thread_local"):
            static_out = self.model(x)
            out.copy_(static_out)
        stream.wait_stream(side)
        self._graphs[key] = (graph, static_out)
        return self._graphs[key]


class TensorRTStage:
    """A TensorRT engine, one execution context per pipeline slot.

    Written against the TensorRT 10/11 Python API (name-based tensors, ``execute_async_v3``);
    the same calls exist in TensorRT-RTX. Not executed on any machine this project has run on
    (see README, "What has been run where").
    """

    name = "tensorrt"

    def __init__(self, trt: Any, engine_path: str | Path, slots: int, device: int) -> None:
        self.trt = trt
        self.engine_path = Path(engine_path)
        self.device = f"cuda:{device}"
        self.index = device
        with on_cuda_device(device):
            self._load(trt, engine_path, slots)
        self.shape: tuple[int, int, int] = (1, 1, 1)

    def _load(self, trt: Any, engine_path: str | Path, slots: int) -> None:
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
        if self.engine is None:
            raise RuntimeError(f"TensorRT could not deserialize {engine_path} (see the TensorRT "
                               "log above); rebuild it with `medtrt build` on this machine")
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise RuntimeError(f"expected an engine with one input and one output; got inputs "
                               f"{inputs} and outputs {outputs}")
        self.input_name, self.output_name = inputs[0], outputs[0]
        self.input_dtype = self._dtype(self.engine.get_tensor_dtype(self.input_name))
        self.logits_dtype = self._dtype(self.engine.get_tensor_dtype(self.output_name))
        self.contexts = [self.engine.create_execution_context() for _ in range(slots)]
        if any(c is None for c in self.contexts):
            raise RuntimeError("TensorRT could not create an execution context per slot "
                               "(out of GPU memory?); use fewer slots")

    def bind(self, pipeline: StageHost) -> None:
        """Checks once that the engine's tensors fit the pipeline: input [batch, C, H, W] of its
        input shape, output [batch, classes]; any batch, and -1 (dynamic) anywhere, fits."""
        self.shape = tuple(pipeline.input_shape)
        for name, want, what in ((self.input_name, (-1, *self.shape), "[batch, C, H, W]"),
                                 (self.output_name, (-1, pipeline.classes), "[batch, classes]")):
            got = tuple(int(d) for d in self.engine.get_tensor_shape(name))
            if len(got) != len(want) or any(g not in (-1, w) for g, w in zip(got[1:], want[1:])):
                raise ValueError(
                    f"TensorRT engine {self.engine_path}: tensor {name!r} has shape {got} but "
                    f"this model needs {what} = {want} (-1: any batch); the engine was built for "
                    "another model. Rebuild it from the bundle's ONNX with `medtrt build`, or use "
                    "the bundle the engine belongs to")

    def _dtype(self, dt: Any) -> str:
        if dt == self.trt.DataType.FLOAT:
            return "float32"
        if dt == self.trt.DataType.HALF:
            return "float16"
        raise RuntimeError(f"engine I/O tensor of type {dt}; medtrt feeds float32 or float16")

    def close(self) -> None:
        """Frees the contexts and the engine with their device current (call it after the
        pipeline has drained: Engine.close drops the pipeline first)."""
        with on_cuda_device(self.index):
            self.contexts = []
            self.engine = None

    def __call__(self, view: StageView) -> None:
        with on_cuda_device(self.index):  # Pipeline.submit has made it current already
            self._execute(view)

    def _execute(self, view: StageView) -> None:
        ctx = self.contexts[view.slot]
        if not ctx.set_input_shape(self.input_name, (view.batch, *self.shape)):
            raise RuntimeError(f"TensorRT refused input shape {(view.batch, *self.shape)} "
                               "(outside the engine's optimization profile)")
        ctx.set_tensor_address(self.input_name, view.input)
        ctx.set_tensor_address(self.output_name, view.logits)
        if not ctx.execute_async_v3(view.stream):
            raise RuntimeError("TensorRT execute_async_v3 failed (see the TensorRT log above)")

