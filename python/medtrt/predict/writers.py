"""Output files of `medtrt predict`, written so that a killed run leaves readable rows.

CSV and JSONL: one file, rows appended a whole chunk at a time (one ``write`` of the encoded
chunk, then ``fsync``), then the record beside it (``OUT.meta.json``) updated with the committed
length. Whatever lies past that length (a chunk torn by a kill inside its write) is ignored by
``iter_rows`` and cut off by ``--resume``. CSV has its header line first.

Parquet: a Parquet file is readable only once its footer is written, so during a run the rows
go to ``OUT.parts/part-NNNNNN.parquet``, each a complete Parquet file written under a hidden
temporary name, fsynced and renamed into place (readers, pyarrow's dataset discovery included,
ignore the hidden ones: ``pandas.read_parquet("OUT.parts")`` reads a killed run's rows, in
order). A clean finish compacts the parts, in order, into ``OUT.tmp`` (one row group per part),
renames ``OUT.parts`` to ``OUT.parts.done``, renames ``OUT.tmp`` to ``OUT`` and removes
``OUT.parts.done``. ``--resume`` of a complete ``OUT`` moves it into a new ``OUT.parts`` as part
0 (through ``OUT.parts.new``, renamed when the move is done) before the first new part. Every
step is a rename, and ``recover`` finishes or undoes whichever one a kill interrupted.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from medtrt._lazy import require
from medtrt.errors import ArtifactError
from medtrt.predict.record import PredictRecord, record_path
from medtrt.predict.rows import (FORMATS, RowSchema, Rows, empty_rows, row_from_csv, to_arrow,
                                 to_csv, to_jsonl)

__all__ = ["Output", "ParquetOutput", "TextOutput", "iter_rows", "metadata_json", "open_output",
           "output_exists", "output_format"]

log = logging.getLogger(__name__)

SUFFIXES = {".parquet": "parquet", ".csv": "csv", ".jsonl": "jsonl"}
METADATA_KEY = "medtrt.predictions"
_PART = re.compile(r"^part-(\d{6,})\.parquet$")


def output_format(out: str | os.PathLike[str]) -> str:
    """parquet, csv or jsonl from ``out``'s suffix; ValueError naming the choices otherwise."""
    suffix = Path(out).suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(f"--out {out}: unknown output format {suffix or '(no suffix)'!r}; "
                         "name a .parquet, .csv or .jsonl file")
    return SUFFIXES[suffix]


def output_exists(out: str | os.PathLike[str]) -> bool:
    """Whether ``out`` or any file of an interrupted run of it is there."""
    out = Path(out)
    if output_format(out) == "parquet":
        return ParquetOutput(out, None).exists()  # type: ignore[arg-type]
    return out.exists()


def iter_rows(out: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """The committed rows of ``out`` (complete, or left by a killed run), in order, each a dict
    in the Parquet/JSONL shape (CSV records are folded back: ``top_labels``, ``top_scores``,
    ``positives`` as lists, numbers as floats). Reads ``OUT.meta.json``; changes nothing."""
    rec = PredictRecord.read(record_path(out))
    schema = RowSchema(rec.labels, rec.k, rec.probs, rec.multilabel, rec.dicom_tags,
                       rec.threshold)
    output = open_output(out, schema)
    if isinstance(output, TextOutput):
        output.committed_bytes = rec.committed_bytes or 0
        if not output.path.exists():
            return
    yield from output.iter_rows()


def open_output(out: str | os.PathLike[str], schema: RowSchema) -> Output:
    fmt = output_format(out)
    if fmt == "parquet":
        require("pyarrow")
        return ParquetOutput(Path(out), schema)
    return TextOutput(Path(out), schema, fmt)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on a directory; the rename still stands
        pass
    finally:
        os.close(fd)


class Output:
    """The files of one output. ``committed_bytes`` is what the record should say after the
    latest ``append`` (None for Parquet)."""

    fmt: str

    def __init__(self, path: Path, schema: RowSchema) -> None:
        self.path, self.schema = path, schema
        self.committed_bytes: int | None = None

    def exists(self) -> bool:
        raise NotImplementedError

    def remove(self) -> None:
        raise NotImplementedError

    def create(self) -> None:
        raise NotImplementedError

    def recover(self, committed_bytes: int | None) -> None:
        """Brings the files to the state the record describes (see the module docstring)."""
        raise NotImplementedError

    def iter_paths(self) -> Iterator[str]:
        raise NotImplementedError

    def count(self) -> tuple[int, int] | None:
        """(rows, failed rows) read from the files, where the record may lag them (Parquet);
        None where the record is exact (CSV, JSONL: its committed length)."""
        return None

    def iter_rows(self) -> Iterator[dict[str, Any]]:
        raise NotImplementedError

    def append(self, rows: Rows, metadata: dict[str, str]) -> None:
        """Writes ``rows``; durable when it returns."""
        raise NotImplementedError

    def finish(self, metadata: dict[str, str]) -> None:
        """The output in its final layout (Parquet: compacted into one file)."""


class TextOutput(Output):
    """CSV or JSONL: one file appended in whole chunks."""

    def __init__(self, path: Path, schema: RowSchema, fmt: str) -> None:
        if fmt not in FORMATS or fmt == "parquet":
            raise ValueError(f"TextOutput writes csv or jsonl; got {fmt!r}")
        super().__init__(path, schema)
        self.fmt = fmt
        self.committed_bytes = 0
        self._fd: int | None = None

    def exists(self) -> bool:
        return self.path.exists()

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)

    def create(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        header = to_csv(self.schema, empty_rows(), header=True) if self.fmt == "csv" else b""
        with open(self.path, "wb") as f:
            f.write(header)
            f.flush()
            os.fsync(f.fileno())
        self.committed_bytes = len(header)

    def recover(self, committed_bytes: int | None) -> None:
        size = self.path.stat().st_size
        assert committed_bytes is not None
        if size < committed_bytes:
            raise ArtifactError(f"{self.path} holds {size} bytes but its record says "
                                f"{committed_bytes} were committed: it was changed outside "
                                "medtrt; use --overwrite or another --out")
        if size > committed_bytes:
            log.warning("%s: cutting %d bytes written after the last committed chunk (a run "
                        "killed while writing)", self.path, size - committed_bytes)
            with open(self.path, "r+b") as f:
                f.truncate(committed_bytes)
                os.fsync(f.fileno())
        self.committed_bytes = committed_bytes
        if self.fmt == "csv":
            expected = to_csv(self.schema, empty_rows(), header=True).decode()
            with open(self.path, encoding="utf-8", errors="surrogateescape") as f:
                first = f.readline()
            if first != expected:
                raise ArtifactError(f"{self.path}: its header is {first.strip()!r}; this run "
                                    f"writes {expected.strip()!r}; use --overwrite or another --out")

    def _lines(self, limit: int | None) -> Iterator[str]:
        """The file's lines up to ``limit`` bytes (the committed length)."""
        limit = self.committed_bytes if limit is None else limit
        with open(self.path, "rb") as f:
            done = 0
            for line in f:
                if done + len(line) > limit:
                    return
                done += len(line)
                yield line.decode("utf-8", "surrogateescape")

    def iter_rows(self, limit: int | None = None) -> Iterator[dict[str, Any]]:
        if self.fmt == "jsonl":
            for line in self._lines(limit):
                yield json.loads(line)
        else:
            for record in csv.DictReader(self._lines(limit)):
                yield row_from_csv(self.schema, record)

    def iter_paths(self) -> Iterator[str]:
        if self.fmt == "jsonl":
            for line in self._lines(None):
                yield json.loads(line)["path"]
        else:
            reader = csv.reader(self._lines(None))
            next(reader, None)
            for record in reader:
                yield record[0]

    def append(self, rows: Rows, metadata: dict[str, str]) -> None:
        data = to_jsonl(self.schema, rows) if self.fmt == "jsonl" else to_csv(self.schema, rows)
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        view = memoryview(data)
        while view:  # one write for the whole chunk, unless the kernel takes less
            view = view[os.write(self._fd, view):]
        os.fsync(self._fd)
        self.committed_bytes += len(data)

    def finish(self, metadata: dict[str, str]) -> None:
        self.close()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class ParquetOutput(Output):
    """Parquet: committed parts during a run, one file after it (see the module docstring)."""

    fmt = "parquet"

    def __init__(self, path: Path, schema: RowSchema) -> None:
        super().__init__(path, schema)
        self.parts = path.with_name(path.name + ".parts")
        self.staging = path.with_name(path.name + ".parts.new")
        self.done = path.with_name(path.name + ".parts.done")
        self.tmp = path.with_name(path.name + ".tmp")
        self._next = 0

    def _all(self) -> tuple[Path, ...]:
        return (self.path, self.parts, self.staging, self.done, self.tmp)

    def exists(self) -> bool:
        return any(p.exists() for p in self._all())

    def remove(self) -> None:
        for p in self._all():
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()

    def create(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.parts.mkdir()
        _fsync_dir(self.path.parent)

    def recover(self, committed_bytes: int | None = None) -> None:
        if self.staging.exists():  # reopening a complete OUT was interrupted
            if self.path.exists():
                shutil.rmtree(self.staging)  # the move had not happened
            else:
                self.staging.rename(self.parts)  # it had: finish the step
        if self.parts.exists():
            if self.path.exists():
                raise ArtifactError(f"both {self.path} and {self.parts} exist, which medtrt "
                                    f"never leaves; keep the one you want (the parts are the "
                                    "newer run) or use --overwrite")
            self.tmp.unlink(missing_ok=True)  # a compaction that had not committed
            for p in self.parts.iterdir():
                if p.name.startswith("."):
                    p.unlink()  # a part that was never renamed into place
        elif self.done.exists():  # a compaction that had committed: finish it
            if self.tmp.exists():
                os.replace(self.tmp, self.path)
            shutil.rmtree(self.done)
        else:
            self.tmp.unlink(missing_ok=True)
        _fsync_dir(self.path.parent)
        self._next = max((i + 1 for i, _ in self._part_files()), default=0)

    def _part_files(self) -> list[tuple[int, Path]]:
        if not self.parts.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.parts.iterdir()
                 if (m := _PART.match(p.name))]
        return sorted(found)

    def _files(self) -> list[Path]:
        """The committed files, in row order, in whichever state a run left them (``recover``
        brings them to one of the first two)."""
        if self.parts.is_dir():
            return [p for _, p in self._part_files()]
        if self.path.exists():
            return [self.path]
        if self.done.is_dir() and self.tmp.exists():  # compacted, not yet renamed
            return [self.tmp]
        if self.staging.is_dir():  # OUT moved to be part 0, the folder not yet renamed
            return sorted(p for p in self.staging.iterdir() if _PART.match(p.name))
        return []

    def iter_paths(self) -> Iterator[str]:
        pq = require("pyarrow.parquet")
        for file in self._files():
            with pq.ParquetFile(file) as f:
                for batch in f.iter_batches(batch_size=8192, columns=["path"]):
                    yield from batch.column(0).to_pylist()

    def count(self) -> tuple[int, int]:
        pq = require("pyarrow.parquet")
        rows = failed = 0
        for file in self._files():
            ok = pq.read_table(file, columns=["ok"]).column(0)
            rows += len(ok)
            failed += len(ok) - int(_true_count(ok))
        return rows, failed

    def iter_rows(self, limit: int | None = None) -> Iterator[dict[str, Any]]:
        pq = require("pyarrow.parquet")
        for file in self._files():
            with pq.ParquetFile(file) as f:
                for batch in f.iter_batches(batch_size=8192):
                    yield from batch.to_pylist()

    def _reopen(self) -> None:
        """A complete OUT becomes part 0 of a new parts folder (before new rows are added)."""
        self.staging.mkdir()
        os.replace(self.path, self.staging / _part_name(0))
        self.staging.rename(self.parts)
        _fsync_dir(self.path.parent)
        self._next = 1

    def append(self, rows: Rows, metadata: dict[str, str]) -> None:
        pq = require("pyarrow.parquet")
        if not self.parts.exists():
            self._reopen()
        name = _part_name(self._next)
        tmp = self.parts / f".{name}.tmp"
        pq.write_table(to_arrow(self.schema, rows, metadata), tmp)
        _fsync_file(tmp)
        os.replace(tmp, self.parts / name)
        _fsync_dir(self.parts)
        self._next += 1

    def finish(self, metadata: dict[str, str]) -> None:
        """Compacts the parts into OUT (an empty OUT when there are no rows at all)."""
        pq = require("pyarrow.parquet")
        if not self.parts.exists() and self.path.exists():
            return  # nothing new since OUT was compacted
        schema = self.schema.arrow_schema(metadata)
        with pq.ParquetWriter(self.tmp, schema) as writer:
            for _, part in self._part_files():
                writer.write_table(pq.read_table(part).replace_schema_metadata(metadata))
        _fsync_file(self.tmp)
        if self.parts.exists():
            self.parts.rename(self.done)
            _fsync_dir(self.path.parent)
        os.replace(self.tmp, self.path)
        _fsync_dir(self.path.parent)
        if self.done.exists():
            shutil.rmtree(self.done)


def _true_count(column: Any) -> int:
    """True values of a boolean column."""
    return int(require("pyarrow.compute").sum(column).as_py() or 0)


def _part_name(i: int) -> str:
    return f"part-{i:06d}.parquet"


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def metadata_json(record_json: str) -> dict[str, str]:
    return {METADATA_KEY: record_json}
