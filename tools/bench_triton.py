"""Serving figures for docs/serving.md: the demo model's FP16 bundle (TensorRT-RTX, built here)
exported with ``--platform python`` and served by the Triton binary of the nvidia-pytriton wheel
on this CPU; tools/triton_load.py drives each image model (the ensemble NAME_pipeline and the
whole-Engine NAME_engine) with CLIENTS x REQUESTS requests (mixed batch sizes 1, 2, 4, 8, HTTP and
gRPC alternating, one corrupt and one wrong-dims request), every answer checked against
Engine.infer. For scale, Engine.infer itself on the same images in the same batch sizes, in this
process. Writes benchmarks/results/bench_triton_cpu.json.

    MEDTRT_TRITON_PYTHON=.venv-triton/bin/python python tools/bench_triton.py [--requests 500]

(`make bench-triton` runs it.) Needs the Triton environment (Makefile: .venv-triton).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from medtrt import Engine, __version__
from medtrt.build import BuildOptions, build
from medtrt.demo import cached_demo_model
from medtrt.train import training_split
from medtrt.triton import export_triton
from medtrt.triton.server import LocalTriton, TritonInstall

REPO = Path(__file__).resolve().parents[1]
LOAD = REPO / "tools" / "triton_load.py"


def engine_baseline(bundle: Path, files: list[Path], sizes: list[int], requests: int,
                    seed: int) -> dict[str, float]:
    """Engine.infer (ONNX Runtime on the CPU) over the same files, one call per request of the
    same sizes, one caller: images/s and ms per call."""
    rng = np.random.default_rng(seed)
    plan = [rng.integers(0, len(files), int(rng.choice(sizes))) for _ in range(requests)]
    with Engine(bundle, device="cpu") as engine:
        engine.infer(files[:8])
        t0 = time.perf_counter()
        for rows in plan:
            engine.infer([files[i] for i in rows])
        wall = time.perf_counter() - t0
    images = sum(len(r) for r in plan)
    return {"calls": requests, "images": images, "images_per_s": images / wall,
            "ms_per_call": wall / requests * 1e3}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" /
                    "bench_triton_cpu.json")
    ap.add_argument("--cache", default=os.environ.get("MEDTRT_CACHE") or REPO / ".cache" / "medtrt")
    args = ap.parse_args()
    python = os.environ.get("MEDTRT_TRITON_PYTHON") or str(REPO / ".venv-triton" / "bin" / "python")
    install = TritonInstall.find(python)
    demo = cached_demo_model(args.cache, progress=False)
    split = training_split(demo.metrics)
    files = [split.test.paths[i] for i in np.linspace(0, len(split.test.paths) - 1, 48).astype(int)]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        bundle = build(demo.onnx, work / "bundle", BuildOptions(
            precision="fp16", flavour="tensorrt_rtx", check_images=16)).engine
        export = export_triton(bundle, work / "repo", {"platform": "python"})
        (work / "files.json").write_text(json.dumps([str(p) for p in files]))
        with Engine(bundle, device="cpu") as engine:
            np.savez(work / "reference.npz", probs=engine.infer(files, return_probs=True).probs)
        results = {}
        t0 = time.perf_counter()
        with LocalTriton(export.repository, install,
                         models=(export.pipeline, export.names.engine)) as server:
            start_s = time.perf_counter() - t0
            for model in (export.pipeline, export.names.engine):
                out = work / f"{model}.json"
                proc = subprocess.run(
                    [python, str(LOAD), "--http", server.http_url, "--grpc", server.grpc_url,
                     "--metrics", server.metrics_url, "--model", model, "--files",
                     str(work / "files.json"), "--reference", str(work / "reference.npz"),
                     "--out", str(out), "--clients", str(args.clients),
                     "--requests", str(args.requests)], capture_output=True, text=True, env=env)
                print(proc.stdout.strip(), proc.stderr[-2000:], flush=True)
                results[model] = json.loads(out.read_text())
            alive = server.alive()
        baseline = engine_baseline(bundle, files, [1, 2, 4, 8], 400, seed=1)
    report = {
        "what": "Triton Inference Server (nvidia-pytriton 0.7.0's binary, Triton 2.51.0) serving "
                "the demo model's FP16 bundle exported with --platform python, CPU instances "
                "(precision ONNX in ONNX Runtime); load from tools/triton_load.py",
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "python": platform.python_version(), "medtrt": __version__,
                    "note": "2-core shared machine; figures vary with the other load on it"},
        "server_start_s": start_s, "server_alive_after": alive,
        "models": results, "engine_infer_in_process": baseline,
        "date": time.strftime("%Y-%m-%d"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")
    ok = alive and all(r["checks"]["good_correct"] == r["checks"]["good_requests"]
                       and r["checks"]["bad_all_refused"] for r in results.values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
