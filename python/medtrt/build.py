"""`medtrt build`: exported ONNX -> precision graph -> TensorRT engine bundle.

    FP32:  the exported graph as it is.
    FP16:  medtrt.precision.to_fp16 (FP32 I/O, sensitive ops in FP32).
    INT8:  calibration of the FP32 graph (entropy by default) or a calibration cache, then
           explicit Q/DQ (medtrt.precision.qdq).

An ONNX that medtrt did not export is built with a preset (``BuildOptions.preset``, ``medtrt
build any.onnx --preset FILE|NAME``): ``medtrt.foreign`` checks it, removes a final
Softmax/Sigmoid, and writes ``STEM.medtrt.onnx`` (the graph with medtrt's metadata) into the
output folder; the build then starts from that file, and the bundle records the original file
and its sha256 (``source_onnx.foreign``). A graph with a fixed batch gets a profile fixed to it.

The precision graph is checked on the CPU in ONNX Runtime against the FP32 graph (top-1
agreement, max |dprob|) before the engine is built. The bundle is ``NAME.engine`` plus
``NAME.engine.json`` (what the engine expects and produces, how it was built and checked) and
the precision ONNX it was built from, ``NAME.onnx``; the JSON is a ``medtrt.artifacts.Bundle``.
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

from medtrt._cache import cache_dir
from medtrt._native import native
from medtrt.artifacts import (PRECISIONS, AccuracyCheck, BuildMachine, Bundle, Calibration,
                              FileRecord, InputSpec, OnnxMetadata, OutputSpec, Profile,
                              Quantization, SourceOnnx, TensorRTInfo, sha256_file)
from medtrt.data import read_image
from medtrt.errors import GateError
from medtrt.export import verification_images
from medtrt.foreign import read_onnx, write_adopted
from medtrt.metrics import agreement, require_finite
from medtrt.onnxio import save_onnx
from medtrt.ops import resize_normalize
from medtrt.precision import (CalibrationConfig, GateConfig, QdqRecipe, accuracy_gate, calibrate,
                              read_cache, to_fp16, write_trt_cache)
from medtrt.precision.calibrate import load_images
from medtrt.precision.gate import NON_FINITE_FIX, ort_logits
from medtrt.reference import activate
from medtrt.trt import EngineBuild, build_engine, import_trt

__all__ = ["BuildOptions", "BuildResult", "build", "BUNDLE_FORMAT", "DEFAULT_BATCH"]

log = logging.getLogger(__name__)

BUNDLE_FORMAT = Bundle.FORMAT
DEFAULT_BATCH = (1, 32, 256)


@dataclass(frozen=True)
class BuildOptions:
    precision: str = "fp32"
    calib: str | None = None  # folder of calibration images (INT8)
    calib_cache: str | None = None  # JSON cache from an earlier calibration (INT8)
    calibration: Any = None  # medtrt.precision.CalibrationConfig; default: entropy, 512 images
    recipe: Any = None  # medtrt.precision.QdqRecipe; default: shared Concat scales, no FP16 layers
    batch: tuple[int, int, int] | None = None  # profile min,opt,max; default DEFAULT_BATCH,
    # or the graph's fixed batch
    preset: Any = None  # a Preset, preset file or built-in name: for an ONNX medtrt did not export
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
    bundle: Bundle
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
    """Build an engine bundle from an FP32 ONNX: exported by medtrt, or any graph with
    ``options.preset`` (see module docstring)."""
    opts = options or BuildOptions()
    phase = on_phase or (lambda _s: None)
    out = Path(out_dir) if out_dir else Path(onnx_path).parent
    src = _read_source(Path(onnx_path), opts, out)
    out.mkdir(parents=True, exist_ok=True)
    stem = src.path.name.removesuffix(".onnx").removesuffix(".medtrt")
    name = opts.name or f"{stem}.{opts.precision}"
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    graph = _precision_graph(src, out, name, opts, phase, timings)
    timings["precision_s"] = time.perf_counter() - t0

    phase("checking accuracy on the CPU")
    images = _check_images(src, graph, opts)
    accuracy = _check_accuracy(src.path, graph.path, src.meta.preset, images,
                               precision=opts.precision)
    built = build_engine(graph.path, out / f"{name}.engine", batch=src.batch, flavour=opts.flavour,
                         input_shape=(src.meta.preset.in_channels, *src.meta.preset.image_size),
                         workspace_mib=opts.workspace_mib,
                         optimization_level=opts.optimization_level,
                         timing_cache_dir=cache_dir() / "timing",
                         compute_capabilities=list(opts.compute_capabilities) or None,
                         on_phase=phase)
    timings["engine_build_s"] = built.seconds
    bundle = _bundle(src, graph, built, opts, accuracy, timings).write(out / f"{name}.engine.json")
    return BuildResult(built.path, bundle.json_path(built.path), graph.path, bundle, timings)


@dataclass(frozen=True)
class _Source:
    """The FP32 ONNX a build starts from (for a foreign graph: the adopted STEM.medtrt.onnx)."""

    path: Path
    model: Any  # onnx.ModelProto, weights loaded
    meta: OnnxMetadata
    sha256: str
    classes: int  # the graph's output width
    batch: tuple[int, int, int]  # the engine's profile
    external: tuple[str, ...] = ()  # files its weights are stored in


@dataclass(frozen=True)
class _Graph:
    """The precision graph (NAME.onnx) and how it was made."""

    path: Path
    calibration: Calibration | None = None
    quantization: Quantization | None = None
    gate: dict[str, Any] | None = None


def _read_source(onnx_path: Path, opts: BuildOptions, out: Path) -> _Source:
    """The graph a build starts from: ``onnx_path`` checked against its preset, or, when the
    graph or its preset change (a foreign graph), adopted into ``out`` first."""
    if not onnx_path.is_file():
        raise FileNotFoundError(f"ONNX file {onnx_path} does not exist")
    import_trt(opts.flavour)  # fail before any work when no TensorRT flavour is installed
    source = read_onnx(onnx_path, opts.preset)  # one line for whatever does not fit
    batch = _profile_batch(source.io.batch, opts.batch, onnx_path)
    if source.changed:
        out.mkdir(parents=True, exist_ok=True)
        source = write_adopted(source, out)
        log.info("%s: building from %s (%s)", onnx_path, source.path, "final "
                 f"{source.meta.foreign.removed_activation} removed" if source.meta.foreign and
                 source.meta.foreign.removed_activation else "medtrt metadata added")
    assert source.io.classes is not None  # read_onnx checked it against the labels
    return _Source(source.path, source.model, source.meta, sha256_file(source.path),
                   source.io.classes, batch, source.external)


def _profile_batch(fixed: int | None, asked: tuple[int, int, int] | None,
                   path: Path) -> tuple[int, int, int]:
    """The profile's min,opt,max batch: what was asked (default DEFAULT_BATCH), or the graph's
    fixed batch, which another --batch cannot change."""
    if fixed is None:
        return asked or DEFAULT_BATCH
    if asked is not None and asked != (fixed,) * 3:
        raise ValueError(f"{path} has a fixed batch of {fixed}, so the engine's profile is "
                         f"{fixed},{fixed},{fixed}: drop --batch (or pass --batch "
                         f"{fixed},{fixed},{fixed}), or export the model with a dynamic batch "
                         "axis for other batch sizes")
    return (fixed,) * 3


def _precision_graph(src: _Source, out: Path, name: str, opts: BuildOptions,
                     phase: Callable[[str], None], timings: dict[str, float]) -> _Graph:
    path = out / f"{name}.onnx"
    if opts.precision == "fp32":
        if src.external:  # the copy holds the weights (one file unless they are too big)
            save_onnx(src.model, path)
        elif path.resolve() != src.path.resolve():
            shutil.copyfile(src.path, path)
        return _Graph(path)
    if opts.precision == "fp16":
        phase("converting to FP16")
        to_fp16(src.model, path)
        return _Graph(path)
    return _int8_graph(src, path, opts, phase, timings)


def _int8_graph(src: _Source, path: Path, opts: BuildOptions, phase: Callable[[str], None],
                timings: dict[str, float]) -> _Graph:
    """Calibration (or its cache), explicit Q/DQ and, with --val, the accuracy gate."""
    recipe = opts.recipe or QdqRecipe()
    cal = _calibrate(src, recipe.plan(src.model), opts, phase, timings)
    stem = path.name[: -len(".onnx")]
    cache_json = cal.write(path.with_name(f"{stem}.calib.json"))
    trt_mod, flavour = import_trt(opts.flavour)
    # The text cache is for TensorRT 10 users; stamp it with TensorRT's version when that is
    # the flavour here (TensorRT-RTX numbers its releases differently).
    trt_cache = write_trt_cache(cal, path.with_name(f"{stem}.calib.cache"),
                                trt_version=str(trt_mod.__version__) if flavour == "tensorrt"
                                else None)
    phase("inserting Q/DQ")
    qdq_model, final_plan = recipe.apply(src.model, cal.amax)
    gate_info: dict[str, Any] | None = None
    fp16_layers: list[str] = []
    if opts.val:
        qdq_model, gate = _gate(src, cal, recipe, path.with_name(f"{stem}.gate.json"), opts,
                                phase, timings)
        gate_info, fp16_layers = gate.to_json(), gate.fp16_layers
        if fp16_layers:  # the plan the gated graph was made with, for the bundle's counts
            final_plan = recipe.plan(src.model, fp16_layers)
    save_onnx(qdq_model, path)
    calibration = Calibration.from_dict({
        "method": cal.config.method, "images": cal.images, "bins": cal.config.bins,
        "start_bin": cal.config.start_bin, "quantized_bins": cal.config.quantized_bins,
        "percentile": cal.config.percentile if cal.config.method == "percentile" else None,
        "seed": cal.config.seed, "reused_cache": bool(opts.calib_cache),
        "cache_json": cache_json.name, "trt_cache": trt_cache.name, "seconds": cal.seconds})
    quantization = Quantization.from_dict({
        "activation_tensors": len(final_plan.tensors), "scale_groups": len(final_plan.groups),
        **recipe.to_json(src.model), "share_concat_scales": recipe.concat == "shared",
        "kept_in_float": final_plan.skipped,
        "fp16_layers": recipe.layers(src.model, fp16_layers), "gate_fp16_layers": fp16_layers})
    return _Graph(path, calibration, quantization, gate_info)


def _calibrate(src: _Source, plan: Any, opts: BuildOptions, phase: Callable[[str], None],
               timings: dict[str, float]) -> Any:
    """The calibration (medtrt.precision.Calibration) from --calib-cache or --calib."""
    if opts.calib_cache:
        phase("reading calibration cache")
        cal = read_cache(opts.calib_cache, expect_sha256=src.sha256)
        missing = [t for t in plan.tensors if t not in cal.amax]
        if missing:
            raise ValueError(f"calibration cache {opts.calib_cache} lacks {len(missing)} "
                             f"tensors of this graph (e.g. {missing[0]!r}); recalibrate")
        return cal
    phase("calibrating")
    config = opts.calibration or CalibrationConfig()
    cal = calibrate(src.path, opts.calib, plan.tensors, config, preset=src.meta.preset)
    timings["calibration_s"] = cal.seconds
    return cal


def _gate(src: _Source, cal: Any, recipe: Any, report: Path, opts: BuildOptions,
          phase: Callable[[str], None], timings: dict[str, float]) -> tuple[Any, Any]:
    """(gated Q/DQ model, GateResult); GateError, with the report written, when it fails."""
    t_gate = time.perf_counter()
    qdq_model, gate = accuracy_gate(src.path, cal.amax, opts.val, preset=src.meta.preset,
                                    config=opts.gate or GateConfig(),
                                    recipe=recipe, on_phase=phase)
    timings["gate_s"] = time.perf_counter() - t_gate
    if not gate.passed:
        gate_info = gate.to_json()
        report.write_text(json.dumps(gate_info, indent=2, default=float) + "\n")
        raise GateError(
            f"{gate.summary()}; no engine built. The most sensitive layers are listed "
            f"in {report}; compare layer outputs with `medtrt debug-layers` to see where "
            "the INT8 error grows, then try --concat float, --keep-fp16 stem, "
            "--calib-method max, more calibration images, or a larger "
            "--max-fp16-layers", gate_info, report)
    return qdq_model, gate


def _check_images(src: _Source, graph: _Graph, opts: BuildOptions) -> list[np.ndarray]:
    """Images for the accuracy check: calibration images for INT8 from --calib, else the
    synthetic verification set."""
    if opts.calib and graph.calibration is not None:
        paths = load_images(opts.calib, min(opts.check_images, graph.calibration.images), seed=1)
        return [read_image(p) for p in paths]
    return verification_images(src.meta.preset, opts.check_images)


def _bundle(src: _Source, graph: _Graph, built: EngineBuild, opts: BuildOptions,
            accuracy: dict[str, Any], timings: dict[str, float]) -> Bundle:
    """The bundle record of this build (written as NAME.engine.json)."""
    return Bundle(
        precision=opts.precision,
        engine=FileRecord.of(built.path),
        precision_onnx=FileRecord.of(graph.path),
        input=InputSpec(name=built.input_name, dtype=built.input_dtype, layout="NCHW",
                        profile=Profile.from_dict(built.profile)),
        output=OutputSpec(name=built.output_name, dtype=built.output_dtype, classes=src.classes),
        preset=src.meta.preset,
        source_onnx=SourceOnnx(name=src.path.name, sha256=src.sha256, export=src.meta.export,
                               foreign=src.meta.foreign),
        tensorrt=TensorRTInfo(flavour=built.flavour, version=built.version,
                              targets=tuple(built.targets),
                              optimization_level=built.optimization_level,
                              workspace_bytes=built.workspace_bytes,
                              timing_cache=built.timing_cache, layers=built.layers,
                              warnings=tuple(built.warnings[-20:])),
        build_machine=BuildMachine(host=platform.node(), **_build_gpu()),
        built_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        accuracy_check=AccuracyCheck.from_dict(accuracy),
        calibration=graph.calibration,
        quantization=graph.quantization,
        accuracy_gate=graph.gate,
        timings=dict(timings),
    )


def _build_gpu() -> dict[str, Any]:
    """The GPU of the build machine, if any (TensorRT-RTX builds ahead of time without one)."""
    c = native()
    if c.cuda_device_count() == 0:
        return {"gpu": None, "compute_capability": None, "gpu_status": c.cuda_device_status()}
    try:
        import torch

        props = torch.cuda.get_device_properties(0)
        return {"gpu": props.name, "compute_capability": f"{props.major}.{props.minor}"}
    except Exception as exc:  # torch is optional here
        return {"gpu": "unknown", "compute_capability": None, "gpu_status": str(exc)}
