"""The rows `medtrt predict` writes: one fixed schema, three encodings.

One row per input, in input order (see docs/predict.md for the table):

=================  ==========================  ===============================================
column             Parquet / JSONL             CSV
=================  ==========================  ===============================================
path               string                      as is
ok                 bool                        ``true`` / ``false``
error              string, null when ok        empty when ok
top_labels         list of k strings           ``top_label_1`` ... ``top_label_k``
top_scores         list of k float32           ``top_score_1`` ... ``top_score_k``
positives          list of strings             labels joined by ``|`` (multi-label presets only)
prob_<label>       float32, one per label      same (with ``--probs`` only)
<DICOM keyword>    string, null if not DICOM   empty if not DICOM (with ``--dicom-tags`` only)
=================  ==========================  ===============================================

Scores and probabilities are the engine's float32 values; JSONL and CSV write each as the
shortest decimal that reads back as the same float32. ``positives`` (sigmoid presets) are the
labels whose probability is above the preset's threshold, in label order. An error row has
``ok`` false, the reason in ``error`` and nulls (empty CSV fields) in the prediction columns;
its DICOM tags are filled when the header could be read.

``RowBuffer`` collects rows column by column (``RowBuffer.add`` turns one input's decode error
or ``Engine`` result into its row: the one place that decides ok or error); ``to_arrow`` /
``to_jsonl`` / ``to_csv`` encode a chunk of them, ``from_arrow`` reads an Arrow table of rows
back into a chunk, and ``row_from_csv`` reads a CSV record back into the Parquet/JSONL shape.
The same code serves the local command and the scale-out on Ray (``medtrt.ray``), so both
write the same rows for the same inputs.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medtrt._lazy import require

__all__ = ["FORMATS", "NAN_ERROR", "RowBuffer", "RowSchema", "Rows", "empty_rows", "from_arrow",
           "row_from_csv", "to_arrow", "to_csv", "to_dicts", "to_jsonl"]

FORMATS = ("parquet", "csv", "jsonl")
FIXED = ("path", "ok", "error")
_KEYWORD = re.compile(r"^[A-Za-z][A-Za-z0-9]*$")
POSITIVES_SEP = "|"
NAN_ERROR = "the model's probabilities hold NaN or infinity (an overflow at its precision?)"

Rows = dict[str, list[Any]]  # column -> values of a chunk (see RowBuffer.take)


@dataclass(frozen=True)
class RowSchema:
    """The columns of one output, decided by the model and the options.

    Args:
        labels: the model's labels, in output order.
        k: top-k length, 1 <= k <= len(labels).
        probs: one ``prob_<label>`` column per label.
        multilabel: a sigmoid preset: a ``positives`` column at ``threshold``.
        dicom_tags: DICOM keywords written as columns of their own.
    """

    labels: tuple[str, ...]
    k: int
    probs: bool = False
    multilabel: bool = False
    dicom_tags: tuple[str, ...] = ()
    threshold: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", tuple(self.labels))
        object.__setattr__(self, "dicom_tags", tuple(self.dicom_tags))
        if not 1 <= self.k <= len(self.labels):
            raise ValueError(f"k must be in [1, {len(self.labels)}] for this model "
                             f"({len(self.labels)} labels); got {self.k}")
        bad = [t for t in self.dicom_tags if not _KEYWORD.match(t) or t in FIXED]
        if bad:
            raise ValueError(f"DICOM tags are given by keyword (e.g. SOPInstanceUID); got {bad[0]!r}")
        if len(set(self.dicom_tags)) != len(self.dicom_tags):
            raise ValueError(f"a DICOM tag is named twice in {list(self.dicom_tags)}")

    @property
    def prob_columns(self) -> tuple[str, ...]:
        return tuple(f"prob_{label}" for label in self.labels)

    def columns(self, fmt: str) -> tuple[str, ...]:
        """The column names of format ``fmt``, in file order."""
        if fmt not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}; got {fmt!r}")
        cols = list(FIXED)
        if fmt == "csv":
            for i in range(1, self.k + 1):
                cols += [f"top_label_{i}", f"top_score_{i}"]
        else:
            cols += ["top_labels", "top_scores"]
        if self.multilabel:
            cols.append("positives")
        if self.probs:
            cols += self.prob_columns
        return (*cols, *self.dicom_tags)

    def arrow_schema(self, metadata: dict[str, str] | None = None) -> Any:
        pa = require("pyarrow")
        fields = [pa.field("path", pa.string(), nullable=False),
                  pa.field("ok", pa.bool_(), nullable=False),
                  pa.field("error", pa.string()),
                  pa.field("top_labels", pa.list_(pa.string())),
                  pa.field("top_scores", pa.list_(pa.float32()))]
        if self.multilabel:
            fields.append(pa.field("positives", pa.list_(pa.string())))
        if self.probs:
            fields += [pa.field(c, pa.float32()) for c in self.prob_columns]
        fields += [pa.field(t, pa.string()) for t in self.dicom_tags]
        return pa.schema(fields, metadata=metadata)

    def to_dict(self) -> dict[str, Any]:
        return {"labels": list(self.labels), "k": self.k, "probs": self.probs,
                "multilabel": self.multilabel, "dicom_tags": list(self.dicom_tags),
                "threshold": self.threshold}


@dataclass
class RowBuffer:
    """Rows of one chunk, column by column, until ``take``."""

    schema: RowSchema
    _cols: Rows = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._cols = empty_rows()

    def __len__(self) -> int:
        return len(self._cols["path"])

    def add(self, path: str, *, error: str | None = None, result: Any = None,
            tags: Sequence[str | None] | None = None) -> bool:
        """One input's row: an error row when ``error`` (the decoder's reason) is given, or when
        ``result`` (an ``Engine`` Result, from ``infer(..., return_probs=True)``) failed or its
        probabilities are not finite; else its prediction. Returns True for an error row."""
        if error is None and not result.ok:
            error = " ".join(str(getattr(result.error, "reason", result.error)).split())
        if error is None and not np.isfinite(result.probs).all():
            error = NAN_ERROR
        if error is not None:
            self.add_error(path, error, tags)
            return True
        self.add_ok(path, result.labels, result.scores, result.probs, result.positives, tags)
        return False

    def extend(self, rows: Rows) -> None:
        """Rows already built (``from_arrow``), appended in order."""
        for name, values in rows.items():
            self._cols[name].extend(values)

    def add_ok(self, path: str, labels: Sequence[str], scores: np.ndarray,
               probs: np.ndarray | None, positives: Sequence[str] | None = None,
               tags: Sequence[str | None] | None = None) -> None:
        c = self._cols
        c["path"].append(path)
        c["ok"].append(True)
        c["error"].append(None)
        c["top_labels"].append(tuple(labels))
        c["top_scores"].append(np.asarray(scores, np.float32))
        c["positives"].append(tuple(positives or ()))
        c["probs"].append(np.asarray(probs, np.float32) if self.schema.probs else None)
        c["tags"].append(tags)

    def add_error(self, path: str, error: str,
                  tags: Sequence[str | None] | None = None) -> None:
        c = self._cols
        c["path"].append(path)
        c["ok"].append(False)
        c["error"].append(error)
        for name in ("top_labels", "top_scores", "positives", "probs"):
            c[name].append(None)
        c["tags"].append(tags)

    def take(self) -> Rows:
        rows, self._cols = self._cols, empty_rows()
        return rows


def empty_rows() -> Rows:
    """A chunk of no rows."""
    return {name: [] for name in ("path", "ok", "error", "top_labels", "top_scores",
                                  "positives", "probs", "tags")}


# ----------------------------------------------------------------------------------- encodings


def _short(values: np.ndarray) -> list[float]:
    """float32 values as the shortest decimals that read back as the same float32."""
    return [float(s) for s in np.asarray(values, np.float32).astype(str)]


def _tag(tags: Sequence[str | None] | None, i: int) -> str | None:
    return None if tags is None else tags[i]


def to_dicts(schema: RowSchema, rows: Rows) -> list[dict[str, Any]]:
    """The rows as dicts in the Parquet/JSONL shape (column order kept)."""
    out = []
    for i in range(len(rows["path"])):
        ok = rows["ok"][i]
        d: dict[str, Any] = {"path": rows["path"][i], "ok": ok, "error": rows["error"][i],
                             "top_labels": list(rows["top_labels"][i]) if ok else None,
                             "top_scores": _short(rows["top_scores"][i]) if ok else None}
        if schema.multilabel:
            d["positives"] = list(rows["positives"][i]) if ok else None
        if schema.probs:
            values = _short(rows["probs"][i]) if ok else [None] * len(schema.labels)
            d.update(zip(schema.prob_columns, values))
        for j, tag in enumerate(schema.dicom_tags):
            d[tag] = _tag(rows["tags"][i], j)
        out.append(d)
    return out


def to_jsonl(schema: RowSchema, rows: Rows) -> bytes:
    return "".join(json.dumps(d, ensure_ascii=False) + "\n"
                   for d in to_dicts(schema, rows)).encode("utf-8", "surrogateescape")


def to_csv(schema: RowSchema, rows: Rows, *, header: bool = False) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    if header:
        w.writerow(schema.columns("csv"))
    for d in to_dicts(schema, rows):
        record: list[Any] = [d["path"], "true" if d["ok"] else "false", d["error"] or ""]
        labels, scores = d["top_labels"] or [""] * schema.k, d["top_scores"] or [""] * schema.k
        for label, score in zip(labels, scores):
            record += [label, score]
        if schema.multilabel:
            record.append(POSITIVES_SEP.join(d["positives"] or ()))
        if schema.probs:
            record += ["" if d[c] is None else d[c] for c in schema.prob_columns]
        record += [d[t] or "" for t in schema.dicom_tags]
        w.writerow(record)
    return buf.getvalue().encode("utf-8", "surrogateescape")


def to_arrow(schema: RowSchema, rows: Rows, metadata: dict[str, str] | None = None) -> Any:
    pa = require("pyarrow")
    ok = np.asarray(rows["ok"], bool)
    arrays = [pa.array(rows["path"], pa.string()), pa.array(ok, pa.bool_()),
              pa.array(rows["error"], pa.string()),
              pa.array([list(x) if x is not None else None for x in rows["top_labels"]],
                       pa.list_(pa.string())),
              pa.array([x if x is not None else None for x in rows["top_scores"]],
                       pa.list_(pa.float32()))]
    if schema.multilabel:
        arrays.append(pa.array([list(x) if x is not None else None for x in rows["positives"]],
                               pa.list_(pa.string())))
    if schema.probs:
        n, c = len(ok), len(schema.labels)
        probs = np.zeros((n, c), np.float32)
        for i, p in enumerate(rows["probs"]):
            if p is not None:
                probs[i] = p
        arrays += [pa.array(probs[:, j], pa.float32(), mask=~ok) for j in range(c)]
    for j in range(len(schema.dicom_tags)):
        arrays.append(pa.array([_tag(t, j) for t in rows["tags"]], pa.string()))
    return pa.Table.from_arrays(arrays, schema=schema.arrow_schema(metadata))


def from_arrow(schema: RowSchema, table: Any) -> Rows:
    """The rows of an Arrow table with (at least) ``schema``'s Parquet columns, as a chunk that
    ``to_arrow`` / ``to_jsonl`` / ``to_csv`` encode exactly as the rows it was made from: float32
    values are kept as float32, the other columns are left out."""
    n = table.num_rows
    ok = table.column("ok").to_pylist()
    rows = empty_rows()
    rows["path"] = table.column("path").to_pylist()
    rows["ok"] = ok
    rows["error"] = table.column("error").to_pylist()
    rows["top_labels"] = [None if x is None else tuple(x)
                          for x in table.column("top_labels").to_pylist()]
    rows["top_scores"] = [None if x is None else np.asarray(x, np.float32)
                          for x in table.column("top_scores").to_pylist()]
    if schema.multilabel:
        rows["positives"] = [None if x is None else tuple(x)
                             for x in table.column("positives").to_pylist()]
    else:
        rows["positives"] = [() if good else None for good in ok]
    if schema.probs:
        probs = np.stack([table.column(c).to_numpy(zero_copy_only=False).astype(np.float32)
                          for c in schema.prob_columns], axis=1) if n else None
        rows["probs"] = [probs[i].copy() if ok[i] else None for i in range(n)]
    else:
        rows["probs"] = [None] * n
    if schema.dicom_tags:
        values = [table.column(t).to_pylist() for t in schema.dicom_tags]
        rows["tags"] = [tuple(v[i] for v in values) for i in range(n)]
    else:
        rows["tags"] = [None] * n
    return rows


def row_from_csv(schema: RowSchema, record: dict[str, str]) -> dict[str, Any]:
    """A CSV record (a ``csv.DictReader`` row) in the Parquet/JSONL shape."""
    ok = record["ok"] == "true"
    d: dict[str, Any] = {"path": record["path"], "ok": ok, "error": record["error"] or None}
    rng = range(1, schema.k + 1)
    d["top_labels"] = [record[f"top_label_{i}"] for i in rng] if ok else None
    d["top_scores"] = [float(record[f"top_score_{i}"]) for i in rng] if ok else None
    if schema.multilabel:
        text = record["positives"]
        d["positives"] = (text.split(POSITIVES_SEP) if text else []) if ok else None
    if schema.probs:
        d.update({c: float(record[c]) if ok else None for c in schema.prob_columns})
    d.update({t: record[t] or None for t in schema.dicom_tags})
    return d
