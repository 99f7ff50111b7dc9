"""Which CPU runtime ``backend="auto"`` runs a model with: measured on this machine, not assumed.

Where a model runs on the CPU under ``backend="auto"`` (an ONNX file, a bundle asked for on the
CPU or falling back to it), the loader hands ``choose_cpu_stage`` the model's candidates
(``cpu_candidates``: each CPU runtime over the graph; more can be added, see there) and gets the
stage to run and a ``BackendChoice`` saying how it was chosen:

- ``MEDTRT_CPU_BACKEND=NAME`` (a candidate's name: ``onnxruntime``, ``openvino``; a runtime's
  name where no candidate has it takes that runtime's first candidate: an INT8 bundle's
  ``onnxruntime-int8cpu`` or ``onnxruntime-fp32``) forces one without probing; unset, empty or
  ``auto``: choose.
- A candidate whose runtime is not installed is skipped, with the reason (and the extra that
  brings it); one left is used as it is.
- Otherwise the choice stored for this machine and model is read from the cache, or the probe
  times every candidate on this model (``probe``: a warm batch, then blocks of timed batches
  per candidate in A B, B A order, the median of each) and ``choose`` takes the fastest; the stage
  that won is kept (the others are closed) and the figures are written to the cache.

The cache is one JSON file per (machine, model) under ``$MEDTRT_CACHE/cpu-backend/`` (default
``~/.cache/medtrt``), named by the hash of its key: the CPU (``medtrt.cpu.cpu_info``: model,
ISA flags, cores), the threads and batch, and each candidate's name, runtime, runtime version
and the sha256 of the graph it runs. Another machine, library version or graph is another key,
so it is probed anew. A file that cannot be read or does not check out is logged, ignored and
rewritten; each file is written whole and put in place with an atomic rename, so concurrent
writers never leave a torn file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from medtrt._cache import cache_dir
from medtrt._lazy import require
from medtrt.artifacts import Bundle, sha256_file
from medtrt.cpu import cpu_info
from medtrt.errors import MissingDependencyError
from medtrt.runtime.int8_cpu import int8_cpu_candidates
from medtrt.runtime.stages import OnnxRuntimeStage, OpenVinoStage, Stage

__all__ = ["CPU_STAGES", "ENV", "FP32_CANDIDATES", "BackendChoice", "Candidate", "ProbeSettings", "Timing",
           "cache_key", "cache_path", "choose", "choose_cpu_stage", "cpu_candidates", "probe",
           "read_cache", "write_cache"]

log = logging.getLogger(__name__)

ENV = "MEDTRT_CPU_BACKEND"
SCHEMA_VERSION = 1  # of the cache files
# The CPU runtimes a candidate can name: backend -> stage class (graph, threads=).
CPU_STAGES: dict[str, Callable[..., Stage]] = {"onnxruntime": OnnxRuntimeStage,
                                                "openvino": OpenVinoStage}
SOURCES = ("probe", "cache", "env", "only")
# An INT8 bundle's candidates that run FP32 (the loader reports it as a fallback).
FP32_CANDIDATES = ("onnxruntime-fp32", "openvino-fp32")


@dataclass(frozen=True)
class Candidate:
    """One way to run the model on the CPU: a runtime (a key of ``CPU_STAGES``) over an ONNX
    graph (a path, or the serialized graph). ``name`` is unique among a model's candidates; it
    is what ``MEDTRT_CPU_BACKEND`` names and what the cache and ``BackendChoice`` record."""

    name: str
    backend: str
    graph: str | Path | bytes = field(repr=False)
    note: str = ""

    def __post_init__(self) -> None:
        if self.backend not in CPU_STAGES:
            raise ValueError(f"candidate {self.name!r}: backend must be one of "
                             f"{tuple(CPU_STAGES)}; got {self.backend!r}")

    def missing(self) -> str | None:
        """Why this candidate cannot run here (its runtime is not installed), or None."""
        try:
            require(self.backend)
        except MissingDependencyError as exc:
            return str(exc)
        return None

    def make(self, threads: int = 0) -> Stage:
        return CPU_STAGES[self.backend](self.graph, threads=threads)

    def sha256(self) -> str:
        """The sha256 of the graph it runs (what the cache keys the model by)."""
        if isinstance(self.graph, bytes):
            return hashlib.sha256(self.graph).hexdigest()
        return sha256_file(self.graph)


def cpu_candidates(graph: str | Path | bytes, bundle: Bundle | None = None) -> list[Candidate]:
    """The ways ``backend="auto"`` may run this model on the CPU, in order of preference (a tie
    in the probe goes to the first). ``graph``: the ONNX graph the loader runs (an ONNX file's
    runnable graph, a bundle's precision ONNX); ``bundle``: the bundle it comes from, if any.

    To add a candidate (say a CPU INT8 graph an INT8 bundle carries, for CPUs with VNNI/AMX:
    ``medtrt.cpu.has_int8_dot``), append a ``Candidate`` here with a name of its own and its
    graph; the probe times it beside the others, the cache keys it by its graph's sha256 (the
    choice is re-probed when it changes), ``MEDTRT_CPU_BACKEND`` can name it, and if it wins its
    stage is the one that runs. Its graph must take the model's input (``[batch, C, H, W]``,
    float32 or float16) and give its logits (``[batch, classes]``), like ``graph``."""
    if bundle is not None and bundle.precision == "int8":
        return _int8_candidates(graph, bundle)
    return [Candidate("onnxruntime", "onnxruntime", graph, "ONNX Runtime, CPU provider"),
            Candidate("openvino", "openvino", graph, "OpenVINO runtime, CPU plugin, f32")]


def _int8_candidates(graph: str | Path | bytes, bundle: Bundle) -> list[Candidate]:
    """An INT8 bundle on the CPU (``medtrt.runtime.int8_cpu``). Where the CPU has VNNI/AMX: the
    precision ONNX in OpenVINO (which runs the TensorRT Q/DQ layout in INT8), the CPU INT8 graph
    in ONNX Runtime (``QLinearConv``; ONNX Runtime runs the TensorRT layout slower than FP32, so
    that one is not offered), and the FP32 graph in both runtimes, so the probe never picks
    anything slower than FP32 here. Elsewhere the FP32 graph only (``FP32_CANDIDATES``: the
    loader says so in ``Loaded.fallback``)."""
    by_name = {c.name: c for c in int8_cpu_candidates(bundle)}
    fp32 = by_name["fp32"]
    out = []
    if "cpu-int8" in by_name:
        out = [Candidate("openvino", "openvino", graph,
                         "OpenVINO on the precision ONNX: INT8 where the CPU has VNNI/AMX"),
               Candidate("onnxruntime-int8cpu", "onnxruntime", by_name["cpu-int8"].graph,
                         by_name["cpu-int8"].note)]
    return out + [Candidate("onnxruntime-fp32", "onnxruntime", fp32.graph, fp32.note),
                  Candidate("openvino-fp32", "openvino", fp32.graph, fp32.note)]


@dataclass(frozen=True)
class Timing:
    """One candidate as the probe found it: images/s (median over the timed batches), or None
    and ``error`` when it could not run (not installed, failed to load or to run)."""

    name: str
    backend: str
    images_per_s: float | None = None
    error: str | None = None


def choose(timings: Sequence[Timing]) -> Timing:
    """The fastest of ``timings`` (most images/s); a tie goes to the one listed first; those
    that did not run are passed over. ValueError (with each reason) when none ran."""
    ran = [t for t in timings if t.images_per_s is not None]
    if not ran:
        reasons = "; ".join(f"{t.name}: {t.error}" for t in timings) or "no candidates"
        raise ValueError(f"no CPU backend could run the model ({reasons})")
    best = ran[0]
    for t in ran[1:]:
        if t.images_per_s > best.images_per_s:
            best = t
    return best


@dataclass(frozen=True)
class BackendChoice:
    """How ``backend="auto"`` chose the CPU stage (``Engine.backend_choice``).

    ``name``/``backend``: the candidate chosen and its runtime (``Engine.backend``). ``source``:
    "probe" (measured now), "cache" (measured before, on this machine and model), "env"
    (``MEDTRT_CPU_BACKEND``) or "only" (one candidate could run). ``timings``: each candidate's
    images/s at ``batch`` from the probe (now or cached), and those that could not run with the
    reason; ``probe_s``: the probe's wall time; ``cache``: its cache file."""

    name: str
    backend: str
    source: str
    timings: tuple[Timing, ...] = ()
    batch: int | None = None
    probe_s: float | None = None
    cache: str | None = None

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}; got {self.source!r}")

    def summary(self) -> str:
        figures = ", ".join(f"{t.name} {t.images_per_s:.1f} images/s" if t.images_per_s
                            is not None else f"{t.name} skipped ({t.error})"
                            for t in self.timings)
        if self.source == "probe":
            how = f"probed at batch {self.batch} in {self.probe_s:.1f} s"
        elif self.source == "cache":
            how = f"probed before at batch {self.batch}, read from {self.cache}"
        else:
            how = f"{ENV} names it" if self.source == "env" else "the only one that can run here"
        return f"{self.name} ({how}{': ' + figures if figures else ''})"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ProbeSettings:
    """The probe's size: ``warmup`` untimed batches per candidate when it is made (>= 1: the
    last one's logits are checked to be finite), then ``block`` timed batches per candidate in
    each of two passes, the second in reverse order (A B, then B A: a load that drifts during
    the probe falls on every candidate alike); the second pass is left out once the first took
    ``budget_s``. Each block starts with one untimed batch: it absorbs what the candidate before
    left behind (ONNX Runtime's threads spin for a while after a run, and its weights fill the
    caches), which slowed the next runtime's batch by up to 45 % when timed straight after."""

    warmup: int = 1
    block: int = 2
    budget_s: float = 1.0

    def __post_init__(self) -> None:
        if self.warmup < 1 or self.block < 1 or self.budget_s <= 0:
            raise ValueError(f"need warmup >= 1, block >= 1, budget_s > 0; got {self}")


class _ProbeHost:
    """A ``StageHost`` over buffers of its own (random input, never all zeros): what the probe
    binds a candidate to before the Engine binds the winner to its pipeline."""

    def __init__(self, stage: Stage, input_shape: tuple[int, ...], classes: int, batch: int,
                 seed: int = 0) -> None:
        self.input_shape, self.classes = tuple(input_shape), classes
        rng = np.random.default_rng(seed)
        self.x = rng.standard_normal((batch, *input_shape)).astype(stage.input_dtype)
        self.y = np.full((batch, classes), np.nan, stage.logits_dtype)

    def host_input(self, view: Any) -> np.ndarray:
        return self.x[:view.batch]

    def host_logits(self, view: Any) -> np.ndarray:
        return self.y[:view.batch]


@dataclass(frozen=True)
class _ProbeView:
    batch: int
    slot: int = 0
    stream: int = 0
    input: int = 0
    logits: int = 0


def probe(candidates: Sequence[Candidate], *, input_shape: tuple[int, ...], classes: int,
          batch: int, threads: int = 0, settings: ProbeSettings = ProbeSettings(),
          ) -> tuple[list[Timing], dict[str, Stage]]:
    """Times each candidate on this model at ``batch``: (a Timing per candidate in their order,
    the stages that ran, by name; the caller keeps one and closes the rest). A candidate that
    fails to load or to run, or gives non-finite logits, gets its error instead."""
    stages: dict[str, Stage] = {}
    errors: dict[str, str] = {}
    view = _ProbeView(batch)
    for c in candidates:
        stage = None
        try:
            stage = c.make(threads)
            host = _ProbeHost(stage, input_shape, classes, batch)
            stage.bind(host)
            for _ in range(settings.warmup):
                stage(view)
            if not np.isfinite(host.host_logits(view)).all():
                raise ValueError("non-finite logits on random input")
            stages[c.name] = stage
        except Exception as exc:  # noqa: BLE001 - the reason is recorded, and logged by the caller
            errors[c.name] = f"{type(exc).__name__}: {exc}"
            if stage is not None:
                stage.close()
    seconds = _timed_blocks(stages, view, settings)
    timings = [Timing(c.name, c.backend, batch / statistics.median(seconds[c.name]))
               if c.name in stages else Timing(c.name, c.backend, None, errors[c.name])
               for c in candidates]
    return timings, stages


def _timed_blocks(stages: dict[str, Stage], view: _ProbeView,
                  settings: ProbeSettings) -> dict[str, list[float]]:
    """Seconds per timed batch of each stage: two passes of blocks (``ProbeSettings``)."""
    seconds: dict[str, list[float]] = {name: [] for name in stages}
    names = list(stages)
    start = time.perf_counter()
    for order in (names, names[::-1]):
        if order is not names and time.perf_counter() - start > settings.budget_s:
            break
        for name in order:
            stages[name](view)  # untimed: the previous candidate's leftovers
            for _ in range(settings.block):
                t0 = time.perf_counter()
                stages[name](view)
                seconds[name].append(time.perf_counter() - t0)
    return seconds


# ---------------------------------------------------------------------------------- the cache



def cache_key(candidates: Sequence[Candidate], *, threads: int, batch: int) -> dict[str, Any]:
    """What a stored choice holds for: this CPU, the threads and batch, and each candidate's
    name, runtime, runtime version and graph sha256."""
    digests: dict[Any, str] = {}  # candidates often share one graph: hash it once

    def digest(c: Candidate) -> str:
        ref = c.graph if isinstance(c.graph, bytes) else str(c.graph)
        if ref not in digests:
            digests[ref] = c.sha256()
        return digests[ref]

    return {"cpu": cpu_info().to_json(), "threads": threads, "batch": batch,
            "candidates": [{"name": c.name, "backend": c.backend,
                            "version": str(getattr(require(c.backend), "__version__", "?")),
                            "graph_sha256": digest(c)} for c in candidates]}


def cache_path(key: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    return cache_dir() / "cpu-backend" / f"{digest}.json"


def write_cache(path: Path, key: dict[str, Any], choice: BackendChoice) -> None:
    """Writes the probe's result whole to a temporary file beside ``path``, then renames it
    into place (atomic: a reader sees the old file or the new one). A cache that cannot be
    written is logged and left: the choice stands for this load."""
    record = {"schema": SCHEMA_VERSION, "key": key, "name": choice.name,
              "backend": choice.backend, "batch": choice.batch, "probe_s": choice.probe_s,
              "timings": [asdict(t) for t in choice.timings],
              "measured": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem, suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(record, f, indent=1)
                f.write("\n")
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        log.warning("could not write the CPU backend choice to %s (%s); the next load probes "
                    "again", path, exc)


def read_cache(path: Path, key: dict[str, Any]) -> BackendChoice | None:
    """The choice stored at ``path`` for ``key``, or None: no file, another key, or a file that
    does not check out (logged; the probe then rewrites it)."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        log.warning("%s: unreadable CPU backend choice (%s); probing again", path, exc)
        return None
    try:
        return _choice_from_record(data, key, path)
    except (KeyError, TypeError, ValueError) as exc:
        log.warning("%s: CPU backend choice ignored (%s); probing again", path, exc)
        return None


def _choice_from_record(data: Any, key: dict[str, Any], path: Path) -> BackendChoice | None:
    if not isinstance(data, dict) or data.get("schema") != SCHEMA_VERSION:
        raise ValueError(f"schema must be {SCHEMA_VERSION}")
    if data["key"] != key:
        return None
    timings = tuple(_timing(t) for t in data["timings"])
    names = [c["name"] for c in key["candidates"]]
    if [t.name for t in timings] != names:
        raise ValueError(f"timings are for {[t.name for t in timings]}, not {names}")
    best = choose(timings)
    if (data["name"], data["backend"]) != (best.name, best.backend):
        raise ValueError(f"it names {data['name']!r} but its timings make {best.name!r} fastest")
    probe_s = data["probe_s"]
    if not isinstance(probe_s, (int, float)) or isinstance(probe_s, bool):
        raise ValueError("probe_s must be a number")
    return BackendChoice(best.name, best.backend, "cache", timings, key["batch"],
                         float(probe_s), str(path))


def _timing(t: Any) -> Timing:
    if not isinstance(t, dict) or not isinstance(t.get("name"), str):
        raise ValueError(f"a timing must be an object with a name; got {t!r:.60}")
    ips, error = t.get("images_per_s"), t.get("error")
    if ips is not None and (isinstance(ips, bool) or not isinstance(ips, (int, float))
                            or not ips > 0):
        raise ValueError(f"images_per_s must be a positive number or null; got {ips!r}")
    if (ips is None) == (error is None) or (error is not None and not isinstance(error, str)):
        raise ValueError(f"{t['name']}: a timing has images_per_s or an error, not both")
    return Timing(t["name"], str(t["backend"]), None if ips is None else float(ips), error)


# -------------------------------------------------------------------------------- the choice


def choose_cpu_stage(candidates: Sequence[Candidate], *, input_shape: tuple[int, ...],
                     classes: int, batch: int, threads: int = 0, label: str = "the model",
                     settings: ProbeSettings = ProbeSettings()) -> tuple[Stage, BackendChoice]:
    """The stage ``backend="auto"`` runs on the CPU, and how it was chosen (module docstring):
    ``MEDTRT_CPU_BACKEND``, the one candidate that can run, the cached choice, or the probe.
    ``input_shape`` (C, H, W) and ``classes`` shape the probe's batches; the choice is logged
    (INFO) with its figures, naming ``label``."""
    names = [c.name for c in candidates]
    if len(set(names)) != len(names) or not names:
        raise ValueError(f"CPU candidates need distinct names; got {names}")
    forced = os.environ.get(ENV, "").strip()
    if forced and forced != "auto":
        by_name = {c.name: c for c in candidates}
        for c in candidates:  # a runtime's name: its first candidate (an INT8 bundle's are named
            if forced in CPU_STAGES and c.backend == forced:  # onnxruntime-int8cpu, ...)
                by_name.setdefault(forced, c)
        if forced not in by_name:
            raise ValueError(f"{ENV}={forced!r} names no CPU backend of this model; use one of "
                             f"{names}, or 'auto' (or unset it) to choose by measuring")
        c = by_name[forced]
        return _chosen(c.make(threads), BackendChoice(c.name, c.backend, "env"), label)
    skipped = {c.name: Timing(c.name, c.backend, None, why) for c in candidates
               if (why := c.missing()) is not None}
    usable = [c for c in candidates if c.name not in skipped]
    if not usable:
        raise MissingDependencyError("no CPU runtime that can run the model is installed: "
                                     + "; ".join(t.error for t in skipped.values()))
    if len(usable) == 1:
        c = usable[0]
        timings = tuple(skipped.values())
        return _chosen(c.make(threads), BackendChoice(c.name, c.backend, "only", timings), label)
    return _measured(usable, list(skipped.values()), input_shape=input_shape, classes=classes,
                     batch=batch, threads=threads, label=label, settings=settings)


def _measured(usable: list[Candidate], skipped: list[Timing], *, input_shape: tuple[int, ...],
              classes: int, batch: int, threads: int, label: str,
              settings: ProbeSettings) -> tuple[Stage, BackendChoice]:
    """The cached choice for these candidates, else the probe's (then cached)."""
    key = cache_key(usable, threads=threads, batch=batch)
    path = cache_path(key)
    cached = read_cache(path, key)
    if cached is not None:
        c = next(c for c in usable if c.name == cached.name)
        choice = BackendChoice(cached.name, cached.backend, "cache",
                               cached.timings + tuple(skipped), cached.batch, cached.probe_s,
                               cached.cache)
        return _chosen(c.make(threads), choice, label)
    t0 = time.perf_counter()
    timings, stages = probe(usable, input_shape=input_shape, classes=classes, batch=batch,
                            threads=threads, settings=settings)
    probe_s = time.perf_counter() - t0
    best = choose(timings)  # raises only when none ran: then no stage is open
    for name, stage in stages.items():
        if name != best.name:
            stage.close()
    measured = BackendChoice(best.name, best.backend, "probe", tuple(timings), batch, probe_s,
                             str(path))
    write_cache(path, key, measured)  # the figures of the candidates its key names
    return _chosen(stages[best.name], replace(measured, timings=measured.timings + tuple(skipped)),
                   label)


def _chosen(stage: Stage, choice: BackendChoice, label: str) -> tuple[Stage, BackendChoice]:
    log.info("%s: CPU backend %s", label, choice.summary())
    return stage, choice
