"""medtrt.Engine: images in, top-k out, from a bundle, an ONNX file or a checkpoint.

This is the CPU slice of the runtime: pre-processing (``resize_normalize``) and post-processing
(``topk``) run through the compiled CPU twins, and the compute stage is ONNX Runtime (CPU) or
the PyTorch model. The pinned, double-buffered GPU pipeline (C++ ``Pipeline``) and the
TensorRT execution stage are not built yet: a bundle is validated (files, TensorRT flavour and
version, GPU) and, where TensorRT cannot run it, its precision ONNX runs in ONNX Runtime.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from medtrt._lazy import require
from medtrt.errors import ImageReadError, MedtrtError
from medtrt.models.presets import Preset
from medtrt.runtime.results import Result, Results, failed

__all__ = ["Engine", "BundleError"]

BACKENDS = ("auto", "tensorrt", "torch", "onnxruntime")


class BundleError(MedtrtError, ValueError):
    """An engine bundle is incomplete, damaged, or built for another TensorRT or GPU."""


def _read_bundle(path: Path) -> tuple[dict[str, Any], Path]:
    json_path = path if path.name.endswith(".engine.json") else path.with_name(path.name + ".json")
    engine = json_path.with_name(json_path.name[: -len(".json")])
    if not json_path.is_file():
        raise BundleError(f"{json_path} is missing: an engine bundle is NAME.engine plus "
                          "NAME.engine.json (rebuild with `medtrt build`)")
    bundle = json.loads(json_path.read_text())
    if bundle.get("format") != "medtrt-engine-bundle/1":
        raise BundleError(f"{json_path} is not a medtrt engine bundle")
    if not engine.is_file():
        raise BundleError(f"engine file {engine} is missing; rebuild with `medtrt build`")
    size = engine.stat().st_size
    if size != bundle["engine_bytes"]:
        raise BundleError(f"engine file {engine} is {size} bytes but its bundle says "
                          f"{bundle['engine_bytes']} (truncated or replaced); rebuild with `medtrt build`")
    return bundle, engine


def check_bundle_runnable(bundle: dict[str, Any]) -> str:
    """Raise BundleError unless TensorRT can run this bundle here; returns the flavour."""
    from medtrt._native import cuda_ready
    from medtrt.trt import import_trt

    trt_info = bundle["tensorrt"]
    try:
        trt, flavour = import_trt(trt_info["flavour"])
    except ImportError as exc:
        raise BundleError(f"the engine was built with {trt_info['flavour']} "
                          f"{trt_info['version']}, which is not installed here ({exc})") from exc
    if str(trt.__version__) != trt_info["version"]:
        raise BundleError(f"the engine was built with {flavour} {trt_info['version']} but "
                          f"{trt.__version__} is installed; rebuild with `medtrt build` here")
    ok, why = cuda_ready()
    if not ok:
        raise BundleError(f"running a TensorRT engine needs a CUDA GPU: {why}; use "
                          "backend='onnxruntime' (runs the bundle's precision ONNX on the CPU)")
    built_gpu = bundle.get("build_machine", {}).get("gpu")
    if flavour == "tensorrt" and built_gpu:
        torch = require("torch")
        here = torch.cuda.get_device_name(0)
        if here != built_gpu:
            raise BundleError(f"the engine was built on {built_gpu} but this GPU is {here}; "
                              "TensorRT engines are GPU-specific: rebuild with `medtrt build` here")
    return flavour


class _OnnxRuntime:
    name = "onnxruntime"

    def __init__(self, onnx_path: Path) -> None:
        ort = require("onnxruntime")
        self.session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.device = "cpu"

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input: x})[0].astype(np.float32)


class _Torch:
    name = "torch"

    def __init__(self, checkpoint: Path, device: Any) -> None:
        torch = require("torch")
        from medtrt.models import load

        self.torch = torch
        model, _ = load(checkpoint)
        self.device = str(device if torch.cuda.is_available() else "cpu") if device != "cpu" else "cpu"
        if self.device != "cpu" and not self.device.startswith("cuda"):
            self.device = f"cuda:{self.device}"
        self.model = model.to(self.device).eval()
        self.lock = threading.Lock()  # one module, many threads: serialise forward passes

    def run(self, x: np.ndarray) -> np.ndarray:
        t = self.torch.from_numpy(x).to(self.device)
        with self.lock, self.torch.inference_mode():
            return self.model(t).float().cpu().numpy()


class Engine:
    """Inference on a (possibly ragged) batch of images; see ``infer``.

    Args:
        path: an engine bundle (``NAME.engine`` or ``NAME.engine.json``), an ONNX file from
            ``medtrt export``/``build``, or a checkpoint (``.pt``, torch backend).
        device: GPU index for GPU backends ("cpu" for the torch backend on the CPU).
        slots: pipeline slots (for the GPU pipeline; the CPU backends run one batch at a time).
        backend: "auto" (TensorRT for a bundle on a GPU, else ONNX Runtime; torch for a
            checkpoint), "tensorrt", "torch" or "onnxruntime".
        max_batch: largest batch per compute call; bigger batches are split (default: the
            bundle's profile max, else 64). Batches below the profile minimum are padded.
    """

    def __init__(self, path: str | os.PathLike[str], *, device: Any = 0, slots: int = 2,
                 backend: str = "auto", max_batch: int | None = None) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}; got {backend!r}")
        if slots < 1:
            raise ValueError(f"slots must be >= 1; got {slots}")
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist")
        self.path, self.slots = path, slots
        self.bundle: dict[str, Any] | None = None
        min_batch, profile_max = 1, None
        if path.name.endswith((".engine", ".engine.json")):
            self.bundle, engine_file = _read_bundle(path)
            self.preset = Preset.from_dict(self.bundle["preset"])
            self.precision = self.bundle["precision"]
            profile = self.bundle["input"]["profile"]
            if backend in ("auto", "tensorrt"):
                try:
                    check_bundle_runnable(self.bundle)
                    raise BundleError("the TensorRT execution stage is not implemented yet (issue #5: "
                                      "pipeline); use backend='onnxruntime'")
                except BundleError:
                    if backend == "tensorrt":
                        raise
                backend = "onnxruntime"  # auto on a machine where TensorRT cannot run it
            if backend != "onnxruntime":
                raise ValueError(f"a bundle runs with backend 'tensorrt' or 'onnxruntime'; got {backend!r}")
            min_batch, profile_max = profile["min"][0], profile["max"][0]
            self._backend: Any = _OnnxRuntime(engine_file.with_name(self.bundle["precision_onnx"]))
        elif path.suffix == ".onnx":
            from medtrt.export import read_metadata

            if backend not in ("auto", "onnxruntime"):
                raise ValueError(f"an ONNX file runs with backend 'onnxruntime'; got {backend!r}")
            self.preset, _ = read_metadata(path)
            self.precision = _onnx_precision(path)
            self._backend = _OnnxRuntime(path)
        else:
            if backend not in ("auto", "torch"):
                raise ValueError(f"a checkpoint runs with backend 'torch'; got {backend!r}")
            from medtrt.models import load_checkpoint

            self.preset = Preset.from_dict(load_checkpoint(path)["preset"])
            self.precision = "fp32"
            self._backend = _Torch(path, device)
        self.backend = self._backend.name
        self.min_batch = min_batch
        self.max_batch = max_batch or profile_max or 64
        if self.max_batch < min_batch:
            raise ValueError(f"max_batch {self.max_batch} is below the engine's minimum batch {min_batch}")
        self._closed = False

    # -- public API -----------------------------------------------------------------------------

    def infer(self, batch: Any, *, k: int | None = None, return_probs: bool = False) -> Results:
        """Top-k for each item of ``batch``.

        ``batch``: a list of file paths, a list of arrays (H x W or H x W x C; uint8, uint16,
        int16 or float32; ragged sizes allowed), one [B, H, W] / [B, H, W, C] array, or a torch
        tensor. Pre-processing comes from the model's preset. An unreadable file gives that
        item an ``error`` and the rest of the batch goes on; a malformed array raises.
        """
        self._check_open()
        items, sources = _as_items(batch)
        if not items:
            raise ValueError("infer: expected at least one image; got an empty batch")
        k = min(5, self.preset.num_classes) if k is None else k
        if not 1 <= k <= self.preset.num_classes:
            raise ValueError(f"infer: k must be in [1, {self.preset.num_classes}]; got {k}")
        images: list[np.ndarray] = []
        where: list[int] = []
        results: list[Result | None] = [None] * len(items)
        for i, item in enumerate(items):
            try:
                images.append(self._load(item, i))
                where.append(i)
            except ImageReadError as exc:
                results[i] = failed(i, exc, sources[i])
        n, c = len(items), self.preset.num_classes
        scores = np.full((n, k), np.nan, np.float32)
        indices = np.full((n, k), -1, np.int32)
        probs_all = np.full((n, c), np.nan, np.float32) if return_probs else None
        logits_all = np.full((n, c), np.nan, np.float32) if return_probs else None
        if images:
            logits = self._compute(self._preprocess(images))
            s, idx, probs = self._postprocess(logits, k)
            scores[where], indices[where] = s, idx
            if return_probs:
                probs_all[where], logits_all[where] = probs, logits
            for row, i in enumerate(where):
                labels = tuple(self.preset.labels[j] for j in idx[row])
                positives = None
                if self.preset.activation == "sigmoid":
                    positives = tuple(self.preset.labels[j] for j in np.flatnonzero(
                        probs[row] > self.preset.threshold))
                results[i] = Result(i, idx[row], s[row], labels,
                                    probs[row] if return_probs else None,
                                    logits[row] if return_probs else None, positives, None, sources[i])
        return Results([r for r in results if r is not None], scores, indices, probs_all, logits_all)

    def infer_many(self, batches: Iterable[Any], *, batch_size: int | None = None,
                   k: int | None = None, return_probs: bool = False) -> Iterator[Results]:
        """Results for each batch of an iterable (of batches, or of single items when
        ``batch_size`` is given), preparing batch i+1 in a worker while batch i computes."""
        self._check_open()
        source = _chunks(batches, batch_size) if batch_size else iter(batches)
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = None
            for b in source:
                nxt = pool.submit(self.infer, b, k=k, return_probs=return_probs)
                if pending is not None:
                    yield pending.result()
                pending = nxt
            if pending is not None:
                yield pending.result()

    def close(self) -> None:
        self._closed = True
        self._backend = None

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        h, w = self.preset.image_size
        device = getattr(self._backend, "device", "closed") if self._backend else "closed"
        return (f"Engine({self.path.name!r}, backend={self.backend}, precision={self.precision}, "
                f"device={device}, input={self.preset.in_channels}x{h}x{w}, "
                f"labels={self.preset.num_classes}, max_batch={self.max_batch})")

    # -- internals --------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this Engine is closed")

    def _load(self, item: Any, index: int) -> np.ndarray:
        if isinstance(item, (str, os.PathLike)):
            from medtrt.data import read_image

            return read_image(item)
        arr = np.asarray(item)
        if arr.dtype.kind == "f":
            if arr.dtype != np.float32:
                arr = arr.astype(np.float32)
            if not np.isfinite(arr).all():
                raise ValueError(f"infer: item {index} contains NaN or Inf values; expected finite "
                                 "pixel values")
        channels = 1 if arr.ndim == 2 else arr.shape[-1] if arr.ndim == 3 else None
        if channels not in (1, 3):
            raise ValueError(f"infer: item {index} has shape {arr.shape}; this model expects "
                             f"H x W or H x W x C images with C in (1, 3) "
                             f"(it takes {self.preset.in_channels}-channel input; gray/RGB convert)")
        return arr

    def _preprocess(self, images: list[np.ndarray]) -> np.ndarray:
        from medtrt.ops import resize_normalize_mixed

        return resize_normalize_mixed(images, **self.preset.preprocess_kwargs())

    def _compute(self, x: np.ndarray) -> np.ndarray:
        out = []
        for start in range(0, len(x), self.max_batch):
            part = x[start:start + self.max_batch]
            n = len(part)
            if n < self.min_batch:  # pad to the profile minimum; padded rows are dropped
                part = np.concatenate([part, np.repeat(part[-1:], self.min_batch - n, axis=0)])
            out.append(self._backend.run(np.ascontiguousarray(part))[:n])
        return np.concatenate(out)

    def _postprocess(self, logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        from medtrt.ops import topk

        ranked, order = topk(np.ascontiguousarray(logits, np.float32), self.preset.num_classes,
                             activation=self.preset.activation)
        probs = np.empty_like(ranked)  # back to class order
        np.put_along_axis(probs, order.astype(np.int64), ranked, axis=1)
        return ranked[:, :k].copy(), order[:, :k].copy(), probs


def _onnx_precision(path: Path) -> str:
    onnx = require("onnx")
    model = onnx.load(str(path), load_external_data=False)
    ops = {n.op_type for n in model.graph.node}
    if "QuantizeLinear" in ops:
        return "int8"
    if any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer):
        return "fp16"
    return "fp32"


def _as_items(batch: Any) -> tuple[list[Any], list[str | None]]:
    from medtrt.ops._common import is_tensor

    if is_tensor(batch):
        batch = batch.detach().cpu().numpy()
    if isinstance(batch, np.ndarray):
        if batch.ndim not in (3, 4):
            raise ValueError(f"infer: expected a list of images or one [B, H, W] / [B, H, W, C] "
                             f"array; got an array of shape {batch.shape} (wrap one image in a list)")
        items: list[Any] = list(batch)
    elif isinstance(batch, (str, os.PathLike)):
        raise TypeError("infer: expected a list of paths or images; got a single path (wrap it in a list)")
    elif isinstance(batch, Sequence):
        items = [x.detach().cpu().numpy() if is_tensor(x) else x for x in batch]
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
