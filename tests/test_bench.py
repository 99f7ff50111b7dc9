"""`medtrt bench` runs on the CPU with tiny settings and writes valid JSON and plots (its speed is
not tested: benchmarks report figures, tests check they are computed and recorded correctly)."""

from __future__ import annotations

import json
import shutil

import pytest

from medtrt.bench import (BackendUnavailable, BenchConfig, StageCompute, find_artifacts,
                          make_backend, run_bench)
from medtrt.bench.report import auto_check
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
    with pytest.raises(BackendUnavailable, match="nvJPEG decode applies to files mode"):
        make_backend("torch-cuda-fp16+nvjpeg", "engine", find_artifacts(model_dir / "model.pt"), 1)
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



def test_tensorrt_backend_says_why_a_bundle_cannot_run_here(model_dir, tmp_path, monkeypatch):
    """A bundle is found beside the model, but this machine cannot run it: the skip reason is the
    bundle's own (here: the TensorRT flavour it was built with is not installed), raised as
    BackendUnavailable and recorded in bench.json's "skipped"."""
    import sys

    from helpers.bundles import NOT_HERE, unrunnable_bundle

    root = tmp_path / "m"
    shutil.copytree(model_dir, root)
    engine = unrunnable_bundle(root / "model.onnx", root / "engines").engine_path
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # not installed, wherever this runs
    art = find_artifacts(root / "model.pt")
    assert art.engines == {"fp16": engine}
    for mode in ("engine", "pipeline"):
        with pytest.raises(BackendUnavailable) as why:
            make_backend("trt-fp16", mode, art, 1)
        assert f"tensorrt {NOT_HERE}" in why.value.reason and "not installed" in why.value.reason
    with pytest.raises(BackendUnavailable, match="run medtrt build --int8"):
        make_backend("trt-int8", "engine", art, 1)
    report = run_bench(root / "model.pt", BenchConfig(
        mode="pipeline", batches=(2,), duration=0.01, repeats=1, warmup=0,
        backends=("trt-fp16",)), tmp_path / "out")
    assert f"tensorrt {NOT_HERE}" in report["skipped"]["trt-fp16"]


class RecordingStage:
    """A Stage that records what it is bound to and called with, reads its input through the
    host's host_input and writes the input's per-image sums as logits (CPU buffers)."""

    name, device, logits_dtype = "recording", "cpu", "float32"

    def __init__(self, input_dtype="float16"):
        self.input_dtype, self.calls, self.closed = input_dtype, [], False

    def bind(self, pipeline):
        self.host = pipeline

    def __call__(self, view):
        x = self.host.host_input(view)
        self.calls.append((view.slot, view.batch, view.input, view.logits, view.stream, x.copy()))
        self.host.host_logits(view)[...] = x.reshape(len(x), -1).sum(1, keepdims=True)

    def close(self):
        self.closed = True


def test_stage_compute_splits_at_the_profile_max_and_pads_to_its_min():
    """Engine mode: the batch is cut into profile-sized parts outside the timing, in the stage's
    input dtype, and every part goes to the stage as one call over the bench's buffers (checked
    with a recording stage on the CPU; the CUDA buffers are checked on a GPU below)."""
    import numpy as np

    from medtrt.runtime.stages import Stage

    stage = RecordingStage()
    assert isinstance(stage, Stage)
    be = StageCompute("rec", stage, (1, 3, 1), 1, min_batch=2, max_batch=4)
    assert stage.host is be.buffers and be.buffers.input_shape == (1, 3, 1)
    x = np.random.default_rng(0).uniform(-1, 1, (9, 1, 3, 1)).astype(np.float32)
    parts = be.prepare(9, x)
    assert [rows for _, rows in parts] == [4, 4, 2]  # 9 = 4 + 4 + 1 padded to 2
    be.call(parts)
    be.sync()
    seen = [c[5] for c in stage.calls]
    assert all(a.dtype == np.float16 and a.flags.c_contiguous for a in seen)
    np.testing.assert_array_equal(np.concatenate(seen)[:9], x.astype(np.float16))
    np.testing.assert_array_equal(seen[-1][1], x[8].astype(np.float16))  # padding: the last again
    logits = {c[3] for c in stage.calls}
    assert [c[:3] for c in stage.calls] == [(0, rows, address) for address, rows in parts]
    assert len(logits) == 1 and {c[4] for c in stage.calls} == {0}  # one logits buffer, no stream
    np.testing.assert_allclose(be.logits(2)[:, 0], seen[-1].astype(np.float32).sum((1, 2, 3)))
    assert [rows for _, rows in be.prepare(1, x[:1])] == [2]
    be.close()
    assert stage.closed


def test_engine_mode_runs_the_loaders_stages_on_the_cpu(model_dir):
    """Engine mode's ONNX Runtime and torch backends are the Engine's own stages (from
    medtrt.runtime.loader, ONNX Runtime with the bench's threads) over the bench's buffers: fed
    the same pre-processed batch they write the same logits."""
    import numpy as np

    from medtrt.bench.run import _inputs
    from medtrt.models import load
    from medtrt.runtime.stages import OnnxRuntimeStage, TorchStage
    from medtrt.testing import assert_close

    art = find_artifacts(model_dir / "model.pt")
    ort = make_backend("ort-cpu-fp32", "engine", art, 2)
    torch_cpu = make_backend("torch-cpu-fp32", "engine", art, 2)
    assert isinstance(ort, StageCompute) and isinstance(ort.stage, OnnxRuntimeStage)
    assert isinstance(torch_cpu, StageCompute) and isinstance(torch_cpu.stage, TorchStage)
    assert ort.stage.session.get_session_options().intra_op_num_threads == 2
    assert torch_cpu.stage.device == "cpu" and torch_cpu.max_batch is None
    _, preset = load(art.checkpoint)
    x = _inputs("engine", preset, 5, 0, None, model_dir)
    logits = []
    for be in (ort, torch_cpu):
        be.call(be.prepare(5, x))
        be.sync()
        logits.append(be.logits(5))
        be.close()
    assert logits[0].shape == (5, preset.num_classes) and np.ptp(logits[0]) > 0
    assert_close(logits[0], logits[1], atol=1e-3, rtol=1e-3, name="ORT vs torch logits")


@pytest.mark.gpu
def test_stage_compute_runs_a_cuda_stage_on_its_own_stream_after_its_copies():
    """On a GPU: a CUDA stage gets a non-default stream of the backend's own, prepare's copies
    are complete before the stage's work there even while the caller's current stream is busy,
    and sync() waits for that stream (a stand-in stage doubles the input after a long sleep)."""
    import numpy as np
    import torch

    from medtrt.runtime.stages import Stage, cuda_alias

    class Doubling:
        name, device, input_dtype, logits_dtype = "doubling", "cuda:0", "float32", "float32"

        def __init__(self):
            self.streams = []

        def bind(self, pipeline):
            assert tuple(pipeline.input_shape) == (1, 2, 3) and pipeline.classes == 6

        def __call__(self, view):
            self.streams.append(view.stream)
            x = cuda_alias(view.input, (view.batch, 6), "float32", "cuda:0")
            out = cuda_alias(view.logits, (view.batch, 6), "float32", "cuda:0")
            with torch.cuda.stream(torch.cuda.ExternalStream(view.stream, device="cuda:0")):
                torch.cuda._sleep(20_000_000)  # ~10 ms before the result lands
                out.copy_(x * 2)

        def close(self):
            pass

    stage = Doubling()
    assert isinstance(stage, Stage)
    be = StageCompute("doubling", stage, (1, 2, 3), 6, min_batch=1, max_batch=8)
    x = np.random.default_rng(0).uniform(-1, 1, (5, 1, 2, 3)).astype(np.float32)
    torch.cuda.synchronize()
    torch.cuda._sleep(50_000_000)  # the caller's stream busy ~25 ms: the copies still first
    parts = be.prepare(5, x)
    be.call(parts)
    be.sync()
    assert be.buffers.cuda_stream.query()
    legacy = torch.cuda.default_stream("cuda:0").cuda_stream
    assert stage.streams == [be.buffers.stream] and stage.streams[0] not in (0, legacy)
    np.testing.assert_array_equal(be.logits(5), 2 * x.reshape(5, 6))
    be.close()
    torch.cuda.synchronize()


def test_auto_check_compares_the_probe_choice_with_this_runs_figures():
    """auto-cpu-P's choice against the bench's own ort-cpu-P / ov-cpu-P at the probe's batch."""
    choice = {"name": "openvino", "backend": "openvino", "source": "probe", "batch": 32,
              "timings": [{"name": "onnxruntime", "backend": "onnxruntime", "images_per_s": 110.0,
                           "error": None},
                          {"name": "openvino", "backend": "openvino", "images_per_s": 130.0,
                           "error": None}]}
    rows = [{"backend": b, "batch": n, "mode": "engine", "images_per_s": v}
            for b, n, v in [("ort-cpu-fp32", 32, 100.0), ("ov-cpu-fp32", 32, 125.0),
                            ("ort-cpu-fp32", 8, 300.0), ("ov-cpu-fp32", 8, 10.0)]]
    [check] = auto_check({"auto-cpu-fp32": choice}, rows)
    assert check["bench_backends"] == {"onnxruntime": "ort-cpu-fp32", "openvino": "ov-cpu-fp32"}
    assert check["bench_images_per_s"] == {"onnxruntime": 100.0, "openvino": 125.0}
    assert check["fastest_in_bench"] == "openvino" and check["agrees"] is True
    rows[1]["images_per_s"] = 90.0  # the bench found ONNX Runtime faster: the check says so
    assert auto_check({"auto-cpu-fp32": choice}, rows)[0]["agrees"] is False
    # A batch the run did not measure, or a choice made without a probe: nothing to compare.
    assert auto_check({"auto-cpu-fp32": {**choice, "batch": 16}}, rows)[0]["agrees"] is None
    forced = {**choice, "name": "onnxruntime", "source": "env", "timings": []}
    assert auto_check({"auto-cpu-fp32": forced}, rows)[0]["agrees"] is None
    # An INT8 bundle's candidates map to the bench backends of its CPU graphs.
    names = ["openvino", "onnxruntime-int8cpu", "onnxruntime-fp32", "openvino-fp32"]
    int8 = {**choice, "name": "onnxruntime-int8cpu",
            "timings": [{"name": n, "backend": n.split("-")[0], "images_per_s": 1.0,
                         "error": None} for n in names]}
    [check] = auto_check({"auto-cpu-int8": int8}, rows)
    assert check["bench_backends"] == {"openvino": "ov-cpu-int8",
                                       "onnxruntime-int8cpu": "ort-cpu-int8cpu",
                                       "onnxruntime-fp32": "ort-cpu-int8fp32",
                                       "openvino-fp32": "ov-cpu-int8fp32"}


def test_openvino_and_auto_cpu_backends_in_engine_mode(model_dir, tmp_path, monkeypatch):
    """ov-cpu-P runs the P graph in OpenVINO; auto-cpu-P loads it with backend="auto" and the
    report carries the choice and its check against the run's own figures."""
    pytest.importorskip("openvino")
    monkeypatch.delenv("MEDTRT_CPU_BACKEND", raising=False)
    monkeypatch.setenv("MEDTRT_CACHE", str(tmp_path / "cache"))
    report = run_bench(model_dir / "model.pt", BenchConfig(
        mode="engine", batches=(32,), duration=0.05, repeats=1, warmup=1,
        backends=("ort-cpu-fp32", "ov-cpu-fp32", "auto-cpu-fp32", "ov-cpu-fp16")), tmp_path / "b")
    rows = {r["backend"]: r for r in report["results"]}
    assert {"ort-cpu-fp32", "ov-cpu-fp32", "auto-cpu-fp32"} <= set(rows)
    assert "no model.fp16.onnx" in report["skipped"]["ov-cpu-fp16"]
    choice = report["backend_choices"]["auto-cpu-fp32"]
    assert choice["source"] == "probe" and choice["name"] in ("onnxruntime", "openvino")
    [check] = report["auto_check"]
    assert check["chose"] == choice["name"] and check["agrees"] in (True, False)
    assert set(check["bench_images_per_s"]) == {"onnxruntime", "openvino"}
    assert report["machine"]["isa"] is not None
