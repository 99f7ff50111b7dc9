#!/usr/bin/env python3
"""End-to-end pipeline vs compute-only throughput of the torch stage; writes JSON.

compute-only: the model alone on a device-resident network input, back to back on one stream
(CUDA events on a GPU). end-to-end: ``Engine.infer_many`` from host uint8 images to top-k on the
host, through the pinned slots (staging copy, H2D, resize_normalize, the same model, topk, D2H).
The ratio end-to-end / compute-only throughput says how much of the model's speed the pipeline
keeps (goal on a GPU: >= 0.95 at batch 256 with FP16). Both are measured in the same run,
interleaved, medians of repeats. Not a test: nothing here asserts a speed.

    python tools/bench_pipeline.py [--device cuda:0|cpu] [--precision fp16] [--batch 256]
                                   [--batches 40] [--repeats 3] [--slots 2,3] [--graphs]
                                   [--checkpoint PATH] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench_ops import ROOT, machine  # tools/ is this script's directory

from medtrt import Engine


def compute_only(engine: Engine, batch: int, batches: int) -> float:
    """Milliseconds per batch of the engine's model on a device-resident input."""
    stage = engine._stage  # the same module, dtype and device the pipeline runs
    torch = stage.torch
    c, h, w = stage.shape
    dtype = torch.float16 if stage.input_dtype == "float16" else torch.float32
    x = torch.randn(batch, c, h, w, device=stage.device).to(dtype)
    with torch.inference_mode():
        if not stage.cuda:
            t0 = time.perf_counter()
            for _ in range(batches):
                stage.model(x)
            return 1e3 * (time.perf_counter() - t0) / batches
        stream = torch.cuda.Stream(device=stage.device)
        with torch.cuda.stream(stream):
            fn = lambda: stage.model(x)  # noqa: E731
            if stage.cuda_graphs:
                for _ in range(2):
                    stage.model(x)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, stream=stream):
                    stage.model(x)
                fn = graph.replay
            fn()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record(stream)
            for _ in range(batches):
                fn()
            end.record(stream)
        end.synchronize()
        return start.elapsed_time(end) / batches


def end_to_end(engine: Engine, images: list[np.ndarray], batch: int,
               batches: int) -> tuple[float, dict[str, float]]:
    """Milliseconds per batch from host uint8 arrays to top-k on the host; median stage times."""
    stream = (images for _ in range(batches))
    times: list[dict[str, float]] = []
    t0 = time.perf_counter()
    for _ in engine.infer_many(stream):
        times.extend(engine.last_stage_times)
    ms = 1e3 * (time.perf_counter() - t0) / batches
    return ms, {k: statistics.median(t[k] for t in times) for k in times[0]}


def demo_checkpoint() -> Path:
    """The demo model's checkpoint, from the cache the tests use: $MEDTRT_CACHE, else
    .cache/medtrt in the repository (built there if missing)."""
    from medtrt.demo import cached_demo_model

    cache = os.environ.get("MEDTRT_CACHE") or ROOT / ".cache" / "medtrt"
    return cached_demo_model(cache, progress=False).checkpoint


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--precision", default="fp16", choices=("fp32", "fp16"))
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--batches", type=int, default=40, help="batches per timed run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--slots", default="2,3")
    parser.add_argument("--graphs", action="store_true", help="also time with CUDA graphs")
    parser.add_argument("--checkpoint", type=Path,
                        help="default: the demo model in $MEDTRT_CACHE or .cache/medtrt (built "
                             "if missing)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    checkpoint = args.checkpoint or demo_checkpoint()
    rng = np.random.default_rng(0)
    # Stored MedNIST-like pixels: 64 x 64 uint8, each image its own array (as decoded files are).
    images = [rng.integers(0, 256, (64, 64), dtype=np.uint8) for _ in range(args.batch)]

    configs = [(int(s), g) for s in args.slots.split(",") for g in ((False, True) if args.graphs else (False,))]
    engines = {cfg: Engine(checkpoint, device=args.device, precision=args.precision, slots=cfg[0],
                           cuda_graphs=cfg[1], max_batch=args.batch) for cfg in configs}
    samples: dict[Any, dict[str, list[Any]]] = {cfg: {"compute": [], "e2e": [], "stages": []}
                                                for cfg in configs}
    for e in engines.values():  # warm-up: cuDNN choices, graphs, pipeline buffers
        end_to_end(e, images, args.batch, 3)
        compute_only(e, args.batch, 3)
    for _ in range(args.repeats):  # interleaved, so drift affects every configuration alike
        for cfg, e in engines.items():
            samples[cfg]["compute"].append(compute_only(e, args.batch, args.batches))
            ms, stages = end_to_end(e, images, args.batch, args.batches)
            samples[cfg]["e2e"].append(ms)
            samples[cfg]["stages"].append(stages)

    rows = []
    for (slots, graphs), s in samples.items():
        compute_ms, e2e_ms = statistics.median(s["compute"]), statistics.median(s["e2e"])
        rows.append({
            "slots": slots, "cuda_graphs": graphs,
            "compute_only_ms_per_batch": round(compute_ms, 4),
            "end_to_end_ms_per_batch": round(e2e_ms, 4),
            "compute_only_images_per_s": round(args.batch / compute_ms * 1e3, 1),
            "end_to_end_images_per_s": round(args.batch / e2e_ms * 1e3, 1),
            "ratio_end_to_end_to_compute": round(compute_ms / e2e_ms, 4),
            "median_stage_ms": {k: round(statistics.median(st[k] for st in s["stages"]), 4)
                                for k in s["stages"][0]},
            "samples_ms": {"compute": s["compute"], "e2e": s["e2e"]},
        })
    first = next(iter(engines.values()))
    report = {
        "tool": "bench_pipeline", "machine": machine(), "device": first.device,
        "backend": "torch", "precision": args.precision, "batch": args.batch,
        "batches_per_run": args.batches, "repeats": args.repeats,
        "input": "64x64 uint8 host arrays, one per image", "model": str(Path(checkpoint).name),
        "results": rows,
    }
    try:
        import torch

        report["torch"] = torch.__version__
        if first.device.startswith("cuda"):
            report["gpu"] = torch.cuda.get_device_name(first.device)
    except ImportError:
        pass
    out = args.out or ROOT / "benchmarks" / "results" / f"bench_pipeline_{first.device.split(':')[0]}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    for r in rows:
        print(f"slots={r['slots']} graphs={r['cuda_graphs']}: compute-only "
              f"{r['compute_only_images_per_s']:.0f} img/s, end-to-end {r['end_to_end_images_per_s']:.0f} "
              f"img/s, ratio {r['ratio_end_to_end_to_compute']:.3f}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
