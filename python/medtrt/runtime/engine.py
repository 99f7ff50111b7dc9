"""medtrt.Engine: images in, top-k out, from a bundle, an ONNX file or a checkpoint.

Every backend runs through the compiled ``medtrt._C.Pipeline`` (csrc/runtime): on a GPU, N slots
with pinned staging, their own CUDA streams and buffers (H2D -> resize_normalize -> compute ->
topk -> D2H); on the CPU the same slot logic with the CPU twins. Compute stages live in
``medtrt.runtime.stages``, chosen and built by ``medtrt.runtime.loader`` (which validates a
bundle's files, TensorRT flavour and version and GPU, and where TensorRT cannot run it runs its
precision ONNX on the CPU, in ONNX Runtime or OpenVINO, whichever is faster on this machine).
The Engine schedules batches over the slots, prepares the inputs and assembles the results.
"""

from __future__ import annotations

import logging
import os
import sys
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medtrt._lazy import require
from medtrt._native import native
from medtrt.artifacts import Bundle
from medtrt.data import read_image
from medtrt.data.gpu_decode import NvjpegDecoder, device_image, upload
from medtrt.errors import BundleError, ImageReadError, MissingDependencyError
from medtrt.ops._common import is_tensor
from medtrt.ops.resize_normalize import make_options
from medtrt.runtime.loader import cuda_index, load_stage
from medtrt.runtime.results import Result, Results, failed
from medtrt.runtime.stages import Stage

__all__ = ["Engine", "BundleError"]

log = logging.getLogger(__name__)

DECODERS = ("cpu", "nvjpeg", "auto")


class _Flight:
    """Chunks of one caller in flight through the pipeline, oldest first.

    A caller that already has chunks in flight never blocks on acquire() (it collects its own
    oldest chunk to free a slot); only a caller with nothing in flight blocks. infer() holds no
    slot when it returns; an infer_many generator holds at most slots - 1 while suspended at a
    yield (none with slots=1), so a caller blocks only while a generator that holds slots is
    left unconsumed and every other slot is busy."""

    def __init__(self, engine: Engine, want_logits: bool) -> None:
        self.engine, self.want_logits = engine, want_logits
        # (slot, real rows, tag, the chunk: device images must live until their slot is collected)
        self.pending: deque[tuple[int, int, int, list[Any]]] = deque()
        self.done: dict[int, list[tuple[Any, ...]]] = {}

    def launch(self, images: list[Any], tag: int, producer: int | None = None) -> None:
        """Submits ``images`` in chunks of at most max_batch. ``producer``: the images are
        DeviceImages written on that CUDA stream (read in place once it gets there)."""
        e = self.engine
        pipe = e._pipeline
        for start in range(0, len(images), e.max_batch):
            chunk = images[start:start + e.max_batch]
            n = len(chunk)
            if n < e.min_batch:  # pad to the profile minimum; padded rows are dropped
                chunk = chunk + [chunk[-1]] * (e.min_batch - n)
            slot = pipe.try_acquire()
            while slot < 0 and self.pending:
                self._collect_oldest()
                slot = pipe.try_acquire()
            if slot < 0:
                slot = pipe.acquire()
            pipe.submit(chunk, e._stage, self.want_logits, slot, resident=producer is not None,
                        producer=producer)
            self.pending.append((slot, n, tag, chunk))

    def collect(self, tag: int) -> list[tuple[Any, ...]]:
        while any(t == tag for _, _, t, _ in self.pending):
            self._collect_oldest()
        return self.done.pop(tag, [])

    def drain(self) -> None:
        """Waits for everything in flight (after an error), dropping the results."""
        while self.pending:
            slot, _, _, _ = self.pending.popleft()
            try:
                self.engine._pipeline.wait(slot)
            except Exception:  # noqa: BLE001 - the first error is the one being raised
                pass

    def _collect_oldest(self) -> None:
        slot, n, tag, _ = self.pending.popleft()
        scores, indices, logits, times = self.engine._pipeline.wait(slot)
        self.done.setdefault(tag, []).append(
            (scores[:n], indices[:n], None if logits is None else logits[:n], times))


class Engine:
    """Inference on a (possibly ragged) batch of images; see ``infer``.

    Every backend runs through the compiled ``Pipeline``: images are packed into a slot's
    (pinned) staging, pre-processed by ``resize_normalize``, run by the compute stage, ranked by
    ``topk``, and copied back. On a GPU the slots have their own CUDA streams, so one batch
    uploads while another computes; on the CPU the same code runs the CPU twins.

    Args:
        path: an engine bundle (``NAME.engine`` or ``NAME.engine.json``), an ONNX file (from
            ``medtrt export``/``build``, or any with ``preset=``), or a checkpoint (``.pt``,
            torch backend).
        device: GPU index (or "cuda:N") for GPU backends; "cpu" runs the torch backend on the CPU.
        slots: pipeline slots, i.e. batches in flight at once (default 2: double buffering).
        backend: "auto" (TensorRT for a bundle on a GPU that can run it; torch for a
            checkpoint; else the graph on the CPU in ONNX Runtime or OpenVINO, whichever a short
            probe, cached per machine and model, finds faster: ``backend_choice`` says how it
            chose, ``MEDTRT_CPU_BACKEND=onnxruntime|openvino`` forces one), "tensorrt",
            "torch", "onnxruntime" or "openvino".
        max_batch: largest batch per compute call; bigger batches are split (default: the
            bundle's profile max, else 64). Batches below the profile minimum are padded.
        precision: torch backend only: "fp32" (default) or "fp16" (GPU).
        cuda_graphs: torch backend on a GPU: replay a CUDA graph per (slot, batch size).
        decode: how file paths are decoded on a GPU backend: "cpu" (default: the CPU readers in
            the calling thread), "nvjpeg" (batched nvJPEG decode on the GPU through torchvision;
            PNG/DICOM and JPEGs nvJPEG refuses go through the CPU readers), or "auto" (nvJPEG
            where it works). nvJPEG pixels differ from libjpeg's by about one grey level.
        preset: ONNX files only: the preset (a ``Preset``, preset file or built-in name) of a
            graph medtrt did not export (see ``medtrt.runtime.loader.load_stage``).

    CUDA tensors given to ``infer`` on a GPU backend are read where they are (no host copy),
    after the caller's current stream has reached the ``infer`` call.
    """

    def __init__(self, path: str | os.PathLike[str], *, device: Any = 0, slots: int = 2,
                 backend: str = "auto", max_batch: int | None = None,
                 precision: str | None = None, cuda_graphs: bool = False,
                 decode: str = "cpu", preset: Any = None) -> None:
        if decode not in DECODERS:
            raise ValueError(f"decode must be one of {DECODERS}; got {decode!r}")
        path = Path(path)
        loaded = load_stage(path, backend, device, slots=slots, precision=precision,
                            cuda_graphs=cuda_graphs, preset=preset)
        self.path, self.slots = path, slots
        self.bundle: Bundle | None = loaded.bundle
        self.preset, self.precision = loaded.preset, loaded.precision
        # One rule for every backend: a fallback from what was asked for is logged (by the
        # loader) and kept.
        self.fallback: str | None = loaded.fallback
        # How "auto" chose the CPU runtime (Engine.backend), with the probe's images/s per
        # candidate (cpu_choice.BackendChoice); None where no choice was made.
        self.backend_choice = loaded.backend_choice
        try:
            self._start(loaded.stage, loaded.min_batch, loaded.profile_max, max_batch, decode)
        except BaseException:
            self._pipeline = None
            loaded.stage.close()
            raise

    def _start(self, stage: Stage, min_batch: int, profile_max: int | None,
               max_batch: int | None, decode: str) -> None:
        """The pipeline around ``stage``, its slots reserved, and the decoder."""
        self._stage = stage
        self.backend = stage.name
        self.device = stage.device
        self.min_batch = min_batch
        self.max_batch = max_batch or profile_max or 64
        if self.max_batch < min_batch:
            raise ValueError(f"max_batch {self.max_batch} is below the engine's minimum batch "
                             f"{min_batch}")
        if profile_max and self.max_batch > profile_max:
            raise ValueError(f"max_batch {self.max_batch} exceeds the engine's profile maximum "
                             f"{profile_max}; rebuild with a larger --batch max")
        options = make_options(**self.preset.preprocess_kwargs(), dtype=stage.input_dtype)
        self._pipeline = native().Pipeline(
            slots=self.slots, classes=self.preset.num_classes, preprocess=options,
            logits_dtype=stage.logits_dtype, activation=self.preset.activation,
            device="cpu" if self.device == "cpu" else cuda_index(self.device))
        stage.bind(self._pipeline)
        # Every slot sized for max_batch stored images of the model's input size now, not in
        # the middle of a run (a pinned allocation synchronizes the whole device). Presets store
        # uint8 pixels; each packed image starts 16-byte aligned. Larger images still grow it.
        h, w = self.preset.image_size
        packed = -(-self.preset.in_channels * h * w // 16) * 16
        self._pipeline.reserve(self.max_batch, self.max_batch * packed)
        self._decoder = _make_decoder(decode, self.device)
        self.decode = "nvjpeg" if self._decoder else "cpu"
        self.last_stage_times: list[dict[str, float]] = []  # per chunk of the latest infer()
        self._closed = False

    # -- public API -----------------------------------------------------------------------------

    def infer(self, batch: Any, *, k: int | None = None, return_probs: bool = False) -> Results:
        """Top-k for each item of ``batch``.

        ``batch``: a list of file paths, a list of arrays (H x W or H x W x C; uint8, uint16,
        int16 or float32; ragged sizes allowed; dtypes may differ), one [B, H, W] /
        [B, H, W, C] array, or a torch tensor (CPU or CUDA: on a GPU backend a CUDA tensor is
        read in place, after the current stream; else it is copied to the host).
        Pre-processing comes from the model's preset. An unreadable file gives that item an
        ``error`` and the rest of the batch goes on; a malformed array raises.
        """
        self._check_open()
        producer = self._producer()
        prepared = self._prepare(batch, k, producer)
        flight = _Flight(self, return_probs)
        try:
            flight.launch(prepared.images, 0, prepared.producer)
            return self._results(prepared, flight.collect(0), return_probs)
        finally:
            flight.drain()

    def infer_many(self, batches: Iterable[Any], *, batch_size: int | None = None,
                   k: int | None = None, return_probs: bool = False) -> Iterator[Results]:
        """Results for each batch of an iterable (of batches, or of single items when
        ``batch_size`` is given). Batch i+1 is read in a worker thread and submitted before
        batch i is collected, so the slots stay busy."""
        self._check_open()
        source = _chunks(batches, batch_size) if batch_size else iter(batches)
        flight = _Flight(self, return_probs)
        producer = self._producer()  # the caller's stream, also for batches read in the worker
        with ThreadPoolExecutor(max_workers=1) as pool:
            try:
                first = next(source, None)
                if first is None:
                    return
                reading = pool.submit(self._prepare, first, k, producer)
                previous: tuple[int, _Prepared] | None = None
                tag = 0
                while reading is not None:
                    prepared = reading.result()
                    nxt = next(source, None)
                    reading = (pool.submit(self._prepare, nxt, k, producer) if nxt is not None
                               else None)
                    flight.launch(prepared.images, tag, prepared.producer)
                    if previous is not None:
                        done = flight.collect(previous[0])
                        # Across the yield keep at most slots - 1 chunks in flight, so the
                        # consumer (or another thread) can still get a slot for its own work.
                        while len(flight.pending) > self.slots - 1:
                            flight._collect_oldest()
                        yield self._results(previous[1], done, return_probs)
                    previous = (tag, prepared)
                    tag += 1
                if previous is not None:
                    yield self._results(previous[1], flight.collect(previous[0]), return_probs)
            finally:
                flight.drain()

    def memory(self) -> dict[str, int]:
        """Bytes of pinned host and device memory the pipeline holds, and how often it grew
        (construction reserves every slot for ``max_batch`` uint8 images of the input size)."""
        self._check_open()
        return dict(self._pipeline.memory())

    def close(self) -> None:
        self._closed = True
        self._pipeline = None  # drains the slots (the C++ destructor waits on their streams)
        stage = getattr(self, "_stage", None)
        if stage is not None:
            stage.close()
        self._stage = None
        if getattr(self, "_decoder", None) is not None:
            self._decoder.close()
            self._decoder = None

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        h, w = self.preset.image_size
        device = "closed" if self._closed else self.device
        return (f"Engine({self.path.name!r}, backend={self.backend}, precision={self.precision}, "
                f"device={device}, slots={self.slots}, decode={self.decode}, "
                f"input={self.preset.in_channels}x{h}x{w}, labels={self.preset.num_classes}, "
                f"max_batch={self.max_batch}"
                + (f", fallback={self.fallback!r})" if self.fallback else ")"))

    # -- internals --------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this Engine is closed")

    def _producer(self) -> Any:
        """The calling thread's current CUDA stream on a GPU backend (what CUDA inputs were
        written on), else None."""
        if self.device == "cpu" or (self._decoder is None and "torch" not in sys.modules):
            return None  # no torch loaded: no CUDA tensor exists (TensorRT without torch)
        torch = require("torch")
        return torch.cuda.current_stream(self.device)

    def _prepare(self, batch: Any, k: int | None, producer: Any = None) -> _Prepared:
        items, sources = _as_items(batch, keep_cuda=producer is not None)
        if not items:
            raise ValueError("infer: expected at least one image; got an empty batch")
        k = min(5, self.preset.num_classes) if k is None else k
        if not 1 <= k <= self.preset.num_classes:
            raise ValueError(f"infer: k must be in [1, {self.preset.num_classes}]; got {k}")
        prepared = _Prepared(len(items), sources, k)
        decoded: dict[int, Any] = {}
        if self._decoder is not None:
            paths = [i for i, s in enumerate(sources) if s is not None]
            if paths:
                decoded = dict(zip(paths, self._decoder.decode([items[i] for i in paths])))
        for i, item in enumerate(items):
            try:
                if i in decoded:
                    if isinstance(decoded[i], ImageReadError):
                        raise decoded[i]
                    image = decoded[i]
                    self._check_channels(image.shape, i)
                elif _is_cuda(item):
                    image = self._load_cuda(item, i, producer)
                else:
                    image = self._load(item, i)
                prepared.images.append(image)
                prepared.where.append(i)
            except ImageReadError as exc:
                prepared.failures[i] = failed(i, exc, sources[i])
        if prepared.where and all(i in decoded for i in prepared.where):
            # Every image came from the decoder: read after the decoder's stream alone.
            prepared.producer = self._decoder.stream_handle
        elif any(not isinstance(x, np.ndarray) for x in prepared.images):
            # A resident batch: every image in device memory (host arrays uploaded on the
            # producer stream), read in place after that stream (which waits for the decoder).
            self._check_finite_cuda(prepared.images, prepared.where, producer)
            torch = require("torch")
            if decoded:
                producer.wait_stream(self._decoder.stream)
            with torch.cuda.stream(producer):
                prepared.images = [upload(x, self.device) if isinstance(x, np.ndarray) else x
                                   for x in prepared.images]
            prepared.producer = int(producer.cuda_stream)
        return prepared

    def _results(self, p: _Prepared, parts: list[tuple[Any, ...]], return_probs: bool) -> Results:
        n, c, k = p.count, self.preset.num_classes, p.k
        scores = np.full((n, k), np.nan, np.float32)
        indices = np.full((n, k), -1, np.int32)
        probs_all = np.full((n, c), np.nan, np.float32) if return_probs else None
        logits_all = np.full((n, c), np.nan, np.float32) if return_probs else None
        results: list[Result | None] = [p.failures.get(i) for i in range(n)]
        self.last_stage_times = [part[3] for part in parts]
        if p.where:
            ranked = np.concatenate([part[0] for part in parts])
            order = np.concatenate([part[1] for part in parts])
            probs = np.empty_like(ranked)  # back to class order
            np.put_along_axis(probs, order.astype(np.int64), ranked, axis=1)
            where = np.asarray(p.where)
            scores[where], indices[where] = ranked[:, :k], order[:, :k]
            logits = np.concatenate([part[2] for part in parts]) if return_probs else None
            if return_probs:
                probs_all[where], logits_all[where] = probs, logits
            for row, i in enumerate(p.where):
                idx = order[row, :k].copy()
                labels = tuple(self.preset.labels[j] for j in idx)
                positives = None
                if self.preset.activation == "sigmoid":
                    positives = tuple(self.preset.labels[j] for j in np.flatnonzero(
                        probs[row] > self.preset.threshold))
                results[i] = Result(i, idx, ranked[row, :k].copy(), labels,
                                    probs[row] if return_probs else None,
                                    logits[row] if logits is not None else None, positives, None,
                                    p.sources[i])
        return Results([r for r in results if r is not None], scores, indices, probs_all, logits_all)

    def _load(self, item: Any, index: int) -> np.ndarray:
        if isinstance(item, (str, os.PathLike)):
            return read_image(item)
        arr = np.asarray(item)
        if arr.dtype.kind == "f":
            if arr.dtype != np.float32:
                arr = arr.astype(np.float32)
            if not np.isfinite(arr).all():
                raise ValueError(f"infer: item {index} contains NaN or Inf values; expected finite "
                                 "pixel values")
        self._check_channels(arr.shape, index)
        return np.ascontiguousarray(arr)

    def _load_cuda(self, tensor: Any, index: int, producer: Any) -> Any:
        """A CUDA tensor as a DeviceImage on this engine's GPU (moved there if elsewhere)."""
        torch = require("torch")
        self._check_channels(tuple(tensor.shape), index)
        with torch.cuda.stream(producer):
            return device_image(tensor.detach(), self.device)

    @staticmethod
    def _check_finite_cuda(images: list[Any], where: list[int], producer: Any) -> None:
        """NaN/Inf in float CUDA images, with one device-to-host sync for the whole batch."""
        floats = [(i, x) for i, x in zip(where, images)
                  if not isinstance(x, np.ndarray) and x.dtype == "float32"]
        if not floats:
            return
        torch = require("torch")
        with torch.cuda.stream(producer):
            finite = torch.stack([torch.isfinite(x.tensor).all() for _, x in floats]).tolist()
        bad = [i for (i, _), ok in zip(floats, finite) if not ok]
        if bad:
            raise ValueError(f"infer: item {bad[0]} contains NaN or Inf values (items {bad}); "
                             "expected finite pixel values")

    def _check_channels(self, shape: tuple[int, ...], index: int) -> None:
        channels = 1 if len(shape) == 2 else shape[-1] if len(shape) == 3 else None
        if channels not in (1, 3):
            raise ValueError(f"infer: item {index} has shape {tuple(shape)}; this model expects "
                             f"H x W or H x W x C images with C in (1, 3) "
                             f"(it takes {self.preset.in_channels}-channel input; gray/RGB convert)")


@dataclass
class _Prepared:
    """One batch after reading: the images that could be read and the failures."""

    count: int
    sources: list[str | None]
    k: int
    images: list[Any] = field(default_factory=list)  # NumPy arrays, or DeviceImages
    where: list[int] = field(default_factory=list)
    failures: dict[int, Result] = field(default_factory=dict)
    producer: int | None = None  # a resident batch: the CUDA stream its images were written on


def _make_decoder(decode: str, device: str) -> Any:
    """An NvjpegDecoder for decode='nvjpeg'/'auto' on a GPU backend, else None."""
    if decode == "cpu":
        return None
    if device == "cpu":
        if decode == "nvjpeg":
            raise ValueError("decode='nvjpeg' decodes on the GPU; this engine runs on the CPU "
                             "(use decode='cpu', or a GPU backend)")
        return None
    try:
        return NvjpegDecoder(cuda_index(device))
    except MissingDependencyError:
        if decode == "auto":
            return None
        raise


def _is_cuda(x: Any) -> bool:
    return is_tensor(x) and x.is_cuda


def _as_items(batch: Any, keep_cuda: bool = False) -> tuple[list[Any], list[str | None]]:
    """The items of a batch; torch tensors become NumPy arrays, except CUDA tensors when
    ``keep_cuda`` (a GPU backend reads them in place)."""
    def host(x: Any) -> Any:
        return x if keep_cuda and x.is_cuda else x.detach().cpu().numpy()

    if is_tensor(batch):
        batch = host(batch)
    if isinstance(batch, np.ndarray) or is_tensor(batch):  # is_tensor: a CUDA tensor kept
        if batch.ndim not in (3, 4):
            raise ValueError(f"infer: expected a list of images or one [B, H, W] / [B, H, W, C] "
                             f"array; got an array of shape {tuple(batch.shape)} "
                             "(wrap one image in a list)")
        items: list[Any] = list(batch)
    elif isinstance(batch, (str, os.PathLike)):
        raise TypeError("infer: expected a list of paths or images; got a single path (wrap it in a list)")
    elif isinstance(batch, Sequence):
        items = [host(x) if is_tensor(x) else x for x in batch]
    else:
        raise TypeError(f"infer: expected a list of paths or arrays, an array or a tensor; "
                        f"got {type(batch).__name__}")
    sources = [str(x) if isinstance(x, (str, os.PathLike)) else None for x in items]
    return items, sources


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    if size < 1:
        raise ValueError(f"batch_size must be >= 1; got {size}")
    chunk: list[Any] = []
    for x in items:
        chunk.append(x)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
