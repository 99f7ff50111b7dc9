"""`medtrt predict` from the command line: the final line and exit status, one-line usage
errors, and a run killed with SIGKILL that leaves readable rows and resumes to every input
exactly once, in input order."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from medtrt.cli import main
from medtrt.predict import PredictRecord, iter_rows, record_path

from helpers.predict import mixed_folder, write_jpeg


def test_rows_written_with_bad_files_exit_zero_and_say_how_many_failed(demo_model, rng,
                                                                       tmp_path, capsys):
    expected = mixed_folder(tmp_path / "in", rng)
    out = tmp_path / "p.csv"
    rc = main(["predict", str(demo_model.onnx), str(tmp_path / "in"), "-o", str(out),
               "--device", "cpu", "--probs", "--dicom-tags", "--k", "2", "--workers", "0", "-q"])
    assert rc == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"wrote {len(expected)} rows to {out} ({len(expected)} in all): "
                           f"{len(expected) - 2} predicted, 2 failed; 1 file that is not an "
                           "image skipped; "), line
    assert line.endswith("images/s, onnxruntime fp32 on cpu")
    header = out.read_text().splitlines()[0].split(",")
    assert header[:7] == ["path", "ok", "error", "top_label_1", "top_score_1", "top_label_2",
                          "top_score_2"]
    assert header[-4:] == ["SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID",
                           "PatientID"]


@pytest.mark.parametrize("model, inputs, extra, message", [
    (None, "in", ["-o", "p.txt"], r"unknown output format '\.txt'; name a \.parquet, \.csv or "
                                  r"\.jsonl file"),
    ("none.onnx", "in", ["-o", "p.csv"], r"model .*none\.onnx does not exist"),
    (None, "in", ["-o", "taken.jsonl"], r"taken\.jsonl exists .*pass --resume .* or --overwrite"),
    (None, "absent", ["-o", "p.csv"], r"INPUT .*absent does not exist"),
    (None, "in", ["-o", "p.csv", "--batch-size", "0"], r"--batch-size must be >= 1; got 0"),
])
def test_usage_errors_are_one_line_and_exit_one(demo_model, rng, tmp_path, monkeypatch, capsys,
                                                model, inputs, extra, message):
    monkeypatch.chdir(tmp_path)
    write_jpeg(tmp_path / "in" / "a.jpeg", rng)
    (tmp_path / "taken.jsonl").write_text("")
    rc = main(["predict", model or str(demo_model.onnx), inputs, "--device", "cpu", "-q", *extra])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and err.startswith("medtrt: error: "), err
    assert re.search(message, err), err


def wait_for_rows(record: Path, rows: int, proc: subprocess.Popen, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        try:
            committed = PredictRecord.read(record).rows
        except Exception:  # noqa: BLE001 - not written yet
            committed = 0
        if committed >= rows:
            return committed
        time.sleep(0.02)
    raise AssertionError(f"the run did not commit {rows} rows in {timeout} s")


def children(pid: int) -> list[int]:
    """The child processes of ``pid`` (Linux /proc)."""
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(x) for x in (task / "children").read_text().split()]
    return out


def gone(pids: list[int], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(Path(f"/proc/{p}").exists() for p in pids):
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_sigkill_leaves_readable_rows_and_resume_gives_each_input_once_in_order(
        demo_model, rng, tmp_path, fmt):
    """The killed run reads its list from a pipe that stays open, so it is mid-run when killed
    on any machine; the resumed run reads the same paths from a list file."""
    if fmt == "parquet":
        pytest.importorskip("pyarrow")
    files = [str(write_jpeg(tmp_path / "in" / f"{i:03d}.jpeg", rng)) for i in range(96)]
    order = [files[i] for i in rng.permutation(len(files))]  # input order is the list's
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(order) + "\n")
    out = tmp_path / f"preds.{fmt}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "medtrt", "predict", str(demo_model.onnx), "-", "-o", str(out),
         "--device", "cpu", "--batch-size", "8", "--chunk-rows", "8", "--workers", "1", "-q"],
        stdin=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        proc.stdin.write(("\n".join(order[:64]) + "\n").encode())
        proc.stdin.flush()
        wait_for_rows(record_path(out), 24, proc, timeout=120)
        workers = children(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
        assert workers and gone(workers, timeout=10), "decode workers outlived a killed run"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # its decode worker, if still there
        except ProcessLookupError:
            pass
        proc.stdin.close()
        proc.stderr.close()

    killed = [r["path"] for r in iter_rows(out)]
    assert 24 <= len(killed) < len(order) and killed == order[:len(killed)]
    if fmt == "parquet":  # the parts are plain Parquet files that any reader takes
        import pyarrow.parquet as pq

        parts = out.with_name(out.name + ".parts")
        assert not out.exists()
        assert pq.read_table(parts).column("path").to_pylist() == killed
    assert main(["predict", str(demo_model.onnx), str(listing), "-o", str(out), "--resume",
                 "--device", "cpu", "--batch-size", "8", "--workers", "0", "-q"]) == 0
    rows = list(iter_rows(out))
    assert [r["path"] for r in rows] == order and all(r["ok"] for r in rows)
    record = PredictRecord.read(record_path(out))
    assert record.complete and record.rows == len(order)
    assert [s.finished is not None for s in record.sessions] == [False, True]
    if fmt == "parquet":
        assert out.is_file() and not out.with_name(out.name + ".parts").exists()
