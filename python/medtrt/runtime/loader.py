"""From a file and a backend to a compute stage: the one place that decides what runs where.

``load_stage(path, backend, device, ...)`` reads an engine bundle (``NAME.engine`` or
``NAME.engine.json``), an ONNX file or a checkpoint and returns a ``Loaded``: the stage
(``medtrt.runtime.stages``), the model's preset and precision, the bundle, the batch limits of
the engine's profile, and the fallback taken, if any. One rule for every backend: where the
stage does not run where it was asked to (a bundle TensorRT cannot run here, an ONNX file asked
for on a GPU, a checkpoint asked for on a GPU torch cannot see), the reason is logged (INFO, this
module's logger) and kept in ``Loaded.fallback``. Where ``backend="auto"`` runs a graph on the
CPU, the CPU runtime (ONNX Runtime or OpenVINO) is the faster of the two on this machine and
model, measured once and cached (``medtrt.runtime.cpu_choice``; ``Loaded.backend_choice``).
``medtrt.Engine`` and ``medtrt bench`` both load their stages here. ``describe`` reads what a
model file is (preset, precision, batch limits) without loading anything to run, for a process
that only plans (the driver of a run on Ray, whose engines open on the cluster's nodes).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medtrt._lazy import require
from medtrt.artifacts import Bundle
from medtrt.errors import BundleError
from medtrt.foreign import read_onnx
from medtrt.models import load
from medtrt.models.checkpoint import load_checkpoint
from medtrt.models.presets import Preset
from medtrt.cpu import has_int8_dot
from medtrt.runtime.cpu_choice import (CPU_STAGES, FP32_CANDIDATES, BackendChoice,
                                       choose_cpu_stage, cpu_candidates)
from medtrt.runtime.int8_cpu import FP32_NOTE
from medtrt.runtime.stages import Stage, TensorRTStage, TorchStage
from medtrt.trt import import_trt

__all__ = ["BACKENDS", "Described", "Loaded", "cuda_index", "describe", "load_stage"]

log = logging.getLogger(__name__)

BACKENDS = ("auto", "tensorrt", "torch", "onnxruntime", "openvino")
CPU_NAMES = {"onnxruntime": "ONNX Runtime", "openvino": "OpenVINO"}
# The batch the CPU probe times: a graph's fixed batch; else a bundle's opt batch, within [its min,
# PROBE_BATCH]; else PROBE_BATCH (the default opt of `medtrt build`; larger batches would make
# the probe longer than a few seconds on a small CPU).
PROBE_BATCH = 32


@dataclass(frozen=True)
class Loaded:
    """A stage ready to bind, and what its caller needs to know about it.

    ``bundle`` is None for an ONNX file or a checkpoint; ``min_batch``/``profile_max`` are the
    engine profile's batch limits (1 and None without a bundle); ``fallback`` says why the stage
    does not run where it was asked to (None: it does); ``backend_choice`` how ``backend="auto"``
    chose the CPU runtime, with the probe's figures (None: no choice was made)."""

    stage: Stage
    preset: Preset
    precision: str
    bundle: Bundle | None = None
    min_batch: int = 1
    profile_max: int | None = None
    fallback: str | None = None
    backend_choice: BackendChoice | None = None


def load_stage(path: str | os.PathLike[str], backend: str = "auto", device: Any = 0, *,
               slots: int = 2, precision: str | None = None, cuda_graphs: bool = False,
               threads: int = 0, compile: bool = False, channels_last: bool = False,
               preset: Any = None) -> Loaded:
    """The stage for ``path``, chosen by its suffix.

    Args:
        path: an engine bundle (``NAME.engine`` or ``NAME.engine.json``), an ONNX file (from
            ``medtrt export``/``build``, or any with ``preset``), or a checkpoint (``.pt``).
        backend: "auto", "tensorrt" (a bundle), "onnxruntime" or "openvino" (an ONNX file, or
            a bundle's precision ONNX, as it is, on the CPU) or "torch" (a checkpoint). "auto":
            TensorRT for a bundle it can run here, torch for a checkpoint, and for a graph on
            the CPU the faster CPU runtime on this machine (``medtrt.runtime.cpu_choice``;
            ``MEDTRT_CPU_BACKEND`` forces one).
        device: GPU index, "cuda", "cuda:N" or a torch.device; "cpu" for the CPU.
        slots: TensorRT execution contexts (one per pipeline slot), 1 to 16.
        precision: torch only: "fp32" (default) or "fp16" (a GPU).
        cuda_graphs: torch on a GPU: a CUDA graph per (slot, batch size).
        threads: the CPU runtime's threads: ONNX Runtime's intra-op threads, OpenVINO's
            INFERENCE_NUM_THREADS (0: their default).
        compile: torch only: run the model through ``torch.compile``.
        channels_last: torch only: weights and batches in NHWC memory order.
        preset: ONNX files only: the preset (a ``Preset``, preset file or built-in name) of a
            graph medtrt did not export, or one that replaces the graph's own; the graph is
            checked against it and a final Softmax/Sigmoid is removed (``medtrt.foreign``).
    """
    path = Path(path)
    _check_arguments(path, backend, slots, precision, cuda_graphs, threads,
                     compile or channels_last)
    if preset is not None and path.suffix != ".onnx":
        raise ValueError(f"preset= applies to an ONNX file; {path.name} carries its own preset "
                         "(build the bundle with --preset, or import the checkpoint)")
    if path.name.endswith((".engine", ".engine.json")):
        loaded = _load_bundle(path, backend, device, slots, threads)
    elif path.suffix == ".onnx":
        loaded = _load_onnx(path, backend, device, threads, preset)
    else:
        loaded = _load_checkpoint(path, backend, device, precision, cuda_graphs, compile,
                                  channels_last)
    if loaded.fallback:
        log.info("%s: %s", path, loaded.fallback)
    return loaded


@dataclass(frozen=True)
class Described:
    """A model file as ``describe`` reads it: the preset and precision its Engine would report,
    and its batch limits (a bundle's profile, or an ONNX graph's fixed batch; None: free)."""

    path: Path
    preset: Preset
    precision: str
    min_batch: int = 1
    opt_batch: int | None = None
    max_batch: int | None = None


def describe(path: str | os.PathLike[str], *, preset: Any = None) -> Described:
    """What ``load_stage(path, preset=preset)`` would load, read from the file's metadata alone:
    a bundle's JSON, an ONNX graph's metadata (its weights are not read) or a checkpoint's
    preset (torch reads it; no model is built). Raises what ``load_stage`` raises for a file it
    refuses."""
    path = Path(path)
    if preset is not None and path.suffix != ".onnx":
        raise ValueError(f"preset= applies to an ONNX file; {path.name} carries its own preset "
                         "(build the bundle with --preset, or import the checkpoint)")
    if path.name.endswith((".engine", ".engine.json")):
        bundle = Bundle.read(path)
        profile = bundle.input.profile
        return Described(path, bundle.preset, bundle.precision, profile.min[0], profile.opt[0],
                         profile.max[0])
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    if path.suffix == ".onnx":
        source = read_onnx(path, preset, weights=False)
        batch = source.io.batch
        return Described(path, source.preset, _onnx_precision(path), batch or 1, batch, batch)
    payload = load_checkpoint(path)
    return Described(path, Preset.from_dict(payload["preset"]), "fp32")


def cuda_index(device: Any) -> int:
    """GPU ordinal from 0, "cuda", "cuda:1" or a torch.device."""
    if isinstance(device, int):
        return device
    text = str(device)
    if text.isdigit():
        return int(text)
    if text == "cuda":
        return 0
    if text.startswith("cuda:") and text[5:].isdigit():
        return int(text[5:])
    raise ValueError(f"device must be a GPU index, 'cuda', 'cuda:N' or 'cpu'; got {device!r}")


def _check_arguments(path: Path, backend: str, slots: int, precision: str | None,
                     cuda_graphs: bool, threads: int, compile: bool) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}; got {backend!r}")
    if not 1 <= slots <= 16:
        raise ValueError(f"slots must be in [1, 16]; got {slots}")
    listed = path.name.endswith(".engine") and Bundle.json_path(path).is_file()
    if not path.exists() and not listed:  # a bundle's missing engine: Bundle.read says what to do
        raise FileNotFoundError(f"{path} does not exist")
    if precision is not None and precision not in ("fp32", "fp16"):
        raise ValueError(f"precision must be 'fp32' or 'fp16'; got {precision!r}")
    checkpoint = path.suffix not in (".onnx", ".engine", ".json")
    torch_only = backend in ("auto", "torch") and checkpoint
    if (precision or cuda_graphs) and not torch_only:
        raise ValueError("precision= and cuda_graphs= apply to the torch backend (a checkpoint); "
                         "an ONNX file or bundle has its precision built in")
    if compile and not torch_only:
        raise ValueError("compile= and channels_last= apply to the torch backend (a checkpoint): "
                         "they set how PyTorch runs its model")
    if threads < 0:
        raise ValueError(f"threads must be >= 0 (0: the CPU runtime's default); got {threads}")
    if threads and checkpoint:
        raise ValueError("threads= sets ONNX Runtime's intra-op threads or OpenVINO's threads "
                         "(an ONNX file or a bundle); torch's are process-wide: "
                         "torch.set_num_threads")


def _load_bundle(path: Path, backend: str, device: Any, slots: int, threads: int) -> Loaded:
    bundle = Bundle.read(path)
    profile = bundle.input.profile
    stage, fallback, choice = _bundle_stage(bundle, backend, device, slots, threads)
    return Loaded(stage, bundle.preset, bundle.precision, bundle, profile.min[0],
                  profile.max[0], fallback, choice)


def _bundle_stage(bundle: Bundle, backend: str, device: Any, slots: int,
                  threads: int) -> tuple[Stage, str | None, BackendChoice | None]:
    """TensorRT where it can run the bundle here (decided now, ``Bundle.why_not_runnable``),
    else the bundle's precision ONNX on the CPU: (stage, why it fell back, or None, how "auto"
    chose the CPU runtime, or None)."""
    if backend not in ("auto", "tensorrt", *CPU_STAGES):
        raise ValueError(f"a bundle runs with backend 'tensorrt', 'onnxruntime' or 'openvino'; "
                         f"got {backend!r}")
    if backend == "tensorrt" and str(device) == "cpu":
        raise ValueError("backend='tensorrt' runs on a GPU; with device='cpu' use "
                         "backend='onnxruntime' or 'openvino' (the bundle's precision ONNX)")
    why = (f"backend={backend!r} was asked for" if backend in CPU_STAGES else
           "device='cpu' was asked for")
    if backend in ("auto", "tensorrt") and str(device) != "cpu":
        index = cuda_index(device)
        reason = bundle.why_not_runnable(index)
        if reason is None:
            trt, _ = import_trt(bundle.tensorrt.flavour)
            return TensorRTStage(trt, bundle.engine_path, slots, index), None, None
        if backend == "tensorrt":
            raise BundleError(f"{bundle.path}: TensorRT cannot run it here: {reason}")
        stage, choice = _cpu_stage(bundle.require_precision_onnx(reason), backend, threads,
                                   bundle.preset, _probe_batch(bundle), str(bundle.path), bundle)
        runs = _runs_fp32(bundle, choice) or f"its precision ONNX in {CPU_NAMES[stage.name]}"
        return stage, (f"TensorRT cannot run it on {device!r} here ({reason}); running "
                       f"{runs} on the CPU"), choice
    stage, choice = _cpu_stage(bundle.require_precision_onnx(why), backend, threads,
                               bundle.preset, _probe_batch(bundle), str(bundle.path), bundle)
    return stage, _runs_fp32(bundle, choice), choice


def _runs_fp32(bundle: Bundle, choice: BackendChoice | None) -> str | None:
    """What an INT8 bundle runs when ``auto`` chose an FP32 graph for it (a fallback), else
    None."""
    if bundle.precision != "int8" or choice is None or choice.name not in FP32_CANDIDATES:
        return None
    why = ("this CPU has no VNNI/AMX" if not has_int8_dot() else
           f"it measured fastest here: {choice.summary()}")
    return (f"an FP32 graph ({FP32_NOTE}) in {CPU_NAMES[choice.backend]}, not INT8: {why}")


def _cpu_stage(graph: str | Path | bytes, backend: str, threads: int, preset: Preset,
               batch: int, label: str,
               bundle: Bundle | None = None) -> tuple[Stage, BackendChoice | None]:
    """``graph`` on the CPU: in the runtime asked for ("onnxruntime", "openvino"), or for
    "auto" in the one ``cpu_choice`` finds faster here (and how it chose)."""
    if backend != "auto":
        return CPU_STAGES[backend](graph, threads=threads), None
    h, w = preset.image_size
    return choose_cpu_stage(cpu_candidates(graph, bundle), input_shape=(preset.in_channels, h, w),
                            classes=preset.num_classes, batch=batch, threads=threads, label=label)


def _probe_batch(bundle: Bundle) -> int:
    profile = bundle.input.profile
    return max(profile.min[0], min(profile.opt[0], PROBE_BATCH, profile.max[0]))


def _load_onnx(path: Path, backend: str, device: Any, threads: int, preset: Any) -> Loaded:
    """The graph on the CPU (ONNX Runtime or OpenVINO), checked against its preset (the given
    one, else its own), a final Softmax/Sigmoid removed; a fixed batch is the profile (chunks
    are padded to it)."""
    if backend not in ("auto", *CPU_STAGES):
        raise ValueError(f"an ONNX file runs with backend 'onnxruntime' or 'openvino'; got "
                         f"{backend!r}")
    source = read_onnx(path, preset, weights=False)
    batch = source.io.batch
    stage, choice = _cpu_stage(source.runnable(), backend, threads, source.preset,
                               batch or PROBE_BATCH, str(path))
    fallback = None if str(device) == "cpu" else (
        f"an ONNX file runs in {CPU_NAMES[stage.name]} on the CPU, not on {device!r}; build an "
        "engine bundle (`medtrt build`) to run on a GPU")
    return Loaded(stage, source.preset, _onnx_precision(path), min_batch=batch or 1,
                  profile_max=batch, fallback=fallback, backend_choice=choice)


def _load_checkpoint(path: Path, backend: str, device: Any, precision: str | None,
                     cuda_graphs: bool, compile: bool, channels_last: bool) -> Loaded:
    if backend not in ("auto", "torch"):
        raise ValueError(f"a checkpoint runs with backend 'torch'; got {backend!r}")
    model, preset = load(path)
    precision = precision or "fp32"
    torch_device, fallback = _torch_device(device)
    stage = TorchStage(model, torch_device, half=precision == "fp16", cuda_graphs=cuda_graphs,
                       compile=compile, channels_last=channels_last)
    return Loaded(stage, preset, precision, fallback=fallback)


def _torch_device(device: Any) -> tuple[str, str | None]:
    """'cpu' or 'cuda:N' for the torch backend, and why it is the CPU when a GPU was asked for
    but torch sees none (None otherwise)."""
    if str(device) == "cpu":
        return "cpu", None
    index = cuda_index(device)
    torch = require("torch")
    if torch.cuda.is_available():
        return f"cuda:{index}", None
    return "cpu", f"torch sees no CUDA device for {device!r}; running the model on the CPU"


def _onnx_precision(path: Path) -> str:
    onnx = require("onnx")
    model = onnx.load(str(path), load_external_data=False)
    ops = {n.op_type for n in model.graph.node}
    if "QuantizeLinear" in ops:
        return "int8"
    if any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer):
        return "fp16"
    return "fp32"
