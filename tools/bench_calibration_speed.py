#!/usr/bin/env python3
"""Calibration speed before and after issue #22's changes, in one run, with identical thresholds.

    python tools/bench_calibration_speed.py [--onnx M] [--images DIR] [--n 512] [--batch 16]
                                            [--repeats 3] [--out FILE]

These run on the same images in the same order (``load_images(DIR, n)``, batches of
``--batch``), interleaved (the order rotated from repeat to repeat), ``--repeats`` times each;
every figure is the median over the repeats (the minimum is recorded beside it):

- **fp32**: a plain FP32 pass, ONNX Runtime's default session (ORT_ENABLE_ALL) over the images,
  read and pre-processed as calibration reads them. Its ``run`` phase (the ONNX Runtime calls
  alone) is the yardstick of the goal: calibration <= 3x that.
- **before**: ``calibrate()`` as it was at commit a742ee9 (``python/medtrt/precision/
  calibrate.py`` of that commit, read with ``git show`` and run as a module) on the extension's
  reference kernels, which are that commit's code: ``AbsHistogram.add_reference`` (through
  ``histogram_add_many(..., reference=True)``) and ``entropy_amax``.
- **after**: ``medtrt.precision.calibrate.calibrate()``.

Phases are timed by wrapping, in each module alike, what ``calibrate()`` calls: ``read``
(read_image and resize_normalize_mixed), ``session`` (building the augmented ONNX Runtime
session), ``ort`` (its run / run_with_iobinding calls), ``histograms`` (histogram_add_many),
``thresholds`` (the entropy searches); ``other`` is the rest of ``Calibration.seconds`` (the
time calibrate() reports). The check: every threshold (amax) of before and after has the same
float64 bits, and so does every histogram (counts,
range, max |x|, NaN count, merges), in every repeat; the tool exits 1 otherwise. The CPU time
other processes used during each repeat (and the hypervisor's steal) is recorded: on a shared
machine other work inflates every figure. Writes JSON (default
benchmarks/results/bench_calibration_speed.json). Not a test.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import subprocess
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BEFORE_COMMIT = "a742ee9"
PHASES = ("read", "session", "ort", "histograms", "thresholds")

import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
from medtrt._native import native  # noqa: E402
from medtrt.bench.telemetry import machine_info  # noqa: E402
from medtrt.data import read_image  # noqa: E402
from medtrt.demo import cached_demo_model  # noqa: E402
from medtrt.export import read_metadata  # noqa: E402
from medtrt.ops import resize_normalize_mixed  # noqa: E402
from medtrt.precision.qdq import plan_qdq  # noqa: E402

after_module = importlib.import_module("medtrt.precision.calibrate")
# name -> (module: None for the before-code, its kernels: the reference ones)
PATHS = {"before": (None, True), "after": (after_module, False)}


def before_module() -> types.ModuleType:
    """calibrate.py as it was at BEFORE_COMMIT, as a module of its own."""
    try:
        src = subprocess.run(["git", "show", f"{BEFORE_COMMIT}:python/medtrt/precision/calibrate.py"],
                             cwd=ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        raise SystemExit(f"cannot read the 'before' code from git (commit {BEFORE_COMMIT}): {exc}; "
                         "run from a clone that has that commit") from exc
    module = types.ModuleType("medtrt_calibrate_before")
    module.__file__ = f"git:{BEFORE_COMMIT}:python/medtrt/precision/calibrate.py"
    sys.modules[module.__name__] = module  # dataclasses look their module up
    exec(compile(src, module.__file__, "exec"), module.__dict__)
    return module


class Clock:
    """Seconds per phase, accumulated by the wrappers below."""

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(PHASES, 0.0)

    def timed(self, phase: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[phase] += time.perf_counter() - t0
        return wrapper


class TimedSession:
    """An ONNX Runtime session whose runs count as the ``ort`` phase."""

    def __init__(self, session: Any, clock: Clock) -> None:
        self._session = session
        self.run = clock.timed("ort", session.run)
        self.run_with_iobinding = clock.timed("ort", session.run_with_iobinding)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)


class TimedNative:
    """medtrt._C with its fills and searches timed; ``reference``: the fill the before-code ran
    (AbsHistogram.add_reference). Keeps the histograms it made, for the identity check."""

    def __init__(self, clock: Clock, reference: bool) -> None:
        self._c, self._reference, self.made, self.rechecked = native(), reference, [], []
        self._clock = clock
        self.entropy_amax = clock.timed("thresholds", self._c.entropy_amax)
        self.percentile_amax = clock.timed("thresholds", self._c.percentile_amax)
        self.histogram_add_many = clock.timed("histograms", self._add_many)
        self.entropy_amax_many = clock.timed("thresholds", self._amax_many)

    def AbsHistogram(self, bins: int = 2048) -> Any:  # noqa: N802 (the extension's name)
        self.made.append(self._c.AbsHistogram(bins))
        return self.made[-1]

    def _add_many(self, work: Any) -> None:
        self._c.histogram_add_many(work, reference=self._reference)

    def _amax_many(self, *args: Any) -> Any:
        out = self._c.entropy_amax_many(*args)
        self.rechecked += [int(r) for r in out[2]]
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self._c, name)


def timed_calibration(module: types.ModuleType, reference: bool, onnx_path: Path,
                      paths: list[Path], tensors: list[str],
                      config: Any) -> tuple[dict[str, Any], Any, TimedNative]:
    """One calibrate() of ``module`` with its calls wrapped: (seconds, Calibration, natives)."""
    clock = Clock()
    c = TimedNative(clock, reference)
    saved = {k: getattr(module, k) for k in ("native", "read_image", "resize_normalize_mixed",
                                             "_augmented_session")}
    session = clock.timed("session", saved["_augmented_session"])
    module.native = lambda: c
    module.read_image = clock.timed("read", saved["read_image"])
    module.resize_normalize_mixed = clock.timed("read", saved["resize_normalize_mixed"])
    module._augmented_session = lambda *a: TimedSession(session(*a), clock)
    try:
        t0 = time.perf_counter()
        cal = module.calibrate(onnx_path, paths, tensors, module.CalibrationConfig(**config))
        wall = time.perf_counter() - t0
    finally:
        for k, v in saved.items():
            setattr(module, k, v)
    seconds = {**clock.seconds, "total": cal.seconds, "wall": wall}
    seconds["other"] = cal.seconds - sum(clock.seconds[p] for p in PHASES)
    return seconds, cal, c


def fp32_pass(onnx_path: Path, paths: list[Path], batch: int, kwargs: dict) -> dict[str, float]:
    """The plain pass: default session, the same images read and pre-processed the same way."""
    clock = Clock()
    t0 = time.perf_counter()
    session = clock.timed("session", ort.InferenceSession)(str(onnx_path),
                                                           providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    run = clock.timed("ort", session.run)
    prepare = clock.timed("read", lambda ps: resize_normalize_mixed([read_image(p) for p in ps],
                                                                    **kwargs))
    for start in range(0, len(paths), batch):
        run(None, {name: prepare(paths[start:start + batch])})
    total = time.perf_counter() - t0
    return {"read": clock.seconds["read"], "session": clock.seconds["session"],
            "run": clock.seconds["ort"], "total": total}


def identical(a: tuple[Any, TimedNative], b: tuple[Any, TimedNative]) -> dict[str, Any]:
    """Same float64 bits for every amax; same counts, range, max |x| and merges per histogram."""
    (cal_a, nat_a), (cal_b, nat_b) = a, b
    bits = {t: (np.float64(cal_a.amax[t]).tobytes(),
                np.float64(cal_b.amax.get(t, np.nan)).tobytes()) for t in cal_a.amax}
    amax_bad = ([t for t, (x, y) in bits.items() if x != y]
                + sorted(set(cal_b.amax) - set(cal_a.amax)))
    hist_bad = [i for i, (x, y) in enumerate(zip(nat_a.made, nat_b.made))
                if not (np.array_equal(x.counts, y.counts) and x.range == y.range
                        and x.max_abs == y.max_abs and x.merges == y.merges
                        and x.nan_count == y.nan_count)]
    if len(nat_a.made) != len(nat_b.made):
        hist_bad.append(-1)
    return {"amax_compared": len(bits), "amax_mismatches": amax_bad,
            "histograms_compared": len(nat_a.made), "histogram_mismatches": hist_bad}


def cpu_seconds() -> dict[str, float]:
    """CPU seconds so far: busy (all processes), steal (taken by the hypervisor) and own (this
    process, all its threads). Linux; NaN elsewhere."""
    try:
        fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        hz = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError):
        return {"busy": float("nan"), "steal": float("nan"), "own": float("nan")}
    user, nice, system, _, _, irq, softirq, steal = fields
    t = os.times()
    return {"busy": (user + nice + system + irq + softirq) / hz, "steal": steal / hz,
            "own": t.user + t.system}


def summary(runs: list[dict[str, float]]) -> dict[str, Any]:
    keys = runs[0].keys()
    return {"median": {k: statistics.median(r[k] for r in runs) for k in keys},
            "min": {k: min(r[k] for r in runs) for k in keys},
            "runs": runs}


def measure(args: argparse.Namespace) -> dict[str, Any]:
    preset = read_metadata(args.onnx)[0]
    tensors = list(plan_qdq(onnx.load(str(args.onnx))).tensors)
    config = {"num_images": args.n, "batch_size": args.batch}
    paths = after_module.load_images(args.images, args.n)
    before = before_module()
    runs: dict[str, list[dict[str, float]]] = {k: [] for k in ("fp32", *PATHS)}
    checks, rechecked, load = [], [], []
    for i in range(args.repeats):
        cpu0 = cpu_seconds()
        made = {}
        order = list(runs)[i % len(runs):] + list(runs)[:i % len(runs)]  # rotated each repeat
        for name in order:
            if name == "fp32":
                runs[name].append(fp32_pass(args.onnx, paths, args.batch,
                                            preset.preprocess_kwargs()))
                continue
            module, reference = PATHS[name]
            seconds, cal, c = timed_calibration(before if module is None else module, reference,
                                                args.onnx, paths, tensors, config)
            runs[name].append(seconds)
            made[name] = (cal, c)
        cpu = {k: v - cpu0[k] for k, v in cpu_seconds().items()}
        load.append({"other_processes_cpu_s": cpu["busy"] - cpu["own"],
                     "steal_s": cpu["steal"], "own_cpu_s": cpu["own"]})
        checks.append(identical(made["before"], made["after"]))
        rechecked = made["after"][1].rechecked
        ok = not checks[-1]["amax_mismatches"] and not checks[-1]["histogram_mismatches"]
        print(f"repeat {i + 1}/{args.repeats} (other processes' CPU "
              f"{load[-1]['other_processes_cpu_s']:.1f} s, steal {load[-1]['steal_s']:.1f} s): "
              f"fp32 run {runs['fp32'][-1]['run']:.2f} s; calibrate() before "
              f"{runs['before'][-1]['total']:.2f} s, after {runs['after'][-1]['total']:.2f} s; "
              f"thresholds identical: {ok}", flush=True)
    return {"tensors": len(tensors), "images": len(paths), "load": load, "checks": checks,
            "rechecked": rechecked, **{k: summary(v) for k, v in runs.items()}}


def report(args: argparse.Namespace, m: dict[str, Any]) -> dict[str, Any]:
    fp32, old, new = (m[k]["median"] for k in ("fp32", *PATHS))
    ok = all(not c["amax_mismatches"] and not c["histogram_mismatches"] for c in m["checks"])
    return {
        "tool": "tools/bench_calibration_speed.py", "machine": machine_info(cwd=ROOT),
        "onnx": str(args.onnx), "images": m["images"], "batch": args.batch,
        "tensors": m["tensors"], "repeats": args.repeats, "statistic": "median of the repeats",
        "cpu_during_each_repeat": m["load"],
        "threads": {"cpu_count": os.cpu_count(),
                    "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")},
        "before_code": f"git {BEFORE_COMMIT}:python/medtrt/precision/calibrate.py, reference kernels",
        "fp32": m["fp32"], "before": m["before"], "after": m["after"],
        "ratios": {"after_over_fp32_run": new["total"] / fp32["run"],
                   "after_over_fp32_total": new["total"] / fp32["total"],
                   "before_over_fp32_run": old["total"] / fp32["run"],
                   "before_over_after": old["total"] / new["total"],
                   "per_phase_before_over_after": {
                       p: old[p] / new[p] if new[p] > 0 else None for p in PHASES}},
        "goal": {"after_over_fp32_run_at_most": 3.0, "met": new["total"] / fp32["run"] <= 3.0},
        "thresholds_identical": ok,
        "identity_checks": m["checks"],
        "entropy_rechecked_candidates": {
            "total": sum(m["rechecked"]), "max_per_tensor": max(m["rechecked"], default=0),
            "note": "candidates the fast search evaluated again with the reference's loop"},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--onnx", type=Path,
                        help="FP32 ONNX from medtrt export (default: the demo model)")
    parser.add_argument("--images", type=Path, help="image folder (default: the demo data)")
    parser.add_argument("--n", type=int, default=512)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path,
                        default=ROOT / "benchmarks" / "results" / "bench_calibration_speed.json")
    args = parser.parse_args(argv)
    if args.onnx is None or args.images is None:
        demo = cached_demo_model(os.environ.get("MEDTRT_CACHE") or ROOT / ".cache" / "medtrt",
                                 progress=False)
        args.onnx = args.onnx or demo.onnx
        args.images = args.images or demo.data
    r = report(args, measure(args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(r, indent=1) + "\n")
    fp32 = r["fp32"]["median"]
    print(f"fp32 pass: run {fp32['run']:.2f} s ({fp32['total']:.2f} s with reading and session)")
    for name in PATHS:
        s = r[name]["median"]
        print(f"{name:6s}: {s['total']:.2f} s = "
              + ", ".join(f"{p} {s[p]:.2f}" for p in (*PHASES, "other")))
    ratios = r["ratios"]
    print(f"after / fp32 run {ratios['after_over_fp32_run']:.2f}x (goal <= 3: "
          f"{'met' if r['goal']['met'] else 'NOT met'}; / fp32 with reading and session "
          f"{ratios['after_over_fp32_total']:.2f}x), before / after "
          f"{ratios['before_over_after']:.1f}x; thresholds identical: {r['thresholds_identical']}")
    print(f"wrote {args.out}")
    return 0 if r["thresholds_identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
