"""Decoding for `medtrt predict`: what a decode worker does with one input, and the pool.

``decode_item`` opens a file, decides by its first bytes what it is, decodes it with
``medtrt.data.read_image`` and checks the pixels are what ``Engine.infer`` takes (H x W or
H x W x C with C in 1, 3; uint8, uint16, int16 or finite float32), so a bad file is an error
row here and never fails a whole batch in the engine. A walked file (found in a folder) that is
neither an image by content nor by suffix is skipped. For DICOM files it reads the tags asked
for (on error rows too, when the header is readable). With ``jpeg_paths`` (nvJPEG decodes in
the engine on a GPU backend) a JPEG is checked by its magic only and its path passed on.

``DecodePool.map`` runs ``decode_chunk`` over the items in worker processes (spawned, so no
thread or CUDA state of the parent is inherited) or, with ``workers=0``, in one thread of this
process; results come back in input order, with at most ``in_flight`` chunks in flight, so
memory does not grow with the number of inputs. A worker that dies (a decoder crash) costs the
chunks in flight a retry one file at a time in a fresh pool; the file that kills a worker again
is an error row.
"""

from __future__ import annotations

import io
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from itertools import islice
from typing import Any, NamedTuple

import numpy as np

from medtrt.data.readers import IMAGE_SUFFIXES, read_image, sniff
from medtrt.errors import ImageReadError, MissingDependencyError
from medtrt.predict.inputs import InputItem

__all__ = ["DEFAULT_DICOM_TAGS", "DecodePool", "DecodeSettings", "Decoded", "decode_chunk",
           "decode_item", "is_skipped"]

log = logging.getLogger(__name__)

# The identifying tags users join predictions on (--dicom-tags).
DEFAULT_DICOM_TAGS = ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "PatientID")

IMAGE, PATH, ERROR, SKIP = "image", "path", "error", "skip"
_DTYPES = (np.uint8, np.uint16, np.int16, np.float32)
WORKER_DIED = ("the decode worker process died while reading this file (a crash in the image "
               "decoder); the run went on without it")


@dataclass(frozen=True)
class DecodeSettings:
    """What every worker needs to know, sent with each chunk (it is small)."""

    dicom_tags: tuple[str, ...] = ()
    jpeg_paths: bool = False  # the engine decodes JPEGs itself (nvJPEG): pass their paths on


class Decoded(NamedTuple):
    """One item's outcome. ``kind``: "image" (``image`` set), "path" (the engine reads the
    file), "error" (``error`` says why) or "skip" (a walked file that is not an image)."""

    kind: str
    image: np.ndarray | None = None
    error: str | None = None
    tags: tuple[str | None, ...] | None = None  # DICOM files, with tags asked for


def is_skipped(item: InputItem, head: bytes | None = None) -> bool:
    """A walked file that is not an image by its first bytes nor by its suffix (no row). A file
    that cannot be opened is not skipped (it gets an error row)."""
    if not item.walked or os.path.splitext(item.path)[1].lower() in IMAGE_SUFFIXES:
        return False
    if head is None:
        try:
            with open(item.path, "rb") as f:
                head = f.read(132)
        except OSError:
            return False
    return sniff(head) is None


def decode_item(item: InputItem, settings: DecodeSettings,
                data: bytes | memoryview | None = None) -> Decoded:
    """``item`` decoded and checked; never raises for a bad file (see the module docstring).
    ``data``: the file's bytes when they were read already (a Ray Dataset's ``bytes`` column):
    the same checks and the same error text as for the file on disk."""
    if data is None:
        try:
            with open(item.path, "rb") as f:
                head = f.read(132)
        except OSError as exc:
            return Decoded(ERROR, error=_one_line(exc.strerror or str(exc)))
    else:
        head = bytes(data[:132])
    if is_skipped(item, head):
        return Decoded(SKIP)
    kind = sniff(head)
    dicom = kind == "dicom" or (kind is None and item.path.lower().endswith((".dcm", ".dicom")))
    tags = (_dicom_tags(item.path, settings.dicom_tags, data)
            if dicom and settings.dicom_tags else None)
    if kind == "jpeg" and settings.jpeg_paths and data is None:
        return Decoded(PATH, tags=tags)
    try:
        image = read_image(item.path, data=data)
        _check_pixels(image)
    except ImageReadError as exc:
        return Decoded(ERROR, error=_one_line(exc.reason), tags=tags)
    except MissingDependencyError as exc:  # pydicom absent: this file fails, the run goes on
        return Decoded(ERROR, error=_one_line(str(exc)), tags=tags)
    except Exception as exc:  # noqa: BLE001 - a decoder's surprise is this file's error row
        return Decoded(ERROR, error=_one_line(f"{type(exc).__name__}: {exc}"), tags=tags)
    return Decoded(IMAGE, image=image, tags=tags)


def decode_chunk(items: list[InputItem], settings: DecodeSettings) -> list[Decoded]:
    """``decode_item`` over a chunk (the unit sent to a worker)."""
    return [decode_item(item, settings) for item in items]


def _check_pixels(image: np.ndarray) -> None:
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3)):
        raise ValueError(f"decoded to shape {image.shape}; expected H x W or H x W x C with C "
                         "in (1, 3)")
    if image.size == 0:
        raise ValueError(f"decoded to an empty image (shape {image.shape})")
    if image.dtype not in _DTYPES:
        raise ValueError(f"decoded to {image.dtype} pixels; expected uint8, uint16, int16 or "
                         "float32")
    if image.dtype == np.float32 and not np.isfinite(image).all():
        raise ValueError("decoded pixel values hold NaN or infinity")


def _dicom_tags(path: str, keywords: tuple[str, ...],
                data: bytes | memoryview | None = None) -> tuple[str | None, ...]:
    """The tags' values as strings (None where absent, empty or unreadable)."""
    try:
        import pydicom  # a lazy import of an optional dependency (the dicom extra)

        source = path if data is None else io.BytesIO(data)
        ds = pydicom.dcmread(source, stop_before_pixels=True, specific_tags=list(keywords))
    except Exception:  # noqa: BLE001 - no tags for an unreadable header; the pixels say why
        return (None,) * len(keywords)
    out = []
    for keyword in keywords:
        value = ds.get(keyword)
        text = None if value is None else str(value).strip()
        out.append(text or None)
    return tuple(out)


def _worker_init(parent: int) -> None:
    """A worker's initializer. Ctrl-C is the parent's to handle (it stops the pool; a worker
    killed by the same SIGINT would turn the files in flight into error rows). And the worker
    exits when the process that started it is gone (killed with SIGKILL, that process cannot
    stop its workers, which would wait for tasks forever)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch, name="medtrt-parent-watch", daemon=True).start()


def _one_line(text: str) -> str:
    return " ".join(text.split())


class DecodePool:
    """Ordered, bounded decoding (see the module docstring).

    Args:
        workers: worker processes; 0 decodes in one thread of this process.
        settings: what the workers need (tags, JPEG pass-through).
        chunk: items per task sent to a worker.
        in_flight: tasks submitted ahead of the one being collected.
        function: the chunk decoder (a module-level function: workers import it by name).
    """

    def __init__(self, workers: int, settings: DecodeSettings, *, chunk: int = 16,
                 in_flight: int = 8,
                 function: Callable[[list[InputItem], DecodeSettings], list[Decoded]] = decode_chunk
                 ) -> None:
        if workers < 0:
            raise ValueError(f"workers must be >= 0; got {workers}")
        self.workers, self.settings = workers, settings
        self.chunk, self.in_flight = max(1, chunk), max(1, in_flight)
        self.function = function
        self.restarts = 0
        self._executor: Executor | None = self._new_executor()

    def _new_executor(self) -> Executor:
        if self.workers == 0:
            return ThreadPoolExecutor(max_workers=1, thread_name_prefix="medtrt-decode")
        return ProcessPoolExecutor(max_workers=self.workers,
                                   mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_worker_init, initargs=(os.getpid(),))

    def _submit(self, chunk: list[InputItem]) -> Future[list[Decoded]]:
        assert self._executor is not None, "DecodePool is closed"
        try:
            return self._executor.submit(self.function, chunk, self.settings)
        except BrokenProcessPool as exc:  # broke since the last collection: fail at collection
            future: Future[list[Decoded]] = Future()
            future.set_exception(exc)
            return future

    def map(self, items: Iterable[InputItem]) -> Iterator[tuple[InputItem, Decoded]]:
        """(item, outcome) for every item, in input order."""
        source = iter(items)
        pending: deque[tuple[list[InputItem], Future[list[Decoded]]]] = deque()

        def fill() -> None:
            while len(pending) < self.in_flight:
                chunk = list(islice(source, self.chunk))
                if not chunk:
                    return
                pending.append((chunk, self._submit(chunk)))

        fill()
        while pending:
            chunk, future = pending.popleft()
            try:
                outcomes = future.result()
            except Exception as exc:  # noqa: BLE001 - a dead worker, or a result that failed
                redo = [chunk] + [c for c, _ in pending]
                pending.clear()
                self._recover(exc)
                for c in redo:
                    for item in c:
                        yield item, self._isolated(item)
                fill()
                continue
            fill()  # keep the workers busy while the caller works on this chunk
            yield from zip(chunk, outcomes)

    def _recover(self, exc: Exception) -> None:
        if isinstance(exc, BrokenProcessPool):
            log.warning("a decode worker died (%s); retrying the files in flight one at a time",
                        exc)
            self._restart()
        else:
            log.warning("decoding a chunk failed (%s: %s); retrying its files one at a time",
                        type(exc).__name__, exc)

    def _isolated(self, item: InputItem) -> Decoded:
        """``item`` decoded alone; the file that kills a worker is an error row."""
        try:
            return self._submit([item]).result()[0]
        except BrokenProcessPool:
            self._restart()
            return Decoded(ERROR, error=WORKER_DIED)
        except Exception as exc:  # noqa: BLE001 - this file's error row
            return Decoded(ERROR, error=_one_line(f"{type(exc).__name__}: {exc}"))

    def _restart(self) -> None:
        self.restarts += 1
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        self._executor = self._new_executor()

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def __enter__(self) -> DecodePool:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
