"""What an INT8 bundle runs on a CPU (medtrt.runtime.int8_cpu, offered to the CPU backend
probe of medtrt.runtime.cpu_choice): the candidates behind the VNNI/AMX gate, load_stage
choosing by measurement (never slower than FP32 as measured), the fallback when FP32 runs, and
backend="onnxruntime" still running the TensorRT graph as it is."""

from __future__ import annotations

import pytest

from helpers.foreign import assert_parity
from medtrt import Engine
from medtrt.reference import predict
from medtrt.runtime import cpu_choice, int8_cpu, loader
from medtrt.runtime.int8_cpu import FP32_NOTE, INT8_NOTE, int8_cpu_candidates
from medtrt.runtime.loader import load_stage


@pytest.fixture
def cache(tmp_path_factory, monkeypatch):
    """The CPU graphs derived once for this module, in a temporary medtrt cache."""
    root = tmp_path_factory.getbasetemp() / "int8-cpu-cache"
    monkeypatch.setenv("MEDTRT_CACHE", str(root))
    return root


def with_int8_dot(monkeypatch, present: bool) -> None:
    monkeypatch.setattr(int8_cpu, "has_int8_dot", lambda: present)
    monkeypatch.setattr(loader, "has_int8_dot", lambda: present)


def test_candidates_behind_the_vnni_amx_gate(int8_bundle, cache, monkeypatch):
    with_int8_dot(monkeypatch, True)
    both = int8_cpu_candidates(int8_bundle)
    assert [c.name for c in both] == ["cpu-int8", "fp32"] and both[0].note == INT8_NOTE
    assert all(c.graph.parent == cache / "cpu-graphs" and c.graph.is_file() for c in both)
    with_int8_dot(monkeypatch, False)
    only = int8_cpu_candidates(int8_bundle)
    assert [(c.name, c.graph) for c in only] == [("fp32", both[1].graph)]
    assert only[0].note.startswith("INT8 bundle on a CPU without VNNI/AMX: running FP32")


def test_auto_on_the_cpu_probes_the_int8_candidates_and_runs_the_fastest(int8_bundle, cache,
                                                                          monkeypatch):
    """Where the CPU has VNNI/AMX, the probe times the precision ONNX in OpenVINO, the CPU INT8
    graph in ONNX Runtime and the FP32 graph in both; what runs is the fastest it measured, so
    never slower than FP32 here; a choice of FP32 is a fallback that says so."""
    pytest.importorskip("openvino")
    with_int8_dot(monkeypatch, True)
    monkeypatch.delenv(cpu_choice.ENV, raising=False)
    loaded = load_stage(int8_bundle.path, "auto", "cpu", threads=1)
    choice = loaded.backend_choice
    assert choice.source == "probe" and choice.batch == 8  # the profile's opt batch
    timed = {t.name: t.images_per_s for t in choice.timings}
    assert set(timed) == {"openvino", "onnxruntime-int8cpu", "onnxruntime-fp32", "openvino-fp32"}
    assert choice.name == max(timed, key=timed.get)
    assert loaded.stage.name == choice.backend
    if choice.name in cpu_choice.FP32_CANDIDATES:
        assert "not INT8: it measured fastest here" in loaded.fallback
    else:
        assert loaded.fallback is None
    loaded.stage.close()


def test_without_vnni_amx_the_fallback_says_fp32_runs(int8_bundle, cache, monkeypatch):
    with_int8_dot(monkeypatch, False)
    loaded = load_stage(int8_bundle.path, "auto", "cpu", threads=1)  # the suite's env: ORT
    assert loaded.backend_choice.name == "onnxruntime-fp32"
    assert loaded.fallback == (f"an FP32 graph ({FP32_NOTE}) in ONNX Runtime, not INT8: this "
                               "CPU has no VNNI/AMX") and loaded.precision == "int8"
    loaded.stage.close()
    gpu = load_stage(int8_bundle.path, "auto", 0, threads=1)  # TensorRT cannot run it anywhere
    assert gpu.fallback.startswith("TensorRT cannot run it on 0 here")
    assert gpu.fallback.endswith("not INT8: this CPU has no VNNI/AMX on the CPU")
    gpu.stage.close()


def test_onnxruntime_asked_for_runs_the_tensorrt_graph_as_it_is(int8_bundle, cache, monkeypatch):
    monkeypatch.setattr(cpu_choice, "choose_cpu_stage", lambda *a, **k: pytest.fail("probed"))
    opened, stage = [], cpu_choice.CPU_STAGES["onnxruntime"]
    monkeypatch.setitem(cpu_choice.CPU_STAGES, "onnxruntime",
                        lambda path, **kwargs: opened.append(path) or stage(path, **kwargs))
    loaded = load_stage(int8_bundle.path, "onnxruntime", "cpu")
    assert opened == [int8_bundle.precision_onnx_path] and loaded.fallback is None
    loaded.stage.close()


def test_engine_on_the_cpu_matches_pytorch_within_int8_parity(int8_bundle, cache, demo_model,
                                                              images):
    with Engine(int8_bundle.path, device="cpu") as engine:
        r = engine.infer(images, return_probs=True)
    assert not r.errors and engine.precision == "int8"
    assert_parity(r.probs, predict(demo_model.checkpoint, images).probs, "int8",
                  f"INT8 bundle on the CPU ({engine.fallback or 'CPU INT8 graph'})")
