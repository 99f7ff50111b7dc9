"""`medtrt import`: a DenseNet-121 checkpoint of another library into a medtrt checkpoint."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from medtrt.models.importers import LAYOUTS, import_checkpoint
from medtrt.models.presets import PRESETS, Preset, get_preset

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "import", help="turn a DenseNet-121 checkpoint of MONAI, torchvision (CheXNet), timm or "
                       "TorchXRayVision into a medtrt checkpoint")
    parser.add_argument("checkpoint", type=Path, help="source checkpoint (.pth / .pt)")
    parser.add_argument("--arch", default="auto", choices=("auto", *LAYOUTS),
                        help="key layout of the source (default: detect it from the keys)")
    parser.add_argument("--preset", required=True,
                        help=f"built-in preset ({', '.join(sorted(PRESETS))}) or a preset JSON "
                             "file; its labels must match the classifier")
    parser.add_argument("-o", "--output", required=True, type=Path,
                        help="medtrt checkpoint to write")
    parser.add_argument("--unsafe-pickle", action="store_true",
                        help="read a whole pickled model (runs code from the file; only for "
                             "files you trust)")
    parser.add_argument("--adopt-activation", action="store_true",
                        help="when the source ends in a Sigmoid/Softmax other than the preset's "
                             "activation, use the source's instead of refusing")
    parser.add_argument("--source-activation", choices=("sigmoid", "softmax", "none"),
                        help="the source's final activation, when the file cannot show it (a "
                             "state dict with a Sequential classifier)")
    parser.set_defaults(func=run)


def read_preset(text: str) -> Preset:
    """A built-in preset name, or a JSON file holding a preset."""
    path = Path(text)
    if text in PRESETS or path.suffix != ".json":
        return get_preset(text)
    if not path.is_file():
        raise FileNotFoundError(f"preset file {path} does not exist")
    try:
        return Preset.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"preset file {path} is not a valid preset: {exc}") from exc


def run(args: argparse.Namespace) -> int:
    report = import_checkpoint(args.checkpoint, args.arch, read_preset(args.preset), args.output,
                               unsafe_pickle=args.unsafe_pickle,
                               adopt_activation=args.adopt_activation,
                               source_activation=args.source_activation)
    how = "detected" if report.layout_detected else "given"
    print(f"layout: {report.layout} ({how}); {report.renamed} tensors renamed")
    for note in report.notes:
        print(f"  {note}")
    print(f"wrote {report.out} (preset "
          f"{report.preset.name}, {report.num_classes} labels, {report.preset.activation}; "
          f"source sha256 {report.source_sha256[:12]})")
    return 0
