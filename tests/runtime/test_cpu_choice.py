"""medtrt.runtime.cpu_choice: ``backend="auto"`` on the CPU runs the runtime measured fastest on
this machine and model. The pure choice; the probe over any candidates (stand-in runtimes whose
speed is set by their "graph"); the cache (hit, miss on another CPU, library or graph,
corruption, concurrent writers); MEDTRT_CPU_BACKEND; a runtime that is not installed; then the
real pair (ONNX Runtime, OpenVINO) on the demo model through Engine."""

from __future__ import annotations

import json
import logging
import sys
import types
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from medtrt import Engine
from medtrt.cpu import CpuInfo
from medtrt.errors import MissingDependencyError
from medtrt.runtime import cpu_choice
from medtrt.runtime.cpu_choice import (ENV, BackendChoice, Candidate, ProbeSettings, Timing,
                                       cache_key, choose, choose_cpu_stage, read_cache,
                                       write_cache)
from medtrt.runtime.loader import load_stage
from medtrt.runtime.stages import OnnxRuntimeStage, OpenVinoStage

LOGGER = "medtrt.runtime.cpu_choice"
STAGE_CLASSES = {"onnxruntime": OnnxRuntimeStage, "openvino": OpenVinoStage}


class FakeStage:
    """A CPU stage whose graph says how it behaves: b"sleep:S" (S seconds a batch), b"switch:S"
    (S seconds, plus 0.05 s on the first batch after another stage ran: a runtime slowed by the
    one before, as ONNX Runtime's spinning threads slow OpenVINO), b"nan" (non-finite logits),
    b"broken" (raises when run), b"unloadable" (raises when made)."""

    name, device, input_dtype, logits_dtype = "fake", "cpu", "float32", "float32"
    last_run: FakeStage | None = None

    def __init__(self, graph: bytes, *, threads: int = 0) -> None:
        kind, _, seconds = graph.decode().partition(":")
        if kind == "unloadable":
            raise RuntimeError("cannot load this graph")
        self.kind, self.seconds, self.threads = kind, float(seconds or 0), threads
        self.calls, self.closed, self.pipeline = 0, False, None

    def bind(self, pipeline) -> None:
        self.pipeline = pipeline

    def __call__(self, view) -> None:
        import time

        self.calls += 1
        if self.kind == "broken":
            raise RuntimeError("kernel failed")
        switched = FakeStage.last_run is not self
        FakeStage.last_run = self
        time.sleep(self.seconds + (0.05 if self.kind == "switch" and switched else 0))
        self.pipeline.host_logits(view)[...] = np.nan if self.kind == "nan" else 1.0

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def made(monkeypatch, tmp_path):
    """Stand-in runtimes: "fake" (installed, version 1.0) and "ghost" (not installed); an empty
    cache; no MEDTRT_CPU_BACKEND. Returns the stages made, in order."""
    stages: list[FakeStage] = []

    def make(graph, *, threads=0):
        stages.append(FakeStage(graph, threads=threads))
        return stages[-1]

    fake = types.ModuleType("fake")
    fake.__version__ = "1.0"
    monkeypatch.setitem(cpu_choice.CPU_STAGES, "fake", make)
    monkeypatch.setitem(cpu_choice.CPU_STAGES, "ghost", make)
    monkeypatch.setitem(sys.modules, "fake", fake)
    monkeypatch.setitem(sys.modules, "ghost", None)  # `import ghost` raises ImportError
    monkeypatch.setenv("MEDTRT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.setattr(FakeStage, "last_run", None)
    return stages


def cand(name: str, graph: str, backend: str = "fake") -> Candidate:
    return Candidate(name, backend, graph.encode())


def pick(candidates, **kw):
    kw.setdefault("batch", 4)
    return choose_cpu_stage(candidates, input_shape=(1, 8, 8), classes=3, label="m.onnx",
                            settings=kw.pop("settings", ProbeSettings(block=2, budget_s=10)),
                            **kw)


def test_choose_takes_the_fastest_a_tie_goes_to_the_first_listed():
    assert choose([Timing("a", "x", 100.0), Timing("b", "y", 150.0),
                   Timing("c", "x", 150.0)]).name == "b"
    assert choose([Timing("a", "x", 100.0), Timing("b", "y", 100.0)]).name == "a"
    assert choose([Timing("d", "y", None, "boom"), Timing("a", "x", 1.0)]).name == "a"
    with pytest.raises(ValueError,
                       match=r"no CPU backend could run the model \(d: boom; e: gone\)"):
        choose([Timing("d", "y", None, "boom"), Timing("e", "y", None, "gone")])


@given(st.lists(st.one_of(st.none(), st.sampled_from([1.0, 2.0, 3.5, 80.0])), min_size=1,
                max_size=6).filter(lambda v: any(x is not None for x in v)))
def test_choose_is_the_first_of_the_fastest(speeds):
    timings = [Timing(f"c{i}", "x", s, None if s is not None else "failed")
               for i, s in enumerate(speeds)]
    best = max(s for s in speeds if s is not None)
    assert choose(timings).name == f"c{speeds.index(best)}"


def test_the_probe_times_every_candidate_and_auto_takes_the_fastest_it_measured(made, caplog):
    candidates = [cand("slow", "sleep:0.02"), cand("fast", "sleep:0.002"), cand("broken", "broken"),
                  cand("nan", "nan"), cand("unloadable", "unloadable")]
    with caplog.at_level(logging.INFO, logger=LOGGER):
        stage, choice = pick(candidates)
    timings = {t.name: t for t in choice.timings}
    assert [t.name for t in choice.timings] == [c.name for c in candidates]
    # The choice is the fastest of the figures it records (the figures are in the choice).
    ran = [t for t in choice.timings if t.images_per_s is not None]
    assert choice.name == max(ran, key=lambda t: t.images_per_s).name == "fast"
    assert (choice.source, choice.backend, choice.batch) == ("probe", "fake", 4)
    assert timings["fast"].images_per_s > 3 * timings["slow"].images_per_s
    assert timings["broken"].error == "RuntimeError: kernel failed"
    assert timings["nan"].error == "ValueError: non-finite logits on random input"
    assert timings["unloadable"].error == "RuntimeError: cannot load this graph"
    # The stage that won is the one the probe ran (not made again); every other one is closed.
    slow, fast, broken, nan = made
    assert stage is fast and not fast.closed and fast.calls == 1 + 2 * (1 + 2)
    assert slow.closed and broken.closed and nan.closed
    assert fast.pipeline.x.shape == (4, 1, 8, 8) and np.abs(fast.pipeline.x).sum() > 0
    assert caplog.messages == [f"m.onnx: CPU backend {choice.summary()}"]
    assert "fast (probed at batch 4 in" in caplog.messages[0]
    assert "broken skipped (RuntimeError: kernel failed)" in caplog.messages[0]


def test_the_choice_is_cached_per_machine_library_and_graph(made, monkeypatch):
    candidates = [cand("slow", "sleep:0.01"), cand("fast", "sleep:0.001")]
    _, first = pick(candidates)
    record = json.loads(Path(first.cache).read_text())
    assert record["name"] == "fast" and record["schema"] == 1
    assert record["key"] == cache_key(candidates, threads=0, batch=4)
    assert [c["version"] for c in record["key"]["candidates"]] == ["1.0", "1.0"]

    n = len(made)
    stage, again = pick(candidates)  # read, not probed: only the chosen stage is made
    assert len(made) == n + 1 and stage is made[-1] and stage.calls == 0
    assert (again.source, again.name, again.timings, again.cache, again.batch) == (
        "cache", "fast", first.timings, first.cache, 4)
    assert "read from" in again.summary()

    def probes(**kw):
        return pick(kw.pop("candidates", candidates), **kw)[1].source == "probe"

    assert probes(threads=1) and probes(batch=8)  # other settings: other keys
    assert probes(candidates=[cand("slow", "sleep:0.01"), cand("fast", "sleep:0.0011")])
    with monkeypatch.context() as m:
        m.setattr(cpu_choice, "cpu_info", lambda: CpuInfo("Other CPU", 64, ("avx2",)))
        assert probes()
    with monkeypatch.context() as m:
        m.setattr(sys.modules["fake"], "__version__", "2.0")
        assert probes()
    assert pick(candidates)[1].source == "cache"  # the first key's file is still there


@pytest.mark.parametrize("damage,why", [
    (lambda d: "{not json", "unreadable CPU backend choice"),
    (lambda d: json.dumps(dict(d, schema=99)), "schema must be 1"),
    (lambda d: json.dumps(dict(d, name="slow", backend="fake")),
     "it names 'slow' but its timings make 'fast' fastest"),
    (lambda d: json.dumps(dict(d, timings=d["timings"][:1])), "timings are for ['slow']"),
    (lambda d: json.dumps(dict(d, timings=[dict(d["timings"][0], images_per_s=-1.0),
                                           d["timings"][1]])), "must be a positive number"),
    (lambda d: json.dumps(dict(d, probe_s="soon")), "probe_s must be a number"),
    (lambda d: json.dumps([1, 2]), "schema must be 1"),
])
def test_a_damaged_cache_file_is_ignored_logged_and_rewritten(made, caplog, damage, why):
    candidates = [cand("slow", "sleep:0.01"), cand("fast", "sleep:0.001")]
    _, first = pick(candidates)
    path = Path(first.cache)
    path.write_text(damage(json.loads(path.read_text())))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        _, again = pick(candidates)
    assert again.source == "probe" and again.name == "fast"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and why in warnings[0] and "probing again" in warnings[0], warnings
    assert read_cache(path, cache_key(candidates, threads=0, batch=4)).name == "fast"


def test_concurrent_writers_never_leave_a_torn_file(tmp_path, caplog):
    key = {"batch": 4, "candidates": [{"name": "a"}, {"name": "b"}]}
    path = tmp_path / "cpu-backend" / "k.json"
    choices = [BackendChoice("a", "fake", "probe", (Timing("a", "fake", 2.0 + i),
                                                    Timing("b", "fake", 1.0)), 4, 0.5)
               for i in range(8)]

    def write(i):
        write_cache(path, key, choices[i % len(choices)])

    def read(_):
        return read_cache(path, key)

    write(0)
    with caplog.at_level(logging.WARNING, logger=LOGGER), ThreadPoolExecutor(6) as pool:
        writes = [pool.submit(write, i) for i in range(300)]
        reads = list(pool.map(read, range(300)))
        for w in writes:
            w.result()
    assert all(r is not None and r.name == "a" for r in reads)
    assert caplog.messages == []
    assert [p.name for p in path.parent.iterdir()] == ["k.json"]  # no temporary file left


def test_medtrt_cpu_backend_names_the_candidate_without_probing(made, monkeypatch):
    candidates = [cand("slow", "sleep:0.01"), cand("fast", "sleep:0.001")]
    monkeypatch.setenv(ENV, "slow")
    stage, choice = pick(candidates, threads=3)
    assert choice == BackendChoice("slow", "fake", "env") and made == [stage]
    assert stage.threads == 3 and stage.calls == 0
    assert "MEDTRT_CPU_BACKEND names it" in choice.summary()
    monkeypatch.setenv(ENV, "nope")
    with pytest.raises(ValueError, match=r"MEDTRT_CPU_BACKEND='nope' names no CPU backend of this "
                                         r"model; use one of \['slow', 'fast'\], or 'auto'"):
        pick(candidates)
    monkeypatch.setenv(ENV, "auto")
    assert pick(candidates)[1].source == "probe"


def test_a_runtime_that_is_not_installed_is_skipped_naming_the_extra(made):
    stage, choice = pick([cand("ghost", "sleep:0", "ghost"), cand("fast", "sleep:0")])
    assert (choice.source, choice.name) == ("only", "fast") and made == [stage]
    (ghost,) = choice.timings
    assert ghost.name == "ghost" and ghost.images_per_s is None
    assert "pip install 'medtrt[ghost]'" in ghost.error
    _, probed = pick([cand("slow", "sleep:0.01"), cand("ghost", "x", "ghost"),
                      cand("fast", "sleep:0.001")])
    assert probed.source == "probe" and [t.name for t in probed.timings] == ["slow", "fast",
                                                                              "ghost"]
    with pytest.raises(MissingDependencyError, match=r"pip install 'medtrt\[ghost\]'"):
        pick([cand("ghost", "x", "ghost")])


def test_candidates_are_checked(made):
    with pytest.raises(ValueError, match=r"candidate 'x': backend must be one of .*got 'cuda'"):
        Candidate("x", "cuda", b"")
    with pytest.raises(ValueError, match=r"CPU candidates need distinct names; got \['a', 'a'\]"):
        pick([cand("a", "sleep:0"), cand("a", "sleep:0")])
    with pytest.raises(ValueError, match=r"need warmup >= 1, block >= 1"):
        ProbeSettings(block=0)


def test_each_block_starts_untimed_so_what_the_last_candidate_left_is_not_timed(made):
    """A runtime slowed only right after another one ran is timed at its own pace, in blocks
    taking turns A B, B A; a probe past its budget after the first pass stops there."""
    stage, choice = pick([cand("steady", "sleep:0.01"), cand("switchy", "switch:0.005")])
    assert choice.name == "switchy" and stage is made[1]
    seconds = {t.name: 4 / t.images_per_s for t in choice.timings}
    assert seconds["switchy"] < 0.04 and seconds["steady"] >= 0.01
    _, short = pick([cand("steady", "sleep:0.01"), cand("switchy", "switch:0.005")], batch=8,
                    settings=ProbeSettings(block=3, budget_s=0.001))
    assert [m.calls for m in made[2:]] == [1 + 1 + 3, 1 + 1 + 3]  # warm-up, one pass


# -- the real runtimes on the demo model ----------------------------------------------------------


def test_auto_on_the_cpu_runs_the_runtime_its_probe_measured_fastest(demo_model, tmp_path,
                                                                      monkeypatch, caplog):
    """ONNX Runtime and OpenVINO timed on the demo graph (the probe: about 2 s here); the Engine
    runs the one with the most images/s of the figures it reports, and the next load reads the
    choice from the cache instead of probing."""
    pytest.importorskip("openvino")
    monkeypatch.delenv(ENV)
    monkeypatch.setenv("MEDTRT_CACHE", str(tmp_path))
    with caplog.at_level(logging.INFO, logger=LOGGER):
        engine = Engine(demo_model.onnx, device="cpu")
    with engine:
        choice = engine.backend_choice
        assert choice.source == "probe" and choice.batch == 32
        assert [t.name for t in choice.timings] == ["onnxruntime", "openvino"]
        assert all(t.images_per_s > 0 and t.error is None for t in choice.timings)
        fastest = max(choice.timings, key=lambda t: t.images_per_s)
        assert engine.backend == choice.backend == choice.name == fastest.backend
        assert isinstance(engine._stage, STAGE_CLASSES[engine.backend])
        assert engine.fallback is None and f"CPU backend {choice.summary()}" in caplog.text
        rng = np.random.default_rng(3)
        r = engine.infer([rng.integers(0, 256, (64, 64), np.uint8) for _ in range(5)])
        assert r.indices.shape == (5, 5)
    again = load_stage(demo_model.onnx, "auto", "cpu")
    assert again.backend_choice.source == "cache" and again.stage.name == choice.backend
    assert again.backend_choice.timings == choice.timings
    again.stage.close()


def test_without_openvino_auto_runs_onnx_runtime_and_says_why(demo_model, tmp_path, monkeypatch):
    monkeypatch.delenv(ENV)
    monkeypatch.setenv("MEDTRT_CACHE", str(tmp_path))
    monkeypatch.setitem(sys.modules, "openvino", None)
    loaded = load_stage(demo_model.onnx, "auto", "cpu")
    choice = loaded.backend_choice
    assert isinstance(loaded.stage, OnnxRuntimeStage) and choice.source == "only"
    assert [(t.name, t.images_per_s) for t in choice.timings] == [("openvino", None)]
    assert "pip install 'medtrt[openvino]'" in choice.timings[0].error
    assert not (tmp_path / "cpu-backend").exists()  # nothing measured, nothing cached
    loaded.stage.close()
