"""Model presets: architecture, input, intensity transform, output activation and labels.

A preset is everything later steps need to turn stored pixels into predictions without asking
the user again; it travels inside checkpoints and ONNX metadata as JSON.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any

__all__ = ["Preset", "PRESETS", "get_preset", "MEDNIST_LABELS", "CHEXNET_LABELS"]

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
    uint16); ``window`` (center, width) replaces the scale when set.
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
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"preset has unknown fields {sorted(unknown)}; expected {sorted(known)}")
        d = dict(d)
        d["image_size"] = tuple(d["image_size"])
        d["labels"] = tuple(d["labels"])
        d["mean"], d["std"] = tuple(d.get("mean", (0.0,))), tuple(d.get("std", (1.0,)))
        if d.get("window") is not None:
            d["window"] = tuple(d["window"])
        return cls(**d)

    def with_labels(self, labels: tuple[str, ...]) -> Preset:
        return replace(self, labels=tuple(labels))


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
