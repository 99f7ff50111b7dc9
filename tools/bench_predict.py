#!/usr/bin/env python3
"""`medtrt predict` from JPEG files vs ``Engine.infer`` compute-only, and RSS over a long run.

Throughput: the same open Engine (same backend, device, batch) runs, interleaved in each repeat,
(a) ``Engine.infer`` on the images already decoded (NumPy arrays, batches of --batch): the
compute-only figure, and (b) ``medtrt.predict.predict`` over a list file of the same images as
JPEG files, writing Parquet, once per --workers setting. Reported: medians of images/s, and
predict / compute-only (goal >= 0.9), taken in each repeat against the compute-only run beside
it, median over repeats (a shared machine's load moves both alike). predict is timed two ways: wall (the whole call: decode
pool start, every file read and decoded, rows written and compacted) and steady (rows per
second from the first 10 % of rows to the last, from the progress callback).

Memory: one predict run over --rss-inputs paths (a list file that repeats the data set's JPEG
paths; each line is one input and one row) with the default workers, writing Parquet. A thread
samples the RSS of this process plus its decode workers once a second with the rows done;
reported: RSS after warm-up (--warmup rows), at the end, the peak, and the slope of a line
fitted through the samples after warm-up (MiB per 100 000 rows; flat is ~0).

Ray (--ray 1,2): the same list through ``medtrt predict --ray`` (``medtrt.ray.predict_files``)
on a local Ray cluster of this machine's cores, once per actor count, in each repeat after the
local runs. Reported like predict: wall (the whole call, with the actors' start and their engines
loading) and steady (from 10 % of the rows on), and each over the local predict with the
default workers in the same repeat.

Not a test: nothing here asserts a speed.

    python tools/bench_predict.py [--model PATH] [--device cpu] [--backend auto] [--batch 64]
        [--images 1024] [--repeats 3] [--workers default,0,1] [--ray 1,2]
        [--rss-inputs 100000] [--warmup 5000] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from bench_ops import ROOT, machine  # tools/ is this script's directory

from medtrt import Engine
from medtrt.data import list_images, read_image
from medtrt.predict import PredictProgress, default_workers, predict
from medtrt.ray import predict_files


def cpu_isa() -> list[str]:
    """The vector ISAs that decide the CPU kernels ONNX Runtime and medtrt pick."""
    flags: set[str] = set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    return [f for f in ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16",
                        "amx_tile") if f in flags]


def demo_paths() -> tuple[Path, list[Path]]:
    """The demo model's ONNX and its data set's JPEGs, from the cache the tests use."""
    from medtrt.demo import cached_demo_model

    cache = os.environ.get("MEDTRT_CACHE") or ROOT / ".cache" / "medtrt"
    demo = cached_demo_model(cache, progress=False)
    return demo.onnx, list_images(demo.data)


def compute_only(engine: Engine, arrays: list[np.ndarray], batch: int) -> float:
    """images/s of Engine.infer on decoded arrays."""
    t0 = time.perf_counter()
    for i in range(0, len(arrays), batch):
        engine.infer(arrays[i:i + batch], k=3)
    return len(arrays) / (time.perf_counter() - t0)


def compute_stream(engine: Engine, arrays: list[np.ndarray], batch: int) -> float:
    """images/s of Engine.infer_many on decoded arrays (batch i+1 prepared while i computes):
    what predict feeds, without files, decoding or rows."""
    t0 = time.perf_counter()
    for _ in engine.infer_many((arrays[i:i + batch] for i in range(0, len(arrays), batch)),
                               k=3, return_probs=True):
        pass
    return len(arrays) / (time.perf_counter() - t0)


def steady_rate(samples: list[tuple[float, int]], rows: int) -> float:
    """Rows per second between two progress samples inside the run, from 10 % of the rows on
    (rows reach the callback one batch behind the engine, so a window that starts inside the
    run must also end inside it)."""
    inside = [(t, n) for t, n in samples if 0.1 * rows <= n < rows]
    return ((inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0])
            if len(inside) > 1 and inside[-1][0] > inside[0][0] else float("nan"))


def run_predict(engine: Engine, listing: Path, out: Path, batch: int,
                workers: int | None) -> dict[str, float]:
    """images/s of predict over the list: wall, and steady (from 10 % of the rows on)."""
    samples: list[tuple[float, int]] = []
    t0 = time.perf_counter()
    s = predict(engine, [listing], out, {"batch_size": batch, "workers": workers,
                                         "overwrite": True},
                progress=lambda p: samples.append((time.perf_counter(), p.rows)))
    wall = time.perf_counter() - t0
    return {"wall": s.rows_written / wall, "steady": steady_rate(samples, s.rows_written),
            "workers": s.workers}


def run_ray(model: Path, listing: Path, out: Path, batch: int, actors: int,
            device: str) -> dict[str, float]:
    """images/s of `medtrt predict --ray` over the list on the connected cluster."""
    samples: list[tuple[float, int]] = []
    t0 = time.perf_counter()
    s = predict_files(model, [listing], out, {"batch_size": batch, "overwrite": True,
                                              "device": device},
                      actors=actors,
                      progress=lambda p: samples.append((time.perf_counter(), p.rows)))
    wall = time.perf_counter() - t0
    return {"wall": s.rows_written / wall, "steady": steady_rate(samples, s.rows_written)}


def throughput(engine: Engine, paths: list[Path], args: argparse.Namespace,
               tmp: Path) -> dict[str, Any]:
    arrays = [read_image(p) for p in paths]
    listing = tmp / "images.txt"
    listing.write_text("".join(f"{p}\n" for p in paths))
    settings = [None if w == "default" else int(w) for w in args.workers.split(",")]
    actor_counts = [int(a) for a in args.ray.split(",")] if args.ray else []
    compute_only(engine, arrays[: 2 * args.batch], args.batch)  # warm-up
    run_predict(engine, listing, tmp / "warm.parquet", args.batch, 0)
    compute: list[float] = []
    stream: list[float] = []
    runs: dict[str, list[dict[str, float]]] = {str(w): [] for w in settings}
    ray_runs: dict[int, list[dict[str, float]]] = {a: [] for a in actor_counts}
    local_default: list[dict[str, float]] = []  # the local run each Ray run is compared with
    for r in range(args.repeats):  # interleaved, so drift (a shared machine) hits both alike
        compute.append(compute_only(engine, arrays, args.batch))
        stream.append(compute_stream(engine, arrays, args.batch))
        for w in settings:
            runs[str(w)].append(run_predict(engine, listing, tmp / "p.parquet", args.batch, w))
        if actor_counts:
            local_default.append(runs["None"][-1] if "None" in runs else run_predict(
                engine, listing, tmp / "p.parquet", args.batch, None))
        for a in actor_counts:
            ray_runs[a].append(run_ray(engine.path, listing, tmp / "r.parquet", args.batch, a,
                                       args.device))
        print(f"repeat {r + 1}/{args.repeats}: compute-only {compute[-1]:.1f} images/s, "
              f"infer_many {stream[-1]:.1f}; predict "
              + ", ".join(f"workers={x[-1]['workers']} {x[-1]['wall']:.1f}" for x in runs.values())
              + "".join(f"; --ray with {a} actor(s) {x[-1]['wall']:.1f} (steady "
                        f"{x[-1]['steady']:.1f})" for a, x in ray_runs.items()),
              flush=True)
    c, m = statistics.median(compute), statistics.median(stream)
    rows = []
    for key, xs in runs.items():
        wall = statistics.median(x["wall"] for x in xs)
        steady = statistics.median(x["steady"] for x in xs)
        # Each repeat's predict over the compute-only run next to it: a machine whose load
        # changes between repeats (a shared one) moves both alike.
        paired = [x["wall"] / cx for x, cx in zip(xs, compute)]
        rows.append({"workers_option": "default" if key == "None" else int(key),
                     "workers": xs[0]["workers"], "predict_images_per_s_wall": round(wall, 2),
                     "predict_images_per_s_steady": round(steady, 2),
                     "ratio_wall": round(statistics.median(paired), 4),
                     "ratio_wall_of_medians": round(wall / c, 4),
                     "ratio_steady_of_medians": round(steady / c, 4),
                     "ratio_wall_to_infer_many": round(statistics.median(
                         x["wall"] / sx for x, sx in zip(xs, stream)), 4),
                     "ratio_wall_per_repeat": [round(r, 4) for r in paired],
                     "samples_wall": [round(x["wall"], 2) for x in xs],
                     "samples_steady": [round(x["steady"], 2) for x in xs]})
    ray_rows = [{"actors": a,
                 "images_per_s_wall": round(statistics.median(x["wall"] for x in xs), 2),
                 "images_per_s_steady": round(statistics.median(x["steady"] for x in xs), 2),
                 "ratio_wall_to_local_predict": round(statistics.median(
                     x["wall"] / lx["wall"] for x, lx in zip(xs, local_default)), 4),
                 "ratio_steady_to_local_predict": round(statistics.median(
                     x["steady"] / lx["steady"] for x, lx in zip(xs, local_default)), 4),
                 "samples_wall": [round(x["wall"], 2) for x in xs],
                 "samples_steady": [round(x["steady"], 2) for x in xs]}
                for a, xs in ray_runs.items()]
    return {"images": len(paths), "compute_only_images_per_s": round(c, 2),
            "ray": ray_rows,
            "compute_only_samples": [round(x, 2) for x in compute],
            "infer_many_arrays_images_per_s": round(m, 2),
            "infer_many_samples": [round(x, 2) for x in stream], "predict": rows}


@contextmanager
def ray_cluster(wanted: bool) -> Iterator[dict[str, Any] | None]:
    """A local Ray cluster of this machine's cores, for the --ray runs."""
    if not wanted:
        yield None
        return
    import ray

    cores = len(os.sched_getaffinity(0))
    ray.init(num_cpus=cores, include_dashboard=False, logging_level="WARNING")
    try:
        yield {"nodes": 1, "cpus": cores, "gpus": ray.cluster_resources().get("GPU", 0),
               "ray": ray.__version__}
    finally:
        ray.shutdown()


class RssSampler:
    """RSS of this process and its children, with the rows done, once a second."""

    def __init__(self, period: float = 1.0) -> None:
        import psutil

        self.proc, self.period = psutil.Process(), period
        self.rows = 0
        self.samples: list[tuple[float, int, float]] = []  # (seconds, rows, MiB)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.t0 = time.perf_counter()

    def rss_mib(self) -> float:
        total = self.proc.memory_info().rss
        for child in self.proc.children(recursive=True):
            try:
                total += child.memory_info().rss
            except Exception:  # noqa: BLE001 - a worker that just exited
                pass
        return total / 2**20

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self.samples.append((time.perf_counter() - self.t0, self.rows, self.rss_mib()))

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


def memory(engine: Engine, paths: list[Path], args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    listing = tmp / "long.txt"
    with open(listing, "w") as f:
        for i in range(args.rss_inputs):
            f.write(f"{paths[i % len(paths)]}\n")
    out = tmp / "long.parquet"
    with RssSampler() as sampler:
        before = sampler.rss_mib()

        def progress(p: PredictProgress) -> None:
            sampler.rows = p.rows

        t0 = time.perf_counter()
        s = predict(engine, [listing], out, {"batch_size": args.batch}, progress=progress)
        seconds = time.perf_counter() - t0
    samples = sampler.samples
    after = [(t, n, m) for t, n, m in samples if n >= args.warmup]
    warm = after[0] if after else samples[0]
    running = [x for x in after if x[1] < s.rows_written] or after  # before compaction
    slope = float(np.polyfit([n for _, n, _ in running], [m for _, _, m in running], 1)[0]) \
        if len(running) > 2 else float("nan")
    return {
        "inputs": args.rss_inputs, "distinct_files": len(paths),
        "list": "one path per line, the data set's JPEGs repeated in order",
        "output": "parquet (parts, compacted at the end)", "workers": s.workers,
        "seconds": round(seconds, 1), "images_per_s": round(s.rows_written / seconds, 2),
        "rss_mib_before_run": round(before, 1),
        "rss_mib_after_warmup": round(warm[2], 1), "warmup_rows": warm[1],
        "rss_mib_at_end": round(running[-1][2], 1), "end_rows": running[-1][1],
        "rss_mib_peak": round(max(m for _, _, m in samples), 1),
        "rss_mib_per_100k_rows_after_warmup": round(slope * 1e5, 2),
        "samples": [[round(t, 1), n, round(m, 1)] for t, n, m in samples],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="default: the demo model's ONNX (cached)")
    parser.add_argument("--data", type=Path, help="JPEG folder (default: the demo data set)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--images", type=int, default=1024, help="files per throughput run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", default="default,0,1",
                        help="predict --workers settings to time (default = the cores left over)")
    parser.add_argument("--ray", default="",
                        help="actor counts to time `predict --ray` with on a local Ray cluster "
                             "of this machine's cores (e.g. 1,2; default: none)")
    parser.add_argument("--rss-inputs", type=int, default=100_000, help="0 skips the RSS run")
    parser.add_argument("--warmup", type=int, default=5000, help="rows before RSS counts as warm")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    model, paths = demo_paths() if args.model is None or args.data is None else (None, None)
    model = args.model or model
    paths = list_images(args.data) if args.data else paths
    t_start = time.perf_counter()
    with Engine(model, device=args.device, backend=args.backend, max_batch=args.batch) as engine, \
            tempfile.TemporaryDirectory() as tmp:
        report: dict[str, Any] = {
            "tool": "tools/bench_predict.py",
            "model": Path(model).name, "backend": engine.backend, "precision": engine.precision,
            "device": engine.device, "fallback": engine.fallback, "batch": args.batch,
            "default_workers": default_workers(engine), "repeats": args.repeats,
            "input": "JPEG files, 64x64 gray (the synthetic MedNIST set), read from the page "
                     "cache (the set is read once before timing)",
        }
        with ray_cluster(bool(args.ray)) as cluster:
            report["ray_cluster"] = cluster
            report["throughput"] = throughput(engine, paths[: args.images], args, Path(tmp))
        if args.rss_inputs:
            report["memory"] = memory(engine, paths, args, Path(tmp))
        report["torch_loaded_during_runs"] = "torch" in sys.modules  # in the RSS if so
    report["tool_seconds"] = round(time.perf_counter() - t_start, 1)
    # After the runs: machine() imports torch for its version, which the RSS would count.
    report["machine"] = {**machine(), "cpu_isa": cpu_isa()}
    kind = "gpu" if str(report["device"]).startswith("cuda") else "cpu"
    out = args.out or ROOT / "benchmarks" / "results" / f"bench_predict_{kind}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    t = report["throughput"]
    print(f"compute-only (Engine.infer on arrays): {t['compute_only_images_per_s']:.1f} images/s; "
          f"Engine.infer_many on arrays: {t['infer_many_arrays_images_per_s']:.1f}")
    for r in t["ray"]:
        print(f"predict --ray, {r['actors']} actor(s): {r['images_per_s_wall']:.1f} images/s "
              f"wall, {r['images_per_s_steady']:.1f} steady; over local predict (default "
              f"workers) {r['ratio_wall_to_local_predict']:.3f} wall, "
              f"{r['ratio_steady_to_local_predict']:.3f} steady")
    for r in t["predict"]:
        print(f"predict --workers {r['workers_option']} ({r['workers']}): "
              f"{r['predict_images_per_s_wall']:.1f} images/s wall, "
              f"{r['predict_images_per_s_steady']:.1f} steady; ratio to compute-only "
              f"{r['ratio_wall']:.3f} (median of repeats {r['ratio_wall_per_repeat']}), "
              f"to infer_many {r['ratio_wall_to_infer_many']:.3f}")
    if "memory" in report:
        m = report["memory"]
        print(f"RSS over {m['inputs']} inputs: {m['rss_mib_after_warmup']} MiB after "
              f"{m['warmup_rows']} rows, {m['rss_mib_at_end']} MiB at {m['end_rows']} rows, peak "
              f"{m['rss_mib_peak']} MiB; slope {m['rss_mib_per_100k_rows_after_warmup']} MiB per "
              f"100k rows; {m['seconds']} s")
    print(f"wrote {out} ({report['tool_seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
