#!/usr/bin/env python3
"""An INT8 bundle on this CPU: each graph it could run, in each CPU runtime, speed and accuracy.

Graphs: the FP32 source ONNX; the bundle's FP32 twin (FP32 compute, INT8-rounded weights) and
CPU INT8 graph (``medtrt.precision.cpu_int8``); the bundle's precision ONNX as TensorRT takes it
(TensorRT Q/DQ layout); and, as reference points only, ONNX Runtime's own ``quantize_static``
(QDQ format, its own MinMax calibration on 64 training images): its defaults (int8 activations,
per-tensor weights) and uint8 activations with per-channel weights. Runtimes: ONNX Runtime
(CPUExecutionProvider, its default threads and spinning) and, where installed,
OpenVINO on the CPU with ``INFERENCE_PRECISION_HINT`` f32 and with its default (bf16 on a CPU
with AMX). Each graph is first opened in OpenVINO in a child process, so one that crashes it is
recorded, not fatal.

Speed: images/s at each batch (default 32, 8, 1), every (graph, runtime) timed in the same
rounds (a random order each round; each runner an untimed run, then two timed) after a
warm-up: the median and the 25th and 75th percentiles, and the speedup over the FP32 source in
the same runtime as the median of the per-round ratios; with the machine's load average (other
processes share a small machine).
Accuracy: the held-out split of the demo set against PyTorch FP32 (top-1 agreement, max
|dprob|, within ``medtrt.testing.PARITY["int8"]``, and the RMS logit error). Also: the ops
ONNX Runtime runs for each graph, and what ``medtrt.runtime.int8_cpu`` picks here. Writes JSON
and a PNG. Not a test.

    python tools/bench_cpu_int8.py [--bundle NAME.engine] [--batches 32,8,1] [--rounds 15]
                                   [--demo-cache DIR]

The demo model is read from --demo-cache (default $MEDTRT_CACHE or ./.cache/medtrt); the CPU
graphs are derived into the medtrt cache as the product does ($MEDTRT_CACHE).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
REPS = 2  # timed runs per runner and round, after one untimed

import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,  # noqa: E402
                                      quantize_static)
from medtrt.artifacts import Bundle  # noqa: E402
from medtrt.bench.telemetry import machine_info  # noqa: E402
from medtrt.build import BuildOptions, build  # noqa: E402
from medtrt.cpu import cpu_info  # noqa: E402
from medtrt.data import read_image  # noqa: E402
from medtrt.demo import cached_demo_model  # noqa: E402
from medtrt.ops import resize_normalize  # noqa: E402
from medtrt.precision import CalibrationConfig  # noqa: E402
from medtrt.precision.cpu_int8 import cpu_graph_path  # noqa: E402
from medtrt.reference import activate, predict  # noqa: E402
from medtrt.runtime.loader import load_stage  # noqa: E402
from medtrt.testing import PARITY  # noqa: E402
from medtrt.train import training_split  # noqa: E402

OV_PROBE = """
import sys, numpy as np, openvino as ov
core = ov.Core(); m = core.read_model(sys.argv[1])
m.reshape({m.inputs[0].get_any_name(): [1, *map(int, sys.argv[2:])]})
r = core.compile_model(m, "CPU").create_infer_request()
r.infer({0: np.zeros((1, *map(int, sys.argv[2:])), np.float32)})
"""


def spread(items: list[Any], n: int) -> list[Any]:
    return [items[i] for i in np.linspace(0, len(items) - 1, n).astype(int)]


def demo_bundle(demo: Any, split: Any, work: Path, images: int) -> Bundle:
    """The demo model's INT8 bundle as `medtrt build --int8` makes it (entropy calibration on
    ``images`` training images)."""
    calib = work / "calib"
    calib.mkdir(parents=True, exist_ok=True)
    for i, p in enumerate(split.train.paths):
        link = calib / f"{i:04d}{p.suffix}"
        if not link.exists():
            link.symlink_to(p)
    result = build(demo.onnx, work / "bundle", BuildOptions(
        precision="int8", calib=str(calib), calibration=CalibrationConfig(num_images=images)))
    return result.bundle


def ort_quantized(fp32: Path, x: np.ndarray, out: Path, **kwargs: Any) -> Path:
    """ONNX Runtime's quantize_static graph (QDQ), calibrated on ``x``; it works on a copy of
    ``fp32`` (it writes an inferred model beside its input)."""
    source = out.with_name(f"{out.stem}.source.onnx")
    shutil.copyfile(fp32, source)
    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([x[i:i + 16] for i in range(0, len(x), 16)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {"image": batch}

    quantize_static(str(source), str(out), Reader(), quant_format=QuantFormat.QDQ, **kwargs)
    return out


def ort_runner(path: Path, batch: int) -> Callable[[np.ndarray], np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


def ov_runner(path: Path, batch: int, hint: str | None) -> Callable[[np.ndarray], np.ndarray]:
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(path))
    shape = list(model.inputs[0].get_partial_shape().get_min_shape())
    model.reshape({model.inputs[0].get_any_name(): [batch, *shape[1:]]})
    config = {"INFERENCE_PRECISION_HINT": hint} if hint else {}
    request = core.compile_model(model, "CPU", config).create_infer_request()
    return lambda x: request.infer({0: x})[0].copy()


def runtimes(graphs: dict[str, Path], chw: tuple[int, ...]) -> tuple[dict[str, Any], dict]:
    """Runner factories per runtime, and which (graph, runtime) cannot run (why)."""
    out: dict[str, Any] = {"onnxruntime": ort_runner}
    broken: dict[str, str] = {}
    try:
        import openvino  # noqa: F401
    except ImportError:
        return out, {"openvino": "not installed"}
    out["openvino-f32"] = lambda p, b: ov_runner(p, b, "f32")
    out["openvino"] = lambda p, b: ov_runner(p, b, None)
    for name, path in graphs.items():
        rc = subprocess.run([sys.executable, "-c", OV_PROBE, str(path), *map(str, chw)],
                            capture_output=True, text=True).returncode
        if rc:
            broken[name] = f"OpenVINO crashed opening it (exit status {rc})"
    return out, broken


def time_all(runners: dict[tuple[str, str], Callable], x: np.ndarray,
             rounds: int) -> dict[tuple[str, str], list[float]]:
    """Seconds per run of each runner in each of ``rounds`` rounds (after one warm-up round).
    A round runs every runner in a fresh random order (in a fixed order the first measured
    slower), each as an untimed run and then ``REPS`` timed ones: the untimed run absorbs what
    the previous runner left behind (ONNX Runtime's threads spin on after a run and slowed the
    next runner by 20-35% when single runs were interleaved)."""
    keys = list(runners)
    order = np.random.default_rng(1)
    times: dict[tuple[str, str], list[float]] = {k: [] for k in keys}
    for step in range(rounds + 1):
        for i in order.permutation(len(keys)):
            runners[keys[i]](x)
            start = time.perf_counter()
            for _ in range(REPS):
                runners[keys[i]](x)
            if step:
                times[keys[i]].append((time.perf_counter() - start) / REPS)
    return times


def summarize(times: dict[tuple[str, str], list[float]], batch: int,
              reference: str) -> dict[str, dict[str, Any]]:
    """Per "graph / runtime": images/s (median, 25th, 75th percentile of the rounds) and the
    speedup over ``reference`` in the same runtime: the median of the per-round ratios (paired:
    a load spike slows both of a round)."""
    out = {}
    for (g, rt), t in times.items():
        ref = np.asarray(times[(reference, rt)])
        out[f"{g} / {rt}"] = {
            "images_per_s": [round(batch / float(np.percentile(t, q)), 1) for q in (50, 75, 25)],
            "speedup": round(float(np.median(ref / np.asarray(t))), 2)}
    return out


def accuracy(run: Callable, x: np.ndarray, batch: int, reference: Any,
             labels: np.ndarray, activation: str) -> dict[str, Any]:
    """Against PyTorch FP32 (``reference``: a ``medtrt.reference`` Prediction): top-1
    agreement and max |dprob| (the parity metrics), and the RMS logit error (steadier than a
    maximum over 180 images when two graphs are compared)."""
    chunks = []
    for i in range(0, len(x), batch):
        part = x[i:i + batch]
        padded = np.concatenate([part, np.repeat(part[-1:], batch - len(part), 0)])
        chunks.append(run(padded)[:len(part)])
    logits = np.concatenate(chunks)
    probs = activate(logits, activation)
    top1 = float(np.mean(probs.argmax(1) == reference.probs.argmax(1)))
    diff = float(np.abs(probs - reference.probs).max())
    bound = PARITY["int8"]
    return {"top1_agreement": top1, "max_abs_prob_diff": diff,
            "rms_logit_error": float(np.sqrt(np.mean((logits - reference.logits) ** 2))),
            "accuracy": float(np.mean(probs.argmax(1) == labels)),
            "within_int8_parity": top1 >= bound["min_top1"] and diff <= bound["max_prob_diff"]}


def ort_ops(path: Path, work: Path) -> dict[str, int]:
    """The op types of the graph ONNX Runtime runs (its optimized graph on this CPU)."""
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(work / f"{path.stem}.optimized.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    counts = Counter(n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node)
    return dict(counts.most_common())


def plot(record: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batch = max(record["speed"], key=int)
    speed = {k: v["images_per_s"][0] for k, v in record["speed"][batch].items()}
    graphs = list(record["graphs"])
    names = sorted({k.split(" / ")[1] for k in speed})
    fig, ax = plt.subplots(figsize=(10, 4.5))
    width = 0.8 / len(names)
    for i, rt in enumerate(names):
        ys = [speed.get(f"{g} / {rt}", 0.0) for g in graphs]
        ax.bar(np.arange(len(graphs)) + i * width, ys, width, label=rt)
    ax.set_xticks(np.arange(len(graphs)) + width * (len(names) - 1) / 2, graphs, rotation=15)
    ax.set_ylabel(f"images/s, batch {batch}")
    ax.set_title(f"DenseNet-121 64x64, {record['machine']['cpu']} ({record['machine']['cores']} "
                 "cores)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, help="an INT8 bundle of the demo model "
                        "(default: build one with entropy calibration)")
    parser.add_argument("--calib-images", type=int, default=512)
    parser.add_argument("--batches", default="32,8,1")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--demo-cache", type=Path,
                        default=os.environ.get("MEDTRT_CACHE") or ROOT / ".cache" / "medtrt")
    parser.add_argument("--out", type=Path,
                        default=ROOT / "benchmarks" / "results" / "bench_cpu_int8.json")
    args = parser.parse_args(argv)
    demo = cached_demo_model(args.demo_cache, progress=False)
    split = training_split(demo.metrics)
    work = Path(tempfile.mkdtemp(prefix="bench_cpu_int8-"))
    bundle = Bundle.read(args.bundle) if args.bundle else demo_bundle(demo, split, work,
                                                                       args.calib_images)
    record = run(args, demo, split, bundle, work)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    plot(record, args.out.with_suffix(".png"))
    print(json.dumps({"speed": record["speed"], "choice": record["choice"]}, indent=2))
    return 0


def graphs_of(bundle: Bundle, demo: Any, split: Any, preset: Any, work: Path) -> dict[str, Path]:
    source = bundle.precision_onnx_path
    sha = bundle.precision_onnx.sha256
    calib = resize_normalize([read_image(p) for p in spread(split.train.paths, 64)],
                             **preset.preprocess_kwargs())
    return {
        "fp32 source": Path(demo.onnx),
        "fp32 (int8-rounded weights)": cpu_graph_path(source, "fp32", sha256=sha),
        "TensorRT Q/DQ (precision ONNX)": source,
        "CPU INT8 (medtrt)": cpu_graph_path(source, "cpu-int8", sha256=sha),
        "ORT quantize_static (defaults)": ort_quantized(demo.onnx, calib, work / "ortq.onnx"),
        "ORT quantize_static (u8 act, per-channel)": ort_quantized(
            demo.onnx, calib, work / "ortq_u8_pc.onnx", activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8, per_channel=True),
    }


def run(args: argparse.Namespace, demo: Any, split: Any, bundle: Bundle,
        work: Path) -> dict[str, Any]:
    preset = bundle.preset
    chw = (preset.in_channels, *preset.image_size)
    graphs = graphs_of(bundle, demo, split, preset, work)
    makers, broken = runtimes(graphs, chw)
    images = [read_image(p) for p in split.test.paths]
    x = resize_normalize(images, **preset.preprocess_kwargs())
    reference = predict(demo.checkpoint, images)
    labels = np.asarray(split.test.labels)
    rng = np.random.default_rng(0)
    speed: dict[str, dict[str, Any]] = {}
    acc: dict[str, Any] = {}
    load = [os.getloadavg()[0]]
    for batch in map(int, args.batches.split(",")):
        runners = {(g, rt): make(path, batch) for g, path in graphs.items()
                   for rt, make in makers.items()
                   if not (rt.startswith("openvino") and g in broken)}
        timed = time_all(runners, rng.random((batch, *chw), dtype=np.float32), args.rounds)
        speed[str(batch)] = summarize(timed, batch, "fp32 source")
        load.append(os.getloadavg()[0])
        if batch == 32 or not acc:
            acc = {f"{g} / {rt}": accuracy(r, x, batch, reference, labels, preset.activation)
                   for (g, rt), r in runners.items()}
        del runners
    loaded = load_stage(bundle.path, "auto", "cpu")  # the probe, as an Engine would run it
    loaded.stage.close()
    return {
        "machine": machine_info(ROOT) | {"openvino": _version("openvino")},
        "cpu_int8_dot": cpu_info().int8_dot, "bundle": str(bundle.path),
        "calibration": bundle.calibration.to_dict(),
        "graphs": {k: str(v) for k, v in graphs.items()},
        "openvino_cannot_run": broken, "rounds": args.rounds,
        "load_average_1min": [round(v, 2) for v in load],  # before, and after each batch size
        "speed": speed,  # images/s [median, p25, p75]; speedup over FP32 source, same runtime
        "accuracy": {"images": len(images), "reference": "PyTorch FP32 (medtrt.reference)",
                     "bound": PARITY["int8"], "by_graph": acc},
        "onnxruntime_ops": {g: ort_ops(p, work) for g, p in graphs.items()},
        "choice": {**loaded.backend_choice.to_json(), "fallback": loaded.fallback},
    }


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except ImportError:
        return None


if __name__ == "__main__":
    sys.exit(main())
