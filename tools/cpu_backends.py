#!/usr/bin/env python3
"""ONNX Runtime vs OpenVINO on this CPU, and what ``backend="auto"`` picks: writes JSON and a PNG.

For each graph (default: the demo model's FP32 ONNX and FP16 / INT8 graphs made from it here;
or the --onnx files given): ``backend="auto"``'s own choice as a fresh load makes it (the probe,
with an empty cache, then the cached load), and a longer measurement of every candidate at
--batch (the probe's timed blocks, longer ones). The JSON records each candidate's images/s, the
choice and the fastest of the figures in the same run (``choice_is_fastest``), the probe's time
and the load time with the cache. Not a test: nothing here asserts a speed.

    python tools/cpu_backends.py [--onnx A.onnx ...] [--batch 32] [--block 8] [--threads 0]
                                 [--out benchmarks/results/cpu_backends.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

import onnx  # noqa: E402
from medtrt.artifacts import sha256_file  # noqa: E402
from medtrt.bench import machine_info  # noqa: E402
from medtrt.demo import cached_demo_model  # noqa: E402
from medtrt.precision import (CalibrationConfig, calibrate, insert_qdq, plan_qdq,  # noqa: E402
                              to_fp16)
from medtrt.runtime.cpu_choice import (ENV, ProbeSettings, choose, cpu_candidates,  # noqa: E402
                                       probe)
from medtrt.runtime.loader import describe, load_stage  # noqa: E402
from medtrt.train import training_split  # noqa: E402


def demo_graphs(folder: Path) -> list[Path]:
    """The demo model's FP32 ONNX, and FP16 and INT8 (Q/DQ, 64 calibration images) graphs made
    from it in ``folder``."""
    demo = cached_demo_model(os.environ.get("MEDTRT_CACHE") or ROOT / ".cache" / "medtrt",
                             progress=False)
    to_fp16(demo.onnx, folder / "model.fp16.onnx")
    model = onnx.load(str(demo.onnx))
    plan = plan_qdq(model)
    paths = list(training_split(demo.metrics).train.paths)
    cal = calibrate(demo.onnx, paths, plan.tensors, CalibrationConfig(num_images=64))
    insert_qdq(model, cal.amax, plan=plan, out=folder / "model.int8.onnx")
    return [demo.onnx, folder / "model.fp16.onnx", folder / "model.int8.onnx"]


def auto_choice(path: Path, threads: int) -> dict[str, Any]:
    """What ``load_stage(path, "auto", "cpu")`` chooses with an empty cache (it probes), and a
    second load (it reads the cache)."""
    saved = os.environ.get("MEDTRT_CACHE")
    with tempfile.TemporaryDirectory() as cache:
        os.environ["MEDTRT_CACHE"] = cache
        try:
            t0 = time.perf_counter()
            first = load_stage(path, "auto", "cpu", threads=threads)
            load_s = time.perf_counter() - t0
            first.stage.close()
            t0 = time.perf_counter()
            second = load_stage(path, "auto", "cpu", threads=threads)
            cached_s = time.perf_counter() - t0
            second.stage.close()
        finally:
            if saved is None:
                os.environ.pop("MEDTRT_CACHE")
            else:
                os.environ["MEDTRT_CACHE"] = saved
    choice = first.backend_choice
    return {"choice": choice.to_json(), "fastest": choose(choice.timings).name,
            "choice_is_fastest": choice.name == choose(choice.timings).name,
            "load_s_probing": load_s, "load_s_cached": cached_s,
            "cached_source": second.backend_choice.source,
            "cached_choice": second.backend_choice.name}


def measured(path: Path, batch: int, block: int, threads: int) -> dict[str, Any]:
    """Every candidate at ``batch``: the probe's blocks, ``block`` timed batches each."""
    preset = describe(path).preset
    h, w = preset.image_size
    timings, stages = probe(cpu_candidates(str(path)), input_shape=(preset.in_channels, h, w),
                            classes=preset.num_classes, batch=batch, threads=threads,
                            settings=ProbeSettings(warmup=3, block=block, budget_s=600))
    for stage in stages.values():
        stage.close()
    best = max((t for t in timings if t.images_per_s), key=lambda t: t.images_per_s)
    return {"batch": batch, "timed_batches": 2 * block,
            "timings": [{"name": t.name, "images_per_s": t.images_per_s, "error": t.error}
                        for t in timings],
            "choice": choose(timings).name, "fastest": best.name,
            "choice_is_fastest": choose(timings).name == best.name}


def plot(report: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["graphs"]
    names = [t["name"] for t in rows[0]["measured"]["timings"]]
    fig, ax = plt.subplots(figsize=(7, 3.6))
    width = 0.8 / len(names)
    for j, name in enumerate(names):
        values = [next(t["images_per_s"] or 0 for t in r["measured"]["timings"]
                       if t["name"] == name) for r in rows]
        bars = ax.bar([i + j * width for i in range(len(rows))], values, width, label=name)
        for i, (bar, r) in enumerate(zip(bars, rows)):
            if r["auto"]["choice"]["name"] == name:
                ax.annotate("auto", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                            ha="center", va="bottom", fontsize=8)
    ax.set_xticks([i + width * (len(names) - 1) / 2 for i in range(len(rows))],
                  [r["precision"].upper() for r in rows])
    ax.set_ylabel(f"images/s (batch {rows[0]['measured']['batch']})")
    m = report["machine"]
    ax.set_title(f"DenseNet-121 MedNIST on {m['cpu']} ({m['cores']} cores)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--onnx", type=Path, nargs="*", help="graphs (default: the demo model's)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--block", type=int, default=8,
                        help="timed batches per candidate and pass (two passes)")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--out", type=Path,
                        default=ROOT / "benchmarks" / "results" / "cpu_backends.json")
    args = parser.parse_args(argv)
    os.environ.pop(ENV, None)  # measure: a forced choice would skip the probe
    with tempfile.TemporaryDirectory() as tmp:
        graphs = args.onnx or demo_graphs(Path(tmp))
        rows = []
        for path in graphs:
            auto = auto_choice(path, args.threads)
            row = {"graph": path.name, "sha256": sha256_file(path),
                   "precision": describe(path).precision, "auto": auto,
                   "measured": measured(path, args.batch, args.block, args.threads)}
            rows.append(row)
            figures = ", ".join(f"{t['name']} {t['images_per_s']:.1f}"
                                for t in row["measured"]["timings"] if t["images_per_s"])
            print(f"{row['precision']}: auto -> {auto['choice']['name']} "
                  f"(probe {auto['choice']['probe_s']:.1f} s, cached load "
                  f"{auto['load_s_cached']:.2f} s); batch {args.batch}: {figures} images/s")
    import onnxruntime
    import openvino

    report = {"tool": "tools/cpu_backends.py", "machine": machine_info(cwd=ROOT),
              "libraries": {"onnxruntime": onnxruntime.__version__,
                            "openvino": openvino.__version__},
              "threads": args.threads, "graphs": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    plot(report, args.out.with_suffix(".png"))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
