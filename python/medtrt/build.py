"""`medtrt build`: exported ONNX -> precision graph -> TensorRT engine bundle.

    FP32:  the exported graph as it is.
    FP16:  medtrt.precision.to_fp16 (FP32 I/O, sensitive ops in FP32).
    INT8:  calibration of the FP32 graph (entropy by default) or a calibration cache, then
           explicit Q/DQ (medtrt.precision.qdq).

The precision graph is checked on the CPU in ONNX Runtime against the FP32 graph (top-1
agreement, max |dprob|) before the engine is built. The bundle is ``NAME.engine`` plus
``NAME.engine.json`` (what the engine expects and produces, how it was built and checked) and
the precision ONNX it was built from, ``NAME.onnx``.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from medtrt._lazy import require
from medtrt.metrics import agreement, require_finite
from medtrt.ops import resize_normalize
from medtrt.precision.gate import NON_FINITE_FIX, ort_logits
from medtrt.reference import activate

__all__ = ["BuildOptions", "BuildResult", "build", "BUNDLE_FORMAT"]

log = logging.getLogger(__name__)

BUNDLE_FORMAT = "medtrt-engine-bundle/1"
PRECISIONS = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class BuildOptions:
    precision: str = "fp32"
    calib: str | None = None  # folder of calibration images (INT8)
    calib_cache: str | None = None  # JSON cache from an earlier calibration (INT8)
    calibration: Any = None  # medtrt.precision.CalibrationConfig; default: entropy, 512 images
    recipe: Any = None  # medtrt.precision.QdqRecipe; default: shared Concat scales, no FP16 layers
    batch: tuple[int, int, int] = (1, 32, 256)
    flavour: str = "auto"
    workspace_mib: int = 2048
    optimization_level: int = 3
    compute_capabilities: tuple[str, ...] = ()
    check_images: int = 64
    name: str | None = None  # bundle name; default "<onnx stem>.<precision>"
    val: str | None = None  # validation images for the INT8 accuracy gate
    gate: Any = None  # medtrt.precision.GateConfig; default: min agreement 0.99, 8 FP16 layers

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}; got {self.precision!r}")
        if self.precision == "int8" and not (self.calib or self.calib_cache):
            raise ValueError("--int8 needs calibration data: pass --calib DIR (images) or "
                             "--calib-cache FILE (from an earlier build)")
        if self.precision != "int8" and (self.calib or self.calib_cache):
            raise ValueError("--calib/--calib-cache only apply to --int8")
        if self.recipe is not None and self.precision != "int8":
            raise ValueError("--concat/--keep-fp16 shape the INT8 graph: they apply to --int8 builds")
        if self.val and self.precision != "int8":
            raise ValueError("--val (the accuracy gate) applies to --int8 builds")


@dataclass
class BuildResult:
    engine: Path
    bundle_json: Path
    precision_onnx: Path
    bundle: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)


def _check_accuracy(fp32: Path, candidate: Path, preset: Any, images: list[np.ndarray], *,
                    precision: str) -> dict[str, Any]:
    """Agreement of the ``precision`` graph with the FP32 graph, both run in ONNX Runtime on the
    CPU (see ``_accuracy_report``)."""
    x = resize_normalize(images, **preset.preprocess_kwargs())
    return _accuracy_report(ort_logits(candidate, x, len(x)), ort_logits(fp32, x, len(x)), preset,
                            precision=precision, graph=candidate, fp32=fp32)


def _accuracy_report(logits: np.ndarray, fp32_logits: np.ndarray, preset: Any, *,
                     precision: str, graph: Path, fp32: Path) -> dict[str, Any]:
    """Top-1 agreement for softmax presets, per-label decisions at the preset's threshold for
    sigmoid ones, and max |dprob|, of the ``precision`` graph's logits against the FP32
    graph's. NaN or infinite logits raise NonFiniteError naming the graph and what to try."""
    n = len(logits)
    ref = require_finite(fp32_logits, f"the logits of the FP32 graph {fp32} on the {n} "
                         "accuracy-check images", fix="no engine was built; check the exported "
                         "model (re-export it: `medtrt export` verifies it against PyTorch)")
    fix = NON_FINITE_FIX.get(precision, "check the exported model").format(fp32=fp32, graph=graph)
    cand = require_finite(logits, f"the logits of the {precision.upper()} graph {graph} on the "
                          f"{n} accuracy-check images", fix=f"no engine was built; {fix}")
    act = preset.activation
    rep = agreement(activate(cand, act), activate(ref, act), activation=act,
                    threshold=preset.threshold)
    out = {"images": n, "reference": "FP32 ONNX in ONNX Runtime (CPU)", "metric": rep.metric,
           "agreement": rep.agreement, "max_abs_prob_diff": rep.max_abs_prob_diff}
    if rep.metric == "top1":
        out["top1_agreement"] = rep.top1_agreement
    else:
        out["decision_agreement"] = rep.decision_agreement
        out["images_with_all_decisions_equal"] = rep.top1_agreement
    return out


def build(onnx_path: str | os.PathLike[str], out_dir: str | os.PathLike[str] | None = None,
          options: BuildOptions | None = None, *,
          on_phase: Callable[[str], None] | None = None) -> BuildResult:
    """Build an engine bundle from a medtrt-exported FP32 ONNX (see module docstring)."""
    from medtrt.export import read_metadata, sha256_file, verification_images
    from medtrt.precision import (CalibrationConfig, QdqRecipe, calibrate, read_cache, to_fp16,
                                  write_trt_cache)
    from medtrt.trt import build_engine, import_trt

    opts = options or BuildOptions()
    phase = on_phase or (lambda _s: None)
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise FileNotFoundError(f"ONNX file {onnx_path} does not exist")
    import_trt(opts.flavour)  # fail before any work when no TensorRT flavour is installed
    onnx = require("onnx")
    try:
        model = onnx.load(str(onnx_path))
    except Exception as exc:
        raise ValueError(f"{onnx_path} is not an ONNX file: {exc}") from exc
    preset, props = read_metadata(onnx_path)
    source_sha = sha256_file(onnx_path)
    out = Path(out_dir) if out_dir else onnx_path.parent
    out.mkdir(parents=True, exist_ok=True)
    name = opts.name or f"{onnx_path.stem}.{opts.precision}"
    precision_onnx = out / f"{name}.onnx"
    timings: dict[str, float] = {}
    calibration_info: dict[str, Any] | None = None
    quantization: dict[str, Any] | None = None
    gate_info: dict[str, Any] | None = None

    t0 = time.perf_counter()
    if opts.precision == "fp32":
        if precision_onnx.resolve() != onnx_path.resolve():
            shutil.copyfile(onnx_path, precision_onnx)
    elif opts.precision == "fp16":
        phase("converting to FP16")
        to_fp16(model, precision_onnx)
    else:
        recipe = opts.recipe or QdqRecipe()
        plan = recipe.plan(model)
        if opts.calib_cache:
            phase("reading calibration cache")
            cal = read_cache(opts.calib_cache, expect_sha256=source_sha)
            missing = [t for t in plan.tensors if t not in cal.amax]
            if missing:
                raise ValueError(f"calibration cache {opts.calib_cache} lacks {len(missing)} "
                                 f"tensors of this graph (e.g. {missing[0]!r}); recalibrate")
        else:
            phase("calibrating")
            config = opts.calibration or CalibrationConfig()
            cal = calibrate(onnx_path, opts.calib, plan.tensors, config, preset=preset)
            timings["calibration_s"] = cal.seconds
        cache_json = cal.write(out / f"{name}.calib.json")
        trt_mod, flavour = import_trt(opts.flavour)
        # The text cache is for TensorRT 10 users; stamp it with TensorRT's version when that is
        # the flavour here (TensorRT-RTX numbers its releases differently).
        trt_cache = write_trt_cache(cal, out / f"{name}.calib.cache",
                                    trt_version=str(trt_mod.__version__) if flavour == "tensorrt" else None)
        phase("inserting Q/DQ")
        qdq_model, final_plan = recipe.apply(model, cal.amax)
        fp16_layers: list[str] = []
        if opts.val:
            from medtrt.errors import GateError
            from medtrt.precision import GateConfig, accuracy_gate

            t_gate = time.perf_counter()
            qdq_model, gate = accuracy_gate(onnx_path, cal.amax, opts.val, preset=preset,
                                            config=opts.gate or GateConfig(),
                                            recipe=recipe, on_phase=phase)
            timings["gate_s"] = time.perf_counter() - t_gate
            gate_info = gate.to_json()
            fp16_layers = gate.fp16_layers
            if fp16_layers:  # the plan the gated graph was made with, for the bundle's counts
                final_plan = recipe.plan(model, fp16_layers)
            if not gate.passed:
                path = out / f"{name}.gate.json"
                path.write_text(json.dumps(gate_info, indent=2, default=float) + "\n")
                raise GateError(
                    f"{gate.summary()}; no engine built. The most sensitive layers are listed "
                    f"in {path}; compare layer outputs with `medtrt debug-layers` to see where "
                    "the INT8 error grows, then try --concat float, --keep-fp16 stem, "
                    "--calib-method max, more calibration images, or a larger "
                    "--max-fp16-layers", gate_info, path)
        onnx.save(qdq_model, str(precision_onnx))
        calibration_info = {"method": cal.config.method, "images": cal.images,
                            "bins": cal.config.bins, "start_bin": cal.config.start_bin,
                            "quantized_bins": cal.config.quantized_bins,
                            "percentile": cal.config.percentile if cal.config.method == "percentile" else None,
                            "seed": cal.config.seed, "reused_cache": bool(opts.calib_cache),
                            "cache_json": cache_json.name, "trt_cache": trt_cache.name,
                            "seconds": cal.seconds}
        quantization = {"activation_tensors": len(final_plan.tensors),
                        "scale_groups": len(final_plan.groups),
                        **recipe.to_json(model),
                        "share_concat_scales": recipe.concat == "shared",
                        "kept_in_float": final_plan.skipped,
                        "fp16_layers": recipe.layers(model, fp16_layers),
                        "gate_fp16_layers": fp16_layers}
    timings["precision_s"] = time.perf_counter() - t0

    phase("checking accuracy on the CPU")
    if opts.calib and opts.precision == "int8":
        from medtrt.data import read_image
        from medtrt.precision.calibrate import load_images

        paths = load_images(opts.calib, min(opts.check_images, cal.images), seed=1)
        check_images = [read_image(p) for p in paths]
    else:
        check_images = verification_images(preset, opts.check_images)
    accuracy = _check_accuracy(onnx_path, precision_onnx, preset, check_images,
                               precision=opts.precision)

    engine_path = out / f"{name}.engine"
    built = build_engine(precision_onnx, engine_path, batch=opts.batch, flavour=opts.flavour,
                         workspace_mib=opts.workspace_mib,
                         optimization_level=opts.optimization_level,
                         timing_cache_dir=Path(os.environ.get("MEDTRT_CACHE", Path.home() / ".cache" / "medtrt")) / "timing",
                         compute_capabilities=list(opts.compute_capabilities) or None,
                         on_phase=phase)
    timings["engine_build_s"] = built.seconds
    gpu = _build_gpu()
    bundle = {
        "format": BUNDLE_FORMAT,
        "engine": engine_path.name,
        "engine_bytes": built.engine_bytes,
        "precision": opts.precision,
        "precision_onnx": precision_onnx.name,
        "input": {"name": built.input_name, "dtype": built.input_dtype, "layout": "NCHW",
                  "channels": preset.in_channels, "size": list(preset.image_size),
                  "profile": built.profile},
        "output": {"name": built.output_name, "dtype": built.output_dtype,
                   "activation": preset.activation, "labels": list(preset.labels),
                   "threshold": preset.threshold if preset.activation == "sigmoid" else None},
        "preprocess": {k: (list(v) if isinstance(v, tuple) else v)
                       for k, v in preset.preprocess_kwargs().items()},
        "preset": preset.to_dict(),
        "calibration": calibration_info,
        "quantization": quantization,
        "source_onnx": {"name": onnx_path.name, "sha256": source_sha,
                        "export": json.loads(props.get("medtrt.export", "{}"))},
        "tensorrt": {"flavour": built.flavour, "version": built.version,
                     "targets": built.targets, "optimization_level": built.optimization_level,
                     "workspace_bytes": built.workspace_bytes, "timing_cache": built.timing_cache,
                     "layers": built.layers, "warnings": built.warnings[-20:]},
        "build_machine": {"host": platform.node(), **gpu},
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "timings": timings,
        "accuracy_check": accuracy,
        "accuracy_gate": gate_info,
        "executed": False,  # built here; running engines is the runtime's job (issue #5)
    }
    bundle_json = out / f"{name}.engine.json"
    bundle_json.write_text(json.dumps(bundle, indent=2) + "\n")
    return BuildResult(engine_path, bundle_json, precision_onnx, bundle, timings)


def _build_gpu() -> dict[str, Any]:
    """The GPU of the build machine, if any (TensorRT-RTX builds ahead of time without one)."""
    from medtrt._native import native

    c = native()
    if c.cuda_device_count() == 0:
        return {"gpu": None, "compute_capability": None, "gpu_status": c.cuda_device_status()}
    try:
        import torch

        props = torch.cuda.get_device_properties(0)
        return {"gpu": props.name, "compute_capability": f"{props.major}.{props.minor}"}
    except Exception as exc:  # torch is optional here
        return {"gpu": "unknown", "compute_capability": None, "gpu_status": str(exc)}
