"""Model presets: architecture, input, intensity transform, output activation and labels.

A preset is everything later steps need to turn stored pixels into predictions without asking
the user again; it travels inside checkpoints, ONNX metadata and engine bundles as JSON.

A user's own model gets one from a preset file (``load_preset``: JSON, labels inline or from a
text file) or from command-line flags (``preset_from_args``). Every preset, built in, read from
a file or a bundle, or made from flags, is validated by the same ``Preset.__post_init__``.
"""

from __future__ import annotations

import difflib
import json
import math
import os
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

__all__ = ["ACTIVATIONS", "CHEXNET_LABELS", "MEDNIST_LABELS", "PRESETS", "Preset", "get_preset",
           "load_preset", "preset_from_args", "read_labels"]

# softmax: one class per image (top-1); sigmoid: independent labels (each above ``threshold``).
# A graph that already ends in Softmax/Sigmoid keeps its preset's activation: medtrt removes the
# graph's final node (medtrt.foreign) rather than describing its output as probabilities.
ACTIVATIONS = ("softmax", "sigmoid")
DEFAULT_ARCHITECTURE = "custom"  # a preset for a graph or weights medtrt does not create itself

MEDNIST_LABELS = ("AbdomenCT", "BreastMRI", "CXR", "ChestCT", "Hand", "HeadCT")
# ChestX-ray14 findings, in the order of the NIH label file and of CheXNet.
CHEXNET_LABELS = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
    "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening",
    "Hernia",
)


@dataclass(frozen=True)
class Preset:
    """What a model expects and produces.

    ``scale=None`` means the dtype default of resize_normalize (1/255 for uint8, 1/65535 for
    uint16); ``window`` (center, width) replaces the scale when set (give one or the other).
    ``mean``/``std`` have one value, or one per channel. Invalid values raise ValueError naming
    the field.
    """

    name: str
    architecture: str
    in_channels: int
    image_size: tuple[int, int]
    labels: tuple[str, ...]
    activation: str  # "softmax" (single label) or "sigmoid" (multi-label)
    scale: float | None = None
    window: tuple[float, float] | None = None
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    threshold: float = 0.5  # sigmoid presets: a label is reported above this probability
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if _is_int(self.image_size):  # a square input
            object.__setattr__(self, "image_size", (self.image_size, self.image_size))
        for name in ("image_size", "labels", "mean", "std", "window"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        for problem in self._problems():
            raise ValueError(problem)

    def _problems(self) -> list[str]:
        """What is wrong with this preset, one line per field (empty when it is valid)."""
        out = []
        if self.in_channels not in (1, 3):
            out.append(f"in_channels must be 1 or 3; got {self.in_channels!r}")
        size = self.image_size
        if len(size) != 2 or not all(_is_int(v) and v > 0 for v in size):
            out.append(f"image_size must be two positive integers [H, W]; got {list(size)}")
        if self.activation not in ACTIVATIONS:
            out.append(f"activation must be one of {list(ACTIVATIONS)}; got {self.activation!r} "
                       "(a graph that ends in Softmax or Sigmoid keeps that activation here: "
                       "medtrt removes the final node)")
        out += _label_problems(self.labels)
        for name in ("mean", "std"):
            values = getattr(self, name)
            if len(values) not in (1, self.in_channels):
                out.append(f"{name} has {len(values)} values; expected 1 or in_channels "
                           f"({self.in_channels})")
            elif not all(_is_number(v) and math.isfinite(v) for v in values):
                out.append(f"{name} must be finite numbers; got {list(values)}")
        if not out and min(self.std) <= 0:
            out.append(f"std must be > 0; got {list(self.std)}")
        if self.scale is not None and not (_is_number(self.scale) and self.scale > 0):
            out.append(f"scale must be a number > 0 (or null for the dtype default); got "
                       f"{self.scale!r}")
        if self.window is not None:
            if len(self.window) != 2 or not all(_is_number(v) for v in self.window):
                out.append(f"window must be [center, width]; got {self.window!r}")
            elif not self.window[1] > 0:
                out.append(f"window width must be > 0; got {self.window[1]!r}")
            elif self.scale is not None:
                out.append("give scale or window, not both (the window replaces the scale)")
        if not (_is_number(self.threshold) and 0 < self.threshold < 1):
            out.append(f"threshold must be in (0, 1); got {self.threshold!r}")
        return out

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def preprocess_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of medtrt.ops.resize_normalize / medtrt.reference.preprocess."""
        kw: dict[str, Any] = {
            "out_size": self.image_size,
            "channels": self.in_channels,
            "mean": list(self.mean),
            "std": list(self.std),
        }
        if self.window is not None:
            kw["window"] = self.window
        elif self.scale is not None:
            kw["scale"] = self.scale
        return kw

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["image_size"] = list(self.image_size)
        d["labels"] = list(self.labels)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        d["window"] = list(self.window) if self.window else None
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preset:
        """The preset in ``d`` (parsed JSON). ValueError naming the field for an unknown field
        (with the nearest valid name), a missing or mistyped one, or an invalid value."""
        if not isinstance(d, dict):
            raise ValueError(f"a preset must be a JSON object; got {type(d).__name__}")
        _check_names(d, FIELDS)
        missing = [f for f in REQUIRED if f not in d]
        if missing:
            raise ValueError(f"preset lacks field(s) {missing}")
        values = {k: _field_value(k, v) for k, v in d.items()}
        return cls(**values)

    def with_labels(self, labels: tuple[str, ...]) -> Preset:
        return replace(self, labels=tuple(labels))


FIELDS = tuple(f.name for f in fields(Preset))
REQUIRED = ("name", "architecture", "in_channels", "image_size", "labels", "activation")
_FILE_ONLY = ("labels_file",)  # preset files: labels from a text file beside the JSON


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _label_problems(labels: Any) -> list[str]:
    if not labels:
        return ["labels must not be empty"]
    bad = [x for x in labels if not isinstance(x, str) or not x.strip()]
    if bad:
        return [f"labels must be non-empty strings; got {bad[0]!r}"]
    seen: set[str] = set()
    twice = [x for x in labels if x in seen or seen.add(x)]  # type: ignore[func-returns-value]
    if twice:
        return [f"labels must be unique; {twice[0]!r} appears {labels.count(twice[0])} times"]
    return []


def _check_names(d: dict[str, Any], known: tuple[str, ...]) -> None:
    """ValueError naming the first unknown field and the nearest valid name."""
    unknown = [k for k in d if k not in known]
    if not unknown:
        return
    key = unknown[0]
    near = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
    hint = f" (did you mean {near[0]!r}?)" if near else f" (preset fields: {', '.join(known)})"
    more = f"; {len(unknown) - 1} more unknown field(s)" if len(unknown) > 1 else ""
    raise ValueError(f"unknown preset field {key!r}{hint}{more}")


def _field_value(name: str, value: Any) -> Any:
    """A JSON value of field ``name`` as the dataclass holds it; ValueError on a wrong type."""
    def wrong(expected: str) -> ValueError:
        return ValueError(f"preset field {name!r} must be {expected}; got {value!r:.60}")

    if name in ("name", "architecture", "activation", "description"):
        if not isinstance(value, str):
            raise wrong("a string")
    elif name == "in_channels":
        if not _is_int(value):
            raise wrong("an integer (1 or 3)")
    elif name == "image_size":
        value = [value, value] if _is_int(value) else value
        if not isinstance(value, list) or not all(_is_int(v) for v in value):
            raise wrong("an integer or [H, W]")
        value = tuple(value)
    elif name == "labels":
        if not isinstance(value, list):
            raise wrong("a list of strings")
        value = tuple(value)
    elif name in ("mean", "std"):
        value = [value] if _is_number(value) else value
        if not isinstance(value, list) or not all(_is_number(v) for v in value):
            raise wrong("a number or a list of numbers")
        value = tuple(float(v) for v in value)
    elif name in ("scale", "threshold"):
        if not (value is None and name == "scale") and not _is_number(value):
            raise wrong("a number")
        value = None if value is None else float(value)
    elif name == "window":
        if value is not None and (not isinstance(value, list) or len(value) != 2
                                  or not all(_is_number(v) for v in value)):
            raise wrong("[center, width] or null")
        value = None if value is None else (float(value[0]), float(value[1]))
    elif name == "extra" and not isinstance(value, dict):
        raise wrong("an object")
    return value


PRESETS: dict[str, Preset] = {
    "mednist": Preset(
        name="mednist",
        architecture="monai.DenseNet121",
        in_channels=1,
        image_size=(64, 64),
        labels=MEDNIST_LABELS,
        activation="softmax",
        description="MedNIST: 6-class 64x64 grayscale, intensities scaled to [0, 1]",
    ),
    "chexnet": Preset(
        name="chexnet",
        architecture="monai.DenseNet121",
        in_channels=3,
        image_size=(224, 224),
        labels=CHEXNET_LABELS,
        activation="sigmoid",
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        description="CheXNet: 14-label chest X-ray, 224x224, gray replicated to 3 channels, "
        "ImageNet mean/std",
    ),
}


def get_preset(preset: str | Preset) -> Preset:
    if isinstance(preset, Preset):
        return preset
    try:
        return PRESETS[preset]
    except KeyError:
        raise ValueError(f"unknown preset {preset!r}; expected one of {sorted(PRESETS)}") from None


def read_labels(path: str | os.PathLike[str]) -> tuple[str, ...]:
    """Labels from a text file, one per line (blank lines and surrounding spaces ignored)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"labels file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"labels file {path} is not readable text ({exc})") from None
    labels = tuple(line.strip() for line in text.splitlines() if line.strip())
    if not labels:
        raise ValueError(f"labels file {path} holds no labels (one label per line)")
    return labels


def load_preset(source: str | os.PathLike[str] | Preset) -> Preset:
    """A preset from a JSON file or a built-in name (``mednist``, ``chexnet``).

    The file holds the fields of ``Preset`` (``name`` defaults to the file's stem,
    ``architecture`` to "custom", ``image_size`` may be one integer for a square input).
    ``labels`` is a list, or ``"@labels.txt"``; or ``labels_file`` names the text file (one
    label per line), relative to the JSON file. Any problem is one ValueError line naming the
    file and the field (an unknown field with the nearest valid name).
    """
    if isinstance(source, Preset):
        return source
    path = Path(source)
    if path.is_file():
        return _preset_file(path)
    if str(source) in PRESETS:
        return PRESETS[str(source)]
    if path.suffix == ".json" or len(path.parts) > 1:
        raise FileNotFoundError(f"preset file {path} does not exist")
    near = difflib.get_close_matches(str(source), list(PRESETS), n=1)
    raise ValueError(f"unknown preset {str(source)!r}: no such file, and not a built-in preset "
                     f"({', '.join(sorted(PRESETS))})"
                     + (f"; did you mean {near[0]!r}?" if near else ""))


def _preset_file(path: Path) -> Preset:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a readable JSON preset file ({exc})") from None
    try:
        if not isinstance(data, dict):
            raise ValueError(f"a preset file holds one JSON object; got {type(data).__name__}")
        _check_names(data, FIELDS + _FILE_ONLY)
        data = {"name": path.stem, "architecture": DEFAULT_ARCHITECTURE, **data}
        labels, labels_file = data.get("labels"), data.pop("labels_file", None)
        if isinstance(labels, str) and labels.startswith("@"):
            labels_file, labels = labels[1:], None
        if labels_file is not None:
            if labels is not None:
                raise ValueError("give labels or labels_file, not both")
            if not isinstance(labels_file, str):
                raise ValueError(f"preset field 'labels_file' must be a file name; got "
                                 f"{labels_file!r}")
            data["labels"] = list(read_labels(path.parent / labels_file))
        return Preset.from_dict(data)
    except (ValueError, FileNotFoundError) as exc:  # the same type, naming the preset file
        raise type(exc)(f"{path}: {exc}") from None


# Flags of the shared preset argument group (medtrt.cli._common.add_preset_arguments): the
# attribute each sets on the argparse namespace and the preset field it gives.
_FLAG_FIELDS = (("preset_labels", "labels"), ("size", "image_size"), ("channels", "in_channels"),
                ("mean", "mean"), ("std", "std"), ("scale", "scale"), ("window", "window"),
                ("activation", "activation"), ("threshold", "threshold"))
_NEEDED_FLAGS = {"labels": "--labels FILE", "image_size": "--size", "in_channels": "--channels",
                 "activation": "--activation"}


def preset_from_args(base: Preset | None, args: Any, *, name: str = "custom") -> Preset | None:
    """The preset that command-line flags ask for.

    ``args`` has the attributes of ``medtrt.cli._common.add_preset_arguments`` (any missing
    or None is not given): ``preset`` (a file or built-in name) replaces ``base`` (what the
    model carries, or None); the other flags then override single fields (``--scale`` drops a
    window, ``--window`` a scale). With neither a base nor ``--preset``, the flags must give
    at least labels, size, channels and activation. None when nothing is given at all.
    """
    given = getattr(args, "preset", None)
    preset = load_preset(given) if given else base
    changes: dict[str, Any] = {}
    for attr, key in _FLAG_FIELDS:
        value = getattr(args, attr, None)
        if value is None:
            continue
        if key == "labels":
            value = read_labels(value)
        elif key in ("mean", "std", "window"):
            value = tuple(float(v) for v in value)
        changes[key] = value
    if not changes:
        return preset
    if "scale" in changes and "window" in changes:
        raise ValueError("give --scale or --window, not both (the window replaces the scale)")
    if preset is None:
        missing = [flag for key, flag in _NEEDED_FLAGS.items() if key not in changes]
        if missing:
            raise ValueError(f"no preset to start from (the model carries none and --preset was "
                             f"not given): add {', '.join(missing)}, or pass --preset FILE|NAME")
        return Preset(name=name, architecture=DEFAULT_ARCHITECTURE, **changes)
    if "scale" in changes:
        changes["window"] = None
    elif "window" in changes:
        changes["scale"] = None
    return replace(preset, **changes)
