"""What an INT8 bundle runs on a CPU (medtrt.runtime.int8_cpu): the candidates behind the
VNNI/AMX gate, the never-slower-than-FP32 rule on timings, and load_stage/Engine choosing by
measurement with the choice logged (backend="onnxruntime" still runs the TensorRT graph)."""

from __future__ import annotations

import logging

import pytest

from helpers.foreign import assert_parity
from medtrt import Engine
from medtrt.reference import predict
from medtrt.runtime import int8_cpu, loader
from medtrt.runtime.int8_cpu import (INT8_NOTE, NO_INT8_DOT_NOTE, choose, fastest,
                                     int8_cpu_candidates)
from medtrt.runtime.loader import load_stage


@pytest.fixture
def cache(tmp_path_factory, monkeypatch):
    """The CPU graphs derived once for this module, in a temporary medtrt cache."""
    root = tmp_path_factory.getbasetemp() / "int8-cpu-cache"
    monkeypatch.setenv("MEDTRT_CACHE", str(root))
    return root


def with_int8_dot(monkeypatch, present: bool) -> None:
    monkeypatch.setattr(int8_cpu, "has_int8_dot", lambda: present)


def test_candidates_behind_the_vnni_amx_gate(int8_bundle, cache, monkeypatch):
    with_int8_dot(monkeypatch, True)
    both = int8_cpu_candidates(int8_bundle)
    assert [c.name for c in both] == ["cpu-int8", "fp32"] and both[0].note == INT8_NOTE
    assert all(c.graph.parent == cache / "cpu-graphs" and c.graph.is_file() for c in both)
    with_int8_dot(monkeypatch, False)
    only = int8_cpu_candidates(int8_bundle)
    assert [(c.name, c.graph) for c in only] == [("fp32", both[1].graph)]
    assert only[0].note.startswith("INT8 bundle on a CPU without VNNI/AMX: running FP32")


@pytest.mark.parametrize("seconds,expected", [
    ({"cpu-int8": 0.50, "fp32": 1.00}, "cpu-int8"),
    ({"cpu-int8": 0.97, "fp32": 1.00}, "fp32"),  # within the 5% margin: FP32
    ({"cpu-int8": 1.20, "fp32": 1.00}, "fp32"),
    ({"fp32": 1.00}, "fp32"),
    ({"b": 0.5, "a": 0.5, "fp32": 1.0}, "a"),  # ties: by name, so the same timings pick the same
])
def test_choose_is_never_slower_than_fp32(seconds, expected):
    assert choose(seconds) == expected


def test_choose_needs_the_reference_and_a_margin_below_one():
    with pytest.raises(ValueError, match=r"no timing for the reference 'fp32'; got \['cpu-int8'\]"):
        choose({"cpu-int8": 0.1})
    with pytest.raises(ValueError, match=r"margin must be in \[0, 1\); got 1.5"):
        choose({"fp32": 1.0}, margin=1.5)
    with pytest.raises(ValueError, match="no candidates"):
        fastest([], (1, 1, 64, 64))


def test_auto_on_the_cpu_runs_the_faster_graph_and_logs_it(int8_bundle, cache, monkeypatch,
                                                           caplog):
    with_int8_dot(monkeypatch, True)
    chosen = []

    def recording(*args, **kwargs):
        chosen.append(fastest(*args, **kwargs))
        return chosen[-1]

    monkeypatch.setattr(loader, "fastest", recording)
    with caplog.at_level(logging.INFO, logger=loader.__name__):
        loaded = load_stage(int8_bundle.path, "auto", "cpu", threads=1)
    choice = chosen[0]
    assert loaded.stage is choice.stage and set(choice.seconds) == {"cpu-int8", "fp32"}
    assert choice.batch == 8  # the profile's opt batch
    assert choice.candidate.name == choose(choice.seconds)
    assert loaded.fallback == (None if choice.candidate.name == "cpu-int8" else choice.describe())
    assert [r.getMessage() for r in caplog.records if r.name == loader.__name__] == [
        f"{int8_bundle.path} on the CPU: {choice.describe()}"]
    assert "measured at batch 8: cpu-int8 " in choice.describe()
    loaded.stage.close()


def test_without_vnni_amx_the_fallback_says_fp32_runs(int8_bundle, cache, monkeypatch):
    with_int8_dot(monkeypatch, False)
    loaded = load_stage(int8_bundle.path, "auto", "cpu", threads=1)
    assert loaded.fallback == NO_INT8_DOT_NOTE and loaded.precision == "int8"
    loaded.stage.close()
    gpu = load_stage(int8_bundle.path, "auto", 0, threads=1)  # TensorRT cannot run it anywhere
    assert gpu.fallback.startswith("TensorRT cannot run it on 0 here")
    assert gpu.fallback.endswith(f"running it in ONNX Runtime on the CPU: {NO_INT8_DOT_NOTE}")
    gpu.stage.close()


def test_onnxruntime_asked_for_runs_the_tensorrt_graph_as_it_is(int8_bundle, cache, monkeypatch):
    monkeypatch.setattr(loader, "fastest", lambda *a, **k: pytest.fail("timed candidates"))
    opened, stage = [], loader.OnnxRuntimeStage
    monkeypatch.setattr(loader, "OnnxRuntimeStage",
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
