"""`medtrt bench`: backends side by side on one model, with telemetry.

Modes (what one timed call covers):
    engine    pre-processed NCHW float32 inputs already where the backend computes (host for CPU
              backends, device for CUDA ones) -> logits: compute only.
    pipeline  host uint8 images -> top-k on the host, through medtrt.Engine (pinned
              double-buffered slots on a GPU; the kernels' CPU twins on a CPU). The
              ``torch-reference`` baseline does the same with NumPy pre-processing + eager torch.
    files     a folder's worth of image files (as many as the largest batch; generated ones are
              JPEG like MedNIST's) -> top-k, one call per pass over all of them in batches of the
              given size: decode in a thread pool overlapped with the pipeline
              (Engine.infer_many). The ``+nvjpeg`` backends decode JPEGs on the GPU instead
              (batched nvJPEG, Engine(decode="nvjpeg")) and the pipeline reads them there. The
              ``seed-dataloader`` baseline is the seed case study's CPU path: a PyTorch
              DataLoader (Pillow decode, one worker per core) feeding the eager model, batch 32.

Several modes in one run (``mode="engine,pipeline"``) interleave them too, and each backend
that ran in two modes gets the ratio between them at each batch size (``mode_ratios``:
pipeline / engine is the share of compute-only throughput the whole pipeline keeps; #5 and #7
ask for >= 0.95 at batch 256 with the torch FP16 stage on a GPU).

Backends are interleaved: each repeat visits every batch size and every backend in turn, so
drift (thermal, other load) affects all alike; each (backend, batch) window runs warm-up calls
and then calls for ``duration`` seconds; figures are medians over repeats. A background thread
samples CPU utilisation and memory (psutil) and, where NVML works, GPU utilisation, memory,
power and temperature at ``telemetry_hz``; energy is the integral of power over a window.

Artifacts are found next to the checkpoint MODEL (the layout `make demo` and `medtrt build`
leave): ``<stem>.onnx`` (export) and ``<stem>.fp16|int8.onnx`` / ``.engine`` beside it or in
``engines/``. A backend whose artifact or hardware is missing is skipped with the reason.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

import medtrt
from medtrt._lazy import require
from medtrt.artifacts import Bundle
from medtrt.data import list_images, read_image
from medtrt.data.synth import CLASSES, render
from medtrt.errors import BundleError, MissingDependencyError
from medtrt.models import load
from medtrt.models.checkpoint import load_checkpoint
from medtrt.models.presets import Preset
from medtrt.ops import resize_normalize
from medtrt.reference import predict
from medtrt.runtime import Engine
from medtrt.runtime.stages import TensorRTStage
from medtrt.trt import import_trt

__all__ = ["BenchConfig", "BACKENDS", "MODES", "run_bench", "machine_info"]

MODES = ("engine", "pipeline", "files")
BACKENDS = ("torch-cpu-fp32", "torch-cuda-fp32", "torch-cuda-fp16", "torch-compile-cuda-fp16",
            "ort-cpu-fp32", "ort-cpu-fp16", "ort-cpu-int8", "trt-fp16", "trt-int8",
            "torch-cuda-fp16+nvjpeg", "trt-fp16+nvjpeg", "trt-int8+nvjpeg",
            "torch-reference", "seed-dataloader")
NVJPEG = "+nvjpeg"  # files mode: the same backend with JPEGs decoded on the GPU
DEFAULT_BASELINE = {"engine": "torch-cpu-fp32", "pipeline": "torch-reference",
                    "files": "seed-dataloader"}


@dataclass(frozen=True)
class BenchConfig:
    mode: str = "engine"
    batches: tuple[int, ...] = (1, 8, 32, 128, 256)
    backends: tuple[str, ...] | None = None  # None: every backend that applies to the mode
    duration: float = 3.0  # seconds of timed calls per (backend, batch, repeat)
    repeats: int = 3
    warmup: int = 2  # calls before timing, per (backend, batch), first repeat
    baseline: str | None = None  # default per mode (DEFAULT_BASELINE)
    data: str | None = None  # files mode: an image folder; default: generated files
    file_format: str = "jpeg"  # generated files: jpeg (as MedNIST) or png
    threads: int = 0  # decode threads / DataLoader workers; 0: cpu count
    telemetry_hz: float = 10.0
    seed: int = 0

    @property
    def modes(self) -> tuple[str, ...]:
        return tuple(m.strip() for m in self.mode.split(","))

    def __post_init__(self) -> None:
        bad = [m for m in self.modes if m not in MODES]
        if bad or len(set(self.modes)) != len(self.modes):
            raise ValueError(f"--mode must be one or more of {MODES}, comma-separated, each once; "
                             f"got {self.mode!r}")
        if not self.batches or min(self.batches) < 1:
            raise ValueError(f"--batch needs positive sizes; got {self.batches}")
        unknown = [b for b in (*(self.backends or ()), *([self.baseline] if self.baseline else []))
                   if b not in BACKENDS]
        if unknown:
            raise ValueError(f"unknown backend(s) {unknown}; expected some of {list(BACKENDS)}")
        if self.file_format not in ("jpeg", "png"):
            raise ValueError(f"file format must be jpeg or png; got {self.file_format!r}")
        if self.duration <= 0 or self.repeats < 1 or self.warmup < 0:
            raise ValueError("--duration must be > 0, repeats >= 1, warmup >= 0")


# ------------------------------------------------------------------------------- machine, telemetry


def machine_info(cwd: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Date, commit, host, CPU, GPU/driver and library versions for a benchmark record. The
    commit is $MEDTRT_COMMIT or that of the git checkout at ``cwd`` (default: the current
    directory, where `medtrt bench` is run from)."""
    def run(cmd: list[str]) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=30,
                                  cwd=cwd).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    cpu = ""
    if Path("/proc/cpuinfo").exists():
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = {"python": platform.python_version(), "numpy": np.__version__,
                "medtrt": medtrt.__version__}
    for mod in ("torch", "onnxruntime", "tensorrt", "tensorrt_rtx", "monai"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:
            pass
    gpu = run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"])
    return {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "commit": os.environ.get("MEDTRT_COMMIT") or run(["git", "rev-parse", "HEAD"]),
            "dirty": bool(run(["git", "status", "--porcelain", "--untracked-files=no"])),
            "host": platform.node(), "cpu": cpu, "cores": os.cpu_count(),
            "gpu": gpu.split(",")[0].strip() if gpu else None,
            "driver": gpu.split(",")[1].strip() if "," in gpu else None,
            "versions": versions, "build": medtrt.build_info()}


class Telemetry:
    """Background sampler: psutil CPU % and RSS; NVML GPU util, memory, power, temperature."""

    def __init__(self, hz: float) -> None:
        self.period = 1.0 / hz
        self.samples: list[dict[str, float]] = []
        self.nvml_status = "not tried"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._handle = None
        self._nvml = None
        try:
            import psutil

            self._proc = psutil.Process()
            psutil.cpu_percent(None)
            self._psutil = psutil
        except ImportError:
            self._psutil = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            self._nvml = pynvml
            self.nvml_status = "ok"
        except Exception as exc:  # no driver / library / GPU: GPU telemetry is absent, said so
            self.nvml_status = f"unavailable: {type(exc).__name__}: {exc}".strip()

    @property
    def has_gpu(self) -> bool:
        return self._nvml is not None

    def __enter__(self) -> Telemetry:
        self._t0 = time.perf_counter()
        self._thread = threading.Thread(target=self._loop, name="medtrt-telemetry", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        if self._nvml:
            try:
                self._nvml.nvmlShutdown()
            except Exception:
                pass

    def now(self) -> float:
        return time.perf_counter() - self._t0

    def _loop(self) -> None:
        while not self._stop.wait(self.period):
            s: dict[str, float] = {"t": self.now()}
            if self._psutil:
                s["cpu_percent"] = self._psutil.cpu_percent(None)
                s["rss_bytes"] = float(self._proc.memory_info().rss)
            if self._nvml:
                n, h = self._nvml, self._handle
                try:
                    s["gpu_util"] = float(n.nvmlDeviceGetUtilizationRates(h).gpu)
                    s["gpu_mem_bytes"] = float(n.nvmlDeviceGetMemoryInfo(h).used)
                    s["power_w"] = n.nvmlDeviceGetPowerUsage(h) / 1000.0
                    s["temp_c"] = float(n.nvmlDeviceGetTemperature(h, n.NVML_TEMPERATURE_GPU))
                except Exception:
                    pass
            self.samples.append(s)

    def window(self, t0: float, t1: float) -> dict[str, float | None]:
        rows = [s for s in self.samples if t0 <= s["t"] <= t1]

        def mean(k: str) -> float | None:
            v = [r[k] for r in rows if k in r]
            return float(np.mean(v)) if v else None

        def peak(k: str) -> float | None:
            v = [r[k] for r in rows if k in r]
            return float(np.max(v)) if v else None

        power = mean("power_w")
        # Mean sampled power x the window's length: the samples cover the window evenly, and
        # integrating between the first and last sample would drop its edges.
        energy = power * (t1 - t0) if power is not None else None
        return {"samples": len(rows), "cpu_percent": mean("cpu_percent"),
                "peak_rss_bytes": peak("rss_bytes"), "gpu_util": mean("gpu_util"),
                "peak_gpu_mem_bytes": peak("gpu_mem_bytes"), "power_w": mean("power_w"),
                "temp_c": peak("temp_c"), "energy_j": energy}


# ------------------------------------------------------------------------------------- backends


@dataclass
class Artifacts:
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


class TorchCompute(Backend):
    def __init__(self, name: str, checkpoint: Path, device: str, half: bool, compile_: bool) -> None:
        super().__init__(name)
        import torch

        self.torch = torch
        model, _ = load(checkpoint)
        model = model.to(device).eval()
        if half:
            model = model.half()
        self.model = torch.compile(model) if compile_ else model
        self.device, self.dtype = device, torch.float16 if half else torch.float32

    def prepare(self, batch: int, inputs: Any) -> Any:
        return self.torch.from_numpy(inputs).to(self.device, self.dtype)

    def call(self, inputs: Any) -> None:
        with self.torch.inference_mode():
            self.model(inputs)

    def sync(self) -> None:
        if self.device.startswith("cuda"):
            self.torch.cuda.synchronize()


class OrtCompute(Backend):
    def __init__(self, name: str, onnx: Path, threads: int) -> None:
        super().__init__(name)
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(onnx), opts, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def call(self, inputs: Any) -> None:
        self.session.run(None, {self.input: inputs})


class TensorRTCompute(Backend):
    """A TensorRT engine alone (engine mode): a device-resident input of the engine's dtype ->
    logits on the device, on a CUDA stream of its own (torch's current stream is the legacy
    default stream, on which TensorRT adds synchronisations); the execution context is driven by
    the pipeline's own TensorRT stage (one slot), so both modes time the same calls. Batches
    above the engine profile's maximum run as several calls, below its minimum are padded, as
    ``Engine.infer`` does."""

    device = "cuda:0"

    def __init__(self, name: str, bundle: Bundle) -> None:
        super().__init__(name)
        import torch

        trt, _ = import_trt(bundle.tensorrt.flavour)
        self.torch = torch
        self.stage = TensorRTStage(trt, bundle.engine_path, 1, 0)
        profile = bundle.input.profile
        self.min_batch, self.max_batch = profile.min[0], profile.max[0]
        # The stage's own shape check, against the bundle's input and labels (no pipeline here).
        self.stage.bind(SimpleNamespace(input_shape=profile.opt[1:],
                                        classes=bundle.output.classes))
        self.in_dtype = getattr(torch, self.stage.input_dtype)
        self.stream = torch.cuda.Stream(device=self.device)
        with torch.cuda.stream(self.stream):  # its memory belongs to the stream that uses it
            self.out = torch.empty((self.max_batch, bundle.output.classes),
                                   dtype=getattr(torch, self.stage.logits_dtype),
                                   device=self.device)

    def prepare(self, batch: int, inputs: Any) -> Any:
        """The batch on the device, split at the profile's maximum and each part padded to its
        minimum (outside the timing, like the other backends' host-to-device copies). Runs on
        the backend's stream, so the copies are ordered before its calls and their memory is
        not reused while a call may still read it."""
        from contextlib import nullcontext

        torch = self.torch
        cuda = self.device.startswith("cuda")
        with torch.cuda.stream(self.stream) if cuda else nullcontext():
            x = torch.from_numpy(np.ascontiguousarray(inputs)).to(self.device, self.in_dtype)
            chunks = []
            for s in range(0, len(x), self.max_batch):
                c = x[s:s + self.max_batch]
                if len(c) < self.min_batch:
                    c = torch.cat([c, c[-1:].expand(self.min_batch - len(c), *c.shape[1:])])
                chunks.append(c.contiguous())
        return chunks

    def call(self, inputs: Any) -> None:
        for c in inputs:
            self.stage(SimpleNamespace(slot=0, batch=len(c), input=c.data_ptr(),
                                       logits=self.out.data_ptr(),
                                       stream=self.stream.cuda_stream))

    def sync(self) -> None:
        self.stream.synchronize()


class EnginePipeline(Backend):
    """medtrt.Engine: host images -> top-k on the host; files mode: paths, decoded in a thread
    pool (or by nvJPEG on the GPU, decode="nvjpeg") while earlier batches run (infer_many keeps
    the slots busy)."""

    def __init__(self, name: str, path: Path, decode_threads: int, **kwargs: Any) -> None:
        super().__init__(name)
        self.engine = Engine(path, **kwargs)
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


def _cuda() -> tuple[bool, str]:
    try:
        import torch
    except ImportError:
        return False, "torch is not installed"
    if not torch.cuda.is_available():
        return False, "no CUDA device visible to torch"
    return True, ""


def _trt_bundle(prec: str, art: Artifacts) -> Bundle | str:
    """The bundle of the model's engine at ``prec``, or why TensorRT cannot run it here."""
    if prec not in art.engines:
        return f"no {art.checkpoint.stem}.{prec}.engine bundle: run medtrt build --{prec}"
    try:
        bundle = Bundle.read(art.engines[prec])
    except BundleError as exc:
        return str(exc)
    return bundle.why_not_runnable(0) or bundle


def make_backend(name: str, mode: str, art: Artifacts, threads: int) -> Backend | str:
    """The backend, or the reason it cannot run here in this mode."""
    cuda_ok, why_no_cuda = _cuda()
    decode = threads if mode == "files" else 0
    if name.endswith(NVJPEG):
        if mode != "files":
            return "nvJPEG decode applies to files mode"
        if not cuda_ok:
            return why_no_cuda
        base = name[: -len(NVJPEG)]
        try:
            if base.startswith("trt-"):
                got = _trt_bundle(base.split("-")[1], art)
                if isinstance(got, str):
                    return got
                return EnginePipeline(name, art.engines[base.split("-")[1]], 0,
                                      backend="tensorrt", device=0, decode="nvjpeg")
            return EnginePipeline(name, art.checkpoint, 0, backend="torch", device=0,
                                  decode="nvjpeg", precision="fp16" if base.endswith("fp16") else "fp32")
        except MissingDependencyError as exc:  # the Engine's decoder says why nvJPEG cannot run
            return str(exc)
    if name in ("torch-reference", "seed-dataloader"):
        if name == "torch-reference" and mode != "pipeline":
            return "the NumPy+eager reference path is the pipeline-mode baseline"
        if name == "seed-dataloader" and mode != "files":
            return "the DataLoader+Pillow baseline reads files: files mode only"
        return (TorchReference(name, art.checkpoint) if name == "torch-reference"
                else SeedDataLoader(name, art.checkpoint, threads))
    if name.startswith("trt-"):
        prec = name.split("-")[1]
        got = _trt_bundle(prec, art)
        if isinstance(got, str):
            return got
        if mode == "engine":
            if not cuda_ok:
                return f"engine mode keeps inputs on the GPU through torch: {why_no_cuda}"
            return TensorRTCompute(name, got)
        return EnginePipeline(name, art.engines[prec], decode, backend="tensorrt", device=0)
    if name.startswith("ort-"):
        prec = name.split("-")[2]
        if prec not in art.onnx:
            return (f"no {art.checkpoint.stem}{'' if prec == 'fp32' else '.' + prec}.onnx beside "
                    f"the model: run medtrt export / medtrt build --{prec}")
        if mode == "engine":
            return OrtCompute(name, art.onnx[prec], threads)
        return EnginePipeline(name, art.onnx[prec], decode, backend="onnxruntime")
    # torch-*
    on_cuda = "cuda" in name
    if on_cuda and not cuda_ok:
        return why_no_cuda
    half = name.endswith("fp16")
    if mode == "engine":
        return TorchCompute(name, art.checkpoint, "cuda" if on_cuda else "cpu", half,
                            "compile" in name)
    if "compile" in name:
        return "torch.compile is measured in engine mode (the pipeline runs the eager stage)"
    return EnginePipeline(name, art.checkpoint, decode, backend="torch",
                          device=0 if on_cuda else "cpu", precision="fp16" if half else "fp32")


# ----------------------------------------------------------------------------------------- run


def _inputs(mode: str, preset: Any, n: int, seed: int, data: str | None, tmp: Path,
            file_format: str = "jpeg") -> Any:
    """The largest batch's inputs; smaller batches take a prefix."""
    rng = np.random.default_rng(seed)
    size = max(preset.image_size)
    if mode == "files":
        if data:
            paths = list_images(data)
            if not paths:
                raise ValueError(f"--data {data} holds no images")
            return [paths[i % len(paths)] for i in range(n)]
        from PIL import Image

        paths = []
        for i in range(min(n, 256)):  # distinct files, reused cyclically for larger batches
            p = tmp / f"{i:04d}.{'jpg' if file_format == 'jpeg' else 'png'}"
            Image.fromarray(render(CLASSES[i % len(CLASSES)], rng, size)).save(p, quality=95)
            paths.append(p)
        return [paths[i % len(paths)] for i in range(n)]
    images = [render(CLASSES[i % len(CLASSES)], rng, size) for i in range(min(n, 256))]
    images = [images[i % len(images)] for i in range(n)]
    if mode == "pipeline":
        return images
    return resize_normalize(images, **preset.preprocess_kwargs())


def _pct(v: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(v), q))


def run_bench(model: str | os.PathLike[str], config: BenchConfig, out: str | os.PathLike[str], *,
              on_progress: Callable[[str, int, int], None] | None = None) -> dict[str, Any]:
    """Run the benchmark; write ``bench.json`` and PNGs under ``out``; return the report."""
    cfg = config
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    threads = cfg.threads or os.cpu_count() or 1
    art = find_artifacts(model)
    preset = Preset.from_dict(load_checkpoint(art.checkpoint)["preset"])
    multi = len(cfg.modes) > 1
    baselines = {mode: cfg.baseline or DEFAULT_BASELINE[mode] for mode in cfg.modes}
    backends: dict[tuple[str, str], Backend] = {}
    skipped: dict[str, str] = {}
    try:
        for mode in cfg.modes:
            names = list(cfg.backends or BACKENDS)
            if baselines[mode] not in names:
                names.insert(0, baselines[mode])
            for name in names:
                got = make_backend(name, mode, art, threads)
                if isinstance(got, str):
                    skipped[f"{name} ({mode})" if multi else name] = got
                else:
                    backends[(name, mode)] = got
            if (baselines[mode], mode) not in backends:
                why = skipped[f"{baselines[mode]} ({mode})" if multi else baselines[mode]]
                raise ValueError(f"baseline {baselines[mode]} cannot run in {mode} mode: {why}")
    except BaseException:
        for be in backends.values():
            be.close()
        raise

    batches = sorted(set(cfg.batches))
    if ("seed-dataloader", "files") in backends and SeedDataLoader.BATCH not in batches:
        batches = sorted(set(batches) | {SeedDataLoader.BATCH})
    if cfg.threads:
        import importlib.util

        if importlib.util.find_spec("torch"):
            import torch

            torch.set_num_threads(cfg.threads)  # torch CPU backends (ORT/decode get it directly)
    try:
        windows, trace, nvml = _measure(cfg, backends, batches, preset, on_progress)
    finally:
        for be in backends.values():
            be.close()
    return _report(cfg, art, preset, baselines, threads, skipped, windows, trace, nvml, out)


def _measure(cfg: BenchConfig, backends: dict[tuple[str, str], Backend], batches: list[int],
             preset: Any, on_progress: Callable[[str, int, int], None] | None) -> tuple[Any, ...]:
    """The interleaved timing loop: {(backend, mode, batch): [window, ...]}, the telemetry trace."""
    windows: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    runs = [(n, b) for b in batches for n, _ in backends
            if n != "seed-dataloader" or b == SeedDataLoader.BATCH]
    total = cfg.repeats * len(runs)
    done = 0
    with tempfile.TemporaryDirectory() as tmpdir, Telemetry(cfg.telemetry_hz) as tel:
        inputs = {mode: _inputs(mode, preset, max(batches), cfg.seed, cfg.data, Path(tmpdir),
                                cfg.file_format)
                  for mode in cfg.modes}
        for rep in range(cfg.repeats):
            for batch in batches:
                for (name, mode), be in backends.items():
                    if name == "seed-dataloader" and batch != SeedDataLoader.BATCH:
                        continue  # the seed path runs at its own batch size only
                    # files mode: every call is one pass over all files in batches of `batch`
                    data = inputs[mode]
                    per_call = len(data) if mode == "files" else batch
                    x = be.prepare(batch, data if mode == "files" else data[:batch])
                    for _ in range(cfg.warmup if rep == 0 else 1):
                        be.call(x)
                    be.sync()
                    lat: list[float] = []
                    stages: list[dict[str, float]] = []
                    t_start = tel.now()
                    w0 = time.perf_counter()
                    while True:
                        c0 = time.perf_counter()
                        be.call(x)
                        be.sync()
                        lat.append(time.perf_counter() - c0)
                        if be.stage_times:
                            stages.append(dict(be.stage_times))
                        if time.perf_counter() - w0 >= cfg.duration and len(lat) >= 3:
                            break
                    wall = time.perf_counter() - w0
                    windows.setdefault((name, mode, batch), []).append(
                        {"images_per_s": per_call * len(lat) / wall, "latency_s": lat,
                         "stages": stages, "telemetry": tel.window(t_start, tel.now()),
                         "calls": len(lat), "images_per_call": per_call, "wall_s": wall})
                    done += 1
                    if on_progress:
                        where = f" {mode}" if len(cfg.modes) > 1 else ""
                        on_progress(f"{name}{where} batch {batch} (repeat {rep + 1}/{cfg.repeats})",
                                    done, total)
        trace = tel.samples
        nvml = tel.nvml_status
    return windows, trace, nvml


def _report(cfg: BenchConfig, art: Artifacts, preset: Any, baselines: dict[str, str], threads: int,
            skipped: dict[str, str], windows: dict[tuple[str, str, int], list[dict[str, Any]]],
            trace: list[dict[str, float]], nvml: str, out: Path) -> dict[str, Any]:
    results = []
    order = {m: i for i, m in enumerate(cfg.modes)}
    for (name, mode, batch), ws in sorted(windows.items(),
                                          key=lambda kv: (order[kv[0][1]], kv[0][2], kv[0][0])):
        lat = [v for w in ws for v in w["latency_s"]]
        thr = [w["images_per_s"] for w in ws]
        stage_keys = sorted({k for w in ws for s in w["stages"] for k in s})
        # Engine.last_stage_times are milliseconds (CUDA events, or host timers on the CPU twin)
        stage_ms = {k: float(np.median([s.get(k, 0.0) for w in ws for s in w["stages"]]))
                    for k in stage_keys} or None
        tele = [w["telemetry"] for w in ws]

        def med(key: str) -> float | None:
            v = [t[key] for t in tele if t.get(key) is not None]
            return float(np.median(v)) if v else None

        per_call = ws[0]["images_per_call"]
        energy = [(t["energy_j"], w["calls"] * per_call) for t, w in zip(tele, ws) if t.get("energy_j")]
        results.append({
            "backend": name, "batch": batch, "mode": mode,
            "images_per_s": float(np.median(thr)), "images_per_s_repeats": thr,
            "latency_ms": {"p50": 1e3 * _pct(lat, 50), "p95": 1e3 * _pct(lat, 95),
                           "p99": 1e3 * _pct(lat, 99), "calls": len(lat),
                           "images_per_call": per_call},
            "stage_ms": stage_ms,
            "cpu_percent": med("cpu_percent"), "peak_rss_bytes": med("peak_rss_bytes"),
            "gpu_util": med("gpu_util"), "peak_gpu_mem_bytes": med("peak_gpu_mem_bytes"),
            "power_w": med("power_w"), "temp_c": med("temp_c"),
            "images_per_j": (float(np.median([n / e for e, n in energy])) if energy else None),
        })
    base = {(r["mode"], r["batch"]): r["images_per_s"] for r in results
            if r["backend"] == baselines[r["mode"]]}
    for r in results:
        ref = base.get((r["mode"], r["batch"])) or (base.get(("files", SeedDataLoader.BATCH))
                                                    if r["mode"] == "files" else None)
        r["ratio_to_baseline"] = r["images_per_s"] / ref if ref else None
    by = {(r["backend"], r["mode"], r["batch"]): r["images_per_s"] for r in results}
    mode_ratios = []
    for (name, mode, batch), value in by.items():
        for lower in MODES[:MODES.index(mode)]:  # pipeline / engine, files / engine, files / pipeline
            other = by.get((name, lower, batch))
            if other:
                mode_ratios.append({"backend": name, "batch": batch, "ratio": f"{mode}/{lower}",
                                    "value": value / other})
    report = {
        "format": "medtrt-bench/1", "machine": machine_info(), "model": str(art.checkpoint),
        "preset": preset.name, "config": {**asdict(cfg), "threads": threads},
        "baseline": ",".join(dict.fromkeys(baselines.values())), "baselines": baselines,
        "artifacts": {"onnx": {k: str(v) for k, v in art.onnx.items()},
                                            "engines": {k: str(v) for k, v in art.engines.items()}},
        "skipped": skipped, "telemetry": {"nvml": nvml, "hz": cfg.telemetry_hz,
                                          "trace": trace[:: max(1, len(trace) // 2000)]},
        "results": results, "mode_ratios": mode_ratios,
    }
    report["plots"] = plot(report, out)
    (out / "bench.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


# ------------------------------------------------------------------------------------------ plots


def plot(report: dict[str, Any], out: Path) -> list[str]:
    """Throughput vs batch, latency percentiles, stage breakdown and telemetry traces (PNG)."""
    require("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = report["results"]
    multi = len({r["mode"] for r in res}) > 1

    def label(r: dict[str, Any]) -> str:
        return f"{r['backend']} ({r['mode']})" if multi else r["backend"]

    names = sorted({label(r) for r in res})
    title = (f"{report['preset']} - {report['config']['mode']} mode - "
             f"{report['machine']['gpu'] or report['machine']['cpu']}")
    files = []

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for n in names:
        rows = sorted((r for r in res if label(r) == n), key=lambda r: r["batch"])
        ax.plot([r["batch"] for r in rows], [r["images_per_s"] for r in rows], "o-", label=n)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size")
    ax.set_ylabel("images / s (median of repeats)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "throughput.png", dpi=120)
    plt.close(fig)
    files.append("throughput.png")

    batch = max(r["batch"] for r in res)
    rows = [r for r in res if r["batch"] == batch] or res
    fig, ax = plt.subplots(figsize=(7, 4.5))
    xs = np.arange(len(rows))
    for i, q in enumerate(("p50", "p95", "p99")):
        ax.bar(xs + (i - 1) * 0.27, [r["latency_ms"][q] for r in rows], 0.27, label=q)
    ax.set_xticks(xs, [label(r) for r in rows], rotation=30, ha="right", fontsize=7)
    ax.set_ylabel(f"latency per call, ms (batch {rows[0]['batch']})")
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "latency.png", dpi=120)
    plt.close(fig)
    files.append("latency.png")

    staged = [r for r in rows if r["stage_ms"]]
    if staged:
        keys = ["decode", "staging", "h2d", "preprocess", "compute", "postprocess", "d2h"]
        fig, ax = plt.subplots(figsize=(7, 4.5))
        bottom = np.zeros(len(staged))
        for k in keys:
            v = np.array([r["stage_ms"].get(k, 0.0) for r in staged])
            if v.any():
                ax.bar(range(len(staged)), v, bottom=bottom, label=k)
                bottom += v
        ax.set_xticks(range(len(staged)), [label(r) for r in staged], rotation=30,
                      ha="right", fontsize=7)
        ax.set_ylabel(f"ms per call (batch {staged[0]['batch']}, median)")
        ax.set_title("stage breakdown - " + title, fontsize=9)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "stages.png", dpi=120)
        plt.close(fig)
        files.append("stages.png")

    if report["telemetry"]["trace"]:
        files.append(_plot_telemetry(plt, report["telemetry"], title, out))
    return files


def _plot_telemetry(plt: Any, telemetry: dict[str, Any], title: str, out: Path) -> str:
    """CPU, memory, GPU utilisation, power and temperature over the run (telemetry.png)."""
    trace = telemetry["trace"]
    series = [("cpu_percent", "CPU %"), ("rss_bytes", "host RSS (GiB)"), ("gpu_util", "GPU util %"),
              ("power_w", "GPU power (W)"), ("gpu_mem_bytes", "GPU memory (GiB)"),
              ("temp_c", "GPU temp (C)")]
    series = [(k, lab) for k, lab in series if any(k in s for s in trace)]
    fig, axes = plt.subplots(len(series), 1, figsize=(7, 1.6 * len(series) + 0.6), sharex=True)
    for ax, (k, lab) in zip(np.atleast_1d(axes), series):
        pts = [(s["t"], s[k] / (2**30 if k.endswith("bytes") else 1)) for s in trace if k in s]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], lw=0.8)
        ax.set_ylabel(lab, fontsize=7)
        ax.grid(alpha=0.3)
    np.atleast_1d(axes)[-1].set_xlabel("seconds")
    np.atleast_1d(axes)[0].set_title(f"telemetry ({telemetry['nvml']}) - {title}", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "telemetry.png", dpi=120)
    plt.close(fig)
    return "telemetry.png"
