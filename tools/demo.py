#!/usr/bin/env python3
"""`make demo`: medtrt end to end on built-in data (no downloads).

1. The model: generates the synthetic MedNIST-like set, trains MONAI DenseNet-121 on it for two
   epochs and exports it to ONNX (checked against PyTorch) -- or reuses the copy cached under
   .cache/medtrt for this exact code version.
2. Held-out accuracy of the PyTorch reference path and of the ONNX graph in ONNX Runtime (fed
   by medtrt's compiled pre-processing), and their agreement.
2b. `medtrt build`: FP16 and entropy-calibrated INT8 graphs (calibrated on training images only),
   and the parity table: every precision's top-1 agreement, max |dprob| and accuracy against the
   PyTorch FP32 reference, checked against medtrt.testing.PARITY, and TensorRT engines built from them when a
   TensorRT flavour is installed (built, not executed: that needs a GPU).
2c. `medtrt eval` of the INT8 graph on the held-out split (eval.json, confusion and reliability
   PNGs, summary.md), then Engine(...).infer(...) for every backend the machine can run.
3. The fused ops on a ragged batch of gray, RGB and CT-like 16-bit images, each output compared
   with medtrt.reference.preprocess (the float64 restatement of the op's contract).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

import medtrt
from medtrt._native import cuda_ready
from medtrt.ops import resize_normalize, topk
from medtrt.reference import preprocess

ROOT = Path(__file__).resolve().parents[1]


def phantom(rng: np.random.Generator, h: int, w: int, dtype: type, channels: int = 0) -> np.ndarray:
    """A disc with a ring and noise, like a head CT slice, scaled to the dtype's range."""
    yy, xx = np.mgrid[0:h, 0:w]
    r = np.hypot((yy - h / 2) / (h / 2), (xx - w / 2) / (w / 2))
    img = 0.3 * (r < 0.8) + 0.6 * ((r > 0.7) & (r < 0.8)) + 0.05 * rng.standard_normal((h, w))
    img = np.clip(img, 0, 1)
    high = 255 if dtype == np.uint8 else 4095
    out = (img * high).astype(dtype)
    return np.repeat(out[..., None], channels, axis=2) if channels else out


def model_section() -> bool:
    import json

    import onnxruntime as ort

    from medtrt.data import read_image
    from medtrt.reference import activate, predict
    from medtrt.demo import cached_demo_model
    from medtrt.train import training_split

    demo = cached_demo_model(ROOT / ".cache" / "medtrt")
    summary = json.loads(demo.metrics.read_text())
    how = "trained now" if demo.trained_now else "reused from cache"
    print(f"Model: {demo.checkpoint} ({how})")
    print(f"  data: {summary['data']['images']} synthetic 64x64 JPEGs in {demo.data}")
    for h in summary["history"]:
        print(f"  epoch {h['epoch']}: train loss {h['train_loss']:.4f}, val accuracy "
              f"{h['val_accuracy']:.4f} ({h['seconds']:.0f} s)")
    print(f"  training took {summary['seconds']:.0f} s on {summary['device']}; "
          f"ONNX: {demo.onnx}")
    split = training_split(demo.metrics)
    labels = np.asarray(split.test.labels)
    images = [read_image(p) for p in split.test.paths]

    ref = predict(demo.checkpoint, images, k=1)
    kw = {k: v for k, v in ref.preset.preprocess_kwargs().items()}
    x = resize_normalize(images, **kw)  # the compiled op, as a deployment would run it
    session = ort.InferenceSession(str(demo.onnx), providers=["CPUExecutionProvider"])
    onnx_logits = session.run(["logits"], {"image": x})[0]
    onnx_probs = activate(onnx_logits, ref.preset.activation)
    onnx_top1 = onnx_probs.argmax(axis=1)

    print(f"\nHeld-out test split: {len(labels)} images; PyTorch FP32 reference accuracy "
          f"{np.mean(ref.top1 == labels):.4f}")
    rows = [("FP32", "ONNX Runtime CPU", onnx_probs, "")]
    precisions_ok, more = build_section(demo, split, images, labels, ref)
    rows += more
    precisions_ok &= parity_table(rows, ref, labels)

    scores, indices = topk(onnx_logits[::45], 3, activation=ref.preset.activation)
    print("\nmedtrt.ops.topk on the ONNX logits of a few held-out images:")
    for row, truth in enumerate(labels[::45]):
        best = ", ".join(f"{ref.preset.labels[i]} {s:.3f}" for s, i in zip(scores[row], indices[row]))
        print(f"  truth {ref.preset.labels[truth]:10s} -> {best}")
    return precisions_ok and bool(np.mean(ref.top1 == labels) >= 0.95 and np.mean(onnx_top1 == ref.top1) >= 0.999)


def build_section(demo, split, images, labels, ref) -> bool:
    import importlib.util

    import onnxruntime as ort

    from medtrt.build import BuildOptions, build
    from medtrt.reference import activate

    calib = demo.root / "calib-train"
    if not calib.exists():  # training-split images only: the held-out split stays unseen
        tmp = demo.root / "calib-train.tmp"
        tmp.mkdir(exist_ok=True)
        for i, p in enumerate(split.train.paths):
            link = tmp / f"{i:05d}{p.suffix}"
            if not link.exists():
                link.symlink_to(p)
        tmp.rename(calib)
    have_trt = any(importlib.util.find_spec(m) for m in ("tensorrt", "tensorrt_rtx"))
    x = resize_normalize(images, **ref.preset.preprocess_kwargs())
    rows = []
    for precision in ("fp16", "int8"):
        out = demo.root / "engines"
        onnx_path = out / f"model.{precision}.onnx"
        if have_trt:
            options = BuildOptions(precision=precision, calib=str(calib) if precision == "int8" else None)
            result = build(demo.onnx, out, options)
            b = result.bundle
            engine = (f"{result.engine.name} {b.engine.bytes / 2**20:.0f} MiB "
                      f"({b.tensorrt.flavour} {b.tensorrt.version})")
        else:
            from medtrt.precision import CalibrationConfig, calibrate, insert_qdq, plan_qdq, to_fp16
            import onnx

            out.mkdir(exist_ok=True)
            if precision == "fp16":
                to_fp16(demo.onnx, onnx_path)
            else:
                model = onnx.load(str(demo.onnx))
                plan = plan_qdq(model)
                cal = calibrate(demo.onnx, calib, plan.tensors, CalibrationConfig())
                insert_qdq(model, cal.amax, plan=plan, out=onnx_path)
            engine = "not built: no TensorRT flavour installed"
        session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        probs = activate(session.run(None, {"image": x})[0], ref.preset.activation)
        rows.append((precision.upper(), "ONNX Runtime CPU", probs, engine))
    if cuda_ready()[0]:  # the torch GPU path through medtrt's CUDA pipeline
        from medtrt import Engine

        for precision in ("fp32", "fp16"):
            with Engine(demo.checkpoint, device=0, precision=precision) as e:
                rows.append((precision.upper(), "torch GPU pipeline",
                             e.infer(images, return_probs=True).probs, ""))
    return True, rows


def parity_table(rows, ref, labels) -> bool:
    """precision x agreement x max |dprob| x accuracy, checked against medtrt.testing.PARITY."""
    from medtrt.metrics import agreement
    from medtrt.testing import PARITY

    print("\nParity with the PyTorch FP32 reference (same images; thresholds from "
          "medtrt.testing.PARITY):")
    head = (f"  {'precision':9s} {'runs on':20s} {'top-1 agreement':>15s} {'max |dprob|':>11s} "
            f"{'accuracy':>8s}  {'check':5s} engine")
    print(head)
    ok = True
    for precision, where, probs, engine in rows:
        t = PARITY[precision.lower()]
        rep = agreement(probs, ref.probs, labels=ref.preset.labels)
        good = rep.top1_agreement >= t["min_top1"] and rep.max_abs_prob_diff <= t["max_prob_diff"]
        ok &= good
        acc = float(np.mean(probs.argmax(1) == labels))
        print(f"  {precision:9s} {where:20s} {rep.top1_agreement:15.4f} {rep.max_abs_prob_diff:11.2e} "
              f"{acc:8.4f}  {'ok' if good else 'FAIL':5s} {engine}")
        if not good:
            print(f"    worst sample {rep.worst_index}: {rep.worst_candidate} vs reference "
                  f"{rep.worst_reference}")
    print(f"  thresholds: FP32 >= {PARITY['fp32']['min_top1']}, <= {PARITY['fp32']['max_prob_diff']:g}; "
          f"FP16 >= {PARITY['fp16']['min_top1']}, <= {PARITY['fp16']['max_prob_diff']:g}; "
          f"INT8 >= {PARITY['int8']['min_top1']}, <= {PARITY['int8']['max_prob_diff']:g}")
    return ok


def heldout_folder(demo, split) -> Path:
    """The held-out split as class folders (links into the demo data), for `medtrt eval`."""
    root = demo.root / "heldout"
    if not root.exists():
        tmp = demo.root / "heldout.tmp"
        for p in split.test.paths:
            (tmp / p.parent.name).mkdir(parents=True, exist_ok=True)
            link = tmp / p.parent.name / p.name
            if not link.exists():
                link.symlink_to(p)
        tmp.rename(root)
    return root


def eval_section() -> bool:
    """`medtrt eval` of the INT8 graph on the held-out split, against the PyTorch reference."""
    from medtrt.evaluation import evaluate
    from medtrt.demo import cached_demo_model
    from medtrt.train import training_split

    demo = cached_demo_model(ROOT / ".cache" / "medtrt", progress=False)
    data = heldout_folder(demo, training_split(demo.metrics))
    model = demo.root / "engines" / "model.int8.onnx"
    out = demo.root / "eval-int8"
    r = evaluate(model, data, reference=demo.checkpoint, out=out, backend="onnxruntime")
    rep = r.report
    print(f"\nmedtrt eval {model.name} --data heldout --reference {demo.checkpoint.name}: accuracy "
          f"{rep['accuracy']:.4f}, ECE {rep['ece']:.4f}, agreement with PyTorch "
          f"{rep['reference']['top1_agreement']:.4f}, p50 {rep['latency_ms_per_image']['p50']:.2f} "
          f"ms/image\n  wrote {', '.join(str(f) for f in r.files.values())}")
    return rep["accuracy"] >= 0.95


def engine_section() -> bool:
    """Engine(...).infer(...) on the held-out images, for each backend this machine can run."""
    from medtrt import Engine
    from medtrt.demo import cached_demo_model
    from medtrt.train import training_split

    demo = cached_demo_model(ROOT / ".cache" / "medtrt", progress=False)
    split = training_split(demo.metrics)
    paths, labels = list(split.test.paths), np.asarray(split.test.labels)
    candidates = [(demo.checkpoint, {"device": "cpu"}), (demo.onnx, {})]
    for precision in ("fp16", "int8"):
        bundle = demo.root / "engines" / f"model.{precision}.engine"
        candidates.append((bundle if bundle.exists() else demo.root / "engines" / f"model.{precision}.onnx", {}))
    if cuda_ready()[0]:  # the CUDA pipeline with the torch stage
        candidates += [(demo.checkpoint, {"device": 0}), (demo.checkpoint, {"device": 0, "precision": "fp16"})]
    print("\nmedtrt.Engine(path).infer(paths) on the held-out files (decode included):")
    ok = True
    for path, kw in candidates:
        with Engine(path, **kw) as engine:
            engine.infer(paths[:8])  # warm-up
            t0 = time.perf_counter()
            r = engine.infer(paths)
            seconds = time.perf_counter() - t0
        acc = float(np.mean(r.top1 == labels))
        ok &= acc >= 0.95
        print(f"  {path.name:20s} backend={engine.backend:11s} precision={engine.precision:4s} "
              f"device={engine.device:6s} "
              f"accuracy {acc:.4f}  {len(paths) / seconds:7.0f} images/s")
    print("  (every backend runs through the C++ Pipeline: on the CPU with the kernels' CPU twins; "
          "TensorRT engines are built but not executed here: that needs full TensorRT and a GPU)")
    return ok


def main() -> int:
    model_ok = model_section() and eval_section() and engine_section()
    print()
    rng = np.random.default_rng(2026)
    info = medtrt.build_info()
    gpu_ok, why = cuda_ready()
    print(f"medtrt {medtrt.__version__}: CUDA kernels compiled={info['cuda_compiled']} "
          f"({info['cuda_architectures'] or 'none'}); GPU: {'yes' if gpu_ok else 'no - ' + why}")
    print("Kernels run here: CPU twins" + (" and CUDA" if gpu_ok else "") + "\n")

    images = [
        ("64x64 u8 gray", phantom(rng, 64, 64, np.uint8)),
        ("517x3 u8 gray", phantom(rng, 517, 3, np.uint8)),
        ("1023x767 u8 RGB", phantom(rng, 1023, 767, np.uint8, channels=3)),
        ("512x512 u16 CT", phantom(rng, 512, 512, np.uint16)),
    ]
    presets = [
        ("MedNIST 1x64x64", dict(out_size=(64, 64), channels=1)),
        ("CheXNet 3x224x224", dict(out_size=(224, 224), channels=3, mean=[0.485, 0.456, 0.406],
                                   std=[0.229, 0.224, 0.225])),
        ("CT window 1x64x64 f16", dict(out_size=(64, 64), channels=1, rescale=(1.0, -1024.0),
                                       window=(40.0, 400.0), dtype="float16")),
    ]
    stored_dtypes = {"CT window 1x64x64 f16": (np.uint16,)}  # HU windows apply to CT pixels only
    header = f"{'input':18s} {'preset':24s} {'out shape':>16s} {'ms':>7s} {'range':>17s} {'max |err|':>10s}"
    print(header)
    print("-" * len(header))
    worst = 0.0
    for preset_name, kw in presets:
        ref_kw = {k: v for k, v in kw.items() if k != "dtype"}
        for dtype in stored_dtypes.get(preset_name, (np.uint8, np.uint16)):  # one per batch
            group = [(name, img) for name, img in images if img.dtype == dtype]
            t0 = time.perf_counter()
            out = resize_normalize([img for _, img in group], **kw)
            ms = (time.perf_counter() - t0) * 1e3 / len(group)
            for (name, img), got in zip(group, out):
                ref = preprocess([img], **ref_kw)[0]
                err = float(np.abs(got.astype(np.float64) - ref).max())
                budget = 1e-3 if kw.get("dtype") == "float16" else 1e-5 / min(kw.get("std", [1.0]))
                worst = max(worst, err / budget)
                shape = "x".join(map(str, got.shape))
                print(f"{name:18s} {preset_name:24s} {shape:>16s} {ms:7.2f} "
                      f"[{got.min():+.3f}, {got.max():+.3f}] {err:10.2e}")

    ok = worst <= 1.0 and model_ok
    print(f"\nops: worst output at {worst:.2f}x its tolerance of the float64 reference "
          "(1e-5 float32 scaled by 1/std, 1e-3 float16)")
    print("PASS" if ok else "FAIL: accuracy < 95%, ONNX/PyTorch disagreement, or an op out of tolerance")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
