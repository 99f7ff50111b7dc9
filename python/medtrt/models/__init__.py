"""Reference models (MONAI DenseNet-121) and their presets; checkpoints that describe themselves;
presets from the user (``load_preset``, ``preset_from_args``).

torch and MONAI are imported only when a model is created or loaded.
"""

from __future__ import annotations

from medtrt.models.checkpoint import create, load, load_checkpoint, save
from medtrt.models.presets import (CHEXNET_LABELS, MEDNIST_LABELS, PRESETS, Preset, get_preset,
                                   load_preset, preset_from_args)

__all__ = [
    "CHEXNET_LABELS",
    "MEDNIST_LABELS",
    "PRESETS",
    "Preset",
    "create",
    "get_preset",
    "load",
    "load_checkpoint",
    "load_preset",
    "preset_from_args",
    "save",
]
