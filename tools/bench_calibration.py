#!/usr/bin/env python3
"""medtrt's entropy calibration vs ONNX Runtime's (CalibrationMethod.Entropy), same data.

Both calibrate the same activation tensors (the Q/DQ plan's) of the same FP32 ONNX on the same
pre-processed batches (prepared once, outside the timed region). Bin settings match: medtrt
keeps 2048 |x| bins with candidates from bin 128 and 128 quantized levels; ONNX Runtime's
signed histogram gets num_bins=4096 (2048 per sign) and num_quantized_bins=256 (128 per sign),
so its candidates also start 128 bins from zero. Writes JSON: wall times, their ratio,
per-tensor threshold agreement in bin widths, the step-by-step decomposition of the difference
(``tools/ortcheck.py``, ``decompose``) and, as the yardstick for "agree within a few bins",
how well medtrt agrees with itself when only the batch order (and so its histogram layout)
changes. Not a test.

    python tools/bench_calibration.py [--onnx M] [--images DIR] [--n 512] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

from bench_ops import machine  # noqa: E402
from ortcheck import decompose, onnxruntime_entropy  # noqa: E402

import onnx  # noqa: E402
from medtrt.data import read_image  # noqa: E402
from medtrt.export import read_metadata  # noqa: E402
from medtrt.ops import resize_normalize  # noqa: E402
from medtrt.precision.calibrate import (  # noqa: E402
    CalibrationConfig, collect_histograms, compute_amax, load_images)
from medtrt.precision.qdq import plan_qdq  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--onnx", type=Path, help="FP32 ONNX from medtrt export (default: demo model)")
    parser.add_argument("--images", type=Path, help="image folder (default: the demo data)")
    parser.add_argument("--n", type=int, default=512)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--tolerance-bins", type=float, default=3.0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "bench_calibration.json")
    args = parser.parse_args(argv)
    if args.onnx is None or args.images is None:
        from medtrt.demo import cached_demo_model

        demo = cached_demo_model(ROOT / ".cache" / "medtrt")
        args.onnx = args.onnx or demo.onnx
        args.images = args.images or demo.data

    preset = read_metadata(args.onnx)[0]
    tensors = list(plan_qdq(onnx.load(str(args.onnx))).tensors)
    paths = load_images(args.images, args.n)
    kw = preset.preprocess_kwargs()
    batches = [resize_normalize([read_image(p) for p in paths[i:i + args.batch]], **kw)
               for i in range(0, len(paths), args.batch)]

    t0 = time.perf_counter()
    hists = collect_histograms(args.onnx, tensors, lambda: iter(batches))
    ours = compute_amax(hists, CalibrationConfig(method="entropy"))
    ours_s = time.perf_counter() - t0
    ort = onnxruntime_entropy(args.onnx, tensors, batches)
    theirs, their_width, theirs_s = ort.amax, ort.bin_width, ort.seconds

    rows = []
    for t in tensors:
        if t not in theirs:
            continue
        width = max(hists[t].bin_width, their_width.get(t, 0.0))
        diff_bins = abs(ours[t] - theirs[t]) / width if width > 0 else 0.0
        rows.append({"tensor": t, "medtrt_amax": ours[t], "ort_amax": theirs[t],
                     "max_abs": float(hists[t].max_abs), "bin_width": width,
                     "diff_bins": diff_bins, "relu_like": bool(hists[t].counts[0] > 0.3 * hists[t].total)})
    agree = [r["diff_bins"] <= args.tolerance_bins for r in rows]
    relu = {r["tensor"]: r["relu_like"] for r in rows}
    steps = decompose(ort, ours, {t: h.bin_width for t, h in hists.items()}, relu_like=relu,
                      tolerance_bins=args.tolerance_bins)

    # The yardstick: medtrt against itself, same images, batches in reverse order. The histogram
    # range is set by the first batch and doubles as larger values arrive, so the bin layout
    # (and the grid of candidate thresholds) changes while the data does not.
    rev_hists = collect_histograms(args.onnx, tensors, lambda: iter(batches[::-1]))
    rev = compute_amax(rev_hists, CalibrationConfig(method="entropy"))
    self_bins = [abs(ours[t] - rev[t]) / max(hists[t].bin_width, rev_hists[t].bin_width, 1e-30)
                 for t in tensors]
    self_rel = [abs(ours[t] - rev[t]) / max(ours[t], 1e-12) for t in tensors]
    report = {
        "tool": "tools/bench_calibration.py", "machine": machine(), "onnx": str(args.onnx),
        "images": len(paths), "batch": args.batch, "tensors": len(tensors), "compared": len(rows),
        "medtrt_seconds": ours_s, "ort_seconds": theirs_s, "time_ratio": ours_s / theirs_s,
        "agreement_tolerance_bins": args.tolerance_bins,
        "fraction_agreeing": float(np.mean(agree)) if rows else 0.0,
        "median_abs_rel_diff": statistics.median(abs(r["medtrt_amax"] - r["ort_amax"]) /
                                                 max(r["ort_amax"], 1e-12) for r in rows),
        "median_signed_rel_diff": statistics.median((r["medtrt_amax"] - r["ort_amax"]) /
                                                    max(r["ort_amax"], 1e-12) for r in rows),
        "decomposition": {k: v for k, v in steps.items() if k != "per_tensor"},
        "self_agreement_reversed_batches": {
            "fraction_within_tolerance_bins": float(np.mean([d <= args.tolerance_bins for d in self_bins])),
            "median_abs_rel_diff": statistics.median(self_rel),
            "max_abs_rel_diff": max(self_rel),
        },
        "rows": [{**r, "steps": steps["per_tensor"].get(r["tensor"], {}), "medtrt_reversed_amax": rev[r["tensor"]]}
                 for r in rows],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"medtrt {ours_s:.1f} s vs ONNX Runtime {theirs_s:.1f} s (ratio {ours_s / theirs_s:.3f}); "
          f"{100 * report['fraction_agreeing']:.1f}% of {len(rows)} tensors within "
          f"{args.tolerance_bins:g} bins; median signed rel. diff "
          f"{100 * report['median_signed_rel_diff']:+.1f}%")
    for name, st in report["decomposition"]["steps"].items():
        print(f"  step {name:10s}: {100 * st['fraction_within_tolerance']:5.1f}% within "
              f"{args.tolerance_bins:g} bins of medtrt")
    sa = report["self_agreement_reversed_batches"]
    print(f"  medtrt vs itself, batches reversed: {100 * sa['fraction_within_tolerance_bins']:.1f}% within "
          f"{args.tolerance_bins:g} bins (median |rel. diff| {100 * sa['median_abs_rel_diff']:.2f}%)")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
