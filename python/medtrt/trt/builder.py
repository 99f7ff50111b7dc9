"""Engine builder: ONNX (precision already in the graph) -> serialized TensorRT engine.

Written against the TensorRT 10/11 and TensorRT-RTX Python APIs (verified on TensorRT-RTX 1.7;
TensorRT 10/11 calls follow NVIDIA's API reference and migration guides):
- network: strongly typed (TensorRT 10 needs the STRONGLY_TYPED flag; 11 and RTX always are);
- OnnxParser errors are reported with node name and operator;
- one optimization profile on the batch axis (min, opt, max);
- workspace limit and builder optimization level;
- timing cache file keyed by flavour, version and GPU (TensorRT only: in TensorRT-RTX the
  timing-cache calls are documented no-ops);
- TensorRT-RTX compute-capability targets (library default when not given).
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

from medtrt.errors import MedtrtError, MissingDependencyError
from medtrt._native import native

__all__ = ["BuildError", "EngineBuild", "build_engine", "import_trt", "engine_header_version",
           "FLAVOURS"]

log = logging.getLogger(__name__)

FLAVOURS = ("tensorrt", "tensorrt_rtx")
_INSTALL = ("install one of: pip install tensorrt-cu13 (TensorRT 10/11, from NVIDIA's package "
            "index; data-center and desktop GPUs) or pip install tensorrt-rtx-cu13 (TensorRT-RTX, "
            "from PyPI; RTX-class GPUs, builds without a GPU)")


class BuildError(MedtrtError, RuntimeError):
    """TensorRT could not parse or build; the message carries the tail of TensorRT's log."""


def import_trt(flavour: str = "auto") -> tuple[ModuleType, str]:
    """(module, flavour) for "auto" (tensorrt, else tensorrt_rtx), "tensorrt" or "tensorrt_rtx"."""
    if flavour not in ("auto", *FLAVOURS):
        raise ValueError(f"TensorRT flavour must be 'auto', 'tensorrt' or 'tensorrt_rtx'; got {flavour!r}")
    tried = []
    for name in (FLAVOURS if flavour == "auto" else (flavour,)):
        try:
            return importlib.import_module(name), name
        except ImportError as exc:
            tried.append(f"{name} ({exc})")
    raise MissingDependencyError(f"no TensorRT Python module could be imported: {'; '.join(tried)}. "
                                 + _INSTALL)


def engine_header_version(path: str | os.PathLike[str]) -> str | None:
    """TensorRT version recorded in an engine file's header (bytes 24-27: major, minor, patch,
    build), read without a GPU; None if the header is not recognised."""
    with open(path, "rb") as f:
        head = f.read(32)
    if len(head) < 28 or head[:4] not in (b"ftrt", b"vtrt"):
        return None
    return ".".join(str(b) for b in head[24:28])


class _Log:
    """A TensorRT logger that keeps the recent messages for error reports."""

    def __init__(self, trt: ModuleType, verbose: bool = False) -> None:
        self.lines: list[str] = []
        self._lock = threading.Lock()
        outer = self
        names = {trt.Logger.INTERNAL_ERROR: "F", trt.Logger.ERROR: "E",
                 trt.Logger.WARNING: "W", trt.Logger.INFO: "I", trt.Logger.VERBOSE: "V"}
        threshold = trt.Logger.VERBOSE if verbose else trt.Logger.WARNING

        class Logger(trt.ILogger):
            def __init__(self) -> None:
                trt.ILogger.__init__(self)

            def log(self, severity: Any, msg: str) -> None:
                if int(severity) > int(threshold):
                    return
                line = f"[{names.get(severity, '?')}] {msg}"
                with outer._lock:
                    outer.lines.append(line)
                    del outer.lines[:-200]
                (log.warning if int(severity) <= int(trt.Logger.WARNING) else log.debug)("TensorRT %s", line)

        self.logger = Logger()

    def tail(self, n: int = 20) -> str:
        with self._lock:
            return "\n".join(self.lines[-n:])


@dataclass(frozen=True)
class EngineBuild:
    path: Path
    flavour: str
    version: str
    seconds: float
    engine_bytes: int
    profile: dict[str, list[int]]
    input_name: str
    input_dtype: str
    output_name: str
    output_dtype: str
    timing_cache: str | None
    targets: list[str]
    optimization_level: int
    workspace_bytes: int
    layers: int
    warnings: list[str] = field(default_factory=list)


def _dtype_name(dt: Any) -> str:
    """TensorRT DataType -> NumPy name ('float32', 'float16', 'int8', ...)."""
    raw = str(dt).rsplit(".", 1)[-1].lower()
    return {"float": "float32", "half": "float16", "bf16": "bfloat16"}.get(raw, raw)


def _gpu_key() -> str:
    """Name of the build GPU for the timing-cache key ('nogpu' when none is visible)."""
    try:
        c = native()
        if c.cuda_device_count() == 0:
            return "nogpu"
    except Exception:  # the extension is optional for this key
        return "unknown"
    try:
        import torch

        return re.sub(r"[^A-Za-z0-9]+", "-", torch.cuda.get_device_name(0))
    except Exception:
        return "gpu"


def build_engine(onnx_path: str | os.PathLike[str], engine_path: str | os.PathLike[str], *,
                 batch: tuple[int, int, int] = (1, 32, 256), flavour: str = "auto",
                 workspace_mib: int = 2048, optimization_level: int = 3,
                 timing_cache_dir: str | os.PathLike[str] | None = None,
                 compute_capabilities: list[str] | None = None, verbose: bool = False,
                 input_shape: tuple[int, int, int] | None = None,
                 on_phase: Callable[[str], None] | None = None) -> EngineBuild:
    """Parse ``onnx_path`` into a strongly typed network and write a serialized engine.

    ``input_shape``: the input's (C, H, W) for the profile, where the graph leaves them
    symbolic (default: the graph's own, which must then be static)."""
    trt, name = import_trt(flavour)
    lo, opt, hi = batch
    if not 1 <= lo <= opt <= hi:
        raise ValueError(f"batch must be min,opt,max with 1 <= min <= opt <= max; got {batch}")
    if not 0 <= optimization_level <= 5:
        raise ValueError(f"optimization level must be in 0..5; got {optimization_level}")
    version = str(trt.__version__)
    logs = _Log(trt, verbose)
    phase = on_phase or (lambda _s: None)
    t0 = time.perf_counter()

    builder = trt.Builder(logs.logger)
    phase("parsing")
    # The parser holds the weights the network refers to: it lives until the build is done.
    network, _parser = _parse(trt, name, version, builder, logs, onnx_path)
    inp, out = network.get_input(0), network.get_output(0)
    dims = tuple(inp.shape)
    if dims[0] != -1 and not lo == opt == hi == dims[0]:
        raise ValueError(f"{onnx_path} has a fixed batch of {dims[0]}; pass --batch "
                         f"{dims[0]},{dims[0]},{dims[0]} or export with --batch dynamic")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)
    config.builder_optimization_level = optimization_level
    profile = builder.create_optimization_profile()
    rest = _profile_dims(dims[1:], input_shape, onnx_path)
    profile.set_shape(inp.name, (lo, *rest), (opt, *rest), (hi, *rest))
    config.add_optimization_profile(profile)
    targets = _set_targets(trt, name, config, compute_capabilities)
    cache_path, cache = _timing_cache(name, version, config, timing_cache_dir)

    phase("building")
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise BuildError(f"TensorRT ({name} {version}) failed to build {onnx_path}:\n{logs.tail()}")
    engine_path = Path(engine_path)
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = engine_path.with_name(engine_path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(plan)
    tmp.replace(engine_path)
    if cache is not None and cache_path is not None:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        cache_path.write_bytes(bytes(cache.serialize()))
    seconds = time.perf_counter() - t0
    return EngineBuild(
        path=engine_path, flavour=name, version=version, seconds=seconds,
        engine_bytes=engine_path.stat().st_size,
        profile={"min": [lo, *rest], "opt": [opt, *rest], "max": [hi, *rest]},
        input_name=inp.name, input_dtype=_dtype_name(inp.dtype), output_name=out.name,
        output_dtype=_dtype_name(out.dtype),
        timing_cache=str(cache_path) if cache_path else
        ("not used: timing-cache calls are no-ops in TensorRT-RTX" if name == "tensorrt_rtx" else None),
        targets=targets, optimization_level=optimization_level, workspace_bytes=workspace_mib << 20,
        layers=network.num_layers, warnings=[l for l in logs.lines if l.startswith("[W]")],
    )


def _profile_dims(dims: tuple[int, ...], want: tuple[int, int, int] | None,
                  onnx_path: str | os.PathLike[str]) -> tuple[int, ...]:
    """The profile's (C, H, W): ``want`` where the graph's dims are -1 (symbolic); a static dim
    that contradicts ``want`` is an error."""
    if want is None:
        if -1 in dims:
            raise ValueError(f"{onnx_path}: the input's C, H, W are {list(dims)} (-1: symbolic); "
                             "give input_shape=(C, H, W) for the profile")
        return dims
    if len(dims) != len(want) or any(d not in (-1, w) for d, w in zip(dims, want)):
        raise ValueError(f"{onnx_path}: the input's C, H, W are {list(dims)} but the preset "
                         f"needs {list(want)}")
    return tuple(want)


def _parse(trt: Any, name: str, version: str, builder: Any, logs: "_Log",
           onnx_path: str | os.PathLike[str]) -> tuple[Any, Any]:
    """(the strongly typed network of ``onnx_path``, its parser): one input, one output, or a
    BuildError listing the parser's errors and the tail of TensorRT's log."""
    flags = 0
    typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if name == "tensorrt" and version.split(".")[0] == "10" and typed is not None:
        flags = 1 << int(typed)  # TensorRT 10: opt in; 11 and RTX are always strongly typed
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logs.logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = []
        for i in range(parser.num_errors):
            e = parser.get_error(i)
            errors.append(f"node {e.node_name() or e.node()!r} ({e.node_operator() or '?'}): {e.desc()}")
        raise BuildError(f"TensorRT ({name} {version}) cannot parse {onnx_path}:\n  "
                         + "\n  ".join(errors or ["unknown parser error"])
                         + (f"\nTensorRT log:\n{logs.tail()}" if logs.lines else ""))
    if network.num_inputs != 1 or network.num_outputs != 1:
        raise BuildError(f"{onnx_path}: expected one input and one output; got "
                         f"{network.num_inputs} and {network.num_outputs}")
    return network, parser


def _set_targets(trt: Any, name: str, config: Any,
                 compute_capabilities: list[str] | None) -> list[str]:
    """TensorRT-RTX: the compute capabilities to build for (the library's default when none
    are named). Full TensorRT builds for the GPU it runs on."""
    if name != "tensorrt_rtx":
        if compute_capabilities:
            raise ValueError("compute capability targets are a TensorRT-RTX option; TensorRT "
                             "builds for the GPU it runs on")
        return []
    if compute_capabilities:
        ccs = []
        for cc in compute_capabilities:
            value = getattr(trt.ComputeCapability, cc.upper(), None)
            if value is None:
                known = [m for m in dir(trt.ComputeCapability) if m.startswith("SM")]
                raise ValueError(f"unknown compute capability {cc!r}; TensorRT-RTX knows {known}")
            ccs.append(value)
        config.num_compute_capabilities = len(ccs)
        for i, cc in enumerate(ccs):
            config.set_compute_capability(cc, i)
    return [str(config.get_compute_capability(i)).rsplit(".", 1)[-1]
            for i in range(config.num_compute_capabilities)] or ["library default"]


def _timing_cache(name: str, version: str, config: Any,
                  timing_cache_dir: str | os.PathLike[str] | None) -> tuple[Path | None, Any]:
    """Full TensorRT: a timing cache per TensorRT version and GPU, loaded into ``config``."""
    if name != "tensorrt" or timing_cache_dir is None:
        return None, None
    cache_path = Path(timing_cache_dir) / f"timing-{name}-{version}-{_gpu_key()}.cache"
    blob = cache_path.read_bytes() if cache_path.is_file() else b""
    cache = config.create_timing_cache(blob)
    config.set_timing_cache(cache, ignore_mismatch=False)
    return cache_path, cache
