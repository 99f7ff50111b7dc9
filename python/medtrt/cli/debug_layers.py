"""`medtrt debug-layers`: compare every layer output of two precision graphs with Polygraphy."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.table import Table

from medtrt.cli._common import print_wide
from medtrt.precision.debug import compare_layers

__all__ = ["add_parser", "run"]

_NUMERIC = ("rel. error", "growth", "cosine")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    dbg = subparsers.add_parser("debug-layers", help="compare every layer output of two precision "
                                                     "graphs (e.g. FP32 vs INT8) with Polygraphy "
                                                     "on CPU")
    dbg.add_argument("reference", type=Path, help="reference ONNX (the FP32 export)")
    dbg.add_argument("candidate", type=Path,
                     help="ONNX to check (e.g. NAME.int8.onnx of a bundle)")
    dbg.add_argument("--data", type=Path, required=True, help="image folder")
    dbg.add_argument("--images", type=int, default=4, help="images to run (4)")
    dbg.add_argument("--atol", type=float, default=1e-2)
    dbg.add_argument("--rtol", type=float, default=1e-2)
    dbg.add_argument("--top", type=int, default=15, help="layers listed (15)")
    dbg.add_argument("--out", type=Path, help="write the full per-layer report as JSON")
    dbg.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    console = Console(stderr=True)
    with console.status(f"running both graphs on {args.images} image(s) with Polygraphy"):
        report = compare_layers(args.reference, args.candidate, args.data, num_images=args.images,
                                atol=args.atol, rtol=args.rtol)
    table = Table(title=f"where the error grows: {args.candidate.name} vs {args.reference.name} "
                        f"({report.images} images, {len(report.layers)} shared tensors)")
    for col in ("layer", "op", "tensor", *_NUMERIC, "polygraphy"):
        table.add_column(col, justify="right" if col in _NUMERIC else "left")
    for d in report.worst(args.top):
        table.add_row(d.producer, d.op, d.tensor, f"{d.rel_error:.4f}", f"{d.growth:+.4f}",
                      f"{d.cosine:.5f}", "pass" if d.passed else "FAIL")
    print_wide(table)
    first = report.first_failing()
    print(f"output relative error {report.output_rel_error:.4f}; first layer over atol={args.atol} "
          f"rtol={args.rtol}: {first.producer + ' (' + first.tensor + ')' if first else 'none'}")
    if args.out:
        print(f"wrote {report.write(args.out)}")
    return 0
