#!/usr/bin/env python3
"""Accuracy of INT8 Q/DQ graphs built from medtrt's thresholds vs from ONNX Runtime's.

Reads the per-tensor thresholds recorded by tools/bench_calibration.py (same FP32 ONNX, same 512
calibration images), builds one Q/DQ graph from each set with the same plan, and runs both in
ONNX Runtime on the held-out split against the PyTorch FP32 reference: top-1 agreement,
accuracy, max and mean |Δprob|, and the logit error relative to the FP32 logits' spread. This is
the accuracy-based comparison the calibration note in README refers to. Not a test.

    python tools/calibration_accuracy.py [--bench FILE] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

from bench_ops import machine  # noqa: E402

import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
from medtrt.data import read_image  # noqa: E402
from medtrt.export import read_metadata, sha256_file  # noqa: E402
from medtrt.ops import resize_normalize  # noqa: E402
from medtrt.precision.qdq import insert_qdq, plan_qdq  # noqa: E402
from medtrt.reference import activate, predict  # noqa: E402
from medtrt.train import training_split  # noqa: E402


def logits_of(path: Path, x: np.ndarray) -> np.ndarray:
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.concatenate([s.run(None, {s.get_inputs()[0].name: x[i:i + 64]})[0]
                           for i in range(0, len(x), 64)]).astype(np.float32)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench", type=Path, default=ROOT / "benchmarks" / "results" / "bench_calibration.json")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "calibration_accuracy.json")
    args = parser.parse_args(argv)

    bench = json.loads(args.bench.read_text())
    onnx_path = Path(bench["onnx"])
    # The model the thresholds were measured on (its folder holds the checkpoint and the
    # training record that names the held-out split).
    root = onnx_path.parent
    if not onnx_path.exists() or sha256_file(onnx_path) != bench.get("onnx_sha256", sha256_file(onnx_path)):
        raise SystemExit(f"{onnx_path} (measured by {args.bench}) is missing or changed; re-run "
                         "tools/bench_calibration.py first")
    preset, _ = read_metadata(onnx_path)
    split = training_split(root / "model.train.json")
    images = [read_image(p) for p in split.test.paths]
    labels = np.asarray(split.test.labels)
    reference = predict(root / "model.pt", images).probs
    x = resize_normalize(images, **preset.preprocess_kwargs())
    fp32_logits = logits_of(onnx_path, x)

    model = onnx.load(str(onnx_path))
    plan = plan_qdq(model)
    sets = {"medtrt": {r["tensor"]: r["medtrt_amax"] for r in bench["rows"]},
            "onnxruntime": {r["tensor"]: r["ort_amax"] for r in bench["rows"]}}
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, amax in sets.items():
            path = Path(tmp) / f"{name}.int8.onnx"
            insert_qdq(model, amax, plan=plan, out=path)
            logits = logits_of(path, x)
            probs = activate(logits, preset.activation)
            rows[name] = {
                "top1_agreement_vs_pytorch_fp32": float(np.mean(probs.argmax(1) == reference.argmax(1))),
                "accuracy": float(np.mean(probs.argmax(1) == labels)),
                "max_abs_dprob": float(np.abs(probs - reference).max()),
                "mean_abs_dprob": float(np.abs(probs - reference).mean()),
                "logit_rmse_over_fp32_logit_std": float(np.sqrt(np.mean((logits - fp32_logits) ** 2))
                                                       / fp32_logits.std()),
            }
    report = {"tool": "calibration_accuracy", "machine": machine(), "onnx": str(onnx_path),
              "thresholds_from": str(args.bench.relative_to(ROOT)), "held_out_images": len(images),
              "fp32_accuracy": float(np.mean(reference.argmax(1) == labels)), "results": rows}
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for name, r in rows.items():
        print(f"{name:12s} " + "  ".join(f"{k}={v:.4g}" for k, v in r.items()))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
