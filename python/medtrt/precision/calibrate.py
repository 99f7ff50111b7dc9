"""INT8 calibration: activation statistics of the FP32 graph on calibration images.

The FP32 ONNX runs in ONNX Runtime (CPU) with the tensors to quantize added as graph outputs,
written straight into arrays reused from batch to batch (IOBinding); images are pre-processed
exactly as at inference (``medtrt.ops.resize_normalize`` with the preset recorded in the ONNX);
each batch's activations go straight into per-tensor |x| histograms in C++
(``medtrt._C.AbsHistogram``, filled in parallel with the GIL released), so memory is one batch
of activations plus 2048 counters per tensor, however many images.

Thresholds: "entropy" (TensorRT's KL-divergence method, the default), "max", or "percentile".
The entropy search runs in C++ over all tensors in parallel (``entropy_amax_many``: the choice
of the O(bins^2) reference ``entropy_amax``, bit for bit, in O(bins x quantized_bins)). Results
are written as a JSON cache and as a TensorRT-format calibration cache.

Time (``tools/bench_calibration_speed.py``, docs/precision.md): most of it is ONNX Runtime. The
activations must stay the ones ORT_ENABLE_BASIC computes, bit for bit, so that thresholds do not
move: ORT_ENABLE_ALL's NCHWc convolutions round differently, and without them the graph runs
2.2x slower than in the default session, before any output is written or counted.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medtrt._lazy import require
from medtrt._native import native
from medtrt.data import IMAGE_SUFFIXES, list_images, read_image
from medtrt.export import read_metadata, sha256_file
from medtrt.ops import resize_normalize_mixed

__all__ = ["CalibrationConfig", "Calibration", "calibrate", "collect_histograms",
           "compute_amax", "fixed_batch", "load_images", "read_cache", "run_batches",
           "write_trt_cache", "CACHE_FORMAT"]

log = logging.getLogger(__name__)

CACHE_FORMAT = "medtrt-calibration/1"
METHODS = ("entropy", "max", "percentile")


@dataclass(frozen=True)
class CalibrationConfig:
    method: str = "entropy"
    num_images: int = 512
    batch_size: int = 16
    bins: int = 2048
    start_bin: int = 128
    quantized_bins: int = 128
    percentile: float = 99.99
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"calibration method must be one of {METHODS}; got {self.method!r}")
        if self.num_images < 1 or self.batch_size < 1:
            raise ValueError(f"num_images and batch_size must be >= 1; got {self.num_images}, "
                             f"{self.batch_size}")


@dataclass
class Calibration:
    """Calibrated thresholds (amax = the |x| clipping value; scale = amax / 127)."""

    amax: dict[str, float]
    config: CalibrationConfig
    source_onnx_sha256: str
    images: int
    stats: dict[str, dict[str, float]] = field(default_factory=dict)  # tensor -> max_abs, ...
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "format": CACHE_FORMAT,
            "method": self.config.method,
            "config": asdict(self.config),
            "source_onnx_sha256": self.source_onnx_sha256,
            "images": self.images,
            "seconds": self.seconds,
            "tensors": {t: {"amax": a, **self.stats.get(t, {})} for t, a in self.amax.items()},
        }

    def write(self, path: str | os.PathLike[str]) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=1) + "\n")
        return path


def read_cache(path: str | os.PathLike[str], *, expect_sha256: str | None = None) -> Calibration:
    """Load a JSON calibration cache; refuse one made from a different ONNX file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"calibration cache {path} does not exist") from None
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path} is not a readable calibration cache: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT:
        raise ValueError(f"{path} is not a medtrt calibration cache (format "
                         f"{data.get('format') if isinstance(data, dict) else None!r}, expected "
                         f"{CACHE_FORMAT!r}); the TensorRT text cache is an output, not an input")
    if expect_sha256 and data["source_onnx_sha256"] != expect_sha256:
        raise ValueError(f"calibration cache {path} was made from a different ONNX (sha256 "
                         f"{data['source_onnx_sha256'][:12]}..., this one is {expect_sha256[:12]}...); "
                         "recalibrate with --calib DIR")
    tensors = data["tensors"]
    return Calibration({t: float(v["amax"]) for t, v in tensors.items()},
                       CalibrationConfig(**data["config"]), data["source_onnx_sha256"],
                       int(data["images"]),
                       {t: {k: v for k, v in d.items() if k != "amax"} for t, d in tensors.items()},
                       float(data.get("seconds", 0.0)))


def write_trt_cache(calibration: Calibration, path: str | os.PathLike[str], *,
                    trt_version: str | None = None) -> Path:
    """TensorRT's calibration cache text format for TensorRT 10 users: a header
    ``TRT-<version>-EntropyCalibration2`` and ``tensor: <hex of the float32 scale>`` lines
    (big-endian IEEE bits; scale = amax / 127). ``trt_version`` like "10.8.0"."""
    code = 100000
    if trt_version:
        parts = [int(p) for p in trt_version.split(".")[:3] if p.isdigit()] + [0, 0, 0]
        code = parts[0] * 10000 + parts[1] * 100 + parts[2]
    name = {"entropy": "EntropyCalibration2", "max": "MinMaxCalibration",
            "percentile": "MinMaxCalibration"}[calibration.config.method]
    lines = [f"TRT-{code}-{name}"]
    for tensor, amax in calibration.amax.items():
        scale = np.float32(amax / 127.0)
        lines.append(f"{tensor}: {struct.pack('>f', scale).hex()}")
    path = Path(path)
    path.write_text("\n".join(lines) + "\n")
    return path


def load_images(source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], n: int, *,
                seed: int = 0) -> list[Path]:
    """``n`` image paths from a folder (recursively) or a list of paths, chosen
    deterministically by ``seed`` when there are more."""
    if isinstance(source, (str, os.PathLike)):
        root = Path(source)
        if not root.is_dir():
            raise FileNotFoundError(f"calibration folder {root} does not exist")
        paths = list_images(root)
    else:
        paths = sorted(Path(p) for p in source)
        root = Path(os.path.commonpath(paths)) if paths else Path(".")
    if not paths:
        raise ValueError(f"calibration folder {root} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    if len(paths) < n:
        raise ValueError(f"calibration folder {root} holds {len(paths)} images; {n} were asked "
                         f"for (pass --calib-images {len(paths)} or add images)")
    if len(paths) > n:
        pick = np.random.default_rng(seed).choice(len(paths), size=n, replace=False)
        paths = [paths[i] for i in sorted(pick)]
    return paths


def _augmented_session(onnx_path: Path, tensors: Sequence[str]) -> Any:
    onnx = require("onnx")
    ort = require("onnxruntime")
    model = onnx.load(str(onnx_path))
    existing = {o.name for o in model.graph.output}
    for t in tensors:
        if t not in existing:
            model.graph.output.append(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def fixed_batch(session: Any) -> int | None:
    """The batch size an ONNX Runtime session's graph is fixed to, or None (dynamic)."""
    n = session.get_inputs()[0].shape[0]
    return n if isinstance(n, int) and n > 0 else None


def run_batches(session: Any, x: np.ndarray, batch_size: int,
                names: Sequence[str] | None = None) -> Iterator[list[np.ndarray]]:
    """The outputs ``names`` (default all) of ``session`` on ``x``, one list per batch of at most
    ``batch_size`` rows. A graph with a fixed batch runs in batches of exactly that size: the last
    one is padded with copies of its last row, and outputs whose first dimension is that batch
    are cut back to the real rows."""
    name = session.get_inputs()[0].name
    fixed = fixed_batch(session)
    step = fixed or batch_size
    for start in range(0, len(x), step):
        chunk = x[start:start + step]
        n = len(chunk)
        if fixed and n < fixed:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], fixed - n, axis=0)])
        outs = session.run(None if names is None else list(names), {name: chunk})
        yield [o[:n] if fixed and o.ndim and o.shape[0] == fixed else o for o in outs]


class _Activations:
    """The values of ``tensors`` for one chunk, as ``session`` (the augmented graph) computes them,
    written by ONNX Runtime straight into arrays reused from chunk to chunk (IOBinding) instead
    of fresh ones: on the demo model that is 138 MB a batch of 16, whose allocation and page
    faults cost a quarter of the pass. Same session, same kernels, same values. A graph input
    asked for as a tensor is the chunk itself; an output ONNX Runtime did not write where it was
    bound (none seen so far) is read from the value it returns. The arrays are overwritten by
    the next call."""

    def __init__(self, session: Any, tensors: Sequence[str]) -> None:
        self._session = session
        inputs = session.get_inputs()
        self._input = inputs[0].name
        self._fixed = fixed_batch(session)
        graph_inputs = {i.name for i in inputs}
        self._tensors = list(tensors)
        self._outputs = [t for t in tensors if t not in graph_inputs]
        self._binding: Any = None
        self._shape: tuple[int, ...] | None = None
        self._arrays: list[np.ndarray] = []

    def __call__(self, chunk: np.ndarray, rows: int) -> list[np.ndarray]:
        """``chunk``: float32, C-contiguous, padded to the fixed batch if any; ``rows``: its real
        rows, to which outputs of the fixed batch are cut back (as ``run_batches`` does)."""
        values = dict(zip(self._outputs, self._run(chunk)))
        out = [values[t] if t in values else chunk for t in self._tensors]
        return [o[:rows] if self._fixed and o.ndim and o.shape[0] == self._fixed else o
                for o in out]

    def _run(self, chunk: np.ndarray) -> list[np.ndarray]:
        if chunk.shape != self._shape:  # first chunk of this shape: learn the output shapes
            outs = self._session.run(self._outputs, {self._input: chunk})
            self._bind(chunk.shape, outs)
            return outs
        self._binding.bind_cpu_input(self._input, chunk)
        self._session.run_with_iobinding(self._binding)
        values = self._binding.get_outputs()
        return [a if v.data_ptr() == a.ctypes.data else v.numpy()
                for a, v in zip(self._arrays, values)]

    def _bind(self, shape: tuple[int, ...], outs: list[np.ndarray]) -> None:
        self._arrays = [np.empty(o.shape, o.dtype) for o in outs]
        self._binding = self._session.io_binding()
        for name, a in zip(self._outputs, self._arrays):
            self._binding.bind_output(name, "cpu", 0, a.dtype, list(a.shape), a.ctypes.data)
        self._shape = shape


def _chunks(x: np.ndarray, fixed: int | None) -> Iterator[tuple[np.ndarray, int]]:
    """``x`` in chunks of the graph's fixed batch (the last one padded with copies of its last
    row), or whole: (float32 C-contiguous chunk, real rows)."""
    step = fixed or len(x)
    for start in range(0, len(x), step):
        chunk = np.ascontiguousarray(x[start:start + step], dtype=np.float32)
        n = len(chunk)
        if fixed and n < fixed:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], fixed - n, axis=0)])
        yield chunk, n


def collect_histograms(onnx_path: str | os.PathLike[str], tensors: Sequence[str],
                       inputs: Callable[[], Any], *, bins: int = 2048,
                       progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Run the FP32 graph over the batches yielded by ``inputs()`` (float32 NCHW arrays) and
    accumulate an |x| histogram per tensor.

    Filling a batch's histograms on a worker thread while ONNX Runtime computes the next batch
    was measured and left out: on 2 cores both are CPU-bound, ONNX Runtime slowed by what the
    fills hid (4.31 s vs 4.32 s for 512 demo images), for twice the memory."""
    c = native()
    session = _augmented_session(Path(onnx_path), tensors)
    activations = _Activations(session, tensors)
    fixed = fixed_batch(session)
    hists = [c.AbsHistogram(bins) for _ in tensors]
    for batch in inputs():
        for chunk, rows in _chunks(batch, fixed):
            c.histogram_add_many([(h, np.ascontiguousarray(o, dtype=np.float32))
                                  for h, o in zip(hists, activations(chunk, rows))])
        if progress:
            progress(len(batch))
    return dict(zip(tensors, hists))


def compute_amax(hists: dict[str, Any], config: CalibrationConfig) -> dict[str, float]:
    """The threshold of each histogram by ``config.method``. Entropy: all tensors at once, in
    parallel (``entropy_amax_many``, the reference ``entropy_amax``'s choice bit for bit)."""
    c = native()
    if config.method == "entropy":
        amax = c.entropy_amax_many(list(hists.values()), config.start_bin,
                                   config.quantized_bins)[0]
        return {t: float(a) for t, a in zip(hists, amax)}
    if config.method == "max":
        return {t: float(h.max_abs) for t, h in hists.items()}
    return {t: float(c.percentile_amax(h, config.percentile)) for t, h in hists.items()}


def calibrate(onnx_path: str | os.PathLike[str],
              source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
              tensors: Sequence[str], config: CalibrationConfig | None = None, *,
              preset: Any = None, progress: Callable[[int], None] | None = None) -> Calibration:
    """Calibrate ``tensors`` of the FP32 graph on ``config.num_images`` images from ``source``.

    The pre-processing comes from the preset recorded in the ONNX (``medtrt export``) unless
    ``preset`` is given. Unreadable images are an error (calibration must see what it says).
    """
    config = config or CalibrationConfig()
    onnx_path = Path(onnx_path)
    if preset is None:
        preset = read_metadata(onnx_path)[0]
    paths = load_images(source, config.num_images, seed=config.seed)
    kwargs = preset.preprocess_kwargs()

    def batches() -> Any:
        for start in range(0, len(paths), config.batch_size):
            yield resize_normalize_mixed(
                [read_image(p) for p in paths[start:start + config.batch_size]], **kwargs)

    t0 = time.perf_counter()
    hists = collect_histograms(onnx_path, tensors, batches, bins=config.bins, progress=progress)
    amax = compute_amax(hists, config)
    stats = {t: {"max_abs": float(h.max_abs), "range": float(h.range), "values": int(h.total),
                 "merges": int(h.merges)} for t, h in hists.items()}
    seconds = time.perf_counter() - t0
    log.info("calibrated %d tensors on %d images in %.1f s", len(amax), len(paths), seconds)
    return Calibration(amax, config, sha256_file(onnx_path), len(paths), stats, seconds)
