#!/usr/bin/env python3
"""INT8 Q/DQ recipes on the CheXNet-shaped parity model: per-label AUROC change and decision
agreement against the PyTorch FP32 reference, on the parity suite's 256 test images and on 256
fresh images the suite never sees (so a recipe is not picked on the images that test it).

Every recipe uses the same thresholds (entropy, the parity suite's 128 calibration images; the
recipes' tensors are subsets of the default plan's, and thresholds are per tensor). Not a test:
tests/parity/test_parity_chexnet.py checks the default and the recommended recipe.

    python tools/int8_recipes.py [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT / "tests"))

from bench_ops import machine  # noqa: E402

import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
from helpers.chexnet import _images_and_labels, chexnet_parity  # noqa: E402
from helpers.lowp import torch_logits  # noqa: E402
from medtrt.data import read_image  # noqa: E402
from medtrt.metrics import agreement, auroc  # noqa: E402
from medtrt.models import load  # noqa: E402
from medtrt.ops import resize_normalize  # noqa: E402
from medtrt.precision import CalibrationConfig, QdqRecipe, plan_qdq  # noqa: E402
from medtrt.precision.calibrate import collect_histograms, compute_amax  # noqa: E402
from medtrt.reference import activate  # noqa: E402
from medtrt.demo import cached_demo_model  # noqa: E402

RECIPES = {
    "default (Concat shared, all INT8)": QdqRecipe(),
    "Concat shared, FP16 stem+head": QdqRecipe(keep_fp16=("stem", "head")),
    "Concat float": QdqRecipe(concat="float"),
    "Concat float, FP16 head": QdqRecipe(concat="float", keep_fp16=("head",)),
    "Concat float, FP16 stem": QdqRecipe(concat="float", keep_fp16=("stem",)),
    "Concat float, FP16 stem+head": QdqRecipe(concat="float", keep_fp16=("stem", "head")),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path,
                        default=ROOT / "benchmarks" / "results" / "int8_recipes_chexnet.json")
    parser.add_argument("--fresh-seed", type=int, default=99)
    args = parser.parse_args(argv)

    case = chexnet_parity(cached_demo_model(ROOT / ".cache" / "medtrt", progress=False))
    model_t, preset = load(case.checkpoint)
    kw = preset.preprocess_kwargs()
    fresh_images, fresh_labels = _images_and_labels(256, seed=args.fresh_seed)
    sets = {"parity test images": (case.test_images, case.test_labels),
            f"fresh images (seed {args.fresh_seed})": (fresh_images, fresh_labels)}
    data = {}
    for name, (images, labels) in sets.items():
        x = resize_normalize(images, **kw)
        ref = torch_logits(model_t, x)
        data[name] = (x, labels, ref, activate(ref, "sigmoid"))

    fp32 = onnx.load(str(case.onnx))
    plan = plan_qdq(fp32)
    calib = [read_image(p) for p in case.calib_paths]
    hists = collect_histograms(case.onnx, plan.tensors, lambda: (
        resize_normalize(calib[i:i + 16], **kw) for i in range(0, len(calib), 16)))
    amax = compute_amax(hists, CalibrationConfig())

    rows = []
    for name, recipe in RECIPES.items():
        qdq, used = recipe.apply(fp32, amax)
        session = ort.InferenceSession(qdq.SerializeToString(), providers=["CPUExecutionProvider"])
        row = {"recipe": name, **recipe.to_json(fp32), "activation_tensors": len(used.tensors),
               "sets": {}}
        for set_name, (x, labels, ref, ref_p) in data.items():
            logits = np.concatenate([session.run(None, {session.get_inputs()[0].name: x[i:i + 32]})[0]
                                     for i in range(0, len(x), 32)])
            probs = activate(logits, "sigmoid")
            change = np.abs(auroc(labels, probs) - auroc(labels, ref_p))
            rep = agreement(probs, ref_p, activation="sigmoid", threshold=preset.threshold,
                            labels=preset.labels)
            row["sets"][set_name] = {
                "max_auroc_change": float(np.nanmax(change)),
                "mean_auroc_change": float(np.nanmean(change)),
                "decision_agreement": float(rep.decision_agreement),
                "logit_rmse_over_fp32_logit_std": float(np.sqrt(np.mean((logits - ref) ** 2)) / ref.std()),
            }
        rows.append(row)
        print(name, json.dumps(row["sets"]), flush=True)
    report = {"tool": "int8_recipes", "machine": machine(), "model": "tests/helpers/chexnet.py",
              "calibration": {"method": "entropy", "images": len(calib)},
              "targets": {"max_auroc_change": 0.005, "decision_agreement": 0.99}, "results": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
