"""What `medtrt predict` runs over: its INPUT arguments expanded, lazily, into image paths.

An INPUT is one of (decided once, up front, by ``plan_inputs``):

- a folder: walked depth-first, the entries of each folder in name order (so the same tree
  always gives the same order), hidden entries (``.name``) left out, symlinks followed once.
  Each file found is a *walked* item: the decoder keeps it when its content is a JPEG, PNG or
  DICOM, or when its name ends in an image suffix (a broken ``.jpg`` is an error row, not a
  silent skip); any other file (notes, label tables) is skipped without a row.
- a file whose first bytes are a JPEG, PNG or DICOM (whatever its name), or whose name ends in
  an image suffix: one image (an error row if it is not one).
- a Parquet file (by its ``PAR1`` magic) or a ``.csv`` / ``.tsv`` file: a manifest; its path
  column (``path`` unless told) lists the images.
- any other text file: a list of paths, one per line; blank lines and lines starting with
  ``#`` are ignored, leading and trailing white space is stripped.
- ``-``: such a list on standard input.

Paths in a list or manifest that are relative are taken relative to the folder of the list or
manifest (standard input: the current directory). An item named by a list or manifest that does
not exist becomes an error row; an INPUT on the command line that does not exist is a usage
error (``plan_inputs`` raises). Nothing is read ahead: the items stream, so memory stays flat
however many there are.
"""

from __future__ import annotations

import csv
import logging
import os
import stat
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from medtrt._lazy import require
from medtrt.data.readers import IMAGE_SUFFIXES, sniff

__all__ = ["InputItem", "InputSource", "iter_items", "plan_inputs"]

log = logging.getLogger(__name__)

KINDS = ("folder", "image", "list", "csv", "parquet", "stdin")
_PARQUET_MAGIC = b"PAR1"
_TEXT_PROBE = 8192


@dataclass(frozen=True)
class InputItem:
    """One image to predict: its path as it will appear in the output, and whether it was found
    by walking a folder (then a file that is not an image is skipped rather than an error row)."""

    path: str
    walked: bool = False


@dataclass(frozen=True)
class InputSource:
    """One INPUT argument, classified: ``kind`` is one of KINDS."""

    arg: str
    kind: str
    path_column: str | None = None  # manifests


def plan_inputs(inputs: Sequence[str | os.PathLike[str]], *,
                path_column: str = "path") -> list[InputSource]:
    """Classifies each INPUT (see the module docstring) and checks what can be checked before
    the run: that it exists, that a manifest has ``path_column``. ValueError with the fix when
    not; nothing is expanded yet."""
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    if not inputs:
        raise ValueError("no INPUT given: name image files, folders, a list of paths (one per "
                         "line) or a CSV/Parquet manifest")
    if not path_column:
        raise ValueError("--path-column must name a column; got an empty name")
    sources = []
    stdin_seen = False
    for raw in inputs:
        arg = os.fspath(raw)
        if arg == "-":
            if stdin_seen:
                raise ValueError("INPUT '-' (standard input) is given twice; give it once")
            stdin_seen = True
            sources.append(InputSource(arg, "stdin"))
            continue
        source = _classify(arg, path_column)
        if source.kind in ("csv", "parquet"):
            _check_manifest(source)
        sources.append(source)
    return sources


def iter_items(sources: Iterable[InputSource], *, stdin: TextIO | None = None) -> Iterator[InputItem]:
    """The items of every source, in order, lazily."""
    for source in sources:
        if source.kind == "folder":
            yield from _walk(source.arg)
        elif source.kind == "image":
            yield InputItem(source.arg)
        elif source.kind == "list":
            with open(source.arg, encoding="utf-8", errors="surrogateescape") as f:
                yield from _list_items(f, os.path.dirname(source.arg))
        elif source.kind == "stdin":
            yield from _list_items(stdin or sys.stdin, "")
        elif source.kind == "csv":
            yield from _csv_items(source)
        else:
            yield from _parquet_items(source)


# ----------------------------------------------------------------------------- classification


def _classify(arg: str, path_column: str) -> InputSource:
    try:
        st = os.stat(arg)
    except FileNotFoundError:
        raise ValueError(f"INPUT {arg} does not exist; name image files, folders, a list of "
                         "paths or a CSV/Parquet manifest") from None
    except OSError as exc:
        raise ValueError(f"INPUT {arg} cannot be read ({exc.strerror or exc})") from None
    if stat.S_ISDIR(st.st_mode):
        return InputSource(arg, "folder")
    try:
        with open(arg, "rb") as f:
            head = f.read(_TEXT_PROBE)
    except OSError as exc:
        raise ValueError(f"INPUT {arg} cannot be read ({exc.strerror or exc})") from None
    suffix = Path(arg).suffix.lower()
    if sniff(head[:132]) is not None or suffix in IMAGE_SUFFIXES:
        return InputSource(arg, "image")
    if head.startswith(_PARQUET_MAGIC):
        return InputSource(arg, "parquet", path_column)
    if suffix in (".csv", ".tsv"):
        return InputSource(arg, "csv", path_column)
    if b"\x00" in head:  # binary, and not an image we know: its own error row
        return InputSource(arg, "image")
    return InputSource(arg, "list")


def _check_manifest(source: InputSource) -> None:
    column = source.path_column
    if source.kind == "csv":
        with open(source.arg, newline="", encoding="utf-8-sig", errors="surrogateescape") as f:
            header = next(csv.reader(f, delimiter=_delimiter(source.arg)), [])
        columns = [c.strip() for c in header]
    else:
        pq = require("pyarrow.parquet")
        try:
            schema = pq.read_schema(source.arg)
        except Exception as exc:  # pyarrow raises ArrowInvalid, OSError...
            raise ValueError(f"manifest {source.arg} is not a readable Parquet file ({exc})") from None
        columns = list(schema.names)
        if column in columns:
            kind = schema.field(column).type
            if not (str(kind) in ("string", "large_string", "string_view")):
                raise ValueError(f"manifest {source.arg}: column {column!r} holds {kind}, not "
                                 "strings; the path column must hold file paths")
    if column not in columns:
        shown = ", ".join(repr(c) for c in columns[:12]) or "none"
        raise ValueError(f"manifest {source.arg} has no {column!r} column (its columns: {shown}); "
                         "pass --path-column NAME")


def _delimiter(path: str) -> str:
    return "\t" if path.lower().endswith(".tsv") else ","


# ----------------------------------------------------------------------------------- expansion


def _resolve(entry: str, base: str) -> str:
    """``entry`` as written in a list or manifest, relative to ``base`` when relative."""
    if os.path.isabs(entry) or not base:
        return entry
    return os.path.normpath(os.path.join(base, entry))


def _list_items(lines: Iterable[str], base: str) -> Iterator[InputItem]:
    for line in lines:
        entry = line.strip()
        if entry and not entry.startswith("#"):
            yield InputItem(_resolve(entry, base))


def _csv_items(source: InputSource) -> Iterator[InputItem]:
    base = os.path.dirname(source.arg)
    with open(source.arg, newline="", encoding="utf-8-sig", errors="surrogateescape") as f:
        reader = csv.reader(f, delimiter=_delimiter(source.arg))
        header = [c.strip() for c in next(reader)]
        col = header.index(source.path_column)
        for row in reader:
            entry = row[col].strip() if col < len(row) else ""
            if entry:
                yield InputItem(_resolve(entry, base))


def _parquet_items(source: InputSource) -> Iterator[InputItem]:
    pq = require("pyarrow.parquet")
    base = os.path.dirname(source.arg)
    with pq.ParquetFile(source.arg) as f:
        for batch in f.iter_batches(batch_size=4096, columns=[source.path_column]):
            for entry in batch.column(0).to_pylist():
                if entry and entry.strip():
                    yield InputItem(_resolve(entry.strip(), base))


def _walk(root: str) -> Iterator[InputItem]:
    """Files under ``root``: depth-first, each folder's entries in name order, hidden entries
    left out, symlinked folders followed unless already visited (no cycles)."""
    seen: set[tuple[int, int]] = set()
    st = os.stat(root)
    seen.add((st.st_dev, st.st_ino))
    stack: list[Iterator[str]] = [_children(root)]
    while stack:
        path = next(stack[-1], None)
        if path is None:
            stack.pop()
            continue
        try:
            st = os.stat(path)
        except OSError:  # a dangling symlink, or gone since the listing: the reader says which
            yield InputItem(path, walked=True)
            continue
        if stat.S_ISDIR(st.st_mode):
            key = (st.st_dev, st.st_ino)
            if key not in seen:
                seen.add(key)
                stack.append(_children(path))
        elif stat.S_ISREG(st.st_mode):
            yield InputItem(path, walked=True)


def _children(folder: str) -> Iterator[str]:
    try:
        names = sorted(n for n in os.listdir(folder) if not n.startswith("."))
    except OSError as exc:
        log.warning("cannot list folder %s (%s); its files are left out", folder,
                    exc.strerror or exc)
        return iter(())
    return (os.path.join(folder, n) for n in names)
