"""The run loop of `medtrt predict`: inputs -> decode pool -> ``Engine.infer_many`` -> rows.

Items stream from ``medtrt.predict.inputs``; with ``resume`` those already in the output are
skipped (``SkipDone``); the rest are decoded in ``DecodePool`` (worker processes, or a thread
with ``workers=0``), grouped into batches of ``batch_size`` decoded images and run by
``Engine.infer_many`` (which reads batch i+1 while batch i computes). A ledger in input order
holds each item until its row is known: error rows right away, predictions when their batch
comes back. Rows leave the ledger from its head only, so the output is in input order; they are
written in chunks (``chunk_rows`` rows or ``chunk_seconds`` seconds, whichever comes first),
each durable before the record says it is committed. Everything in flight is bounded (decode
tasks, the engine's slots, one chunk), so memory does not grow with the number of inputs.

The parts a run on Ray shares with this one (``medtrt.ray.predict_files``): ``plan_run`` (the
checks before anything is read, and the inputs), ``make_schema``, ``open_record`` (a new or
resumed output and its record) and ``RowWriter`` (chunks, counts, record, summary); only where
the rows come from differs.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, TextIO

import medtrt
from medtrt.artifacts import sha256_file
from medtrt.predict.decode import (DEFAULT_DICOM_TAGS, ERROR, PATH, SKIP, DecodePool,
                                   DecodeSettings)
from medtrt.predict.inputs import InputItem, InputSource, iter_items, plan_inputs
from medtrt.predict.record import PredictRecord, Session, now, record_path
from medtrt.predict.resume import SkipDone, check_compatible
from medtrt.predict.rows import RowBuffer, Rows, RowSchema
from medtrt.predict.writers import (Output, metadata_json, open_output, output_exists,
                                    output_format)
from medtrt.runtime import Engine

__all__ = ["PredictOptions", "PredictProgress", "PredictSummary", "RowWriter", "RunPlan",
           "default_workers", "make_schema", "open_record", "plan_run", "predict"]

log = logging.getLogger(__name__)

DECODES = ("cpu", "nvjpeg", "auto")
DEFAULT_BATCH = 64


@dataclass(frozen=True)
class PredictOptions:
    """Settings of one `predict` run (see ``predict`` and docs/predict.md).

    k: top-k length (default 3, or the number of labels if fewer). probs: one ``prob_<label>``
    column per label. batch_size: decoded images per ``infer_many`` batch (None: 64; on Ray the
    bundle profile's opt batch, else 64). workers: decode worker processes (None: the cores left
    over, ``default_workers``; 0: a thread of this process). resume: continue an output,
    skipping inputs already in it. overwrite: replace an output. device: as ``medtrt.Engine``
    (None: GPU 0, falling back as Engine does; on Ray, GPUs where the cluster has them).
    backend, preset: as ``medtrt.Engine``. decode: "cpu" (the workers decode), or
    "nvjpeg"/"auto" (JPEGs decoded on the GPU by the engine). dicom_tags: True for
    DEFAULT_DICOM_TAGS, or the DICOM keywords to write. path_column: manifests' path column.
    chunk_rows / chunk_seconds: a chunk is written when it holds that many rows, or that long
    after the previous one.
    """

    k: int | None = None
    probs: bool = False
    batch_size: int | None = None
    workers: int | None = None
    resume: bool = False
    overwrite: bool = False
    device: Any = None
    backend: str = "auto"
    decode: str = "cpu"
    dicom_tags: bool | tuple[str, ...] = False
    path_column: str = "path"
    chunk_rows: int = 2048
    chunk_seconds: float = 10.0
    preset: Any = None

    def __post_init__(self) -> None:
        if self.k is not None and self.k < 1:
            raise ValueError(f"--k must be >= 1; got {self.k}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1; got {self.batch_size}")
        if self.workers is not None and self.workers < 0:
            raise ValueError(f"--workers must be >= 0 (0 decodes in this process); got "
                             f"{self.workers}")
        if self.resume and self.overwrite:
            raise ValueError("--resume continues an output and --overwrite replaces it; give one")
        if self.decode not in DECODES:
            raise ValueError(f"--decode must be one of {DECODES}; got {self.decode!r}")
        if self.chunk_rows < 1 or not self.chunk_seconds > 0:
            raise ValueError(f"chunk_rows must be >= 1 and chunk_seconds > 0; got "
                             f"{self.chunk_rows}, {self.chunk_seconds}")
        if not isinstance(self.dicom_tags, bool):
            object.__setattr__(self, "dicom_tags", tuple(self.dicom_tags))

    @classmethod
    def of(cls, value: PredictOptions | dict[str, Any] | None) -> PredictOptions:
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, dict):
            unknown = sorted(set(value) - {f.name for f in fields(cls)})
            if unknown:
                raise ValueError(f"unknown predict option(s) {unknown}")
            return cls(**value)
        raise TypeError(f"options must be PredictOptions, a dict or None; got "
                        f"{type(value).__name__}")

    @property
    def batch(self) -> int:
        """The local command's batch size."""
        return DEFAULT_BATCH if self.batch_size is None else self.batch_size

    @property
    def tags(self) -> tuple[str, ...]:
        if self.dicom_tags is True:
            return DEFAULT_DICOM_TAGS
        return () if self.dicom_tags is False else tuple(self.dicom_tags)


@dataclass(frozen=True)
class PredictProgress:
    """Counts of the run so far, for a progress display."""

    rows: int  # written in this run, failed ones included
    failed: int
    skipped_existing: int
    skipped_not_images: int
    seconds: float

    @property
    def images_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class PredictSummary:
    """What a run did. ``rows``: all rows in the output now; the other counts are this run's."""

    out: Path
    record: PredictRecord
    rows: int
    rows_written: int
    failed: int
    skipped_existing: int
    skipped_not_images: int
    seconds: float
    images_per_s: float
    backend: str
    precision: str
    device: str
    workers: int


def default_workers(engine: Engine) -> int:
    """The cores left over: on a GPU backend every core but the one feeding the GPU; on the CPU
    the compute stage uses every core, so none is left over and decoding runs in a thread of
    this process (measured in docs/predict.md: a worker process there only competes with the
    model for the same cores)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if engine.device == "cpu":
        return 0
    return max(0, (cores or 1) - 1)


def predict(model: str | os.PathLike[str] | Engine, inputs: Sequence[str | os.PathLike[str]],
            out: str | os.PathLike[str], options: PredictOptions | dict[str, Any] | None = None,
            *, progress: Callable[[PredictProgress], None] | None = None,
            stdin: TextIO | None = None) -> PredictSummary:
    """Runs ``model`` over ``inputs`` and writes one row per input to ``out``.

    Args:
        model: an engine bundle, ONNX file or checkpoint (anything ``medtrt.Engine`` opens), or
            an open ``Engine`` (left open; the options ``device``, ``backend``, ``decode`` and
            ``preset`` are then the engine's own).
        inputs: image files, folders, lists of paths, CSV/Parquet manifests, "-" for a list on
            ``stdin`` (``medtrt.predict.inputs``).
        out: ``.parquet``, ``.csv`` or ``.jsonl``; ``OUT.meta.json`` is written beside it.
        options: ``PredictOptions`` (or a dict of its fields).
        progress: called with a ``PredictProgress`` a few times a second, and at the end.

    A file that cannot be read is an error row and the run goes on. Usage errors (unknown
    output suffix, missing model or INPUT, an output that exists without ``resume`` or
    ``overwrite``, no inputs) raise ValueError before anything is written.
    """
    opts = PredictOptions.of(options)
    plan = plan_run(model, inputs, out, opts, stdin=stdin)
    own = not isinstance(model, Engine)
    device = 0 if opts.device is None else opts.device
    engine = Engine(model, device=device, backend=opts.backend, decode=opts.decode,
                    preset=opts.preset) if own else model
    try:
        return _predict(engine, plan, opts, progress)
    finally:
        if own:
            engine.close()


@dataclass(frozen=True)
class RunPlan:
    """A run's output and inputs, checked (``plan_run``); ``items`` streams them."""

    out: Path
    fmt: str
    sources: list[InputSource]
    items: Iterator[InputItem]


def plan_run(model: str | os.PathLike[str] | Engine, inputs: Sequence[str | os.PathLike[str]],
             out: str | os.PathLike[str], opts: PredictOptions, *,
             stdin: TextIO | None = None) -> RunPlan:
    """The usage checks made before anything is written (output suffix, model, INPUTs, the
    output's state, at least one input), each a ValueError that names the fix."""
    out = Path(out)
    fmt = output_format(out)
    if not isinstance(model, Engine) and not Path(model).exists():
        raise ValueError(f"model {model} does not exist; pass an engine bundle (.engine), an "
                         "ONNX file or a checkpoint (.pt)")
    sources = plan_inputs(inputs, path_column=opts.path_column)
    _check_output_state(out, opts)
    items = iter_items(sources, stdin=stdin)
    first = next(items, None)
    if first is None:
        raise ValueError(f"no inputs: {', '.join(s.arg for s in sources)} name no files")
    return RunPlan(out, fmt, sources, _chain(first, items))


def make_schema(preset: Any, opts: PredictOptions) -> RowSchema:
    """The columns of a run of a model with ``preset`` under ``opts``."""
    sigmoid = preset.activation == "sigmoid"
    return RowSchema(preset.labels, opts.k or min(3, preset.num_classes), opts.probs, sigmoid,
                     opts.tags, preset.threshold if sigmoid else None)


def _chain(first: InputItem, rest: Iterator[InputItem]) -> Iterator[InputItem]:
    yield first
    yield from rest


def _check_output_state(out: Path, opts: PredictOptions) -> None:
    if out.is_dir():
        raise ValueError(f"--out {out} is a folder; name a .parquet, .csv or .jsonl file")
    if output_exists(out) and not (opts.resume or opts.overwrite):
        raise ValueError(f"{out} exists (or a run of it was interrupted); pass --resume to "
                         "continue it (inputs already in it are skipped) or --overwrite to "
                         "replace it")


def _predict(engine: Engine, plan: RunPlan, opts: PredictOptions,
             progress: Callable[[PredictProgress], None] | None) -> PredictSummary:
    schema = make_schema(engine.preset, opts)
    workers = default_workers(engine) if opts.workers is None else opts.workers
    output = open_output(plan.out, schema)
    session = Session(started=now(), inputs=tuple(s.arg for s in plan.sources), cwd=os.getcwd(),
                      backend=engine.backend, device=str(engine.device),
                      precision=engine.precision, decode=engine.decode, workers=workers,
                      batch_size=opts.batch, fallback=engine.fallback)
    record = open_record(output, plan.fmt, schema, engine.path, engine.preset.name,
                         engine.precision, session, opts)
    done = output.iter_paths()
    skip = SkipDone(done)
    items = plan.items
    run = _Run(engine, schema, output, record, opts, progress)
    settings = DecodeSettings(schema.dicom_tags, jpeg_paths=engine.decode == "nvjpeg")
    per_task = max(1, min(16, math.ceil(opts.batch / max(1, workers))))
    in_flight = math.ceil(2 * opts.batch / per_task) + max(1, workers)
    try:
        with DecodePool(workers, settings, chunk=per_task, in_flight=in_flight) as pool:
            run.run(pool.map(skip(items)), skip)
    except BaseException:
        run.salvage()  # the rows that are complete are kept
        raise
    return run.finish(workers)


def open_record(output: Output, fmt: str, schema: RowSchema, model_path: Path, preset_name: str,
                precision: str, session: Session, opts: PredictOptions) -> PredictRecord:
    """The record of the output, created or (``resume``) read, checked and recovered."""
    out = output.path
    rec_path = record_path(out)
    if output.exists() and opts.overwrite:
        output.remove()
        rec_path.unlink(missing_ok=True)
    if output.exists():  # resume
        record = PredictRecord.read(rec_path)
        check_compatible(record, out, fmt, schema, model_path, precision, session)
        output.recover(record.committed_bytes)
        counts = output.count()  # Parquet: the parts are the truth (a kill may fall between
        if counts is not None:   # a part's rename and the record's update)
            record = record.replace(rows=counts[0], failed=counts[1])
        session = replace(session, rows_before=record.rows)
        return record.replace(sessions=(*record.sessions, session), complete=False)
    record = PredictRecord(
        output=out.name, output_format=fmt, columns=schema.columns(fmt), labels=schema.labels,
        k=schema.k, probs=schema.probs, multilabel=schema.multilabel,
        threshold=schema.threshold, dicom_tags=schema.dicom_tags, model=str(model_path),
        model_bytes=model_path.stat().st_size, model_sha256=sha256_file(model_path),
        preset=preset_name, precision=precision, medtrt=medtrt.__version__,
        sessions=(session,), committed_bytes=None if fmt == "parquet" else 0)
    output.create()
    record = record.replace(committed_bytes=output.committed_bytes)
    record.write(rec_path)
    return record


class RowWriter:
    """The chunk buffer, the counts and the record of one run: rows in, in input order;
    committed chunks and an up-to-date record out (see the module docstring)."""

    def __init__(self, schema: RowSchema, output: Output, record: PredictRecord,
                 opts: PredictOptions,
                 progress: Callable[[PredictProgress], None] | None) -> None:
        self.schema, self.output, self.record = schema, output, record
        self.opts, self.progress = opts, progress
        self.rec_path = record_path(output.path)
        self.buffer = RowBuffer(schema)
        self.rows = self.failed = self.not_images = self.buffer_failed = 0
        self.skip: SkipDone | None = None
        self.start = time.perf_counter()
        self.last_flush = self.last_progress = self.start

    def add(self, path: str, *, error: str | None = None, result: Any = None,
            tags: Any = None) -> None:
        """One input's row (``RowBuffer.add``: decode error, failed result or prediction)."""
        failed = self.buffer.add(path, error=error, result=result, tags=tags)
        self.failed += failed
        self.buffer_failed += failed
        self.rows += 1

    def extend(self, rows: Rows) -> None:
        """Rows built elsewhere (the engine actors of a Ray run), in input order."""
        failed = sum(not ok for ok in rows["ok"])
        self.buffer.extend(rows)
        self.failed += failed
        self.buffer_failed += failed
        self.rows += len(rows["path"])
        self.tick()

    def tick(self) -> None:
        """Writes a chunk when one is due, and reports progress."""
        t = time.perf_counter()
        if len(self.buffer) >= self.opts.chunk_rows or (
                self.buffer and t - self.last_flush >= self.opts.chunk_seconds):
            self.flush()
        if self.progress is not None and t - self.last_progress >= 0.2:
            self.last_progress = t
            self.progress(self._progress())

    def flush(self, final: bool = False) -> None:
        """Writes the buffered rows (durably), then the record that commits them."""
        self.last_flush = time.perf_counter()
        if not self.buffer and not final:
            return
        n = len(self.buffer)
        record = self.record.replace(rows=self.record.rows + n,
                                     failed=self.record.failed + self.buffer_failed)
        if n:
            self.output.append(self.buffer.take(), metadata_json(record.to_json()))
        self.buffer_failed = 0
        self.record = record.replace(committed_bytes=self.output.committed_bytes)
        self.record = self.record.with_session(self._session())
        self.record.write(self.rec_path)

    def salvage(self) -> None:
        """After an error or an interrupt: the rows already known are written."""
        try:
            self._complete()
            self.flush()
        except Exception as exc:  # noqa: BLE001 - the first error is the one being raised
            log.warning("could not write the last rows (%s); --resume redoes them", exc)

    def _complete(self) -> None:
        """Moves the rows that are known but not yet in the buffer into it (the ledger's)."""

    def session_changes(self) -> dict[str, Any]:
        """Fields of this run's Session that only the run knows as it goes (Ray's actors)."""
        return {}

    def _session(self, finished: bool = False) -> Session:
        p = self._progress()
        return replace(self.record.sessions[-1], rows_written=p.rows, failed=p.failed,
                       skipped_existing=p.skipped_existing,
                       skipped_not_images=p.skipped_not_images,
                       finished=now() if finished else None,
                       images_per_s=round(self._rate(), 2) if finished else None,
                       **self.session_changes())

    def _progress(self) -> PredictProgress:
        skip = self.skip
        return PredictProgress(self.rows, self.failed, skip.skipped if skip else 0,
                               self.not_images + (skip.not_images if skip else 0),
                               time.perf_counter() - self.start)

    def _rate(self) -> float:
        """Rows per second of this run, from start (engine loaded) to the last row."""
        seconds = time.perf_counter() - self.start
        return self.rows / seconds if seconds > 0 else 0.0

    def finish(self, workers: int) -> PredictSummary:
        self.flush(final=True)
        p = self._progress()
        if self.record.rows == 0 and p.skipped_not_images:
            self.output.remove()
            self.rec_path.unlink(missing_ok=True)
            raise ValueError(f"no images among the inputs: the {p.skipped_not_images} files "
                             "found are not JPEG, PNG or DICOM")
        record = self.record.replace(complete=True).with_session(self._session(finished=True))
        self.output.finish(metadata_json(record.to_json()))
        record.write(self.rec_path)
        self.record = record
        if self.progress is not None:
            self.progress(p)
        session = record.sessions[-1]
        return PredictSummary(self.output.path, record, record.rows, p.rows, p.failed,
                              p.skipped_existing, p.skipped_not_images, p.seconds,
                              self._rate(), session.backend, session.precision, session.device,
                              workers)


class _Entry:
    """One input in the ledger, until its row is known."""

    __slots__ = ("path", "tags", "error", "result")

    def __init__(self, path: str, tags: Any) -> None:
        self.path, self.tags = path, tags
        self.error: str | None = None
        self.result: Any = None

    @property
    def ready(self) -> bool:
        return self.error is not None or self.result is not None


class _Run(RowWriter):
    """A local run: the ledger between the decode pool and ``Engine.infer_many``."""

    def __init__(self, engine: Engine, schema: RowSchema, output: Output, record: PredictRecord,
                 opts: PredictOptions,
                 progress: Callable[[PredictProgress], None] | None) -> None:
        super().__init__(schema, output, record, opts, progress)
        self.engine = engine
        self.ledger: deque[_Entry] = deque()
        self.batches: deque[list[_Entry]] = deque()

    def run(self, decoded: Iterator[tuple[InputItem, Any]], skip: SkipDone) -> None:
        self.skip = skip
        k = self.schema.k
        for results in self.engine.infer_many(self._batches(decoded), k=k, return_probs=True):
            for entry, result in zip(self.batches.popleft(), results):
                entry.result = result
            self._drain()
        self._drain()
        assert not self.ledger and not self.batches, "rows left in the ledger"

    def _batches(self, decoded: Iterator[tuple[InputItem, Any]]) -> Iterator[list[Any]]:
        images: list[Any] = []
        entries: list[_Entry] = []
        for item, d in decoded:
            if d.kind == SKIP:
                self.not_images += 1
                continue
            entry = _Entry(item.path, d.tags)
            self.ledger.append(entry)
            if d.kind == ERROR:
                entry.error = d.error
                self._drain()
                continue
            images.append(item.path if d.kind == PATH else d.image)
            entries.append(entry)
            if len(images) == self.opts.batch:
                self.batches.append(entries)
                yield images
                images, entries = [], []
        if images:
            self.batches.append(entries)
            yield images

    def _drain(self) -> None:
        """Rows from the head of the ledger, as far as they are known."""
        self._complete()
        self.tick()

    def _complete(self) -> None:
        while self.ledger and self.ledger[0].ready:
            e = self.ledger.popleft()
            self.add(e.path, error=e.error, result=e.result, tags=e.tags)
