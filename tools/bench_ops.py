#!/usr/bin/env python3
"""Times medtrt's ops on the CPU and, when a CUDA device is usable, on the GPU; writes JSON.

Bandwidth is reported against a copy measured in the same run (host memcpy on the CPU,
device-to-device copy on the GPU), counting bytes read plus bytes written. For resize_normalize
the bytes are: the input rows the bilinear taps touch (whole rows: a downscale skips rows it
never samples) plus the output. Not a test: nothing here asserts a speed.

    python tools/bench_ops.py [--out FILE] [--batch 256] [--repeats 15] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from medtrt._native import cuda_ready
from medtrt.ops import resize_normalize, topk

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class ResizeCase:
    name: str
    in_hw: tuple[int, int]
    in_dtype: str
    out_hw: tuple[int, int]
    channels: int
    out_dtype: str
    kwargs: tuple[tuple[str, Any], ...] = ()


RESIZE_CASES = [
    ResizeCase("mednist 64x64 u8 -> 1x64x64 f32", (64, 64), "uint8", (64, 64), 1, "float32"),
    ResizeCase("cxr 512x512 u8 -> 3x224x224 f32 (imagenet)", (512, 512), "uint8", (224, 224), 3,
               "float32", (("mean", (0.485, 0.456, 0.406)), ("std", (0.229, 0.224, 0.225)))),
    ResizeCase("ct 512x512 u16 -> 1x64x64 f16 (window)", (512, 512), "uint16", (64, 64), 1,
               "float16", (("rescale", (1.0, -1024.0)), ("window", (40.0, 400.0)))),
]
TOPK_CASES = [(6, 1), (14, 5), (1000, 5)]


def touched_rows(in_size: int, out_size: int) -> int:
    dst = np.arange(out_size)
    src = np.maximum((2 * dst + 1) * in_size - out_size, 0) // (2 * out_size)
    return len(np.union1d(src, np.minimum(src + 1, in_size - 1)))


def resize_bytes(case: ResizeCase, batch: int) -> dict[str, int]:
    h, w = case.in_hw
    itemsize = np.dtype(case.in_dtype).itemsize
    out = batch * case.channels * case.out_hw[0] * case.out_hw[1] * np.dtype(case.out_dtype).itemsize
    return {
        "input_bytes": batch * h * w * itemsize,
        "input_bytes_touched": batch * touched_rows(h, case.out_hw[0]) * w * itemsize,
        "output_bytes": out,
    }


def median_seconds(fn: Callable[[], Any], repeats: int, warmup: int = 2) -> tuple[float, list[float]]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def host_copy_bandwidth(repeats: int) -> float:
    src = np.random.default_rng(0).integers(0, 255, size=256 << 20, dtype=np.uint8)
    dst = np.empty_like(src)
    t, _ = median_seconds(lambda: np.copyto(dst, src), repeats)
    return 2 * src.nbytes / t


def make_batch(rng: np.random.Generator, case: ResizeCase, batch: int) -> np.ndarray:
    high = 256 if case.in_dtype == "uint8" else 4096
    return rng.integers(0, high, size=(batch, *case.in_hw), dtype=case.in_dtype)


def bench_cpu(batch: int, repeats: int) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    copy_bw = host_copy_bandwidth(repeats)
    rows = []
    for case in RESIZE_CASES:
        images = make_batch(rng, case, batch)
        kw = dict(case.kwargs)
        t, times = median_seconds(lambda: resize_normalize(
            images, case.out_hw, channels=case.channels, dtype=case.out_dtype, **kw), repeats)
        nbytes = resize_bytes(case, batch)
        moved = nbytes["input_bytes_touched"] + nbytes["output_bytes"]
        rows.append({"op": "resize_normalize", "case": case.name, "batch": batch,
                     "median_s": t, "images_per_s": batch / t, **nbytes,
                     "bandwidth_Bps": moved / t, "fraction_of_copy": moved / t / copy_bw,
                     "times_s": times})
    for classes, k in TOPK_CASES:
        logits = rng.normal(size=(batch, classes)).astype(np.float32)
        t, times = median_seconds(lambda: topk(logits, k), repeats)
        moved = logits.nbytes + batch * k * 8
        rows.append({"op": "topk", "case": f"softmax C={classes} k={k}", "batch": batch,
                     "median_s": t, "rows_per_s": batch / t, "bytes": moved,
                     "bandwidth_Bps": moved / t, "fraction_of_copy": moved / t / copy_bw,
                     "times_s": times})
    return {"copy_bandwidth_Bps": copy_bw, "copy": "np.copyto of 256 MiB, read + write",
            "threads": os.cpu_count(), "results": rows}


def bench_gpu(batch: int, repeats: int) -> dict[str, Any]:
    """Kernel time: descriptors uploaded once, launches queued behind torch.cuda._sleep so the
    host's enqueue work never shows as GPU idle time between the events. API time: the whole
    public call (argument handling, validation, descriptor upload, launch), also event-timed."""
    import torch

    from medtrt._native import native

    c = native()
    stream = torch.cuda.current_stream()

    def timed(fn: Callable[[], Any], iters: int = 20, hide_host: bool = True) -> tuple[float, list[float]]:
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        times = []
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            if hide_host:
                torch.cuda._sleep(20_000_000)  # GPU busy ~10 ms while the host enqueues
            start.record()
            for _ in range(iters):
                fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3 / iters)
        return statistics.median(times), times

    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda").random_(0, 255)
    dst = torch.empty_like(src)
    copy_t, _ = timed(lambda: dst.copy_(src), iters=5)
    copy_bw = 2 * src.numel() / copy_t
    del src, dst
    rng = np.random.default_rng(0)
    rows = []
    for case in RESIZE_CASES:
        images = torch.from_numpy(make_batch(rng, case, batch)).cuda()
        kw = {k: (list(v) if k in ("mean", "std") else v) for k, v in case.kwargs}
        opts = c.ResizeNormalizeOptions(out_size=case.out_hw, channels=case.channels,
                                        dtype=case.out_dtype, **kw)
        items = [(images[i].data_ptr(), tuple(images[i].shape), case.in_dtype) for i in range(batch)]
        out = torch.empty((batch, case.channels, *case.out_hw), device="cuda",
                          dtype=getattr(torch, case.out_dtype))
        descs = torch.empty(batch * c.IMAGE_DESC_BYTES, dtype=torch.uint8, device="cuda")
        c.resize_normalize_cuda(items, opts, out.data_ptr(), descs.data_ptr(), stream.cuda_stream)
        t, times = timed(lambda: c.resize_normalize_cuda(
            items, opts, out.data_ptr(), descs.data_ptr(), stream.cuda_stream, upload_descs=False))
        api_t, _ = timed(lambda: resize_normalize(
            images, case.out_hw, channels=case.channels, dtype=case.out_dtype, out=out,
            **dict(case.kwargs)), hide_host=False)
        nbytes = resize_bytes(case, batch)
        moved = nbytes["input_bytes_touched"] + nbytes["output_bytes"]
        rows.append({"op": "resize_normalize", "case": case.name, "batch": batch,
                     "median_s": t, "images_per_s": batch / t, **nbytes,
                     "bandwidth_Bps": moved / t, "fraction_of_copy": moved / t / copy_bw,
                     "times_s": times, "api_median_s": api_t})
    for classes, k in TOPK_CASES:
        logits = torch.randn(batch, classes, device="cuda")
        scores = torch.empty(batch, k, device="cuda")
        indices = torch.empty(batch, k, dtype=torch.int32, device="cuda")
        t, times = timed(lambda: c.topk_cuda(logits.data_ptr(), (batch, classes), "float32", k,
                                             "softmax", scores.data_ptr(), indices.data_ptr(),
                                             stream.cuda_stream))
        api_t, _ = timed(lambda: topk(logits, k), hide_host=False)
        moved = logits.numel() * 4 + batch * k * 8
        rows.append({"op": "topk", "case": f"softmax C={classes} k={k}", "batch": batch,
                     "median_s": t, "rows_per_s": batch / t, "bytes": moved,
                     "bandwidth_Bps": moved / t, "fraction_of_copy": moved / t / copy_bw,
                     "times_s": times, "api_median_s": api_t})
    props = torch.cuda.get_device_properties(0)
    return {"device": props.name, "compute_capability": f"{props.major}.{props.minor}",
            "copy_bandwidth_Bps": copy_bw, "copy": "device-to-device copy of 1 GiB, read + write",
            "timing": "CUDA events over 20 back-to-back launches, host enqueue hidden; "
                      "api_median_s: the public Python call, host overhead included",
            "results": rows}


def machine() -> dict[str, Any]:
    """medtrt.bench.machine_info(), plus the flat keys earlier reports (and readme_perf) use."""
    from medtrt.bench import machine_info

    info = machine_info(cwd=ROOT)
    info.update({k: info["versions"][k] for k in ("python", "numpy", "medtrt")})
    if info.get("gpu"):
        info["nvidia_smi"] = f"{info['gpu']}, {info['driver']}"
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="JSON path (default: benchmarks/results/...)")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--quick", action="store_true", help="batch 8, 3 repeats (smoke run)")
    parser.add_argument("--no-gpu", action="store_true")
    parser.add_argument("--gpu-only", action="store_true", help="skip the CPU figures")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.repeats = 8, 3

    report: dict[str, Any] = {"tool": "tools/bench_ops.py", "machine": machine(),
                              "batch": args.batch, "repeats": args.repeats}
    report["cpu"] = {"skipped": "--gpu-only"} if args.gpu_only else bench_cpu(args.batch, args.repeats)
    ok, why = cuda_ready()
    if ok and not args.no_gpu:
        report["gpu"] = bench_gpu(args.batch, args.repeats)
    else:
        report["gpu"] = {"skipped": why if not ok else "--no-gpu"}

    kind = "gpu" if "results" in report["gpu"] else "cpu"
    out = args.out or ROOT / "benchmarks" / "results" / f"bench_ops_{kind}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")

    for where in ("cpu", "gpu"):
        section = report[where]
        if "results" not in section:
            print(f"{where}: skipped ({section['skipped']})")
            continue
        print(f"{where}: copy bandwidth {section['copy_bandwidth_Bps'] / 1e9:.1f} GB/s")
        for r in section["results"]:
            print(f"  {r['op']:17s} {r['case']:46s} {r['median_s'] * 1e3:9.3f} ms  "
                  f"{r['bandwidth_Bps'] / 1e9:7.2f} GB/s  {100 * r['fraction_of_copy']:5.1f}% of copy")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
