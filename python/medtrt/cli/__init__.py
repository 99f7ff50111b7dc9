"""The `medtrt` command line. Argument parsing lives here; the work lives in the library.

Bad arguments and user errors print one line, ``medtrt: error: ...``, and exit non-zero.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _info(args: argparse.Namespace) -> int:
    import platform

    import medtrt

    info = {"medtrt": medtrt.__version__, "python": platform.python_version()}
    info.update(medtrt.build_info())
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for key, value in info.items():
            print(f"{key:22s} {value}")
    return 0


def _synth(args: argparse.Namespace) -> int:
    from rich.progress import Progress

    from medtrt.data import synthesize

    with Progress(transient=True, disable=args.quiet) as progress:
        task = progress.add_task("generating", total=None)
        result = synthesize(args.out, per_class=args.per_class, seed=args.seed,
                            progress=lambda done, total: progress.update(task, completed=done,
                                                                         total=total))
    total = sum(result.counts.values())
    print(f"wrote {total} images ({args.per_class} per class, seed {args.seed}) to {result.root}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from medtrt.train import TrainConfig, train

    config = TrainConfig(preset=args.preset, epochs=args.epochs, batch_size=args.batch_size,
                         lr=args.lr, seed=args.seed, device=args.device,
                         augment=not args.no_augment)
    result = train(args.data, args.out, config, progress=not args.quiet)
    for h in result.history:
        print(f"epoch {h['epoch']}: train loss {h['train_loss']:.4f}  val loss "
              f"{h['val_loss']:.4f}  val accuracy {h['val_accuracy']:.4f}  ({h['seconds']:.0f} s)")
    print(f"held-out test accuracy {result.test_accuracy:.4f}; {result.seconds:.0f} s")
    if result.skipped_files:
        print(f"skipped {len(result.skipped_files)} unreadable files (listed in {result.metrics})")
    print(f"wrote {result.checkpoint} and {result.metrics}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from medtrt.export import export_onnx

    batch: str | int = args.batch if args.batch == "dynamic" else _positive_int(args.batch, "--batch")
    result = export_onnx(args.checkpoint, args.output, opset=args.opset, batch=batch,
                         data=args.data)
    for c in result.checks:
        print(f"ONNX Runtime vs PyTorch, batch {c['batch']:3d}: max |dlogit| "
              f"{c['max_abs_logit_error']:.2e} (max |logit| {c['max_abs_logit']:.2f})")
    print(f"wrote {result.path} (preset {result.preset.name}, opset {result.opset}, "
          f"batch {result.batch})")
    return 0


def _build(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from medtrt.build import BuildOptions, build

    precision = "fp16" if args.fp16 else "int8" if args.int8 else "fp32"
    batch = tuple(_positive_int(b, "--batch") for b in args.batch.split(","))
    if len(batch) != 3:
        raise ValueError(f"--batch must be min,opt,max (e.g. 1,32,256); got {args.batch!r}")
    from medtrt.precision import CalibrationConfig, GateConfig

    options = BuildOptions(precision=precision, calib=args.calib, calib_cache=args.calib_cache,
                           calibration=CalibrationConfig(method=args.calib_method,
                                                         num_images=args.calib_images),
                           batch=batch, flavour=args.trt,  # type: ignore[arg-type]
                           recipe=_recipe(args),
                           optimization_level=args.opt_level, workspace_mib=args.workspace_mib,
                           compute_capabilities=tuple(args.target or ()),
                           val=str(args.val) if args.val else None,
                           gate=GateConfig(min_agreement=args.min_agreement,
                                           max_fp16_layers=args.max_fp16_layers,
                                           images=args.val_images))
    console = Console(stderr=True)
    with console.status("starting", spinner="dots") as status:
        result = build(args.onnx, args.out, options,
                       on_phase=lambda p: status.update(f"{p} ({args.onnx.name}, {precision})"))
    b = result.bundle
    acc = b["accuracy_check"]
    cal = b["calibration"]
    table = Table(title=f"medtrt build: {args.onnx.name}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    rows = [
        ("precision", precision.upper()),
        ("engine", f"{b['engine']} ({b['engine_bytes'] / 2**20:.1f} MiB)"),
        ("engine build", f"{b['timings']['engine_build_s']:.1f} s"),
        ("calibration", "-" if not cal else "reused cache" if cal["reused_cache"] else
         f"{cal['method']}, {cal['images']} images, {cal['seconds']:.1f} s"),
        ("vs FP32 (CPU, ORT)", f"{acc['metric']} agreement {acc['agreement']:.4f}, max |dprob| "
                               f"{acc['max_abs_prob_diff']:.2e} on {acc['images']} images"),
        ("quantization", _quant_row(b.get("quantization"))),
        ("accuracy gate", _gate_row(b.get("accuracy_gate"))),
        ("TensorRT", f"{b['tensorrt']['flavour']} {b['tensorrt']['version']}, targets "
                     f"{', '.join(b['tensorrt']['targets']) or 'build GPU'}"),
        ("profile", " / ".join(str(b["input"]["profile"][k][0]) for k in ("min", "opt", "max"))),
    ]
    for field, value in rows:
        table.add_row(field, value)
    Console().print(table)
    print(f"wrote {result.engine}, {result.bundle_json.name}, {result.precision_onnx.name} "
          f"(built, not executed: running engines needs a GPU)")
    return 0


def _print_wide(table: Any) -> None:
    """Print a rich table; when stdout is not a terminal (a log, a pipe) use 160 columns
    rather than rich's 80, so long layer/backend names are not cut."""
    from rich.console import Console

    console = Console()
    (console if console.is_terminal else Console(width=160)).print(table)


def _debug_layers(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from medtrt.precision.debug import compare_layers

    console = Console(stderr=True)
    with console.status(f"running both graphs on {args.images} image(s) with Polygraphy"):
        report = compare_layers(args.reference, args.candidate, args.data, num_images=args.images,
                                atol=args.atol, rtol=args.rtol)
    table = Table(title=f"where the error grows: {args.candidate.name} vs {args.reference.name} "
                        f"({report.images} images, {len(report.layers)} shared tensors)")
    for col in ("layer", "op", "tensor", "rel. error", "growth", "cosine", "polygraphy"):
        table.add_column(col, justify="right" if col in ("rel. error", "growth", "cosine") else "left")
    for d in report.worst(args.top):
        table.add_row(d.producer, d.op, d.tensor, f"{d.rel_error:.4f}", f"{d.growth:+.4f}",
                      f"{d.cosine:.5f}", "pass" if d.passed else "FAIL")
    _print_wide(table)
    first = report.first_failing()
    print(f"output relative error {report.output_rel_error:.4f}; first layer over atol={args.atol} "
          f"rtol={args.rtol}: {first.producer + ' (' + first.tensor + ')' if first else 'none'}")
    if args.out:
        print(f"wrote {report.write(args.out)}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from rich.progress import Progress
    from rich.table import Table

    from medtrt.bench import BenchConfig, run_bench

    cfg = BenchConfig(mode=args.mode,
                      batches=tuple(_positive_int(b, "--batch") for b in args.batch.split(",")),
                      backends=tuple(args.backends.split(",")) if args.backends else None,
                      duration=args.duration, repeats=args.repeats, baseline=args.baseline,
                      data=str(args.data) if args.data else None, threads=args.threads,
                      file_format=args.file_format)
    with Progress(transient=True, disable=args.quiet) as progress:
        task = progress.add_task("benchmarking", total=None)
        report = run_bench(args.model, cfg, args.out, on_progress=lambda what, done, total:
                           progress.update(task, completed=done, total=total, description=what))
    m = report["machine"]
    multi = len(cfg.modes) > 1
    table = Table(title=f"medtrt bench: {report['preset']}, {cfg.mode} mode, "
                        f"{m['gpu'] or m['cpu']} ({m['cores']} cores), baseline {report['baseline']}")
    for col in ("backend", *(("mode",) if multi else ()), "batch", "images/s", "x baseline", "p50 ms", "p95 ms", "p99 ms",
                "CPU %", "GPU %", "W", "img/J"):
        table.add_column(col, justify="left" if col == "backend" else "right")

    def f(v: float | None, spec: str) -> str:
        return "-" if v is None else format(v, spec)

    for r in report["results"]:
        lat = r["latency_ms"]
        table.add_row(r["backend"], *((r["mode"],) if multi else ()), str(r["batch"]),
                      f(r["images_per_s"], ".1f"),
                      f(r["ratio_to_baseline"], ".2f"), f(lat["p50"], ".2f"), f(lat["p95"], ".2f"),
                      f(lat["p99"], ".2f"), f(r["cpu_percent"], ".0f"), f(r["gpu_util"], ".0f"),
                      f(r["power_w"], ".0f"), f(r["images_per_j"], ".1f"))
    _print_wide(table)
    for x in report["mode_ratios"]:
        print(f"{x['backend']} batch {x['batch']}: {x['ratio']} throughput {x['value']:.3f}")
    for name, why in report["skipped"].items():
        print(f"skipped {name}: {why}")
    print(f"GPU telemetry: {report['telemetry']['nvml']}")
    print(f"wrote {args.out / 'bench.json'} and {', '.join(report['plots'])}")
    return 0


def _recipe(args: argparse.Namespace) -> Any:
    """The QdqRecipe the flags ask for; None when they are left at their defaults."""
    from medtrt.precision import QdqRecipe

    keep = tuple(n.strip() for n in (args.keep_fp16 or "").split(",") if n.strip())
    if args.concat == "shared" and not keep:
        return None
    return QdqRecipe(concat=args.concat, keep_fp16=keep)


def _quant_row(q: dict | None) -> str:
    if not q:
        return "-"
    kept = q.get("fp16_layers") or []
    return (f"{q['activation_tensors']} activation tensors in INT8, Concat {q.get('concat', 'shared')}"
            f"; FP16 layers: {', '.join(kept) if kept else 'none'}")


def _gate_row(gate: dict | None) -> str:
    if not gate:
        return "- (pass --val DIR to gate INT8 on agreement with FP32)"
    layers = gate["fp16_layers"]
    kept = f"; FP16 layers: {', '.join(layers)}" if layers else "; no FP16 fallback needed"
    return (f"{'passed' if gate['passed'] else 'FAILED'}: {gate['metric']} agreement "
            f"{gate['agreement']:.4f} >= {gate['min_agreement']} on {gate['images']} images "
            f"(INT8 alone {gate['agreement_before']:.4f}){kept}")


def _eval(args: argparse.Namespace) -> int:
    from rich.progress import Progress

    from medtrt.evaluation import evaluate

    with Progress(transient=True, disable=args.quiet) as progress:
        task = progress.add_task("evaluating", total=None)
        result = evaluate(args.model, args.data, labels=args.labels, reference=args.reference, out=args.out,
                          backend=args.backend, device=args.device, batch_size=args.batch_size,
                          progress=lambda done, total: progress.update(task, completed=done,
                                                                       total=total))
    print(result.files["summary"].read_text())
    print("wrote " + ", ".join(str(f) for f in result.files.values()))
    return 0


def _positive_int(text: str, name: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{name} must be 'dynamic' or a positive integer; got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="medtrt", description="Fast, verified TensorRT deployments of "
                                                "medical-imaging classifiers.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=_Parser)

    info = sub.add_parser("info", help="how medtrt was built and which CUDA devices it sees")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(func=_info)

    data = sub.add_parser("data", help="data sets")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="COMMAND",
                                   parser_class=_Parser)
    synth = data_sub.add_parser("synth", help="write the synthetic MedNIST-like set "
                                              "(OUT/<Class>/<n>.jpeg)")
    synth.add_argument("--out", required=True, type=Path, help="output folder")
    synth.add_argument("--per-class", type=int, default=300, help="images per class (300)")
    synth.add_argument("--seed", type=int, default=0, help="seed; same seed, same bytes (0)")
    synth.add_argument("-q", "--quiet", action="store_true", help="no progress display")
    synth.set_defaults(func=_synth)

    train = sub.add_parser("train", help="train a preset's model on a MedNIST-layout folder")
    train.add_argument("--data", required=True, type=Path, help="ROOT/<ClassName>/*.jpeg")
    train.add_argument("--preset", default="mednist", help="model preset (mednist)")
    train.add_argument("--epochs", type=int, default=2)
    train.add_argument("--batch-size", type=int, default=32)
    train.add_argument("--lr", type=float, default=2e-3, help="AdamW peak learning rate")
    train.add_argument("--seed", type=int, default=0, help="seed of the split and the weights")
    train.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    train.add_argument("--no-augment", action="store_true")
    train.add_argument("--out", required=True, type=Path, help="checkpoint path (model.pt)")
    train.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    train.set_defaults(func=_train)

    export = sub.add_parser("export", help="export a checkpoint to ONNX, checked against PyTorch")
    export.add_argument("checkpoint", type=Path, help="medtrt checkpoint (model.pt)")
    export.add_argument("-o", "--output", required=True, type=Path, help="ONNX file to write")
    export.add_argument("--opset", type=int, default=18)
    export.add_argument("--batch", default="dynamic", help="'dynamic' (default) or a fixed size")
    export.add_argument("--data", type=Path, help="image folder for the parity check "
                                                  "(default: generated images)")
    export.set_defaults(func=_export)

    b = sub.add_parser("build", help="build a TensorRT engine bundle (FP32, FP16 or INT8) from an "
                                     "exported ONNX")
    b.add_argument("onnx", type=Path, help="FP32 ONNX from `medtrt export`")
    prec = b.add_mutually_exclusive_group()
    prec.add_argument("--fp16", action="store_true", help="FP16 graph (FP32 I/O and reductions)")
    prec.add_argument("--int8", action="store_true", help="INT8 Q/DQ graph (needs --calib or --calib-cache)")
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
    b.add_argument("--batch", default="1,32,256", help="optimization profile min,opt,max")
    b.add_argument("--out", type=Path, help="output folder (default: next to the ONNX)")
    b.add_argument("--trt", choices=("auto", "tensorrt", "tensorrt_rtx"), default="auto",
                   help="TensorRT flavour (auto: tensorrt, else tensorrt_rtx)")
    b.add_argument("--opt-level", type=int, default=3, help="builder optimization level 0-5")
    b.add_argument("--workspace-mib", type=int, default=2048)
    b.add_argument("--target", action="append", help="TensorRT-RTX compute capability target "
                                                     "(e.g. SM86); repeatable")
    b.set_defaults(func=_build)

    dbg = sub.add_parser("debug-layers", help="compare every layer output of two precision graphs "
                                              "(e.g. FP32 vs INT8) with Polygraphy on CPU")
    dbg.add_argument("reference", type=Path, help="reference ONNX (the FP32 export)")
    dbg.add_argument("candidate", type=Path, help="ONNX to check (e.g. NAME.int8.onnx of a bundle)")
    dbg.add_argument("--data", type=Path, required=True, help="image folder")
    dbg.add_argument("--images", type=int, default=4, help="images to run (4)")
    dbg.add_argument("--atol", type=float, default=1e-2)
    dbg.add_argument("--rtol", type=float, default=1e-2)
    dbg.add_argument("--top", type=int, default=15, help="layers listed (15)")
    dbg.add_argument("--out", type=Path, help="write the full per-layer report as JSON")
    dbg.set_defaults(func=_debug_layers)

    from medtrt.bench import BACKENDS, MODES

    bn = sub.add_parser("bench", help="backends side by side on one model: throughput, latency, "
                                      "stages, telemetry (bench.json + PNGs)")
    bn.add_argument("model", type=Path, help="checkpoint (.pt); its ONNX exports and engine "
                                             "bundles are found beside it or in engines/")
    bn.add_argument("--backends", help=f"comma-separated subset of {','.join(BACKENDS)} (default: all)")
    bn.add_argument("--batch", default="1,8,32,128,256", help="batch sizes (1,8,32,128,256)")
    bn.add_argument("--mode", default="engine",
                    help=f"one or more of {','.join(MODES)}, comma-separated; several interleave "
                         "and report each backend's ratio between modes (engine)")
    bn.add_argument("--duration", type=float, default=3.0, help="seconds per window (3)")
    bn.add_argument("--repeats", type=int, default=3, help="interleaved repeats; median reported")
    bn.add_argument("--baseline", help="backend the ratios are taken to (default per mode)")
    bn.add_argument("--data", type=Path, help="files mode: image folder (default: generated)")
    bn.add_argument("--file-format", choices=("jpeg", "png"), default="jpeg",
                    help="files mode without --data: format of the generated files (jpeg, as MedNIST)")
    bn.add_argument("--threads", type=int, default=0, help="CPU threads (default: all cores)")
    bn.add_argument("--out", type=Path, default=Path("bench"), help="output folder (./bench)")
    bn.add_argument("-q", "--quiet", action="store_true", help="no progress display")
    bn.set_defaults(func=_bench)

    ev = sub.add_parser("eval", help="accuracy (or per-label AUROC), per-class metrics, calibration "
                                     "and agreement with a reference")
    ev.add_argument("model", type=Path, help="engine bundle, ONNX file or checkpoint")
    ev.add_argument("--data", type=Path, required=True,
                    help="image folder: one sub-folder per class (single-label models), or the "
                         "images a multi-label table names")
    ev.add_argument("--labels", type=Path,
                    help="multi-label models: CSV label table, an image column + one 1/0/-1 column "
                         "per label, or NIH's 'Image Index' + 'Finding Labels' (default DATA/labels.csv)")
    ev.add_argument("--reference", type=Path, help="checkpoint to compare with (PyTorch FP32)")
    ev.add_argument("--out", type=Path, default=Path("eval"), help="output folder (./eval)")
    ev.add_argument("--backend", choices=("auto", "tensorrt", "torch", "onnxruntime"), default="auto")
    ev.add_argument("--device", default="0", help="GPU index, or cpu (torch backend)")
    ev.add_argument("--batch-size", type=int, default=64)
    ev.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    ev.set_defaults(func=_eval)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    from medtrt.errors import MedtrtError

    try:
        return int(args.func(args))
    except (ValueError, FileNotFoundError, MedtrtError) as exc:
        print(f"medtrt: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("medtrt: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
