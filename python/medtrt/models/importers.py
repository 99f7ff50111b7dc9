"""DenseNet-121 checkpoints written by other libraries, turned into medtrt checkpoints.

Layouts (``LAYOUTS``), all mapped onto MONAI's ``DenseNet121``:

- ``monai-densenet121``: MONAI's own keys
  (``features.denseblock1.denselayer1.layers.norm1.weight``, ``class_layers.out.weight``), e.g.
  the MedNIST tutorial's ``best_metric_model.pth``. No rename.
- ``torchvision-densenet121``: torchvision's keys
  (``features.denseblock1.denselayer1.norm1.weight``, ``classifier.weight``), with what CheXNet
  re-implementations add: a ``module.`` prefix (DataParallel), a wrapper prefix
  (``densenet121.``), the legacy ``norm.1`` / ``conv.2`` names of old torchvision, and a
  ``Sequential(Linear, Sigmoid)`` classifier (``classifier.0.weight``).
- ``timm-densenet121``: timm's ``densenet121``. timm's ``DenseNet`` (a copy of torchvision's with
  ``BatchNormAct2d`` norms, which hold the same tensors as ``BatchNorm2d``) has torchvision's key
  names, so the mapping is the torchvision one; timm's deep-stem variants (``densenet121d``,
  ``densenetblur121d``) are another stem and are refused (their ``features.conv1`` has no place).
- ``xrv-densenet121``: TorchXRayVision's ``DenseNet``: torchvision's keys, 1 input channel,
  18 pathologies (``XRV_LABELS``) at 224x224 on intensities in [-1024, 1024], plus an
  ``op_threshs`` buffer. ``op_threshs`` is not a weight: TorchXRayVision rescales sigmoid
  outputs with it so each label's operating point maps to 0.5. A medtrt preset has one threshold,
  so the imported model reports plain sigmoid probabilities; the thresholds are kept in the
  checkpoint's ``info["imported"]["xrv_op_threshs"]`` (NaN as null) and the report says so.

MONAI's DenseNet121 follows torchvision's layout module for module, so the whole mapping is two
renames: ``denselayerN.<norm|conv><1|2>`` -> ``denselayerN.layers.<norm|conv><1|2>`` and
``classifier[.i]`` -> ``class_layers.out``. A final Sigmoid/Softmax of the source has no weights
and is not copied: the preset's activation takes its place, so it must agree with the source's
(or be adopted from it when asked), and it is never applied twice.

Whole pickled models are read only with ``unsafe_pickle=True``: unpickling runs code from the
file. The default is ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import logging
import math
import pickle
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from medtrt._lazy import require
from medtrt.errors import CheckpointError
from medtrt.models.checkpoint import CHECKPOINT_FORMAT, create, save
from medtrt.models.presets import Preset, get_preset

__all__ = ["LAYOUTS", "XRV_LABELS", "ImportReport", "detect_layout", "import_checkpoint",
           "map_keys"]

log = logging.getLogger(__name__)

LAYOUTS = ("monai-densenet121", "torchvision-densenet121", "timm-densenet121", "xrv-densenet121")
_TORCHVISION_KEYS = LAYOUTS[1:]  # timm and TorchXRayVision use torchvision's key names

# TorchXRayVision's DenseNet.targets, in its output order.
XRV_LABELS = (
    "Atelectasis", "Consolidation", "Infiltration", "Pneumothorax", "Edema", "Emphysema",
    "Fibrosis", "Effusion", "Pneumonia", "Pleural_Thickening", "Cardiomegaly", "Nodule", "Mass",
    "Hernia", "Lung Lesion", "Fracture", "Lung Opacity", "Enlarged Cardiomediastinum",
)

_STEM = "features.conv0.weight"
_PARAM = r"(weight|bias|running_mean|running_var|num_batches_tracked)"
# torchvision's dense-layer tensors, current (norm1) and legacy (norm.1) names.
_TV_DENSE = re.compile(r"^(features\.denseblock\d+\.denselayer\d+)\.(norm|conv)\.?([12])\."
                       + _PARAM + "$")
_MONAI_DENSE = re.compile(r"^features\.denseblock\d+\.denselayer\d+\.layers\.")
_TV_CLASSIFIER = re.compile(r"^classifier\.(?:(\d+)\.)?(weight|bias)$")
_MONAI_CLASSIFIER = "class_layers.out.weight"
_ACTIVATIONS = {"Sigmoid": "sigmoid", "Softmax": "softmax"}
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")
_EXAMPLES = 3


@dataclass(frozen=True)
class ImportReport:
    """What ``import_checkpoint`` read, how it mapped it and what it wrote."""

    source: str
    source_sha256: str
    out: str
    layout: str
    layout_detected: bool  # True when the layout came from the keys (arch "auto")
    preset: Preset
    num_classes: int
    source_activation: str | None  # "sigmoid"/"softmax" when the source shows one, else None
    activation_adopted: bool  # the preset's activation was replaced by the source's
    renamed: int  # tensors whose name changed
    notes: tuple[str, ...]
    xrv_op_threshs: tuple[float | None, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["preset"] = self.preset.to_dict()
        d["notes"] = list(self.notes)
        d["xrv_op_threshs"] = list(self.xrv_op_threshs) if self.xrv_op_threshs else None
        return d


@dataclass(frozen=True)
class _Source:
    """A source file reduced to its state dict and what the file says beyond the weights."""

    state_dict: dict[str, Any]
    activation: str | None
    notes: tuple[str, ...]


def detect_layout(state_dict: Mapping[str, Any]) -> tuple[str, list[str]]:
    """(layout, notes) from the key names of a DenseNet-121 state dict.

    timm's densenet121 has torchvision's key names, so it is reported as
    ``torchvision-densenet121`` (the mapping is the same); ``op_threshs`` marks TorchXRayVision.
    Raises CheckpointError when the keys are not those of a DenseNet-121 at all.
    """
    prefix = _prefix(state_dict)
    keys = [k[len(prefix):] for k in state_dict if k.startswith(prefix)]
    notes = [_prefix_note(prefix)] if prefix else []
    if any(_MONAI_DENSE.match(k) for k in keys) or _MONAI_CLASSIFIER in keys:
        return "monai-densenet121", notes
    if not any(_TV_DENSE.match(k) for k in keys):
        raise CheckpointError(
            f"no DenseNet-121 dense-layer keys after '{prefix}features.conv0.weight' (e.g. "
            f"{_examples(keys)}); expected one of the layouts {', '.join(LAYOUTS)}")
    if "op_threshs" in state_dict or f"{prefix}op_threshs" in state_dict:
        return "xrv-densenet121", notes + ["op_threshs buffer: TorchXRayVision's DenseNet"]
    return "torchvision-densenet121", notes + [
        "torchvision key names (timm's densenet121 has the same keys and maps the same way)"]


def map_keys(keys: list[str], layout: str) -> tuple[dict[str, str], list[str], list[str]]:
    """(source name -> MONAI DenseNet121 name, unplaced source names, notes) for ``layout``.

    Pure string work, no tensors: the prefix is what stands before ``features.conv0.weight``.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected 'auto' or one of {LAYOUTS}")
    prefix = _prefix(keys)
    mapping: dict[str, str] = {}
    unplaced: list[str] = []
    legacy, classifier_index = 0, set()
    for key in keys:
        rest = key[len(prefix):] if key.startswith(prefix) else None
        if rest is None or (layout == "xrv-densenet121" and rest == "op_threshs"):
            unplaced += [] if rest == "op_threshs" else [key]
            continue
        if layout == "monai-densenet121":
            mapping[key] = rest
        elif m := _TV_DENSE.match(rest):
            legacy += rest[len(m.group(1)) + 1:].count(".") > 1
            mapping[key] = f"{m.group(1)}.layers.{m.group(2)}{m.group(3)}.{m.group(4)}"
        elif m := _TV_CLASSIFIER.match(rest):
            classifier_index.add(m.group(1))
            mapping[key] = f"class_layers.out.{m.group(2)}"
        else:
            mapping[key] = rest
    notes = [_prefix_note(prefix)] if prefix else []
    if legacy:
        notes.append(f"{legacy} legacy torchvision names (norm.1, conv.2, ...) renamed")
    notes += _classifier_notes(classifier_index)
    return mapping, unplaced, notes


def import_checkpoint(source: str | Path, arch: str, preset: str | Preset, out: str | Path, *,
                      unsafe_pickle: bool = False, adopt_activation: bool = False,
                      source_activation: str | None = None) -> ImportReport:
    """Read a DenseNet-121 checkpoint of another library and write a medtrt checkpoint.

    Args:
        source: a state dict (raw, or under 'state_dict' / 'model_state_dict' / 'model'), or a
            whole pickled nn.Module (only with ``unsafe_pickle``).
        arch: "auto" (detect from the keys) or one of ``LAYOUTS``.
        preset: a built-in preset name or a Preset; its labels must match the classifier.
        out: the medtrt checkpoint to write.
        unsafe_pickle: allow ``torch.load(weights_only=False)``, which runs code from the file.
        adopt_activation: when the source ends in a Sigmoid/Softmax other than the preset's
            activation, use the source's instead of refusing.
        source_activation: "sigmoid", "softmax" or "none" to state what a state dict cannot show
            (a Sequential classifier's parameter-free last module); None: what the file shows.
    """
    source, preset = Path(source), get_preset(preset)
    if arch != "auto" and arch not in LAYOUTS:
        raise ValueError(f"unknown architecture {arch!r}; expected 'auto' or one of {LAYOUTS}")
    if source_activation not in (None, "none", "sigmoid", "softmax"):
        raise ValueError(f"source_activation must be 'sigmoid', 'softmax' or 'none'; "
                         f"got {source_activation!r}")
    src = _read_source(source, unsafe_pickle)
    detected, detect_notes = detect_layout(src.state_dict)
    layout = detected if arch == "auto" else arch
    _check_family(source, arch, detected)
    mapping, unplaced, map_notes = map_keys(list(src.state_dict), layout)
    activation = src.activation if source_activation is None else _none(source_activation)
    preset, adopted, act_notes = _agree_activation(preset, activation, adopt_activation)
    model, fill_notes = _load_mapped(source, src.state_dict, mapping, unplaced, preset, layout)
    threshs = _op_threshs(src.state_dict) if layout == "xrv-densenet121" else None
    notes = (*src.notes, *detect_notes, *map_notes, *fill_notes, *act_notes,
             *_xrv_notes(layout, preset, threshs))
    report = ImportReport(
        source=str(source), source_sha256=_sha256(source), out=str(out), layout=layout,
        layout_detected=arch == "auto", preset=preset, num_classes=preset.num_classes,
        source_activation=activation, activation_adopted=adopted,
        renamed=sum(k != v for k, v in mapping.items()), notes=tuple(dict.fromkeys(notes)),
        xrv_op_threshs=threshs)
    info = report.to_dict()
    del info["preset"], info["out"]  # the checkpoint carries the preset itself
    save(model, preset, out, imported=info)
    log.info("imported %s (%s) into %s", source, layout, out)
    return report


# -- reading ---------------------------------------------------------------------------------


def _read_source(path: Path, unsafe_pickle: bool) -> _Source:
    torch = require("torch")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not unsafe_pickle)
    except pickle.UnpicklingError as exc:
        if unsafe_pickle or "weights_only" not in str(exc).lower():
            raise CheckpointError(f"{path} is not a readable torch checkpoint: {exc}") from exc
        raise CheckpointError(
            f"{path} holds pickled Python objects (a whole model?) that torch.load("
            "weights_only=True) refuses; if you trust the file, pass --unsafe-pickle "
            "(unpickling runs code from it), or save model.state_dict() instead") from exc
    except Exception as exc:  # torch raises many types for a bad file
        raise CheckpointError(f"{path} is not a readable torch checkpoint: {exc}") from exc
    return _unwrap(path, obj, torch)


def _unwrap(path: Path, obj: Any, torch: Any, under: str | None = None) -> _Source:
    where = f" (under '{under}')" if under else ""
    if isinstance(obj, torch.nn.Module):
        activation, note = _module_activation(obj)
        return _Source(_tensors(path, obj.state_dict()), activation,
                       (f"whole pickled {type(obj).__name__}{where}", note))
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}{where}, not a state dict "
                              "or a model")
    if obj.get("format") == CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is already a medtrt checkpoint; use it as it is")
    if under is None:
        for key in _WRAPPER_KEYS:
            if key in obj and not torch.is_tensor(obj[key]):
                inner = _unwrap(path, obj[key], torch, key)
                others = sorted(str(k) for k in obj if k != key)
                ignored = (f"other entries ignored: {', '.join(others[:6])}",) if others else ()
                return replace(inner, notes=(*inner.notes, *ignored))
    return _Source(_tensors(path, obj, where), None,
                   (f"state dict{where}",) if under else ("state dict",))


def _tensors(path: Path, state_dict: Mapping[str, Any], where: str = "") -> dict[str, Any]:
    torch = require("torch")
    bad = [k for k, v in state_dict.items() if not torch.is_tensor(v)]
    if bad:
        raise CheckpointError(
            f"{path}{where}: {len(bad)} entries are not tensors (e.g. {_examples(bad)}); expected "
            f"a state dict, or a dict with one under {' / '.join(map(repr, _WRAPPER_KEYS))}")
    return {str(k): v for k, v in state_dict.items()}


def _module_activation(module: Any) -> tuple[str | None, str]:
    """The final Sigmoid/Softmax of a whole model, as far as its modules show it."""
    if getattr(module, "op_threshs", None) is not None or getattr(module, "apply_sigmoid", False):
        return "sigmoid", "TorchXRayVision model applies a sigmoid (op_threshs / apply_sigmoid)"
    leaves = [m for m in module.modules() if not any(True for _ in m.children())]
    last = type(leaves[-1]).__name__ if leaves else "nothing"
    if last in _ACTIVATIONS:
        return _ACTIVATIONS[last], f"the model's last module is {last}"
    return None, (f"the model's last module is {last} (an activation applied inside forward() "
                  "would not show)")


# -- mapping and checking --------------------------------------------------------------------


def _prefix(keys: Any) -> str:
    stems = [k for k in keys if k.endswith(_STEM)]
    if len(stems) != 1:
        keys = list(keys)
        found = "no" if not stems else f"{len(stems)}"
        raise CheckpointError(
            f"unknown architecture: {found} '{_STEM}' key (DenseNet-121's first convolution) "
            f"among {len(keys)} keys, e.g. {_examples(keys)}; expected one of the layouts "
            f"{', '.join(LAYOUTS)}")
    return stems[0][:-len(_STEM)]


def _prefix_note(prefix: str) -> str:
    parts = prefix.rstrip(".").split(".")
    named = ", ".join("'module.' of DataParallel" if p == "module" else f"wrapper '{p}.'"
                      for p in parts)
    return f"prefix '{prefix}' stripped ({named})"


def _classifier_notes(indices: set[str | None]) -> list[str]:
    if len(indices) > 1:
        raise CheckpointError(
            f"the classifier has weights in {len(indices)} modules "
            f"({', '.join(sorted(str(i) for i in indices))}); MONAI's DenseNet121 has one Linear "
            "layer")
    index = next(iter(indices), None)
    if index is None:
        return []
    return [f"classifier is a Sequential with its Linear layer at index {index}; the modules "
            "after it hold no weights (CheXNet re-implementations end it with a Sigmoid)"]


def _check_family(source: Path, arch: str, detected: str) -> None:
    if arch == "auto" or (arch in _TORCHVISION_KEYS) == (detected in _TORCHVISION_KEYS):
        return
    raise CheckpointError(f"{source}: --arch {arch} but the keys are those of {detected}; "
                          f"use --arch auto or --arch {detected}")


def _load_mapped(source: Path, state_dict: dict[str, Any], mapping: dict[str, str],
                 unplaced: list[str], preset: Preset, layout: str) -> tuple[Any, list[str]]:
    """The preset's MONAI model holding the mapped weights, after every check."""
    torch = require("torch")
    model = create(preset)
    expected = model.state_dict()
    back = {v: k for k, v in mapping.items()}
    unknown = unplaced + [k for k, v in mapping.items() if v not in expected]
    if unknown:
        hint = ("; op_threshs is TorchXRayVision's: --arch xrv-densenet121"
                if any(k.endswith("op_threshs") for k in unknown) else "")
        raise CheckpointError(
            f"{source}: {len(unknown)} keys have no place in MONAI's DenseNet121 (layout "
            f"{layout}), e.g. {_examples(unknown)}{hint}")
    filled = [k for k in expected if k not in back and k.endswith("num_batches_tracked")]
    missing = [k for k in expected if k not in back and k not in filled]
    if missing:
        raise CheckpointError(
            f"{source}: {len(missing)} tensors of MONAI's DenseNet121 are missing (layout "
            f"{layout}), e.g. {_examples(missing)}")
    _check_shapes(source, state_dict, back, expected, preset)
    weights = {k: state_dict[back[k]] if k in back else expected[k] for k in expected}
    notes = [f"{len(filled)} num_batches_tracked counters absent (older torch); set to 0, "
             "they do not change inference"] if filled else []
    dtypes = sorted({str(v.dtype).removeprefix("torch.") for v in state_dict.values()
                     if v.is_floating_point() and v.dtype != torch.float32})
    if dtypes:
        notes.append(f"{', '.join(dtypes)} tensors stored as float32")
    model.load_state_dict(weights)
    return model.eval(), notes


def _check_shapes(source: Path, state_dict: dict[str, Any], back: dict[str, str],
                  expected: dict[str, Any], preset: Preset) -> None:
    name = back["class_layers.out.weight"]
    classes = tuple(state_dict[name].shape)[0]
    if classes != preset.num_classes:
        raise CheckpointError(
            f"{source}: the classifier has {classes} outputs ('{name}' is "
            f"{tuple(state_dict[name].shape)}) but preset {preset.name!r} has "
            f"{preset.num_classes} labels; give a preset with {classes} labels")
    for key, tensor in expected.items():
        got = state_dict.get(back.get(key, ""))
        if got is not None and tuple(got.shape) != tuple(tensor.shape):
            also = "" if back[key] == key else f" (MONAI '{key}')"
            raise CheckpointError(
                f"{source}: tensor '{back[key]}'{also} has shape {tuple(got.shape)} but MONAI's "
                f"DenseNet121 for preset {preset.name!r} ({preset.in_channels} input channels, "
                f"{preset.num_classes} labels) expects {tuple(tensor.shape)}")


def _agree_activation(preset: Preset, activation: str | None,
                      adopt: bool) -> tuple[Preset, bool, list[str]]:
    if activation is None:
        return preset, False, [f"no final activation seen in the source; preset's "
                               f"{preset.activation} applies to the logits"]
    if activation == preset.activation:
        return preset, False, [f"source ends in {activation}, as the preset's activation: "
                               "it is applied once, by medtrt"]
    if not adopt:
        raise CheckpointError(
            f"the source model ends in {activation} but preset {preset.name!r} applies "
            f"{preset.activation}; pass --adopt-activation to use {activation}, or give a "
            f"preset with activation {activation!r}")
    return (replace(preset, activation=activation), True,
            [f"preset's activation {preset.activation} replaced by the source's {activation} "
             "(--adopt-activation)"])


def _none(activation: str) -> str | None:
    return None if activation == "none" else activation


def _op_threshs(state_dict: dict[str, Any]) -> tuple[float | None, ...] | None:
    tensor = next((v for k, v in state_dict.items() if k.endswith("op_threshs")), None)
    if tensor is None:
        return None
    return tuple(None if math.isnan(x) else float(x) for x in tensor.flatten().tolist())


def _xrv_notes(layout: str, preset: Preset, threshs: Any) -> list[str]:
    if layout != "xrv-densenet121":
        return []
    notes = []
    if threshs is not None:
        notes.append("op_threshs kept in info only: medtrt reports plain sigmoid probabilities, "
                     "not TorchXRayVision's operating-point-normalised ones")
    lo, hi = _intensity_range(preset)
    if (lo, hi) != (-1024.0, 1024.0) or preset.image_size != (224, 224):
        notes.append(f"TorchXRayVision models take 224x224 in [-1024, 1024]; preset "
                     f"{preset.name!r} gives {preset.image_size[0]}x{preset.image_size[1]} in "
                     f"[{lo:g}, {hi:g}] for 8-bit images")
    return notes


def _intensity_range(preset: Preset) -> tuple[float, float]:
    """What 8-bit pixels 0 and 255 become after the preset's intensity transform (channel 0)."""
    if preset.window is not None:
        raw = (0.0, 1.0)
    else:
        scale = 1 / 255 if preset.scale is None else preset.scale
        raw = (0.0, 255 * scale)
    lo, hi = ((x - preset.mean[0]) / preset.std[0] for x in raw)
    return round(lo, 3), round(hi, 3)


def _sha256(path: Path) -> str:
    # not medtrt.artifacts.sha256_file: medtrt.artifacts imports medtrt.models
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _examples(names: list[str]) -> str:
    shown = ", ".join(f"'{n}'" for n in names[:_EXAMPLES])
    return shown + (", ..." if len(names) > _EXAMPLES else "")
