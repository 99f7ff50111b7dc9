"""Creating models from presets, and checkpoints that carry their preset and labels."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from medtrt._lazy import require
from medtrt.errors import CheckpointError
from medtrt.models.presets import Preset, get_preset

__all__ = ["create", "save", "load", "load_checkpoint", "CHECKPOINT_FORMAT"]

CHECKPOINT_FORMAT = "medtrt-checkpoint/1"


def create(preset: str | Preset, *, seed: int | None = None) -> Any:
    """A freshly initialised model for ``preset`` (a torch.nn.Module in eval mode)."""
    torch = require("torch")
    require("monai")
    from monai.networks.nets import DenseNet121

    p = get_preset(preset)
    if p.architecture != "monai.DenseNet121":
        raise ValueError(f"preset {p.name!r}: unknown architecture {p.architecture!r}; "
                         "expected 'monai.DenseNet121'")
    if seed is not None:
        torch.manual_seed(seed)
    model = DenseNet121(spatial_dims=2, in_channels=p.in_channels, out_channels=p.num_classes)
    return model.eval()


def save(model: Any, preset: str | Preset, path: str | Path, **info: Any) -> Path:
    """Write a checkpoint: state dict, preset (with labels) and free-form ``info`` (JSON-able)."""
    torch = require("torch")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "preset": get_preset(preset).to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        # JSON round trip: only plain types reach the pickle, so weights-only loading accepts it
        # (torch.__version__, for one, is a str subclass the safe unpickler refuses).
        "info": json.loads(json.dumps(info, default=str)),
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)  # never leave a half-written checkpoint under the final name
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """The raw checkpoint dict, checked for format (weights only: no code is unpickled)."""
    torch = require("torch")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file
        raise CheckpointError(f"{path} is not a readable torch checkpoint: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        got = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(
            f"{path} is not a medtrt checkpoint (format {got!r}, expected {CHECKPOINT_FORMAT!r}); "
            "write one with medtrt.models.save or `medtrt train`"
        )
    return payload


def load(checkpoint: str | Path) -> tuple[Any, Preset]:
    """(model in eval mode, preset) from a checkpoint; needs no other argument.

    Weights that do not fit the preset's architecture are refused with a message naming the
    first mismatching tensor.
    """
    payload = load_checkpoint(checkpoint)
    preset = Preset.from_dict(payload["preset"])
    model = create(preset)
    expected = model.state_dict()
    given = payload["state_dict"]
    for name, tensor in expected.items():
        if name not in given:
            raise CheckpointError(f"{checkpoint}: tensor {name!r} of preset {preset.name!r} is "
                                  "missing from the checkpoint")
        if tuple(given[name].shape) != tuple(tensor.shape):
            raise CheckpointError(
                f"{checkpoint}: tensor {name!r} has shape {tuple(given[name].shape)} but preset "
                f"{preset.name!r} ({preset.num_classes} labels, {preset.in_channels} input "
                f"channels) expects {tuple(tensor.shape)}"
            )
    extra = sorted(set(given) - set(expected))
    if extra:
        raise CheckpointError(f"{checkpoint}: tensor {extra[0]!r} is not part of preset "
                              f"{preset.name!r} ({len(extra)} unexpected tensors)")
    model.load_state_dict(given)
    return model.eval(), preset
