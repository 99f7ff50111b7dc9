"""medtrt.predict.rows / writers / record: the schema, its three encodings, the crash-safe
files (a torn text tail, every interrupted Parquet step) and the record beside them."""

from __future__ import annotations

import csv
import json
import os
import pathlib

import numpy as np
import pytest

from medtrt.errors import ArtifactError, ImageReadError
from medtrt.predict import PredictRecord, RowSchema, Session, iter_rows, record_path
from medtrt.predict.rows import (NAN_ERROR, RowBuffer, from_arrow, to_arrow, to_csv,
                                 to_jsonl)
from medtrt.predict.writers import ParquetOutput, metadata_json, open_output

LABELS = ("Atelectasis", "Effusion", "Mass", "Nodule")
SCHEMA = RowSchema(LABELS, 2, probs=True, multilabel=True, dicom_tags=("PatientID",),
                   threshold=0.5)


def record_for(out, schema, committed_bytes=None) -> PredictRecord:
    fmt = out.suffix[1:]
    session = Session(started="2026-12-02T00:00:00+00:00", inputs=("x",), cwd="/", backend="b",
                      device="cpu", precision="fp32", decode="cpu", workers=0, batch_size=8)
    return PredictRecord(out.name, fmt, schema.columns(fmt), schema.labels, schema.k,
                         schema.probs, schema.multilabel, schema.threshold, schema.dicom_tags,
                         "m.onnx", 1, "0" * 64, "p", "fp32", "0.1.0", (session,),
                         committed_bytes=committed_bytes)


def make_rows(rng, n, start=0):
    """``n`` rows (every fifth an error row), and what each must read back as."""
    buf, expected = RowBuffer(SCHEMA), []
    for i in range(start, start + n):
        path, tags = f"studies/{i:04d}.dcm", (f"P{i}",) if i % 2 else (None,)
        if i % 5 == 3:
            buf.add_error(path, f"corrupt DICOM {i}", tags)
            expected.append({"path": path, "ok": False, "error": f"corrupt DICOM {i}",
                             "top_labels": None, "top_scores": None, "positives": None,
                             **{f"prob_{x}": None for x in LABELS}, "PatientID": tags[0]})
            continue
        probs = rng.random(len(LABELS)).astype(np.float32)
        order = np.argsort(-probs)[:2]
        positives = tuple(LABELS[j] for j in np.flatnonzero(probs > 0.5))
        buf.add_ok(path, [LABELS[j] for j in order], probs[order], probs, positives, tags)
        expected.append({"path": path, "ok": True, "error": None,
                         "top_labels": [LABELS[j] for j in order],
                         "top_scores": probs[order].tolist(), "positives": list(positives),
                         **{f"prob_{x}": float(p) for x, p in zip(LABELS, probs)},
                         "PatientID": tags[0]})
    return buf.take(), expected


def assert_rows_equal(got, expected):
    """Equal rows; numbers equal as float32 (the values written)."""
    assert [g["path"] for g in got] == [e["path"] for e in expected]
    for g, e in zip(got, expected):
        assert g.keys() == e.keys(), (g.keys(), e.keys())
        for key, want in e.items():
            have = g[key]
            if isinstance(want, float) or (isinstance(want, list) and want
                                           and isinstance(want[0], float)):
                assert np.array_equal(np.float32(have), np.float32(want)), (key, have, want)
            else:
                assert have == want, (key, have, want)


def write(out, chunks):
    output = open_output(out, SCHEMA)
    output.create()
    for rows in chunks:
        output.append(rows, metadata_json("{}"))
    record = record_for(out, SCHEMA, output.committed_bytes)
    record.write(record_path(out))
    return output, record


def test_columns_per_format_and_bad_schemas():
    assert SCHEMA.columns("csv") == (
        "path", "ok", "error", "top_label_1", "top_score_1", "top_label_2", "top_score_2",
        "positives", "prob_Atelectasis", "prob_Effusion", "prob_Mass", "prob_Nodule",
        "PatientID")
    assert SCHEMA.columns("jsonl") == SCHEMA.columns("parquet") == (
        "path", "ok", "error", "top_labels", "top_scores", "positives", "prob_Atelectasis",
        "prob_Effusion", "prob_Mass", "prob_Nodule", "PatientID")
    assert RowSchema(LABELS, 1).columns("jsonl") == ("path", "ok", "error", "top_labels",
                                                      "top_scores")
    with pytest.raises(ValueError, match=r"k must be in \[1, 4\] for this model \(4 labels\); got 5"):
        RowSchema(LABELS, 5)
    with pytest.raises(ValueError, match=r"by keyword .*got 'Patient ID'"):
        RowSchema(LABELS, 1, dicom_tags=("Patient ID",))


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
def test_each_format_reads_back_the_rows_written(rng, tmp_path, fmt):
    if fmt == "parquet":
        pytest.importorskip("pyarrow")
    out = tmp_path / f"preds.{fmt}"
    first, e1 = make_rows(rng, 7)
    second, e2 = make_rows(rng, 6, start=7)
    output, _ = write(out, [first, second])
    assert_rows_equal(list(iter_rows(out)), e1 + e2)  # a killed run's state (Parquet: parts)
    output.finish(metadata_json("{}"))
    assert_rows_equal(list(iter_rows(out)), e1 + e2)
    assert list(output.iter_paths()) == [e["path"] for e in e1 + e2]
    if fmt == "csv":  # flat columns; positives joined by "|"; empty fields for nulls
        with open(out, newline="") as f:
            records = list(csv.DictReader(f))
        assert tuple(records[0]) == SCHEMA.columns("csv")
        for r, e in zip(records, e1 + e2):
            assert r["positives"] == "|".join(e["positives"] or [])
            assert r["ok"] == ("true" if e["ok"] else "false")
            assert (r["top_label_2"] == "") == (not e["ok"])
    if fmt == "parquet":
        assert not output.parts.exists() and out.is_file()


@pytest.mark.parametrize("schema", [SCHEMA, RowSchema(LABELS[:3], 1)])
def test_rows_back_from_arrow_encode_as_the_rows_they_came_from(rng, schema):
    """What the Ray path does: rows built on an actor, sent as Arrow, written here."""
    pytest.importorskip("pyarrow")
    buf = RowBuffer(schema)
    for i in range(9):
        tags = (f"P{i}",) if schema.dicom_tags and i % 2 else None
        if i % 4 == 1:
            buf.add_error(f"{i}.png", f"corrupt PNG {i}", tags)
            continue
        probs = rng.random(len(schema.labels)).astype(np.float32)
        order = np.argsort(-probs)[:schema.k]
        positives = tuple(schema.labels[j] for j in np.flatnonzero(probs > 0.5))
        buf.add_ok(f"{i}.png", [schema.labels[j] for j in order], probs[order], probs,
                   positives, tags)
    rows = buf.take()
    back = from_arrow(schema, to_arrow(schema, rows))
    for encode in (to_jsonl, to_csv, lambda s, r: to_arrow(s, r).to_pylist()):
        assert encode(schema, back) == encode(schema, rows)


def test_a_result_becomes_its_row_or_an_error_row():
    """RowBuffer.add: the one place that turns a decode error or an Engine result into a row
    (the local command and the Ray actors both use it)."""
    class R:  # the fields of an Engine Result that a row reads
        def __init__(self, probs, error=None):
            self.ok, self.error, self.probs = error is None, error, np.float32(probs)
            self.labels, self.scores, self.positives = ("Mass",), self.probs[:1], ("Mass",)

    buf = RowBuffer(SCHEMA)
    assert buf.add("a", result=R([0.9, 0.1, 0.2, 0.3])) is False
    assert buf.add("b", result=R([0.9, np.nan, 0.2, 0.3])) is True
    assert buf.add("c", error="corrupt JPEG: truncated") is True
    assert buf.add("d", result=R([0.0] * 4, ImageReadError("d", "corrupt\n  PNG"))) is True
    rows = buf.take()
    assert rows["ok"] == [True, False, False, False]
    assert rows["error"] == [None, NAN_ERROR, "corrupt JPEG: truncated", "corrupt PNG"]


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_a_torn_text_tail_is_ignored_then_cut(rng, tmp_path, fmt):
    out = tmp_path / f"preds.{fmt}"
    rows, expected = make_rows(rng, 5)
    output, record = write(out, [rows])
    with open(out, "ab") as f:  # half a chunk, as a kill inside its write leaves it
        f.write(b'"studies/9999.dcm","tr')
    assert_rows_equal(list(iter_rows(out)), expected)
    reopened = open_output(out, SCHEMA)
    reopened.recover(record.committed_bytes)
    assert out.stat().st_size == record.committed_bytes
    assert list(reopened.iter_paths()) == [e["path"] for e in expected]
    with open(out, "r+b") as f:
        f.truncate(record.committed_bytes - 3)
    with pytest.raises(ArtifactError, match=r"changed outside medtrt; use --overwrite"):
        open_output(out, SCHEMA).recover(record.committed_bytes)


class Killed(BaseException):
    """Stands for SIGKILL at one step."""


def fail_on(monkeypatch, target, attribute, when):
    real = getattr(target, attribute)

    def step(*args, **kwargs):
        if when(*args):
            raise Killed
        return real(*args, **kwargs)

    monkeypatch.setattr(target, attribute, step)


def test_parquet_recovers_from_a_kill_at_every_step(rng, tmp_path, monkeypatch):
    pytest.importorskip("pyarrow")
    out = tmp_path / "p.parquet"
    first, e1 = make_rows(rng, 4)
    second, e2 = make_rows(rng, 4, start=4)
    output, _ = write(out, [first])
    (output.parts / ".part-000001.parquet.tmp").write_bytes(b"PAR1 half written")
    # 1. killed while compacting, after the parts were set aside, before OUT took their place
    with monkeypatch.context() as m:
        fail_on(m, os, "replace", lambda src, dst: str(dst) == str(out))
        with pytest.raises(Killed):
            output.finish(metadata_json("{}"))
    assert output.done.is_dir() and output.tmp.is_file() and not out.exists()
    assert_rows_equal(list(iter_rows(out)), e1)
    again = ParquetOutput(out, SCHEMA)
    again.recover()
    assert out.is_file() and not output.done.exists() and not output.tmp.exists()
    # 2. --resume of the complete OUT, killed after OUT moved into the staging folder
    with monkeypatch.context() as m:
        fail_on(m, pathlib.Path, "rename", lambda src, dst: src == again.staging)
        with pytest.raises(Killed):
            again.append(second, metadata_json("{}"))
    assert not out.exists() and again.staging.is_dir()
    assert_rows_equal(list(iter_rows(out)), e1)
    third = ParquetOutput(out, SCHEMA)
    third.recover()
    assert third.parts.is_dir() and not third.staging.exists()
    third.append(second, metadata_json("{}"))
    third.finish(metadata_json("{}"))
    assert_rows_equal(list(iter_rows(out)), e1 + e2)
    # 3. both OUT and parts: never left by medtrt, so refused rather than guessed
    third.parts.mkdir()
    with pytest.raises(ArtifactError, match=r"both .*p\.parquet and .*parts exist"):
        ParquetOutput(out, SCHEMA).recover()


def test_record_round_trip_and_refusals(tmp_path):
    out = tmp_path / "x.jsonl"
    record = record_for(out, SCHEMA, committed_bytes=10)
    record.write(record_path(out))
    assert PredictRecord.read(record_path(out)) == record
    data = json.loads(record_path(out).read_text())
    data["schema_version"] = 99
    record_path(out).write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match=r"from a newer medtrt .*upgrade medtrt"):
        PredictRecord.read(record_path(out))
    record_path(out).write_text("{")
    with pytest.raises(ArtifactError, match=r"not valid JSON"):
        PredictRecord.read(record_path(out))
    record_path(out).unlink()
    with pytest.raises(ArtifactError, match=r"missing: without its record"):
        PredictRecord.read(record_path(out))
