"""`medtrt eval`: accuracy (or per-label AUROC), per-class metrics, calibration, agreement."""

from __future__ import annotations

import argparse
from pathlib import Path

from medtrt.cli._common import add_preset_arguments, preset_for, progress_task
from medtrt.evaluation import evaluate

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    ev = subparsers.add_parser("eval", help="accuracy (or per-label AUROC), per-class metrics, "
                                            "calibration and agreement with a reference")
    ev.add_argument("model", type=Path, help="engine bundle, ONNX file (any ONNX classifier with "
                                             "--preset) or checkpoint")
    ev.add_argument("--data", type=Path, required=True,
                    help="image folder: one sub-folder per class (single-label models), or the "
                         "images a multi-label table names")
    ev.add_argument("--labels", type=Path,
                    help="multi-label models: CSV label table, an image column + one 1/0/-1 column "
                         "per label, or NIH's 'Image Index' + 'Finding Labels' "
                         "(default DATA/labels.csv)")
    ev.add_argument("--reference", type=Path, help="checkpoint to compare with (PyTorch FP32)")
    ev.add_argument("--out", type=Path, default=Path("eval"), help="output folder (./eval)")
    ev.add_argument("--backend",
                    choices=("auto", "tensorrt", "torch", "onnxruntime", "openvino"),
                    default="auto")
    ev.add_argument("--device", default="0", help="GPU index, or cpu (torch backend)")
    ev.add_argument("--batch-size", type=int, default=64)
    ev.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    add_preset_arguments(ev, labels_flag=False)  # --labels is the label table here
    ev.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    with progress_task("evaluating", args.quiet) as update:
        result = evaluate(args.model, args.data, labels=args.labels, reference=args.reference,
                          out=args.out, backend=args.backend, device=args.device,
                          batch_size=args.batch_size, progress=update,
                          preset=preset_for(args.model, args))
    print(result.files["summary"].read_text())
    print("wrote " + ", ".join(str(f) for f in result.files.values()))
    return 0
