#!/usr/bin/env python3
"""A short, complete drive of medtrt's CUDA code for compute-sanitizer (tools/gpu_check.sh).

Every kernel and every pipeline path runs at least once on sizes that make edges matter
(batch 1, odd sizes, ragged batches, k = classes, float16 in and out, 1 and 3 channels, uint8 /
uint16 / int16 / float32 pixels, staged and resident batches, logits returned or not), and each
result is compared with the CPU twin, so the run proves the results too, not only that nothing
was reported. Run it with MEDTRT_EXACT_ALLOC=1 (buffers of exactly the batch's size, reallocated
per batch) and PYTORCH_NO_CUDA_MEMORY_CACHING=1 (torch's tensors are exact cudaMalloc blocks),
so an overrun has no spare capacity to hide in.

    python tools/gpu_sanitize.py [--device cuda|cpu] [--batches 12]

--device cpu runs the same sequence with the host twins only (the dry run uses it, so this
script cannot rot on machines without a GPU). Prints one JSON line; exit 1 on any mismatch.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from medtrt._native import native
from medtrt.ops import resize_normalize, topk
from medtrt.ops.resize_normalize import make_options

OUT = (40, 36)
CLASSES = 14
DTYPES = ("uint8", "uint16", "int16", "float32")


class Checks:
    def __init__(self) -> None:
        self.count, self.failures = 0, []

    def close(self, name: str, got: np.ndarray, want: np.ndarray, atol: float = 0.0,
              rtol: float = 0.0) -> None:
        self.count += 1
        got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
        if got.shape != want.shape or not np.allclose(got, want, atol=atol, rtol=rtol,
                                                      equal_nan=True):
            worst = float(np.nanmax(np.abs(got - want))) if got.shape == want.shape else None
            self.failures.append({"check": name, "max_abs_diff": worst,
                                  "shapes": [list(got.shape), list(want.shape)]})


def image(rng: np.random.Generator, dtype: str, channels: int) -> np.ndarray:
    h, w = (int(v) for v in rng.integers(1, 90, 2))
    shape = (h, w) if channels == 1 else (h, w, channels)
    if dtype == "float32":
        return rng.uniform(-1, 2, shape).astype(np.float32)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, shape, endpoint=True).astype(dtype)


def ops(torch, device: str, rng: np.random.Generator, checks: Checks) -> None:
    """resize_normalize and topk on their own: device kernel vs CPU kernel."""
    for dtype in DTYPES:
        for in_c, out_c, out_dtype in ((1, 1, "float32"), (3, 1, "float16"), (1, 3, "float32")):
            images = [image(rng, dtype, in_c) for _ in range(int(rng.integers(1, 6)))]
            kw = {"channels": out_c, "mean": 0.3, "std": 0.7, "dtype": out_dtype}
            if dtype == "int16":
                kw["window"] = (40.0, 400.0)
            want = resize_normalize(images, OUT, **kw)
            got = resize_normalize([torch.from_numpy(im).to(device) for im in images], OUT, **kw)
            tol = 1e-3 if out_dtype == "float16" else 1e-5
            checks.close(f"resize_normalize {dtype} {in_c}->{out_c} {out_dtype}",
                         got.float().cpu().numpy(), want.astype(np.float32), tol, tol)
    for batch, classes, k, dtype in ((1, 1, 1, np.float32), (3, 14, 14, np.float16),
                                     (67, 6, 2, np.float32), (5, 1000, 7, np.float32)):
        logits = (rng.standard_normal((batch, classes)) * 8).astype(dtype)
        for activation in ("softmax", "sigmoid", "none"):
            s_want, i_want = topk(logits, k, activation=activation)
            s_got, i_got = topk(torch.from_numpy(logits).to(device), k, activation=activation)
            checks.close(f"topk {batch}x{classes} k={k} {activation} scores",
                         s_got.cpu().numpy(), s_want, 1e-7, 1e-5)
            ref = logits.astype(np.float64)
            got_l = np.take_along_axis(ref, i_got.cpu().numpy().astype(np.int64), 1)
            want_l = np.take_along_axis(ref, i_want.astype(np.int64), 1)
            # Indices may differ only between near-equal logits (last-bit score differences).
            checks.close(f"topk {batch}x{classes} k={k} {activation} logits of indices",
                         got_l, want_l, 1e-6, 1e-5)


class Stage:
    """Compute stage: logits = CLASSES chosen input values (a pure copy, exact on any device)."""

    def __init__(self, torch, pipe, device: str, where: np.ndarray) -> None:
        self.torch, self.pipe, self.device = torch, pipe, device
        self.where = where
        self.index = torch.as_tensor(where, device=device)

    def __call__(self, view) -> None:
        c, h, w = self.pipe.input_shape
        if self.device == "cpu":
            x = self.pipe.host_input(view).reshape(view.batch, -1)
            self.pipe.host_logits(view)[...] = x[:, self.where]
            return
        from medtrt.runtime.stages import cuda_alias

        torch = self.torch
        x = cuda_alias(view.input, (view.batch, c * h * w), self.pipe.input_dtype, self.device)
        out = cuda_alias(view.logits, (view.batch, CLASSES), self.pipe.logits_dtype, self.device)
        with torch.cuda.stream(torch.cuda.ExternalStream(view.stream, device=self.device)):
            torch.index_select(x, 1, self.index, out=out)


def pipelines(torch, device: str, rng: np.random.Generator, checks: Checks,
              batches: int) -> dict:
    """The Pipeline on `device` vs its host twin: staged and resident batches, both dtypes."""
    c = native()
    exact = None
    for dtype in ("float32", "float16"):
        opts = make_options(OUT, mean=0.5, std=0.25, dtype=dtype)
        make = lambda d, slots: c.Pipeline(slots=slots, classes=CLASSES, preprocess=opts,  # noqa: E731
                                           logits_dtype=dtype, activation="softmax", device=d)
        pipe, twin = make(device, 2), make("cpu", 1)
        exact = pipe.exact_alloc
        where = rng.choice(OUT[0] * OUT[1], CLASSES, replace=False)
        stage, twin_stage = Stage(torch, pipe, device, where), Stage(torch, twin, "cpu", where)
        pending = []
        for i in range(batches):
            images = [image(rng, DTYPES[int(rng.integers(4))], 1)
                      for _ in range(int(rng.integers(1, 20)))]
            resident = device != "cpu" and i % 3 == 2
            want_logits = i % 2 == 0
            if resident:
                dev = [torch.from_numpy(im).to(device) for im in images]
                slot = pipe.submit(dev, stage, want_logits, resident=True,
                                   producer=torch.cuda.current_stream().cuda_stream)
            else:
                slot = pipe.submit(images, stage, want_logits)
            pending.append((slot, images, want_logits, i))
            if len(pending) == 2:
                _collect(pipe, twin, twin_stage, pending.pop(0), checks, dtype)
        for item in pending:
            _collect(pipe, twin, twin_stage, item, checks, dtype)
    return {"exact_alloc": exact}


def _collect(pipe, twin, twin_stage, item, checks: Checks, dtype: str) -> None:
    slot, images, want_logits, i = item
    got = pipe.wait(slot)
    want = twin.wait(twin.submit(images, twin_stage, True))
    checks.close(f"pipeline {dtype} batch {i} scores", got[0], want[0], 1e-7, 1e-5)
    checks.count += 1
    if not want_logits:
        if got[2] is not None:
            checks.failures.append({"check": f"pipeline {dtype} batch {i}: logits not asked for"})
        return
    # Logits are copied pixels: exact between devices; indices may swap only between near-ties.
    checks.close(f"pipeline {dtype} batch {i} logits", got[2], want[2])
    ref = np.asarray(want[2], np.float64)
    checks.close(f"pipeline {dtype} batch {i} logits of indices",
                 np.take_along_axis(ref, got[1].astype(np.int64), 1),
                 np.take_along_axis(ref, want[1].astype(np.int64), 1), 1e-6, 1e-5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--batches", type=int, default=12)
    args = parser.parse_args(argv)
    import torch

    device = "cuda:0" if args.device == "cuda" else "cpu"
    if device != "cpu" and not torch.cuda.is_available():
        print("gpu_sanitize: torch sees no CUDA device; use --device cpu", file=sys.stderr)
        return 2
    rng = np.random.default_rng(20261201)
    checks = Checks()
    t0 = time.perf_counter()
    ops(torch, device, rng, checks)
    info = pipelines(torch, device, rng, checks, args.batches)
    if device != "cpu":
        torch.cuda.synchronize()
    print(json.dumps({"tool": "gpu_sanitize", "device": device, "checks": checks.count,
                      "failures": checks.failures, "seconds": round(time.perf_counter() - t0, 2),
                      "exact_alloc": info["exact_alloc"],
                      "torch_caching_allocator_off":
                          os.environ.get("PYTORCH_NO_CUDA_MEMORY_CACHING") == "1"}))
    return 1 if checks.failures else 0


if __name__ == "__main__":
    sys.exit(main())
