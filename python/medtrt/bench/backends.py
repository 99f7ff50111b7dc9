"""The ways `medtrt bench` runs a model (``Backend``: ``prepare`` outside the timing, ``call``
timed, ``sync``), and ``make_backend``, which builds one or says why it cannot run here.

Engine mode drives the compute stage itself (``StageCompute``): the stage that
``medtrt.runtime.loader`` gives the Engine for the same file, called over buffers the bench
allocates. Pipeline and files modes run ``medtrt.Engine`` (``EnginePipeline``). The baselines are
the NumPy + eager torch reference path and the seed's DataLoader.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medtrt.artifacts import Bundle
from medtrt.bench.buffers import BufferView, CudaBuffers, HostBuffers
from medtrt.bench.config import CPU_GRAPHS, CPU_RUNTIMES, NVJPEG
from medtrt.data import read_image
from medtrt.errors import BundleError, MissingDependencyError
from medtrt.models import load
from medtrt.precision.cpu_int8 import cpu_graph_path
from medtrt.reference import predict
from medtrt.runtime import Engine
from medtrt.runtime.loader import load_stage
from medtrt.runtime.stages import Stage

__all__ = ["Artifacts", "Backend", "BackendUnavailable", "EnginePipeline", "SeedDataLoader",
           "StageCompute", "TorchReference", "find_artifacts", "make_backend"]


class BackendUnavailable(Exception):
    """A backend cannot run here in this mode; ``reason`` says why (``bench.json``'s
    ``skipped``)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class Artifacts:
    """The model's files found beside its checkpoint (``find_artifacts``)."""

    checkpoint: Path
    onnx: dict[str, Path] = field(default_factory=dict)  # precision -> ONNX
    engines: dict[str, Path] = field(default_factory=dict)  # precision -> .engine bundle


def find_artifacts(model: str | os.PathLike[str]) -> Artifacts:
    ck = Path(model)
    if not ck.is_file():
        raise FileNotFoundError(f"model {ck} does not exist; pass a checkpoint (.pt) from "
                                "medtrt train, with its exports beside it")
    a = Artifacts(ck)
    stem = ck.stem
    for folder in (ck.parent, ck.parent / "engines"):
        for prec in ("fp32", "fp16", "int8"):
            onnx = folder / (f"{stem}.onnx" if prec == "fp32" else f"{stem}.{prec}.onnx")
            if onnx.is_file():
                a.onnx.setdefault(prec, onnx)
            engine = folder / f"{stem}.{prec}.engine"
            if engine.is_file() and Path(f"{engine}.json").is_file():
                a.engines.setdefault(prec, engine)
    return a


class Backend:
    """One way of running the model; ``call(inputs)`` is what gets timed."""

    stage_times: dict[str, float] | None = None
    choice: Any = None  # backend="auto": how the CPU runtime was chosen (a BackendChoice)

    def __init__(self, name: str) -> None:
        self.name = name

    def prepare(self, batch: int, inputs: Any) -> Any:  # move/convert inputs outside the timing
        return inputs

    def call(self, inputs: Any) -> None:
        raise NotImplementedError

    def sync(self) -> None:
        pass

    def close(self) -> None:
        pass


class StageCompute(Backend):
    """Engine mode: a compute stage called directly over buffers the bench allocates; inputs
    are pre-processed NCHW float32, converted to the stage's input dtype outside the timing.
    The stage comes from ``medtrt.runtime.loader`` (``load``), as the Engine's does, so both
    modes time the same calls: NumPy buffers for a CPU stage, device tensors and a stream of the
    backend's own for a CUDA one (``CudaBuffers``). Batches above the engine profile's maximum
    run as several calls, below its minimum are padded, as ``Engine.infer`` does."""

    def __init__(self, name: str, stage: Stage, input_shape: tuple[int, ...], classes: int, *,
                 min_batch: int = 1, max_batch: int | None = None) -> None:
        super().__init__(name)
        self.stage, self.min_batch, self.max_batch = stage, min_batch, max_batch
        self.buffers = (HostBuffers(input_shape, classes) if stage.device == "cpu" else
                        CudaBuffers(input_shape, classes, stage.device))
        stage.bind(self.buffers)
        self._logits = 0

    @classmethod
    def load(cls, name: str, path: Path, backend: str, device: Any,
             **options: Any) -> StageCompute:
        """The loader's stage for ``path``; BackendUnavailable where it would not run where the
        backend's name says (the loader has logged the fallback)."""
        loaded = load_stage(path, backend, device, **options)
        if loaded.fallback:
            loaded.stage.close()
            raise BackendUnavailable(loaded.fallback)
        p = loaded.preset
        try:
            backend = cls(name, loaded.stage, (p.in_channels, *p.image_size), p.num_classes,
                          min_batch=loaded.min_batch, max_batch=loaded.profile_max)
            backend.choice = loaded.backend_choice
            return backend
        except BaseException:
            loaded.stage.close()
            raise

    def prepare(self, batch: int, inputs: Any) -> list[tuple[int, int]]:
        """The batch in the stage's buffers, split at the profile's maximum and each part padded
        to its minimum (repeating its last image): (address, rows) per call."""
        self.buffers.clear()
        x = np.asarray(inputs)
        step = self.max_batch or len(x)
        parts = []
        for start in range(0, len(x), step):
            part = x[start:start + step]
            if len(part) < self.min_batch:
                part = np.concatenate([part, np.repeat(part[-1:], self.min_batch - len(part), 0)])
            parts.append(part)
        self._logits = self.buffers.empty(max(len(p) for p in parts), self.stage.logits_dtype)
        return [(self.buffers.put(p, self.stage.input_dtype), len(p)) for p in parts]

    def call(self, inputs: list[tuple[int, int]]) -> None:
        for address, rows in inputs:
            self.stage(BufferView(slot=0, batch=rows, stream=self.buffers.stream,
                                  input=address, logits=self._logits))

    def logits(self, rows: int) -> np.ndarray:
        """The latest call's logits (of its last part), as float32 on the host."""
        return self.buffers.read(self._logits, rows)

    def sync(self) -> None:
        self.buffers.sync()

    def close(self) -> None:
        self.buffers.clear()
        self.stage.close()


class EnginePipeline(Backend):
    """medtrt.Engine: host images -> top-k on the host; files mode: paths, decoded in a thread
    pool (or by nvJPEG on the GPU, decode="nvjpeg") while earlier batches run (infer_many keeps
    the slots busy)."""

    def __init__(self, name: str, path: Path, decode_threads: int, **kwargs: Any) -> None:
        super().__init__(name)
        self.engine = Engine(path, **kwargs)
        self.choice = self.engine.backend_choice
        self.files = bool(decode_threads) or self.engine.decode == "nvjpeg"
        self.pool = (ThreadPoolExecutor(decode_threads)
                     if decode_threads and self.engine.decode == "cpu" else None)
        self.batch = 1

    def prepare(self, batch: int, inputs: Any) -> Any:
        self.batch = batch
        return inputs

    def call(self, inputs: Any) -> None:
        if self.files:
            # nvJPEG: the engine reads the paths (its decoder, in infer_many's reader thread)
            source = inputs if self.pool is None else self.pool.map(read_image, inputs)
            for _ in self.engine.infer_many(source, batch_size=self.batch, k=1):
                pass
            self.stage_times = None
            return
        self.engine.infer(inputs, k=1)
        times: dict[str, float] = {}
        for part in self.engine.last_stage_times:
            for k, v in part.items():
                times[k] = times.get(k, 0.0) + v
        self.stage_times = times

    def close(self) -> None:
        self.engine.close()
        if self.pool:
            self.pool.shutdown()


class TorchReference(Backend):
    """Host images -> NumPy pre-processing (float64 reference) -> eager torch -> top-k."""

    def __init__(self, name: str, checkpoint: Path) -> None:
        super().__init__(name)
        self.model, self.preset = load(checkpoint)

    def call(self, inputs: Any) -> None:
        predict(self.model, inputs, preset=self.preset, k=1, batch_size=max(len(inputs), 1))


class SeedDataLoader(Backend):
    """The seed's CPU path: DataLoader + Pillow decode + eager model, batch 32 (fixed)."""

    BATCH = 32

    def __init__(self, name: str, checkpoint: Path, workers: int) -> None:
        super().__init__(name)
        import torch

        self.torch = torch
        self.model, self.preset = load(checkpoint)
        self.workers = workers

    def prepare(self, batch: int, inputs: Any) -> Any:
        """One DataLoader per input set, with persistent workers: their start-up happens in the
        warm-up calls, not in every timed pass (as in a training/eval job's steady state)."""
        if getattr(self, "_for", None) is not inputs:
            self._for, self.loader = inputs, self._loader(inputs)
        return inputs

    def call(self, inputs: Any) -> None:
        torch = self.torch
        with torch.inference_mode():
            for x in self.loader:
                torch.topk(torch.softmax(self.model(x), 1), 1)

    def close(self) -> None:
        self.loader = self._for = None  # ends the persistent workers

    def _loader(self, inputs: Any) -> Any:
        torch = self.torch
        preset = self.preset
        size = tuple(preset.image_size)
        mean = np.asarray(preset.mean, np.float32).reshape(-1, 1, 1)
        std = np.asarray(preset.std, np.float32).reshape(-1, 1, 1)
        mode = "L" if preset.in_channels == 1 else "RGB"

        class Files(torch.utils.data.Dataset):
            def __len__(self) -> int:
                return len(inputs)

            def __getitem__(self, i: int) -> Any:
                from PIL import Image

                with Image.open(inputs[i]) as im:
                    arr = np.asarray(im.convert(mode).resize(size[::-1], Image.BILINEAR),
                                     np.float32) / 255.0
                arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
                return torch.from_numpy((arr - mean) / std)

        workers = self.workers if len(inputs) > self.BATCH else 0
        return torch.utils.data.DataLoader(Files(), batch_size=self.BATCH, num_workers=workers,
                                           persistent_workers=workers > 0)


def make_backend(name: str, mode: str, art: Artifacts, threads: int) -> Backend:
    """The backend ``name`` in ``mode``; BackendUnavailable with the reason where it cannot run
    here. ``threads``: ONNX Runtime's intra-op threads in engine mode, decode threads in files
    mode."""
    cuda_ok, why_no_cuda = _cuda()
    decode = threads if mode == "files" else 0
    if name.endswith(NVJPEG):
        return _nvjpeg_backend(name, mode, art, cuda_ok, why_no_cuda)
    if name in ("torch-reference", "seed-dataloader"):
        if name == "torch-reference" and mode != "pipeline":
            raise BackendUnavailable("the NumPy+eager reference path is the pipeline-mode baseline")
        if name == "seed-dataloader" and mode != "files":
            raise BackendUnavailable("the DataLoader+Pillow baseline reads files: files mode only")
        return (TorchReference(name, art.checkpoint) if name == "torch-reference"
                else SeedDataLoader(name, art.checkpoint, threads))
    if name.startswith("trt-"):
        bundle = _trt_bundle(name.split("-")[1], art)
        if mode == "engine":
            if not cuda_ok:
                raise BackendUnavailable("engine mode keeps inputs on the GPU through torch: "
                                         f"{why_no_cuda}")
            return StageCompute.load(name, bundle, "tensorrt", 0, slots=1)
        return EnginePipeline(name, bundle, decode, backend="tensorrt", device=0)
    if name.split("-")[0] in (*CPU_RUNTIMES, "auto"):
        return _cpu_backend(name, mode, art, threads, decode)
    return _torch_backend(name, mode, art, cuda_ok, why_no_cuda, decode)


def _cpu_backend(name: str, mode: str, art: Artifacts, threads: int, decode: int) -> Backend:
    """ort-cpu-P / ov-cpu-P: the P graph (model.onnx, model.P.onnx) in ONNX Runtime / OpenVINO;
    ort-cpu-int8cpu, ort/ov-cpu-int8fp32: the CPU graphs derived from the INT8 graph
    (``medtrt.precision.cpu_int8``); auto-cpu-P: the P bundle if there is one, else the P graph,
    with backend="auto" (``medtrt.runtime.cpu_choice``'s choice)."""
    prefix, _, prec = name.split("-")
    base = "int8" if prec in CPU_GRAPHS else prec
    if base not in art.onnx:
        raise BackendUnavailable(
            f"no {art.checkpoint.stem}{'' if base == 'fp32' else '.' + base}.onnx beside the "
            f"model: run medtrt export / medtrt build --{base}")
    graph = (cpu_graph_path(art.onnx[base], CPU_GRAPHS[prec]) if prec in CPU_GRAPHS else
             art.onnx[base])
    backend = CPU_RUNTIMES.get(prefix, "auto")
    if backend == "auto" and prec in art.engines:
        graph = art.engines[prec]
    try:
        if mode == "engine":
            return StageCompute.load(name, graph, backend, "cpu", threads=threads)
        return EnginePipeline(name, graph, decode, backend=backend, device="cpu")
    except MissingDependencyError as exc:  # OpenVINO not installed: the extra to install
        raise BackendUnavailable(str(exc)) from exc


def _torch_backend(name: str, mode: str, art: Artifacts, cuda_ok: bool, why_no_cuda: str,
                   decode: int) -> Backend:
    """torch-cpu-fp32 (eager, inference mode, NCHW), torch-cl-cpu-fp32 (eager, channels-last),
    torch-compile-cpu-fp32 (``torch.compile``, Inductor's C++ backend on the CPU; compiled in
    the warm-up calls of each batch size), torch-cuda-fp32/fp16 and torch-compile-cuda-fp16."""
    on_cuda = "cuda" in name
    if on_cuda and not cuda_ok:
        raise BackendUnavailable(why_no_cuda)
    precision = "fp16" if name.endswith("fp16") else "fp32"
    device = 0 if on_cuda else "cpu"
    if mode == "engine":
        return StageCompute.load(name, art.checkpoint, "torch", device, precision=precision,
                                 compile="compile" in name, channels_last="-cl-" in name)
    if "compile" in name or "-cl-" in name:
        raise BackendUnavailable("torch.compile and channels-last are measured in engine mode "
                                 "(the pipeline runs the eager stage)")
    return EnginePipeline(name, art.checkpoint, decode, backend="torch", device=device,
                          precision=precision)


def _nvjpeg_backend(name: str, mode: str, art: Artifacts, cuda_ok: bool,
                    why_no_cuda: str) -> Backend:
    """Files mode with the JPEGs decoded on the GPU (Engine(decode="nvjpeg"))."""
    if mode != "files":
        raise BackendUnavailable("nvJPEG decode applies to files mode")
    if not cuda_ok:
        raise BackendUnavailable(why_no_cuda)
    base = name[: -len(NVJPEG)]
    try:
        if base.startswith("trt-"):
            return EnginePipeline(name, _trt_bundle(base.split("-")[1], art), 0,
                                  backend="tensorrt", device=0, decode="nvjpeg")
        return EnginePipeline(name, art.checkpoint, 0, backend="torch", device=0,
                              decode="nvjpeg",
                              precision="fp16" if base.endswith("fp16") else "fp32")
    except MissingDependencyError as exc:  # the Engine's decoder says why nvJPEG cannot run
        raise BackendUnavailable(str(exc)) from exc


def _cuda() -> tuple[bool, str]:
    try:
        import torch
    except ImportError:
        return False, "torch is not installed"
    if not torch.cuda.is_available():
        return False, "no CUDA device visible to torch"
    return True, ""


def _trt_bundle(prec: str, art: Artifacts) -> Path:
    """The model's engine bundle at ``prec``; BackendUnavailable where TensorRT cannot run it
    here."""
    if prec not in art.engines:
        raise BackendUnavailable(f"no {art.checkpoint.stem}.{prec}.engine bundle: run medtrt "
                                 f"build --{prec}")
    try:
        bundle = Bundle.read(art.engines[prec])
    except BundleError as exc:
        raise BackendUnavailable(str(exc)) from exc
    why = bundle.why_not_runnable(0)
    if why:
        raise BackendUnavailable(why)
    return art.engines[prec]
