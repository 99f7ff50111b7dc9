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
from typing import NoReturn

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
