"""`medtrt bench` runs on the CPU with tiny settings and writes valid JSON and plots (its speed is
not tested: benchmarks report figures, tests check they are computed and recorded correctly)."""

from __future__ import annotations

import json
import shutil

import pytest

from medtrt.bench import BenchConfig, find_artifacts, make_backend, run_bench
from medtrt.cli import main


@pytest.fixture(scope="module")
def model_dir(demo_model, tmp_path_factory):
    """The demo checkpoint with its FP32 export and an INT8 Q/DQ graph in engines/."""
    import onnx

    from helpers.heldout import held_out
    from medtrt.precision import CalibrationConfig, calibrate, insert_qdq, plan_qdq

    root = tmp_path_factory.mktemp("bench-model")
    shutil.copy(demo_model.checkpoint, root / "model.pt")
    shutil.copy(demo_model.onnx, root / "model.onnx")
    (root / "engines").mkdir()
    fp32 = onnx.load(str(demo_model.onnx))
    plan = plan_qdq(fp32)
    cal = calibrate(demo_model.onnx, held_out(demo_model).train_paths[:32], plan.tensors,
                    CalibrationConfig(num_images=32))
    insert_qdq(fp32, cal.amax, plan=plan, out=root / "engines" / "model.int8.onnx")
    return root


def test_artifacts_are_found_beside_the_checkpoint(model_dir):
    a = find_artifacts(model_dir / "model.pt")
    assert a.onnx == {"fp32": model_dir / "model.onnx", "int8": model_dir / "engines" / "model.int8.onnx"}
    assert a.engines == {}
    with pytest.raises(FileNotFoundError, match="does not exist"):
        find_artifacts(model_dir / "nope.pt")


def test_engine_mode_interleaves_backends_and_records_everything(model_dir, tmp_path):
    cfg = BenchConfig(mode="engine", batches=(1, 4), duration=0.05, repeats=2, warmup=1,
                      backends=("torch-cpu-fp32", "ort-cpu-fp32", "ort-cpu-int8", "ort-cpu-fp16",
                                "torch-cuda-fp16", "trt-int8"))
    seen = []
    report = run_bench(model_dir / "model.pt", cfg, tmp_path,
                       on_progress=lambda what, done, total: seen.append((what, done, total)))
    on_disk = json.loads((tmp_path / "bench.json").read_text())
    assert on_disk == json.loads(json.dumps(report))
    # Interleaved: repeat 1 visits every (batch, backend) before repeat 2 starts.
    assert [w for w, _, _ in seen[:6]] == [
        "torch-cpu-fp32 batch 1 (repeat 1/2)", "ort-cpu-fp32 batch 1 (repeat 1/2)",
        "ort-cpu-int8 batch 1 (repeat 1/2)", "torch-cpu-fp32 batch 4 (repeat 1/2)",
        "ort-cpu-fp32 batch 4 (repeat 1/2)", "ort-cpu-int8 batch 4 (repeat 1/2)"]
    assert seen[-1][1:] == (12, 12)
    assert set(report["skipped"]) == {"ort-cpu-fp16", "torch-cuda-fp16", "trt-int8"}
    assert "no model.fp16.onnx" in report["skipped"]["ort-cpu-fp16"]
    assert "TensorRT" in report["skipped"]["trt-int8"] or "bundle" in report["skipped"]["trt-int8"]
    rows = {(r["backend"], r["batch"]): r for r in report["results"]}
    assert set(rows) == {(b, n) for b in ("torch-cpu-fp32", "ort-cpu-fp32", "ort-cpu-int8") for n in (1, 4)}
    for (name, batch), r in rows.items():
        assert len(r["images_per_s_repeats"]) == 2 and r["images_per_s"] > 0
        assert 0 < r["latency_ms"]["p50"] <= r["latency_ms"]["p95"] <= r["latency_ms"]["p99"]
        assert r["latency_ms"]["calls"] >= 6 and r["mode"] == "engine"
        base = rows[("torch-cpu-fp32", batch)]["images_per_s"]
        assert r["ratio_to_baseline"] == pytest.approx(r["images_per_s"] / base)
        assert r["peak_rss_bytes"] is None or r["peak_rss_bytes"] > 1e6
    assert report["baseline"] == "torch-cpu-fp32" and report["machine"]["cores"] >= 1
    assert {"torch", "onnxruntime"} <= set(report["machine"]["versions"])
    assert report["telemetry"]["nvml"] == "ok" or report["telemetry"]["nvml"].startswith("unavailable")
    for png in ("throughput.png", "latency.png", "telemetry.png"):
        assert png in report["plots"] and (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_pipeline_and_files_modes_with_stage_breakdown_and_seed_baseline(model_dir, tmp_path):
    pipe = run_bench(model_dir / "model.pt", BenchConfig(
        mode="pipeline", batches=(8,), duration=0.05, repeats=1, warmup=1,
        backends=("ort-cpu-fp32",)), tmp_path / "p")
    rows = {r["backend"]: r for r in pipe["results"]}
    assert set(rows) == {"torch-reference", "ort-cpu-fp32"}  # the baseline is added
    stages = rows["ort-cpu-fp32"]["stage_ms"]
    assert {"staging", "preprocess", "compute", "postprocess", "total"} <= set(stages)
    # Stages are milliseconds per call and add up to no more than the call's latency.
    assert 0 < stages["compute"] <= stages["total"] <= 1.05 * rows["ort-cpu-fp32"]["latency_ms"]["p99"]
    assert "stages.png" in pipe["plots"]
    files = run_bench(model_dir / "model.pt", BenchConfig(
        mode="files", batches=(16,), duration=0.05, repeats=1, warmup=0, threads=2,
        backends=("ort-cpu-int8", "torch-cuda-fp16+nvjpeg")), tmp_path / "f")
    rows = {(r["backend"], r["batch"]): r for r in files["results"]}
    assert files["config"]["file_format"] == "jpeg"
    if not files["machine"].get("gpu"):  # no GPU here: the nvJPEG backend says why
        assert files["skipped"]["torch-cuda-fp16+nvjpeg"]
    assert make_backend("torch-cuda-fp16+nvjpeg", "engine", find_artifacts(model_dir / "model.pt"),
                        1) == "nvJPEG decode applies to files mode"
    # The seed path runs at its own batch (32) over the same 32 files; medtrt at 16 and 32.
    assert ("seed-dataloader", 32) in rows and ("seed-dataloader", 16) not in rows
    assert rows[("ort-cpu-int8", 16)]["latency_ms"]["images_per_call"] == 32
    assert rows[("seed-dataloader", 32)]["ratio_to_baseline"] == pytest.approx(1.0)


def test_cli_prints_a_table_and_errors_name_the_fix(model_dir, tmp_path, capsys):
    assert main(["bench", str(model_dir / "model.pt"), "--backends", "ort-cpu-fp32",
                 "--batch", "2", "--duration", "0.05", "--repeats", "1", "-q",
                 "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "medtrt bench" in out and "ort-cpu-fp32" in out and "bench.json" in out
    assert main(["bench", str(model_dir / "model.pt"), "--backends", "nope", "-q"]) == 1
    assert "unknown backend(s) ['nope']" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--mode must be one or more of"):
        BenchConfig(mode="fast")
    with pytest.raises(ValueError, match="each once"):
        BenchConfig(mode="engine,engine")


def test_two_modes_in_one_run_give_each_backend_its_mode_ratio(model_dir, tmp_path):
    report = run_bench(model_dir / "model.pt", BenchConfig(
        mode="engine,pipeline", batches=(4,), duration=0.05, repeats=2, warmup=1,
        backends=("ort-cpu-fp32", "trt-fp16")), tmp_path)
    rows = {(r["backend"], r["mode"]): r for r in report["results"]}
    assert set(rows) == {("torch-cpu-fp32", "engine"), ("ort-cpu-fp32", "engine"),
                         ("torch-reference", "pipeline"), ("ort-cpu-fp32", "pipeline")}
    assert report["baselines"] == {"engine": "torch-cpu-fp32", "pipeline": "torch-reference"}
    assert rows[("torch-reference", "pipeline")]["ratio_to_baseline"] == pytest.approx(1.0)
    assert rows[("ort-cpu-fp32", "pipeline")]["stage_ms"]["compute"] > 0
    ratios = {(x["backend"], x["ratio"]): x["value"] for x in report["mode_ratios"]}
    assert set(ratios) == {("ort-cpu-fp32", "pipeline/engine")}
    assert ratios[("ort-cpu-fp32", "pipeline/engine")] == pytest.approx(
        rows[("ort-cpu-fp32", "pipeline")]["images_per_s"] / rows[("ort-cpu-fp32", "engine")]["images_per_s"])
    assert set(report["skipped"]) == {"trt-fp16 (engine)", "trt-fp16 (pipeline)"}
    assert json.loads((tmp_path / "bench.json").read_text())["mode_ratios"] == report["mode_ratios"]


def test_energy_is_mean_power_over_the_whole_window():
    from medtrt.bench import Telemetry

    tel = Telemetry(10.0)
    tel.samples = [{"t": 0.05 + 0.1 * i, "power_w": 100.0} for i in range(30)]  # 0.05 .. 2.95 s
    w = tel.window(0.0, 3.0)
    assert w["power_w"] == 100.0 and w["energy_j"] == pytest.approx(300.0)
    assert tel.window(5.0, 6.0)["energy_j"] is None  # no samples: no figure, not zero


def test_unknown_baseline_is_refused():
    with pytest.raises(ValueError, match=r"unknown backend\(s\) \['nope'\]"):
        BenchConfig(baseline="nope")



@pytest.mark.trt
def test_tensorrt_backend_says_why_a_bundle_cannot_run_here(model_dir, tmp_path, monkeypatch):
    """A bundle is found beside the model, but this machine cannot run it: the skip reason is the
    bundle's own (here: the TensorRT flavour it was built with is not installed)."""
    import sys
    from dataclasses import replace

    from medtrt.build import BuildOptions, build

    root = tmp_path / "m"
    shutil.copytree(model_dir, root)
    b = build(root / "model.onnx", root / "engines",
              BuildOptions(precision="fp16", batch=(1, 2, 4), check_images=8)).bundle
    engine = b.engine_path
    elsewhere = replace(b.tensorrt, flavour="tensorrt", version="0.0-not-here")
    replace(b, tensorrt=elsewhere).write(engine)
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # not installed, wherever this runs
    art = find_artifacts(root / "model.pt")
    assert art.engines == {"fp16": engine}
    for mode in ("engine", "pipeline"):
        why = make_backend("trt-fp16", mode, art, 1)
        assert isinstance(why, str) and "tensorrt 0.0-not-here" in why and "not installed" in why
    assert "run medtrt build --int8" in make_backend("trt-int8", "engine", art, 1)


def test_tensorrt_compute_splits_at_the_profile_max_and_pads_to_its_min():
    """Engine-mode TensorRT: the batch is cut into profile-sized parts outside the timing, and
    every part goes to the execution context as one call on the backend's own stream, which
    sync() waits for (checked with a recording stage and stream on the CPU; the real stage is
    the pipeline's TensorRTStage, run only where TensorRT and a GPU are)."""
    torch = pytest.importorskip("torch")
    import numpy as np

    from medtrt.bench import TensorRTCompute

    calls = []

    class Stream:  # the backend's torch.cuda.Stream
        cuda_stream = 0x5EED

        def synchronize(self):
            calls.append("synchronize")

    be = object.__new__(TensorRTCompute)
    be.torch, be.device, be.in_dtype = torch, "cpu", torch.float16
    be.min_batch, be.max_batch = 2, 4
    be.out, be.stream = torch.empty(4, 6), Stream()
    be.stage = lambda view: calls.append((view.slot, view.batch, view.input, view.logits,
                                          view.stream))
    x = np.arange(9 * 3, dtype=np.float32).reshape(9, 1, 3, 1)
    parts = be.prepare(9, x)
    assert [len(p) for p in parts] == [4, 4, 2]  # 9 = 4 + 4 + 1 padded to 2
    assert all(p.dtype == torch.float16 and p.is_contiguous() for p in parts)
    np.testing.assert_array_equal(torch.cat(parts).float().numpy()[:9], x)
    np.testing.assert_array_equal(parts[-1][1].float().numpy(), x[8])  # padding repeats the last
    be.call(parts)
    be.sync()
    assert calls == [(0, len(p), p.data_ptr(), be.out.data_ptr(), 0x5EED) for p in parts] + [
        "synchronize"]
    assert [len(p) for p in be.prepare(1, x[:1])] == [2]


@pytest.mark.gpu
def test_tensorrt_compute_runs_on_its_own_stream_after_its_copies():
    """On a GPU: the stage gets a non-default stream of the backend's own, prepare's copies are
    complete before the stage's work there even while the caller's current stream is busy, and
    sync() waits for that stream (a stand-in stage doubles the input after a long sleep)."""
    import numpy as np
    import torch

    from medtrt.bench import TensorRTCompute
    from medtrt.runtime.stages import cuda_alias

    streams = []

    def stage(view):
        streams.append(view.stream)
        x = cuda_alias(view.input, (view.batch, 6), "float32", "cuda:0")
        out = cuda_alias(view.logits, (view.batch, 6), "float32", "cuda:0")
        with torch.cuda.stream(torch.cuda.ExternalStream(view.stream, device="cuda:0")):
            torch.cuda._sleep(20_000_000)  # ~10 ms before the result lands
            out.copy_(x * 2)

    be = object.__new__(TensorRTCompute)
    be.torch, be.device, be.in_dtype = torch, "cuda:0", torch.float32
    be.min_batch, be.max_batch = 1, 8
    be.stream = torch.cuda.Stream(device="cuda:0")
    be.out = torch.zeros(8, 6, device="cuda:0")
    be.stage = stage
    x = np.random.default_rng(0).uniform(-1, 1, (5, 1, 2, 3)).astype(np.float32)
    torch.cuda.synchronize()
    torch.cuda._sleep(50_000_000)  # the caller's stream busy ~25 ms: the copies still first
    parts = be.prepare(5, x)
    be.call(parts)
    be.sync()
    assert be.stream.query()
    legacy = torch.cuda.default_stream("cuda:0").cuda_stream
    assert streams == [be.stream.cuda_stream] and streams[0] not in (0, legacy)
    np.testing.assert_array_equal(be.out[:5].cpu().numpy(), 2 * x.reshape(5, 6))
    torch.cuda.synchronize()
