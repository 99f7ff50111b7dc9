"""`medtrt export`: export a checkpoint to ONNX, checked against PyTorch."""

from __future__ import annotations

import argparse
from pathlib import Path

from medtrt.cli._common import positive_int
from medtrt.export import export_onnx

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("export", help="export a checkpoint to ONNX, checked against "
                                                  "PyTorch")
    parser.add_argument("checkpoint", type=Path, help="medtrt checkpoint (model.pt)")
    parser.add_argument("-o", "--output", required=True, type=Path, help="ONNX file to write")
    parser.add_argument("--opset", type=int, default=18)
    parser.add_argument("--batch", default="dynamic",
                        help="'dynamic' (default) or a fixed size")
    parser.add_argument("--data", type=Path, help="image folder for the parity check "
                                                  "(default: generated images)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    batch: str | int = args.batch if args.batch == "dynamic" else positive_int(args.batch,
                                                                               "--batch")
    result = export_onnx(args.checkpoint, args.output, opset=args.opset, batch=batch,
                         data=args.data)
    for c in result.checks:
        print(f"ONNX Runtime vs PyTorch, batch {c['batch']:3d}: max |dlogit| "
              f"{c['max_abs_logit_error']:.2e} (max |logit| {c['max_abs_logit']:.2f})")
    print(f"wrote {result.path} (preset {result.preset.name}, opset {result.opset}, "
          f"batch {result.batch})")
    return 0
