"""tools/gpu_check.sh cannot rot: its dry run executes every step's plumbing on this CPU machine
(deadline, step records, summary.json, the 8-files-back limit), and tools/gpu_summary.py turns
what the GPU steps write into the figures of summary.json."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import re
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TOOLS = REPO / "tools"
# The order the lent machine runs them in (tools/gpu_check.sh), the dry run's extra last-but-5.
STEPS = ["env", "build", "model", "tests", "sanitize-probe", "memcheck", "synccheck",
         "initcheck", "sanitize-driver-host", "bench-ops", "bench-pipeline", "parity", "bench"]
GPU_STEPS = set(STEPS) - {"env", "build", "sanitize-driver-host"}


def dry_run(out: Path, **env: str) -> tuple[subprocess.CompletedProcess[str], dict]:
    environ = {**os.environ, "PY": sys.executable, "MEDTRT_COMMIT": "abc123", **env}
    environ.pop("MEDTRT_REQUIRE_GPU", None)
    proc = subprocess.run(["bash", str(TOOLS / "gpu_check.sh"), "--dry-run", str(out)],
                          cwd=REPO, env=environ, capture_output=True, text=True, timeout=180)
    return proc, json.loads((out / "summary.json").read_text())


def test_dry_run_executes_the_plumbing_and_writes_the_summary(tmp_path):
    proc, s = dry_run(tmp_path / "out")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert len(files) <= 8 and {"summary.json", "junit.xml", "gpu_check.log",
                                "rest.tar.gz"} <= set(files), files
    assert (s["schema"], s["mode"], s["commit"], s["budget_s"]) == (1, "dry-run", "abc123", 540)
    assert s["elapsed_s"] < 120 and s["date"].startswith("20")
    assert isinstance(s["build_info"], dict) and "cuda_compiled" in s["build_info"]
    assert s["versions"]["python"] and s["gpu"] is None
    assert [st["name"] for st in s["steps"]] == STEPS
    for st in s["steps"]:
        assert set(st) == {"name", "status", "rc", "seconds", "timeout_s", "note"}, st
        if st["name"] in GPU_STEPS:
            assert st["status"] == "skip" and st["note"] == "no GPU (dry run)", st
        else:
            assert st["status"] == "pass" and st["rc"] == 0 and 0 < st["timeout_s"] <= 60, st
    assert s["ok"] is True
    log = (tmp_path / "out" / "gpu_check.log").read_text()
    assert '"exact_alloc": true' in log  # the sanitizer driver ran with exact-size buffers
    with tarfile.open(tmp_path / "out" / "rest.tar.gz") as tar:
        assert "steps.jsonl" in tar.getnames()


def test_a_spent_budget_records_out_of_time_and_still_summarises(tmp_path):
    proc, s = dry_run(tmp_path / "out", GPU_CHECK_BUDGET="20")  # 15 s are kept for the summary
    assert proc.returncode == 0, proc.stdout + proc.stderr
    status = {st["name"]: st["status"] for st in s["steps"]}
    assert status["env"] == status["build"] == status["sanitize-driver-host"] == "out_of_time"
    assert all(status[n] == "skip" for n in GPU_STEPS)
    assert s["ok"] is False


def _write_gpu_outputs(work: Path, out: Path) -> None:
    """What the GPU steps leave behind, in their formats (JUnit with record_property, the
    bench JSONs, a sanitizer log)."""
    work.mkdir()
    out.mkdir()
    steps = [{"name": "tests", "status": "fail", "rc": 1, "seconds": 80, "timeout_s": 180,
              "note": ""},
             {"name": "memcheck", "status": "pass", "rc": 0, "seconds": 20, "timeout_s": 60,
              "note": "filter: --kernel-name kns=medtrt"}]
    (work / "steps.jsonl").write_text("".join(json.dumps(s) + "\n" for s in steps))
    (work / "nvidia-smi.csv").write_text("NVIDIA H200, 580.159.04, 143771 MiB, 9.0\n")
    (work / "junit-tests.xml").write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase classname="tests.runtime.test_pipeline_gpu" name="test_overlap">'
        '<properties><property name="overlap_ratio" value="1.07"/></properties></testcase>'
        '<testcase classname="t" name="test_bad"><failure message="boom"/></testcase>'
        '<testcase classname="t" name="test_two_gpus"><skipped message="needs two GPUs"/>'
        '</testcase></testsuite></testsuites>')
    (work / "sanitizer-memcheck.txt").write_text("========= ERROR SUMMARY: 0 errors\n")
    (out / "bench_ops_gpu.json").write_text(json.dumps({"gpu": {
        "copy_bandwidth_Bps": 4.3e12, "results": [
            {"op": "topk", "case": "c", "bandwidth_Bps": 2.15e12, "fraction_of_copy": 0.5}]}}))
    (out / "bench_pipeline_gpu.json").write_text(json.dumps({"batch": 256, "results": [
        {"slots": 2, "cuda_graphs": True, "ratio_end_to_end_to_compute": 0.96,
         "end_to_end_images_per_s": 40000.0}]}))
    (out / "gpu_check.log").write_text("log\n")
    (out / "stray.txt").write_text("goes into the tarball\n")


def test_summary_reads_the_gpu_steps_figures(tmp_path, monkeypatch):
    work, out = tmp_path / "work", tmp_path / "out"
    _write_gpu_outputs(work, out)
    monkeypatch.syspath_prepend(str(TOOLS))
    import gpu_summary

    assert gpu_summary.main(["--work", str(work), "--out", str(out), "--budget", "540",
                             "--elapsed", "431", "--commit", "abc"]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["mode"] == "gpu" and s["gpu"] == {"name": "NVIDIA H200", "driver": "580.159.04",
                                               "memory": "143771 MiB", "compute_capability": "9.0"}
    assert s["steps"][0]["tests"] == {"passed": 1, "failed": 1, "skipped": 1, "errors": 0}
    assert s["ok"] is False
    assert s["skipped_tests"] == [{"test": "t::test_two_gpus", "reason": "needs two GPUs"}]
    f = s["figures"]
    assert f["tests"] == {"tests.runtime.test_pipeline_gpu::test_overlap": {"overlap_ratio": 1.07}}
    assert f["kernels"]["copy_bandwidth_GBps"] == 4300.0
    assert f["kernels"]["rows"][0]["fraction_of_copy"] == 0.5
    assert f["pipeline_end_to_end_over_compute"][0]["ratio"] == 0.96
    assert f["sanitizer_errors"] == {"memcheck": 0}
    assert sorted(p.name for p in out.iterdir()) == [
        "bench_ops_gpu.json", "bench_pipeline_gpu.json", "gpu_check.log", "junit.xml",
        "rest.tar.gz", "summary.json"]
    with tarfile.open(out / "rest.tar.gz") as tar:
        assert "out/stray.txt" in tar.getnames() and "junit-tests.xml" in tar.getnames()
    sys.modules.pop("gpu_summary", None)


def test_the_budget_table_matches_the_steps():
    """The caps in the script's header table are the ones its steps run with, and the expected
    times fit the 540 s budget (README repeats the table)."""
    text = (TOOLS / "gpu_check.sh").read_text()
    table = {m[1]: (int(m[2]), int(m[3])) for m in
             re.finditer(r"^#   \(?([a-z-]+)\)?\s+(\d+)\s+(\d+)\s", text, re.M)}
    calls = {m[1]: int(m[2]) for m in re.finditer(r"(?:\bgpu|\bstep) ([a-z-]+) (\d+) ", text)}
    del calls["sanitize-driver-host"]  # the dry run's own step
    tools = re.search(r"for tool in ([a-z ]+); do", text)[1].split()
    calls.update({t: int(re.search(r'step "\$tool" (\d+) ', text)[1]) for t in tools})
    assert {k: v[0] for k, v in table.items()} == calls
    expected = sum(e for k, (_, e) in table.items() if k != "build-source")
    assert expected <= 540 - 60, expected  # a minute of slack under the budget


def test_summary_survives_a_skipped_gpu_section(tmp_path, monkeypatch):
    """bench_ops writes {"gpu": {"skipped": why}} without a usable GPU: the summary records the
    reason instead of failing (it runs from the EXIT trap: a crash there loses everything)."""
    work, out = tmp_path / "work", tmp_path / "out"
    work.mkdir()
    out.mkdir()
    (out / "bench_ops_gpu.json").write_text(json.dumps({"gpu": {"skipped": "no GPU"}}))
    (out / "bench_pipeline_gpu.json").write_text(json.dumps({"results": [{"slots": 2}]}))
    monkeypatch.syspath_prepend(str(TOOLS))
    import gpu_summary

    assert gpu_summary.main(["--work", str(work), "--out", str(out), "--budget", "540",
                             "--elapsed", "3"]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["figures"]["kernels"] == {"skipped": "no GPU"}
    assert s["figures"]["pipeline_end_to_end_over_compute"][0]["ratio"] is None
    assert s["ok"] is False  # no step ran
    sys.modules.pop("gpu_summary", None)
