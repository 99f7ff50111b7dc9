"""tools/bench_pipeline.py runs on the CPU with tiny settings and writes a complete report (its
speed is not tested)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

TOOLS = Path(__file__).resolve().parents[2] / "tools"


def test_bench_pipeline_writes_a_report(demo_model, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(TOOLS))
    import bench_pipeline
    import medtrt.demo

    def no_cache(*args, **kwargs):
        raise AssertionError("--checkpoint given: the demo model cache must not be used")

    monkeypatch.setattr(medtrt.demo, "cached_demo_model", no_cache)
    out = tmp_path / "bench.json"
    assert bench_pipeline.main(["--device", "cpu", "--precision", "fp32", "--batch", "4",
                                "--batches", "2", "--repeats", "1", "--slots", "1,2",
                                "--checkpoint", str(demo_model.checkpoint), "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["device"] == "cpu" and report["batch"] == 4
    assert report["machine"]["commit"] and report["machine"]["date"]
    assert [(r["slots"], r["cuda_graphs"]) for r in report["results"]] == [(1, False), (2, False)]
    for r in report["results"]:
        assert r["compute_only_ms_per_batch"] > 0 and r["end_to_end_ms_per_batch"] > 0
        expect = r["compute_only_ms_per_batch"] / r["end_to_end_ms_per_batch"]
        assert abs(r["ratio_end_to_end_to_compute"] - expect) < 1e-3
        assert r["median_stage_ms"]["compute"] > 0
    sys.modules.pop("bench_pipeline", None)
    sys.modules.pop("bench_ops", None)


def test_the_default_model_comes_from_medtrt_cache(demo_model, tmp_path, monkeypatch):
    """Without --checkpoint the demo model comes from where the tests keep it: $MEDTRT_CACHE
    when set (as on the GPU machine), else .cache/medtrt in the repository."""
    monkeypatch.syspath_prepend(str(TOOLS))
    import bench_pipeline
    import medtrt.demo

    asked = []

    def cached(cache_dir, *, progress=True):
        asked.append(Path(cache_dir))
        return demo_model

    monkeypatch.setattr(medtrt.demo, "cached_demo_model", cached)
    monkeypatch.setenv("MEDTRT_CACHE", str(tmp_path / "cache"))
    assert bench_pipeline.demo_checkpoint() == demo_model.checkpoint
    monkeypatch.delenv("MEDTRT_CACHE")
    bench_pipeline.demo_checkpoint()
    assert asked == [tmp_path / "cache", TOOLS.parent / ".cache" / "medtrt"]
    sys.modules.pop("bench_pipeline", None)
    sys.modules.pop("bench_ops", None)
