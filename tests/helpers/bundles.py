"""An engine bundle that no machine's TensorRT can run, made without TensorRT: a placeholder
engine file and the model's ONNX as its precision ONNX, listed by a valid ``NAME.engine.json``
that says it was built with full TensorRT ``0.0-not-here``. ``Bundle.read`` accepts it (sizes and
sha256 match) and ``Bundle.why_not_runnable`` refuses it on every machine, so whatever loads it
falls back to ONNX Runtime (or says why it cannot). ``int8_bundle``: the same with an INT8 Q/DQ
precision ONNX (medtrt's TensorRT layout, calibrated here) and its calibration record."""

from __future__ import annotations

import shutil
from pathlib import Path

import onnx

from medtrt.artifacts import (AccuracyCheck, Bundle, BuildMachine, Calibration, FileRecord,
                              InputSpec, OnnxMetadata, OutputSpec, Profile, SourceOnnx,
                              TensorRTInfo, sha256_file)
from medtrt.precision import CalibrationConfig, calibrate, insert_qdq, plan_qdq

NOT_HERE = "0.0-not-here"


def unrunnable_bundle(onnx: Path, folder: Path, *, stem: str = "model", precision: str = "fp16",
                      batch: tuple[int, int, int] = (2, 4, 8), graph: Path | None = None,
                      calibration: Calibration | None = None) -> Bundle:
    """``folder/STEM.PRECISION.engine`` (+ ``.json`` and ``.onnx``) for the FP32 ``onnx``;
    ``precision`` fp32 or fp16 (the precision ONNX: a copy of ``onnx``), or int8 with its
    precision ONNX ``graph`` and ``calibration`` record (``int8_bundle``)."""
    meta = OnnxMetadata.read(onnx)
    engine = folder / f"{stem}.{precision}.engine"
    engine.write_bytes(b"not a TensorRT engine")
    precision_onnx = folder / f"{stem}.{precision}.onnx"
    shutil.copyfile(graph or onnx, precision_onnx)
    chw = (meta.preset.in_channels, *meta.preset.image_size)
    profile = Profile(*((b, *chw) for b in batch))
    bundle = Bundle(
        precision=precision, engine=FileRecord.of(engine),
        precision_onnx=FileRecord.of(precision_onnx),
        input=InputSpec(name="image", dtype="float32", layout="NCHW", profile=profile),
        output=OutputSpec(name="logits", dtype="float32", classes=meta.preset.num_classes),
        preset=meta.preset,
        source_onnx=SourceOnnx(name=onnx.name, sha256=sha256_file(onnx), export=meta.export),
        tensorrt=TensorRTInfo(flavour="tensorrt", version=NOT_HERE, targets=(),
                              optimization_level=3, workspace_bytes=0, timing_cache=None,
                              layers=0, warnings=()),
        build_machine=BuildMachine(host="nowhere", gpu=None, compute_capability=None),
        built_at="2000-01-01T00:00:00Z",
        accuracy_check=AccuracyCheck(images=0, reference="fp32 ONNX", metric="top1",
                                     agreement=1.0, max_abs_prob_diff=0.0, top1_agreement=1.0),
        calibration=calibration)
    return bundle.write(engine)


def int8_bundle(fp32: Path, folder: Path, calib_paths: list[Path], *,
                batch: tuple[int, int, int] = (1, 8, 32)) -> Bundle:
    """An unrunnable INT8 bundle of the FP32 ``fp32``: its precision ONNX is medtrt's TensorRT
    Q/DQ layout (default recipe) with "max" calibration on ``calib_paths`` (about a second
    for 64 images, where entropy takes ten; what the tests prove does not depend on how amax
    was found)."""
    model = onnx.load(str(fp32))
    plan = plan_qdq(model)
    config = CalibrationConfig(method="max", num_images=len(calib_paths))
    cal = calibrate(fp32, calib_paths, plan.tensors, config)
    graph = folder / "qdq.onnx"
    insert_qdq(model, cal.amax, plan=plan, out=graph)
    record = Calibration(method="max", images=cal.images, bins=config.bins,
                         start_bin=config.start_bin, quantized_bins=config.quantized_bins,
                         percentile=None, seed=config.seed, reused_cache=False,
                         cache_json="none.calib.json", trt_cache="none.calib.cache",
                         seconds=cal.seconds)
    bundle = unrunnable_bundle(fp32, folder, precision="int8", batch=batch, graph=graph,
                               calibration=record)
    graph.unlink()
    return bundle
