"""medtrt.predict.predict with the demo model on the CPU: rows in input order that equal
Engine.infer on the same files, error rows, the three formats, DICOM tags, multi-label
positives, resume, and the usage errors."""

from __future__ import annotations

import dataclasses
import logging
import sys

import numpy as np
import pytest

from medtrt import Engine
from medtrt.errors import MissingDependencyError
from medtrt.predict import DEFAULT_DICOM_TAGS, PredictRecord, iter_rows, predict, record_path

from helpers.predict import TAGS, mixed_folder, write_ct, write_jpeg


@pytest.fixture(scope="module")
def engine(demo_model):
    with Engine(demo_model.onnx, device="cpu") as e:
        yield e


def good_paths(expected):
    return [p for p, ok in expected if ok]


def test_rows_follow_the_inputs_and_equal_engine_infer(engine, rng, tmp_path):
    expected = mixed_folder(tmp_path / "in", rng)
    out = tmp_path / "p.parquet"
    s = predict(engine, [tmp_path / "in"], out, {"probs": True, "dicom_tags": True, "workers": 0})
    rows = list(iter_rows(out))
    assert [(r["path"], r["ok"]) for r in rows] == expected
    assert (s.rows, s.failed, s.skipped_not_images) == (len(expected), 2, 1)  # notes.txt
    errors = {r["path"].rsplit("/", 1)[1]: r["error"] for r in rows if not r["ok"]}
    assert errors["text.jpg"].startswith("not a JPEG, PNG or DICOM file")
    assert "corrupt JPEG" in errors["truncated.jpeg"]

    ref = engine.infer(good_paths(expected), k=3, return_probs=True)  # one batch, as predict's
    ok = [r for r in rows if r["ok"]]
    probs = np.array([[r[f"prob_{x}"] for x in engine.preset.labels] for r in ok], np.float32)
    np.testing.assert_array_equal(probs, ref.probs)
    for r, want in zip(ok, ref):
        assert r["top_labels"] == list(want.labels)
        np.testing.assert_array_equal(np.float32(r["top_scores"]), want.scores)
    for r in rows:
        dicom = r["path"].endswith("ct.dcm")
        assert [r[t] for t in DEFAULT_DICOM_TAGS] == (
            [TAGS[t] for t in DEFAULT_DICOM_TAGS] if dicom else [None] * 4)
    record = PredictRecord.read(record_path(out))
    assert record.complete and record.rows == len(expected) and record.failed == 2
    assert (record.precision, record.sessions[0].backend) == ("fp32", "onnxruntime")
    assert record.model_sha256 and record.preset == engine.preset.name


def test_formats_agree_and_order_survives_worker_processes(engine, rng, tmp_path):
    expected = mixed_folder(tmp_path / "in", rng)
    listing = tmp_path / "in.txt"
    listing.write_text("in/a/1.jpeg\nin/missing.jpeg\nin/ct.dcm\n")
    inputs = [tmp_path / "in", listing]
    runs = {"jsonl": {"workers": 2}, "csv": {"workers": 0}, "parquet": {"workers": 0}}
    got = {}
    for fmt, opts in runs.items():
        predict(engine, inputs, tmp_path / f"p.{fmt}", {"batch_size": 3, "probs": True, **opts})
        got[fmt] = list(iter_rows(tmp_path / f"p.{fmt}"))
    listed = [str(tmp_path / p) for p in ("in/a/1.jpeg", "in/missing.jpeg", "in/ct.dcm")]
    assert [r["path"] for r in got["jsonl"]] == [p for p, _ in expected] + listed
    missing = got["jsonl"][len(expected) + 1]
    assert missing["ok"] is False and missing["error"] == "No such file or directory"
    for fmt in ("csv", "parquet"):
        for a, b in zip(got["jsonl"], got[fmt], strict=True):
            assert a.keys() == b.keys()
            for key in a:
                same = (a[key] == b[key] if not isinstance(a[key], (float, list))
                        or key == "top_labels" else np.array_equal(np.float32(a[key]),
                                                                   np.float32(b[key])))
                assert same, (fmt, key, a[key], b[key])


def test_dicom_tags_only_when_asked_and_patient_id_only_then(engine, rng, tmp_path):
    ct = write_ct(tmp_path / "ct.dcm", rng)
    write_jpeg(tmp_path / "x.jpeg", rng)
    plain = list(iter_rows(predict(engine, [tmp_path], tmp_path / "a.jsonl").out))
    assert not {"PatientID", "SOPInstanceUID"} & plain[0].keys()
    chosen = predict(engine, [ct], tmp_path / "b.jsonl", {"dicom_tags": ["SOPInstanceUID"]})
    row = next(iter_rows(chosen.out))
    assert row["SOPInstanceUID"] == TAGS["SOPInstanceUID"] and "PatientID" not in row


def test_multilabel_presets_write_positives_at_the_threshold(demo_model, rng, tmp_path):
    for i in range(4):
        write_jpeg(tmp_path / "in" / f"{i}.jpeg", rng)
    with Engine(demo_model.onnx, device="cpu") as e:
        preset = dataclasses.replace(e.preset, activation="sigmoid", threshold=0.3)
    with Engine(demo_model.onnx, device="cpu", preset=preset) as e:
        s = predict(e, [tmp_path / "in"], tmp_path / "p.csv", {"probs": True, "k": 2})
    rows = list(iter_rows(s.out))
    assert s.record.multilabel and s.record.threshold == 0.3
    for r in rows:
        above = [x for x in preset.labels if r[f"prob_{x}"] > 0.3]
        assert r["positives"] == above
    assert any(r["positives"] for r in rows)


def test_resume_appends_only_the_new_inputs(engine, rng, tmp_path, caplog):
    files = [write_jpeg(tmp_path / "in" / f"{i}.jpeg", rng) for i in range(9)]
    first, later = tmp_path / "first.txt", tmp_path / "all.txt"
    first.write_text("".join(f"in/{p.name}\n" for p in files[:6]))
    later.write_text("".join(f"in/{p.name}\n" for p in files))
    out = tmp_path / "p.jsonl"
    predict(engine, [first], out, {"batch_size": 4})
    s = predict(engine, [later], out, {"resume": True, "batch_size": 4})
    assert (s.rows, s.rows_written, s.skipped_existing) == (9, 3, 6)
    assert [r["path"] for r in iter_rows(out)] == [str(p) for p in files]
    assert [x.rows_before for x in s.record.sessions] == [0, 6]
    # inputs reordered since: resumed by path, nothing twice, with a warning
    later.write_text("".join(f"in/{p.name}\n" for p in reversed(files)))
    with caplog.at_level(logging.WARNING, logger="medtrt.predict.resume"):
        s = predict(engine, [later], out, {"resume": True})
    assert s.rows_written == 0 and s.skipped_existing == 9
    assert "resuming by path" in caplog.text


def test_usage_errors_name_the_fix(engine, demo_model, rng, tmp_path, monkeypatch):
    write_jpeg(tmp_path / "in" / "a.jpeg", rng)
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "README").write_text("no images here\n")
    out = tmp_path / "p.jsonl"
    predict(engine, [tmp_path / "in"], out, {"probs": True})
    cases = [
        ([tmp_path / "in"], out, {}, r"exists .*pass --resume .* or --overwrite"),
        ([tmp_path / "in"], out, {"resume": True}, r"written with --probs True \(this run: False\)"),
        ([tmp_path / "in"], tmp_path / "q.jsonl", {"k": 7}, r"k must be in \[1, 6\]"),
        ([tmp_path / "empty"], tmp_path / "q.jsonl", {}, r"no inputs: .*empty name no files"),
        ([tmp_path / "notes"], tmp_path / "q.jsonl", {}, r"no images among the inputs"),
        ([tmp_path / "in"], tmp_path / "q.txt", {}, r"name a \.parquet, \.csv or \.jsonl file"),
        ([tmp_path / "in"], out, {"resume": True, "overwrite": True}, r"give one"),
    ]
    for inputs, target, opts, match in cases:
        with pytest.raises(ValueError, match=match):
            predict(engine, inputs, target, opts)
    assert not (tmp_path / "q.jsonl").exists() and not record_path(tmp_path / "q.jsonl").exists()
    with pytest.raises(ValueError, match=r"model .*nope\.onnx does not exist"):
        predict(tmp_path / "nope.onnx", [tmp_path / "in"], tmp_path / "q.jsonl")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'medtrt\[parquet\]'"):
        predict(engine, [tmp_path / "in"], tmp_path / "q.parquet")
