"""`medtrt bench`: backends side by side on one model (bench.json + PNGs)."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.table import Table

from medtrt.bench import BACKENDS, MODES, BenchConfig, run_bench
from medtrt.cli._common import positive_int, print_wide, progress_task

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    bn = subparsers.add_parser("bench", help="backends side by side on one model: throughput, "
                                             "latency, stages, telemetry (bench.json + PNGs)")
    bn.add_argument("model", type=Path, help="checkpoint (.pt); its ONNX exports and engine "
                                             "bundles are found beside it or in engines/")
    bn.add_argument("--backends",
                    help=f"comma-separated subset of {','.join(BACKENDS)} (default: all)")
    bn.add_argument("--batch", default="1,8,32,128,256", help="batch sizes (1,8,32,128,256)")
    bn.add_argument("--mode", default="engine",
                    help=f"one or more of {','.join(MODES)}, comma-separated; several interleave "
                         "and report each backend's ratio between modes (engine)")
    bn.add_argument("--duration", type=float, default=3.0, help="seconds per window (3)")
    bn.add_argument("--repeats", type=int, default=3, help="interleaved repeats; median reported")
    bn.add_argument("--baseline", help="backend the ratios are taken to (default per mode)")
    bn.add_argument("--data", type=Path, help="files mode: image folder (default: generated)")
    bn.add_argument("--file-format", choices=("jpeg", "png"), default="jpeg",
                    help="files mode without --data: format of the generated files "
                         "(jpeg, as MedNIST)")
    bn.add_argument("--threads", type=int, default=0, help="CPU threads (default: all cores)")
    bn.add_argument("--out", type=Path, default=Path("bench"), help="output folder (./bench)")
    bn.add_argument("-q", "--quiet", action="store_true", help="no progress display")
    bn.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = BenchConfig(mode=args.mode,
                      batches=tuple(positive_int(b, "--batch") for b in args.batch.split(",")),
                      backends=tuple(args.backends.split(",")) if args.backends else None,
                      duration=args.duration, repeats=args.repeats, baseline=args.baseline,
                      data=str(args.data) if args.data else None, threads=args.threads,
                      file_format=args.file_format)
    with progress_task("benchmarking", args.quiet) as update:
        report = run_bench(args.model, cfg, args.out,
                           on_progress=lambda what, done, total: update(done, total, what))
    print_wide(_table(report, cfg))
    for x in report["mode_ratios"]:
        print(f"{x['backend']} batch {x['batch']}: {x['ratio']} throughput {x['value']:.3f}")
    for name, why in report["skipped"].items():
        print(f"skipped {name}: {why}")
    print(f"GPU telemetry: {report['telemetry']['nvml']}")
    print(f"wrote {args.out / 'bench.json'} and {', '.join(report['plots'])}")
    return 0


def _table(report: dict, cfg: BenchConfig) -> Table:
    """One row per backend (and mode, when several) and batch."""
    m = report["machine"]
    multi = len(cfg.modes) > 1
    table = Table(title=f"medtrt bench: {report['preset']}, {cfg.mode} mode, "
                        f"{m['gpu'] or m['cpu']} ({m['cores']} cores), "
                        f"baseline {report['baseline']}")
    for col in ("backend", *(("mode",) if multi else ()), "batch", "images/s", "x baseline",
                "p50 ms", "p95 ms", "p99 ms", "CPU %", "GPU %", "W", "img/J"):
        table.add_column(col, justify="left" if col == "backend" else "right")
    for r in report["results"]:
        lat = r["latency_ms"]
        table.add_row(r["backend"], *((r["mode"],) if multi else ()), str(r["batch"]),
                      _fmt(r["images_per_s"], ".1f"), _fmt(r["ratio_to_baseline"], ".2f"),
                      _fmt(lat["p50"], ".2f"), _fmt(lat["p95"], ".2f"), _fmt(lat["p99"], ".2f"),
                      _fmt(r["cpu_percent"], ".0f"), _fmt(r["gpu_util"], ".0f"),
                      _fmt(r["power_w"], ".0f"), _fmt(r["images_per_j"], ".1f"))
    return table


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)
