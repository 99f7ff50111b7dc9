"""`medtrt build`: build a TensorRT engine bundle (FP32, FP16 or INT8) from an exported ONNX, or
from any ONNX classifier with a preset (--preset FILE|NAME or the preset flags)."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.table import Table

from medtrt.artifacts import Quantization
from medtrt.build import BuildOptions, BuildResult, build
from medtrt.cli._common import add_preset_arguments, positive_int, preset_for
from medtrt.precision import CalibrationConfig, GateConfig, QdqRecipe

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    b = subparsers.add_parser("build", help="build a TensorRT engine bundle (FP32, FP16 or INT8) "
                                            "from an exported ONNX")
    b.add_argument("onnx", type=Path, help="FP32 ONNX from `medtrt export`, or any ONNX "
                                            "classifier with --preset")
    prec = b.add_mutually_exclusive_group()
    prec.add_argument("--fp16", action="store_true", help="FP16 graph (FP32 I/O and reductions)")
    prec.add_argument("--int8", action="store_true",
                      help="INT8 Q/DQ graph (needs --calib or --calib-cache)")
    calib = b.add_mutually_exclusive_group()
    calib.add_argument("--calib", type=Path, help="calibration image folder")
    calib.add_argument("--calib-cache", type=Path, help="JSON calibration cache to reuse")
    b.add_argument("--calib-method", choices=("entropy", "max", "percentile"), default="entropy")
    b.add_argument("--calib-images", type=int, default=512, help="images used to calibrate (512)")
    b.add_argument("--concat", choices=("shared", "separate", "float"), default="shared",
                   help="INT8 Concat inputs: one shared scale per Concat (default; TensorRT "
                        "concatenates in INT8), a scale per input, or left in floating point "
                        "(more accurate for DenseNet: one quantization per value, not two)")
    b.add_argument("--keep-fp16", metavar="LAYERS",
                   help="comma-separated layers kept in FP16 from the start: 'stem' (first "
                        "weighted layer), 'head' (last), or node names")
    b.add_argument("--val", type=Path, help="validation image folder: gate the INT8 graph on its "
                                            "agreement with FP32 before building")
    b.add_argument("--min-agreement", type=float, default=0.99,
                   help="accuracy gate: minimum top-1 (or label-decision) agreement (0.99)")
    b.add_argument("--max-fp16-layers", type=int, default=8,
                   help="accuracy gate: most sensitive layers that may be kept in FP16 (8)")
    b.add_argument("--val-images", type=int, default=256,
                   help="accuracy gate: validation images used (256)")
    b.add_argument("--batch", help="optimization profile min,opt,max (default 1,32,256; a graph "
                                   "with a fixed batch N: N,N,N)")
    b.add_argument("--out", type=Path, help="output folder (default: next to the ONNX)")
    b.add_argument("--trt", choices=("auto", "tensorrt", "tensorrt_rtx"), default="auto",
                   help="TensorRT flavour (auto: tensorrt, else tensorrt_rtx)")
    b.add_argument("--opt-level", type=int, default=3, help="builder optimization level 0-5")
    b.add_argument("--workspace-mib", type=int, default=2048)
    b.add_argument("--target", action="append", help="TensorRT-RTX compute capability target "
                                                     "(e.g. SM86); repeatable")
    add_preset_arguments(b)
    b.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    precision = "fp16" if args.fp16 else "int8" if args.int8 else "fp32"
    options = _options(args, precision)
    console = Console(stderr=True)
    with console.status("starting", spinner="dots") as status:
        result = build(args.onnx, args.out, options,
                       on_phase=lambda p: status.update(f"{p} ({args.onnx.name}, {precision})"))
    Console().print(_summary(result, args.onnx.name, precision))
    print(f"wrote {result.engine}, {result.bundle_json.name}, {result.precision_onnx.name}")
    why = result.bundle.why_not_runnable(0)  # what this machine can do now, not a bundle fact
    print("TensorRT can run it here (GPU 0)" if why is None else
          f"TensorRT cannot run it on this machine: {why}")
    return 0


def _options(args: argparse.Namespace, precision: str) -> BuildOptions:
    """The BuildOptions the flags ask for; ValueError for a malformed --batch."""
    batch = None
    if args.batch is not None:
        batch = tuple(positive_int(b, "--batch") for b in args.batch.split(","))
        if len(batch) != 3:
            raise ValueError(f"--batch must be min,opt,max (e.g. 1,32,256); got {args.batch!r}")
    return BuildOptions(precision=precision, calib=args.calib, calib_cache=args.calib_cache,
                        calibration=CalibrationConfig(method=args.calib_method,
                                                      num_images=args.calib_images),
                        batch=batch, flavour=args.trt,  # type: ignore[arg-type]
                        preset=preset_for(args.onnx, args),
                        recipe=_recipe(args),
                        optimization_level=args.opt_level, workspace_mib=args.workspace_mib,
                        compute_capabilities=tuple(args.target or ()),
                        val=str(args.val) if args.val else None,
                        gate=GateConfig(min_agreement=args.min_agreement,
                                        max_fp16_layers=args.max_fp16_layers,
                                        images=args.val_images))


def _recipe(args: argparse.Namespace) -> QdqRecipe | None:
    """The QdqRecipe the flags ask for; None when they are left at their defaults."""
    keep = tuple(n.strip() for n in (args.keep_fp16 or "").split(",") if n.strip())
    if args.concat == "shared" and not keep:
        return None
    return QdqRecipe(concat=args.concat, keep_fp16=keep)


def _summary(result: BuildResult, name: str, precision: str) -> Table:
    """The bundle's key facts as a two-column table."""
    b = result.bundle
    acc, cal, trt, profile = b.accuracy_check, b.calibration, b.tensorrt, b.input.profile
    table = Table(title=f"medtrt build: {name}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    rows = [
        ("precision", precision.upper()),
        ("engine", f"{b.engine.file} ({b.engine.bytes / 2**20:.1f} MiB)"),
        ("engine build", f"{b.timings['engine_build_s']:.1f} s"),
        ("calibration", "-" if not cal else "reused cache" if cal.reused_cache else
         f"{cal.method}, {cal.images} images, {cal.seconds:.1f} s"),
        ("vs FP32 (CPU, ORT)", f"{acc.metric} agreement {acc.agreement:.4f}, max |dprob| "
                               f"{acc.max_abs_prob_diff:.2e} on {acc.images} images"),
        ("quantization", _quant_row(b.quantization)),
        ("accuracy gate", _gate_row(b.accuracy_gate)),
        ("TensorRT", f"{trt.flavour} {trt.version}, targets "
                     f"{', '.join(trt.targets) or 'build GPU'}"),
        ("profile", f"{profile.min[0]} / {profile.opt[0]} / {profile.max[0]}"),
    ]
    for field, value in rows:
        table.add_row(field, value)
    return table


def _quant_row(q: Quantization | None) -> str:
    if q is None:
        return "-"
    kept = q.fp16_layers
    return (f"{q.activation_tensors} activation tensors in INT8, Concat {q.concat}"
            f"; FP16 layers: {', '.join(kept) if kept else 'none'}")


def _gate_row(gate: dict | None) -> str:
    if not gate:
        return "- (pass --val DIR to gate INT8 on agreement with FP32)"
    layers = gate["fp16_layers"]
    kept = f"; FP16 layers: {', '.join(layers)}" if layers else "; no FP16 fallback needed"
    return (f"{'passed' if gate['passed'] else 'FAILED'}: {gate['metric']} agreement "
            f"{gate['agreement']:.4f} >= {gate['min_agreement']} on {gate['images']} images "
            f"(INT8 alone {gate['agreement_before']:.4f}){kept}")
