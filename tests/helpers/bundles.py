"""An engine bundle that no machine's TensorRT can run, made without TensorRT: a placeholder
engine file and the model's ONNX as its precision ONNX, listed by a valid ``NAME.engine.json``
that says it was built with full TensorRT ``0.0-not-here``. ``Bundle.read`` accepts it (sizes and
sha256 match) and ``Bundle.why_not_runnable`` refuses it on every machine, so whatever loads it
falls back to ONNX Runtime (or says why it cannot)."""

from __future__ import annotations

import shutil
from pathlib import Path

from medtrt.artifacts import (AccuracyCheck, Bundle, BuildMachine, FileRecord, InputSpec,
                              OnnxMetadata, OutputSpec, Profile, SourceOnnx, TensorRTInfo,
                              sha256_file)

NOT_HERE = "0.0-not-here"


def unrunnable_bundle(onnx: Path, folder: Path, *, stem: str = "model", precision: str = "fp16",
                      batch: tuple[int, int, int] = (2, 4, 8)) -> Bundle:
    """``folder/STEM.PRECISION.engine`` (+ ``.json`` and ``.onnx``) for the FP32 ``onnx``;
    ``precision`` fp32 or fp16 (int8 would need a calibration record)."""
    meta = OnnxMetadata.read(onnx)
    engine = folder / f"{stem}.{precision}.engine"
    engine.write_bytes(b"not a TensorRT engine")
    precision_onnx = folder / f"{stem}.{precision}.onnx"
    shutil.copyfile(onnx, precision_onnx)
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
                                     agreement=1.0, max_abs_prob_diff=0.0, top1_agreement=1.0))
    return bundle.write(engine)
