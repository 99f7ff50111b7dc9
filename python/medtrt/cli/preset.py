"""`medtrt preset show MODEL`: the preset a bundle, ONNX file, checkpoint or preset file carries
(or a built-in preset by name), optionally changed by the preset flags and checked against the
graph; ``--json`` prints it in the preset file format (``medtrt.models.load_preset`` reads it)."""

from __future__ import annotations

import argparse
import json

from medtrt.cli._common import Parser, add_preset_arguments, preset_for
from medtrt.foreign import Carried, carried_preset, read_onnx
from medtrt.models.presets import Preset

__all__ = ["add_parser", "run"]

_HOW = ("give one with --preset FILE|NAME (a preset JSON file; `medtrt preset show mednist "
        "--json` prints an example) or with --labels FILE --size N --channels C --activation "
        "softmax|sigmoid")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("preset", help="show the preset (labels, input, intensity "
                                                  "transform, activation) a model carries")
    sub = parser.add_subparsers(dest="preset_command", required=True, metavar="ACTION",
                                parser_class=Parser)
    show = sub.add_parser("show", help="print the preset of a bundle, ONNX file, checkpoint, "
                                       "preset file, or a built-in preset by name")
    show.add_argument("model", help="engine bundle, ONNX file, checkpoint, preset JSON file, or "
                                    "a built-in preset name (mednist, chexnet)")
    show.add_argument("--json", action="store_true",
                      help="print the preset as JSON (a preset file: --preset reads it back)")
    add_preset_arguments(show)
    show.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    carried = carried_preset(args.model)
    preset = preset_for(args.model, args) or carried.preset
    if preset is not None and carried.io is not None and preset != carried.preset:
        read_onnx(args.model, preset, weights=False)  # one line for whatever does not fit
    if preset is None:
        print(f"{args.model} ({carried.kind}) carries no preset: {carried.reason}; {_HOW}")
        if carried.io is not None:
            print(_graph_line(carried))
        return 1
    if args.json:
        print(json.dumps(preset.to_dict(), indent=2))
        return 0
    given = " (as changed by the flags)" if preset != carried.preset else ""
    print(f"{args.model}: {carried.kind}{given}")
    if carried.io is not None:
        print(_graph_line(carried))
    if carried.foreign is not None:
        f = carried.foreign
        removed = f"; medtrt removed its final {f.removed_activation}" if f.removed_activation else ""
        print(f"adopted from {f.name} (sha256 {f.sha256[:16]}..., {f.producer}, opset {f.opset}, "
              f"batch {f.batch}){removed}")
    for key, value in _rows(preset):
        print(f"  {key:13s} {value}")
    return 0


def _graph_line(carried: Carried) -> str:
    assert carried.io is not None
    line = f"graph: {carried.io.describe()}"
    if carried.io.batch is not None:
        line += f"; fixed batch {carried.io.batch} (an engine's profile is fixed to it)"
    if carried.final_activation:
        line += (f"; ends in {carried.final_activation} (removed when built or run: the preset's "
                 f"activation is applied once, by medtrt)")
    return line


def _rows(preset: Preset) -> list[tuple[str, str]]:
    h, w = preset.image_size
    if preset.window is not None:
        intensity = f"window center {preset.window[0]:g}, width {preset.window[1]:g}"
    elif preset.scale is not None:
        intensity = f"scale {preset.scale:g}"
    else:
        intensity = "scale 1/255 (8-bit) or 1/65535 (16-bit images)"
    labels = ", ".join(preset.labels)
    rows = [("name", preset.name), ("architecture", preset.architecture),
            ("input", f"{preset.in_channels} channel(s), {h}x{w}"), ("intensity", intensity),
            ("mean / std", f"{list(preset.mean)} / {list(preset.std)}"),
            ("activation", preset.activation + (f", threshold {preset.threshold:g}"
                                                if preset.activation == "sigmoid" else "")),
            ("labels", f"{preset.num_classes}: {labels}")]
    if preset.description:
        rows.append(("description", preset.description))
    return rows
