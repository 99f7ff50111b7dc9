"""Scale-out of `medtrt predict` on Ray Data: one ``medtrt.Engine`` per actor, the same rows.

    import ray
    import medtrt.ray

    ds = ray.data.read_binary_files("/data/studies", include_paths=True)
    preds = medtrt.ray.predict(ds, "model.int8.engine", k=3, probs=True)
    preds.write_parquet("/data/preds")

or, from the command line, ``medtrt predict MODEL INPUT... --out preds.parquet --ray [ADDRESS]``
(``predict_files``: the local command's inputs, resume, crash-safe output and record, with the
rows computed on the cluster). See docs/predict.md, "Scale-out on Ray".

The pipeline, two ``map_batches`` stages:

1. decode, in Ray tasks on the cluster's CPUs: each row's file (from the dataset's ``bytes``
   column when it has one, else read from its path) goes through the local command's decoder
   (``medtrt.predict.decode.decode_item``: the same checks, the same error text for a bad file).
   The pixels travel on as raw bytes with their shape and dtype.
2. predict, in a fixed-size pool of actors (``ActorPoolStrategy(size=actors)``), each holding one
   ``Engine`` opened in its constructor, with ``num_gpus`` per actor where the cluster has GPUs
   and an explicit ``batch_size`` (the bundle profile's opt batch, else 64). Each batch's rows are
   made by the local command's code (``RowBuffer.add``, ``rows.to_arrow``), so the columns and
   values are those of the local command, plus ``medtrt_backend``, ``medtrt_device``,
   ``medtrt_precision``, ``medtrt_fallback`` and ``medtrt_node``: what the Engine that made the
   row runs on (an engine that cannot run on its node falls back as ``Engine`` does, and its
   rows say why).

Ray restarts an actor that dies (``max_restarts=-1``) and runs its batches again on it
(``max_task_retries``): each input once in the output. A decode task or a batch whose process
dies ``TASK_RETRIES`` + 1 times fails the run (Ray Data's default would retry it forever). A job that asks for a GPU no node
has would wait forever in Ray, so it is refused before anything runs, as is an actor pool the
cluster cannot hold.

Needs the ``ray`` extra (``pip install 'medtrt[ray]'``), imported when first used: importing this
module (the CLI does) imports neither Ray nor pyarrow, and ``import medtrt`` does not import it.
"""

from __future__ import annotations

import logging
import math
import os
import socket
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, TextIO

import numpy as np

from medtrt._lazy import require
from medtrt.predict.decode import ERROR, IMAGE, Decoded, DecodeSettings, decode_item, is_skipped
from medtrt.predict.inputs import InputItem
from medtrt.predict.record import EngineReport, RayRun, Session, now
from medtrt.predict.resume import SkipDone
from medtrt.predict.rows import RowBuffer, RowSchema, from_arrow, to_arrow
from medtrt.predict.run import (PredictOptions, PredictProgress, PredictSummary, RowWriter,
                                make_schema, open_record, plan_run)
from medtrt.predict.writers import open_output
from medtrt.runtime import Engine
from medtrt.runtime.loader import Described, describe


__all__ = ["METADATA_COLUMNS", "Resources", "connect", "plan_resources", "predict",
           "predict_files"]

log = logging.getLogger(__name__)

# What each row says about the Engine that made it.
METADATA_COLUMNS = ("medtrt_backend", "medtrt_device", "medtrt_precision", "medtrt_fallback",
                    "medtrt_node")
DEFAULT_BATCH = 64  # as the local command's, where the model has no profile
# Retries of one decode task or one engine batch whose process died (Ray Data's default is
# unbounded: a file that crashes its decoder, or a batch that crashes the engine, would then
# loop forever; bounded, the run fails and --resume goes on). Actors restart without bound.
TASK_RETRIES = 3

# Columns between the two stages (dropped from the output).
_KIND, _ERROR, _PIXELS, _SHAPE, _DTYPE, _TAGS = (
    "_medtrt_kind", "_medtrt_error", "_medtrt_pixels", "_medtrt_shape", "_medtrt_dtype",
    "_medtrt_tags")
_INTERNAL = (_KIND, _ERROR, _PIXELS, _SHAPE, _DTYPE, _TAGS)
# The dataset `predict_files` builds: the position of each input, whether it was found by
# walking a folder (a file there that is not an image has no row), and the file to read (the
# path made absolute here: a relative one names the file from the driver's folder, not from a
# worker's).
_INDEX, _WALKED, _FILE = "medtrt_index", "medtrt_walked", "medtrt_file"
_GPU_DEVICES = ("cuda", "gpu", "0", "cuda:0")
_MAX_BLOCKS = 4096
_LOCAL = "local"


def _ray() -> Any:
    """The ``ray`` package (the top-level one: this module is medtrt.ray, and imports are
    absolute), with Ray Data; MissingDependencyError naming the extra when absent."""
    ray = require("ray")
    require("ray.data")
    return ray


def _pa() -> Any:
    return require("pyarrow")


# ----------------------------------------------------------------------------------- resources


@dataclass(frozen=True)
class Resources:
    """What a run asks of the cluster, decided by ``plan_resources`` before anything runs."""

    actors: int
    gpus_per_actor: float
    cpus_per_actor: float
    decode_cpus: float  # per decode task
    engine_device: Any  # what each actor passes to Engine: 0 (its GPU, or a fallback) or "cpu"
    nodes: int
    cluster_cpus: float
    cluster_gpus: float


def plan_resources(*, device: Any = None, actors: int | None = None,
                   gpus_per_actor: float | None = None,
                   cpus_per_actor: float | None = None) -> Resources:
    """The actor pool for the connected cluster (``ray.init`` first).

    device: None (the actors use GPUs where the cluster has them; an actor without one falls
    back as ``Engine`` does), "cpu", or a GPU ("cuda", 0: each actor's GPU, which Ray assigns).
    gpus_per_actor: None (1 where GPUs are used, else 0), or the share of a GPU per actor.
    actors: None (one per GPU the pool can use; on a CPU cluster one per node).
    cpus_per_actor: None (1 with a GPU; else at most half the cluster's CPUs over the actors,
    so that the decode tasks have the other half).

    ValueError, naming the fix, for what Ray would wait on forever: a GPU when no node has one,
    more GPUs or CPUs than the cluster has.
    """
    ray = _ray()
    if not ray.is_initialized():
        raise RuntimeError("Ray is not initialized: call ray.init(...) first (or let "
                           "medtrt.ray.predict / predict_files connect)")
    kind = _device_kind(device)
    cluster = ray.cluster_resources()
    cpus, gpus = float(cluster.get("CPU", 0)), float(cluster.get("GPU", 0))
    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    if gpus_per_actor is not None and gpus_per_actor < 0:
        raise ValueError(f"gpus_per_actor must be >= 0; got {gpus_per_actor}")
    if kind == "cpu" and gpus_per_actor:
        raise ValueError(f"device='cpu' runs no GPU; gpus_per_actor={gpus_per_actor} asks for "
                         "one: give one of the two")
    if gpus_per_actor is None:
        gpa = 0.0 if kind == "cpu" else 1.0 if (kind == "cuda" or gpus > 0) else 0.0
    else:
        gpa = float(gpus_per_actor)
    resources = f"{_amount(cpus)} CPU, {_amount(gpus)} GPU on {nodes} node(s)"
    if gpa > 0 and gpus == 0:
        asked = (f"gpus_per_actor={_amount(gpa)}" if gpus_per_actor else
                 f"device={device!r} (--device {device})")
        raise ValueError(f"the Ray cluster has no GPU ({resources}) but this job asks for "
                         f"{_amount(gpa)} GPU per actor ({asked}); Ray would wait for one "
                         "forever. Run on the CPUs (--device cpu, or leave --device out: actors "
                         "use GPUs only where the cluster has them), or add GPU nodes (ray start "
                         "--address HEAD:6379 on a machine with GPUs)")
    if actors is None:
        actors = max(1, int(gpus // gpa)) if gpa > 0 else max(1, nodes)
    if actors < 1:
        raise ValueError(f"--actors must be >= 1; got {actors}")
    if gpa > 0 and actors * gpa > gpus + 1e-9:
        raise ValueError(f"{actors} actors x {_amount(gpa)} GPU = {_amount(actors * gpa)} GPUs, "
                         f"more than the Ray cluster has ({resources}); Ray would wait forever. "
                         f"Use --actors {max(1, int(gpus // gpa))} or fewer")
    if cpus_per_actor is None:
        cpa = 1.0 if gpa > 0 else _floor2(min(1.0, cpus / (2 * actors)))
    else:
        cpa = float(cpus_per_actor)
    if cpa <= 0:
        raise ValueError(f"the Ray cluster's {_amount(cpus)} CPUs cannot hold {actors} actors "
                         "and their decode tasks; use fewer --actors")
    left = cpus - actors * cpa
    if left <= 0:
        raise ValueError(f"{actors} actors x {_amount(cpa)} CPU leave none of the Ray cluster's "
                         f"{_amount(cpus)} CPUs to the decode tasks; Ray would wait forever. "
                         "Use fewer --actors (or a smaller cpus_per_actor)")
    return Resources(actors, gpa, cpa, _floor2(min(1.0, left)), "cpu" if kind == "cpu" else 0,
                     nodes, cpus, gpus)


def _device_kind(device: Any) -> str | None:
    """None (automatic), "cpu" or "cuda"; ValueError for a device Ray cannot honour."""
    if device is None:
        return None
    text = str(device).lower()
    if text == "cpu":
        return "cpu"
    if text in _GPU_DEVICES:
        return "cuda"
    raise ValueError(f"on Ray, device is None, 'cpu' or 'cuda'; got {device!r} (Ray gives each "
                     "actor its own GPU, which it sees as GPU 0)")


def _floor2(x: float) -> float:
    return math.floor(x * 100) / 100


def _amount(x: float) -> str:
    return f"{x:g}"


# ------------------------------------------------------------------------------------ pipeline


def predict(dataset: Any, model: str | os.PathLike[str], *, k: int | None = None,
            probs: bool = False, dicom_tags: bool | Sequence[str] = False,
            batch_size: int | None = None, actors: int | None = None,
            gpus_per_actor: float | None = None, cpus_per_actor: float | None = None,
            device: Any = None, backend: str = "auto", preset: Any = None,
            path_column: str = "path", bytes_column: str = "bytes",
            keep: Sequence[str] = (), skip_non_images: bool = False) -> Any:
    """``model`` over the images of a Ray ``dataset``: a lazy Dataset with one row per image.

    Args:
        dataset: a ``ray.data.Dataset`` with a column of file paths (``path_column``), e.g. from
            ``ray.data.read_binary_files(..., include_paths=True)`` (whose ``bytes`` column is
            decoded as is: the file is not read again), ``read_parquet`` of a manifest or
            ``from_items``. Without a bytes column each file is read by its path on the node
            that decodes it.
        model: an engine bundle, ONNX file or checkpoint, at this path on every node.
        k, probs, dicom_tags, backend, preset: as ``medtrt predict`` (``PredictOptions``).
        batch_size: images per engine call (default: the bundle profile's opt batch, else 64).
        actors, gpus_per_actor, cpus_per_actor, device: the actor pool (``plan_resources``).
        keep: columns of ``dataset`` carried through to the output (e.g. an ID to join on).
        skip_non_images: a file that is not an image by content nor by suffix gets no row (as
            one found by walking a folder locally); default: an error row.

    Returns a Dataset with the local command's Parquet columns (path, ok, error, top_labels,
    top_scores, positives for sigmoid presets, prob_<label> with ``probs``, DICOM keywords with
    ``dicom_tags``), then ``METADATA_COLUMNS``, then ``keep``. Rows come in the dataset's order
    when its DataContext has ``execution_options.preserve_order`` set (Ray's switch), else as
    blocks finish. Connects to Ray (``ray.init()``) if this process has not.
    """
    ray = _ray()
    if not ray.is_initialized():
        ray.init()
    opts = PredictOptions(k=k, probs=probs, dicom_tags=dicom_tags, backend=backend,
                          preset=preset, batch_size=batch_size, path_column=path_column)
    described = describe(model, preset=preset)
    schema = make_schema(described.preset, opts)
    res = plan_resources(device=device, actors=actors, gpus_per_actor=gpus_per_actor,
                         cpus_per_actor=cpus_per_actor)
    return _pipeline(dataset, described, schema, res, batch=_batch(batch_size, described),
                     backend=backend, preset=preset, path_column=path_column,
                     bytes_column=bytes_column, keep=tuple(keep),
                     walked=True if skip_non_images else None, file_column=None)


def _batch(batch_size: int | None, described: Described) -> int:
    if batch_size is not None:
        if batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1; got {batch_size}")
        return batch_size
    return described.opt_batch or DEFAULT_BATCH


def _pipeline(dataset: Any, described: Described, schema: RowSchema, res: Resources, *,
              batch: int, backend: str, preset: Any, path_column: str, bytes_column: str,
              keep: tuple[str, ...], walked: bool | str | None,
              file_column: str | None) -> Any:
    ray = _ray()
    reserved = {*schema.columns("parquet"), *METADATA_COLUMNS, *_INTERNAL}
    clash = sorted(set(keep) & reserved)
    if clash:
        raise ValueError(f"keep: column {clash[0]!r} is one medtrt writes; rename it first")
    names = _known_columns(dataset)
    if names is not None:
        missing = [c for c in (path_column, *keep) if c not in names]
        if missing:
            raise ValueError(f"the dataset has no {missing[0]!r} column (its columns: "
                             f"{', '.join(map(repr, names[:12]))}); pass path_column= (or fix "
                             "keep=)")
    decoded = dataset.map_batches(
        _decode_batch, batch_format="pyarrow", num_cpus=res.decode_cpus,
        max_retries=TASK_RETRIES,
        fn_kwargs={"path_column": path_column, "bytes_column": bytes_column,
                   "file_column": file_column, "walked": walked, "tags": schema.dicom_tags,
                   "keep": keep})
    remote: dict[str, Any] = {"max_restarts": -1, "max_task_retries": TASK_RETRIES}
    if res.gpus_per_actor > 0:
        remote["num_gpus"] = res.gpus_per_actor
    return decoded.map_batches(
        _Predictor, batch_format="pyarrow", batch_size=batch,
        compute=ray.data.ActorPoolStrategy(size=res.actors), num_cpus=res.cpus_per_actor,
        fn_constructor_kwargs={"model": os.path.abspath(described.path),  # workers' cwd differs
                               "device": res.engine_device,
                               "backend": backend, "preset": preset, "schema": schema,
                               "keep": keep},
        **remote)


def _known_columns(dataset: Any) -> list[str] | None:
    """The dataset's column names when Ray knows them without running anything."""
    try:
        schema = dataset.schema(fetch_if_missing=False)
    except Exception:  # noqa: BLE001 - unknown until it runs; the decode tasks check then
        return None
    return None if schema is None else list(schema.names)


def _decode_batch(table: Any, *, path_column: str, bytes_column: str, file_column: str | None,
                  walked: bool | str | None, tags: tuple[str, ...], keep: tuple[str, ...]) -> Any:
    """Stage 1 (a Ray task): each row's file decoded and checked (``decode_item``). Rows of
    files that are skipped (not images, found by walking) are dropped. ``file_column``: where
    to read each file, when not at its ``path_column`` value (the row keeps that)."""
    pa = _pa()
    if path_column not in table.column_names:
        raise ValueError(f"the dataset has no {path_column!r} column (its columns: "
                         f"{table.column_names}); pass path_column=")
    paths = table.column(path_column).to_pylist()
    files = table.column(file_column).to_pylist() if file_column else paths
    data = (table.column(bytes_column).to_pylist() if bytes_column in table.column_names
            else [None] * len(paths))
    if isinstance(walked, str):
        walked_flags = table.column(walked).to_pylist()
    else:
        walked_flags = [bool(walked)] * len(paths)
    settings = DecodeSettings(tags)
    out: dict[str, list[Any]] = {c: [] for c in ("path", *_INTERNAL)}
    kept = []
    for i, (path, file, raw, flag) in enumerate(zip(paths, files, data, walked_flags)):
        if path:
            d = decode_item(InputItem(file, walked=bool(flag)), settings, raw)
        else:  # nothing to read
            d = Decoded(ERROR, error=f"the {path_column!r} column is empty in this row")
        if d.kind not in (IMAGE, ERROR):
            continue  # skipped: no row
        kept.append(i)
        out["path"].append(path or "")
        out[_KIND].append(d.kind)
        out[_ERROR].append(d.error)
        image = d.image
        out[_PIXELS].append(None if image is None else image.tobytes())
        out[_SHAPE].append(None if image is None else list(image.shape))
        out[_DTYPE].append(None if image is None else image.dtype.str)
        out[_TAGS].append(None if d.tags is None else list(d.tags))
    columns = {"path": pa.array(out["path"], pa.string()),
               _KIND: pa.array(out[_KIND], pa.string()),
               _ERROR: pa.array(out[_ERROR], pa.string()),
               _PIXELS: pa.array(out[_PIXELS], pa.large_binary()),
               _SHAPE: pa.array(out[_SHAPE], pa.list_(pa.int64())),
               _DTYPE: pa.array(out[_DTYPE], pa.string()),
               _TAGS: pa.array(out[_TAGS], pa.list_(pa.string()))}
    result = pa.table(columns)
    if keep:
        rows = table.select(list(keep)).take(pa.array(kept, pa.int64()))
        for name in keep:
            result = result.append_column(name, rows.column(name))
    return result


class _Predictor:
    """Stage 2 (an actor): one Engine, opened once; each batch of decoded rows becomes rows of
    the local command's schema plus the metadata columns."""

    def __init__(self, *, model: str, device: Any, backend: str, preset: Any,
                 schema: RowSchema, keep: tuple[str, ...]) -> None:
        self.engine = Engine(model, device=device, backend=backend, preset=preset)
        self.schema, self.keep = schema, keep
        e = self.engine
        self.meta = {"medtrt_backend": e.backend, "medtrt_device": str(e.device),
                     "medtrt_precision": e.precision, "medtrt_fallback": e.fallback,
                     "medtrt_node": socket.gethostname()}
        if e.fallback:
            log.warning("medtrt.ray actor on %s: %s", self.meta["medtrt_node"], e.fallback)

    def __call__(self, table: Any) -> Any:
        pa = _pa()
        n = table.num_rows
        kinds = table.column(_KIND).to_pylist()
        errors = table.column(_ERROR).to_pylist()
        paths = table.column("path").to_pylist()
        tags = table.column(_TAGS).to_pylist()
        pixels = table.column(_PIXELS).to_pylist()
        shapes = table.column(_SHAPE).to_pylist()
        dtypes = table.column(_DTYPE).to_pylist()
        images = [np.frombuffer(pixels[i], np.dtype(dtypes[i])).reshape(shapes[i])
                  for i in range(n) if kinds[i] == IMAGE]
        results = iter(self.engine.infer(images, k=self.schema.k, return_probs=True)
                       if images else ())
        rows = RowBuffer(self.schema)
        for i in range(n):
            t = None if tags[i] is None else tuple(tags[i])
            if kinds[i] == IMAGE:
                rows.add(paths[i], result=next(results), tags=t)
            else:
                rows.add(paths[i], error=errors[i], tags=t)
        out = to_arrow(self.schema, rows.take())
        for name, value in self.meta.items():
            out = out.append_column(name, pa.array([value] * n, pa.string()))
        for name in self.keep:
            out = out.append_column(name, table.column(name))
        return out


# --------------------------------------------------------------------------- the CLI's driver


@contextmanager
def connect(address: str | None = None, *, quiet: bool = True) -> Iterator[str]:
    """Ray for this process: the connection it already has, a new local cluster with this
    machine's cores and no dashboard (``address`` None or "local"), or the cluster at
    ``address`` ("auto", "HOST:PORT", "ray://HOST:PORT"). What this opens, it closes (a local
    cluster stops with it). Yields the address as recorded."""
    ray = _ray()
    if ray.is_initialized():
        yield address or "connected"
        return
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING} if quiet else {}
    if address in (None, _LOCAL):
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        ray.init(num_cpus=cores, include_dashboard=False, **kwargs)
        where = _LOCAL
    else:
        ray.init(address=address, **kwargs)
        where = address
    try:
        yield where
    finally:
        ray.shutdown()


def predict_files(model: str | os.PathLike[str], inputs: Sequence[str | os.PathLike[str]],
                  out: str | os.PathLike[str],
                  options: PredictOptions | dict[str, Any] | None = None, *,
                  address: str | None = None, actors: int | None = None,
                  gpus_per_actor: float | None = None, cpus_per_actor: float | None = None,
                  progress: Callable[[PredictProgress], None] | None = None,
                  stdin: TextIO | None = None) -> PredictSummary:
    """`medtrt predict --ray`: ``medtrt.predict.predict`` with the rows computed on Ray.

    The inputs are expanded here (``plan_run``: folders, lists, manifests as locally), the ones
    already in ``out`` skipped (``resume``), the rest sent to the cluster as one Dataset of
    (position, path) with ``preserve_order``; the rows come back in input order and are written
    here by the local command's writer (chunks, record, resume, the three formats). Ray's own
    retries keep each input once; the positions are checked as rows arrive (a row Ray lost would
    stop the run with an error naming the input: the rows before it are kept, --resume redoes
    it). ``address``: see ``connect``. The record's session says it ran on Ray: address, actors,
    and what each node's engines reported.
    """
    ray = _ray()
    opts = PredictOptions.of(options)
    if opts.workers is not None:
        raise ValueError("--workers sets this machine's decode processes; with --ray the "
                         "cluster's Ray tasks decode: leave --workers out")
    if opts.decode != "cpu":
        raise ValueError(f"--decode {opts.decode} decodes JPEGs on a local GPU; with --ray the "
                         "cluster's Ray tasks decode on CPUs: leave --decode out")
    plan = plan_run(model, inputs, out, opts, stdin=stdin)
    described = describe(model, preset=opts.preset)
    schema = make_schema(described.preset, opts)
    batch = _batch(opts.batch_size, described)
    with connect(address) as where:
        res = plan_resources(device=opts.device, actors=actors, gpus_per_actor=gpus_per_actor,
                             cpus_per_actor=cpus_per_actor)
        output = open_output(plan.out, schema)
        run_info = RayRun(address=where, actors=res.actors, gpus_per_actor=res.gpus_per_actor,
                          cpus_per_actor=res.cpus_per_actor, nodes=res.nodes,
                          cluster_cpus=res.cluster_cpus, cluster_gpus=res.cluster_gpus)
        session = Session(started=now(), inputs=tuple(s.arg for s in plan.sources),
                          cwd=os.getcwd(), backend="none", device="none",
                          precision=described.precision, decode="cpu", workers=0,
                          batch_size=batch, ray=run_info)
        record = open_record(output, plan.fmt, schema, described.path, described.preset.name,
                             described.precision, session, opts)
        writer = _RayWriter(schema, output, record, opts, progress, run_info)
        skip = SkipDone(output.iter_paths())
        writer.skip = skip
        try:
            todo = _Todo.of(skip(plan.items), batch)
            if todo.count:
                ds = ray.data.from_arrow(todo.blocks)
                ds.context.execution_options.preserve_order = True
                ds.context.enable_progress_bars = False
                ds.context.print_on_execution_start = False
                rows = _pipeline(ds, described, schema, res, batch=batch, backend=opts.backend,
                                 preset=opts.preset, path_column="path", bytes_column="bytes",
                                 keep=(_INDEX,), walked=_WALKED, file_column=_FILE)
                writer.consume(rows.iter_batches(batch_format="pyarrow", batch_size=None), todo)
        except BaseException:
            writer.salvage()  # the rows that came back are kept
            raise
        return writer.finish(0)


@dataclass
class _Todo:
    """The inputs left to run, as Arrow blocks of (position, path, walked), ``rows`` each."""

    blocks: list[Any]
    count: int
    rows: int

    @classmethod
    def of(cls, items: Iterator[InputItem], batch: int) -> _Todo:
        """One block per engine batch (a decode task each) while there are at most
        ``MAX_BLOCKS``; past that, neighbouring blocks are merged, so the blocks stay few and
        the inputs are never held but as Arrow columns."""
        pa = _pa()
        rows, blocks, n = batch, [], 0
        paths: list[str] = []
        walked: list[bool] = []

        def block() -> Any:
            start = n - len(paths)
            return pa.table({_INDEX: pa.array(range(start, n), pa.int64()),
                             "path": pa.array(paths, pa.string()),
                             _WALKED: pa.array(walked, pa.bool_()),
                             _FILE: pa.array([os.path.abspath(p) for p in paths], pa.string())})

        for item in items:
            paths.append(item.path)
            walked.append(item.walked)
            n += 1
            if len(paths) == rows:
                blocks.append(block())
                paths, walked = [], []
                if len(blocks) == _MAX_BLOCKS:
                    blocks = [pa.concat_tables(blocks[k:k + 2]) for k in range(0, len(blocks), 2)]
                    rows *= 2
        if paths:
            blocks.append(block())
        return cls(blocks, n, rows)

    def item(self, index: int) -> InputItem:
        block = self.blocks[index // self.rows]
        j = index % self.rows
        return InputItem(block.column("path")[j].as_py(), block.column(_WALKED)[j].as_py())


class _RayWriter(RowWriter):
    """The local writer, fed with the rows that come back from the cluster."""

    def __init__(self, schema: RowSchema, output: Any, record: Any, opts: PredictOptions,
                 progress: Callable[[PredictProgress], None] | None, run_info: RayRun) -> None:
        super().__init__(schema, output, record, opts, progress)
        self.run_info = run_info
        self.engines: Counter[tuple[str, str, str, str, str | None]] = Counter()
        self.duplicates = 0

    def consume(self, tables: Iterator[Any], todo: _Todo) -> None:
        pa = _pa()
        expected = 0
        for table in tables:
            index = table.column(_INDEX).to_pylist()
            keep = []
            for j, i in enumerate(index):
                if i < expected:  # Ray never should; the first row of an input is kept
                    self.duplicates += 1
                    log.warning("Ray returned a second row for %s; dropped", todo.item(i).path)
                    continue
                self._gap(todo, expected, i)
                expected = i + 1
                keep.append(j)
            if len(keep) < table.num_rows:
                table = table.take(pa.array(keep, pa.int64()))
            self._tally(table)
            self.extend(from_arrow(self.schema, table))
        self._gap(todo, expected, todo.count)

    def _gap(self, todo: _Todo, start: int, stop: int) -> None:
        """Inputs with no row: files found by walking that are not images (as locally), or
        else a row lost, which stops the run."""
        for m in range(start, stop):
            item = todo.item(m)
            if not is_skipped(item):
                raise RuntimeError(f"Ray returned no row for input {item.path} (position {m}); "
                                   "the rows before it are written: run the same command with "
                                   "--resume to go on")
            self.not_images += 1

    def _tally(self, table: Any) -> None:
        cols = [table.column(c).to_pylist() for c in ("medtrt_node", "medtrt_backend",
                                                      "medtrt_device", "medtrt_precision",
                                                      "medtrt_fallback")]
        self.engines.update(zip(*cols))

    def session_changes(self) -> dict[str, Any]:
        if not self.engines:
            return {}
        reports = tuple(EngineReport(node, backend, device, precision, fallback, rows)
                        for (node, backend, device, precision, fallback), rows
                        in sorted(self.engines.items(), key=lambda kv: (kv[0][0], kv[0][1],
                                                                         kv[0][2])))
        # Across resumed sessions each keeps its own: this session's engines only.
        fallbacks = sorted({r.fallback for r in reports if r.fallback})
        return {"backend": "+".join(sorted({r.backend for r in reports})),
                "device": "+".join(sorted({r.device for r in reports})),
                "fallback": "; ".join(fallbacks) or None,
                "ray": replace(self.run_info, engines=reports)}

