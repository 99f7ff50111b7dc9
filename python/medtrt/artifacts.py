"""Typed artifacts: the engine bundle and the ONNX metadata medtrt writes.

Whoever writes an artifact and whoever reads it share one frozen dataclass: ``to_dict`` /
``from_dict`` (JSON types checked field by field), ``write`` / ``read``, a schema version, and
the cross-field checks in ``__post_init__``, so a constructor call at build time and a file
read at load time are validated by the same code. A bad file raises ``BundleError`` (a bundle)
or ``ArtifactError`` (ONNX metadata) naming the file, what is wrong and the fix.

The engine bundle is ``NAME.engine`` plus ``NAME.engine.json`` (``Bundle``), with the precision
ONNX ``NAME.onnx`` beside them (what ONNX Runtime runs where TensorRT cannot). The JSON records
the size and sha256 of both files; ``Bundle.read`` checks them. ``Bundle.why_not_runnable``
says, at load time, why TensorRT cannot run the engine on this machine.

Exported ONNX files carry ``OnnxMetadata`` in their ``metadata_props`` (``medtrt.format``,
``medtrt.preset``, ...); reading it also checks the preset's labels against the graph's output.
A graph medtrt did not export gets the same metadata when it is built with a preset
(``medtrt.foreign``), with a ``ForeignOnnx`` record of the file it came from, which the bundle
keeps too (``SourceOnnx.foreign``).

Schema versions: a record is written with the lowest schema that describes it, so files without
a foreign source stay readable by the medtrt before foreign graphs (bundle schema 2, ONNX
metadata schema 1); a foreign source needs bundle schema 3 / ONNX metadata schema 2, which
an older medtrt refuses as written by a newer one.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import re
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

from medtrt._lazy import require
from medtrt._native import cuda_ready, native
from medtrt.errors import ArtifactError, BundleError
from medtrt.models.presets import Preset
from medtrt.trt import import_trt

__all__ = [
    "AccuracyCheck", "ArtifactError", "Bundle", "BundleError", "BuildMachine", "Calibration",
    "ExportCheck", "ExportInfo", "FileRecord", "ForeignOnnx", "InputSpec", "OnnxMetadata",
    "OutputSpec",
    "Profile", "Quantization", "SourceOnnx", "TensorRTInfo", "output_classes", "sha256_file",
]

PRECISIONS = ("fp32", "fp16", "int8")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_GENERIC_REBUILD = "rebuild it with `medtrt build MODEL.onnx` (the model's exported ONNX)"


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------------- JSON <-> dataclasses


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _to_json(value: Any) -> Any:
    """A dataclass tree as JSON types (tuples as lists; a Preset as its own dict)."""
    if isinstance(value, Preset):
        return value.to_dict()
    if dataclasses.is_dataclass(value):
        return {f.name: _to_json(getattr(value, f.name)) for f in fields(value)
                if f.metadata.get("json", True)}
    if isinstance(value, (tuple, list)):
        return [_to_json(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_json(v) for k, v in value.items()}
    return value


def _from_json(tp: Any, value: Any, where: str) -> Any:
    """``value`` (parsed JSON) as type ``tp``; ValueError naming the field ``where`` if not."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        kinds = [a for a in args if a is not type(None)]
        for kind in kinds[:-1]:
            try:
                return _from_json(kind, value, where)
            except ValueError:
                pass
        return _from_json(kinds[-1], value, where)
    if tp is Preset:
        if not isinstance(value, dict):
            raise ValueError(f"{where} must be an object; got {_kind(value)}")
        try:
            return Preset.from_dict(value)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{where} is not a valid preset ({exc})") from None
    if dataclasses.is_dataclass(tp):
        return _dataclass_from_json(tp, value, where)
    if origin is tuple:
        return _tuple_from_json(args, value, where)
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{where} must be an object; got {_kind(value)}")
        return {k: _from_json(args[1], v, f"{where}.{k}") for k, v in value.items()}
    return _scalar_from_json(tp, value, where)


def _tuple_from_json(args: tuple[Any, ...], value: Any, where: str) -> tuple[Any, ...]:
    if not isinstance(value, list):
        raise ValueError(f"{where} must be a list; got {_kind(value)}")
    if len(args) == 2 and args[1] is Ellipsis:
        args = (args[0],) * len(value)
    elif len(args) != len(value):
        raise ValueError(f"{where} must have {len(args)} items; got {len(value)}")
    return tuple(_from_json(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))


def _scalar_from_json(tp: Any, value: Any, where: str) -> Any:
    if tp is bool and isinstance(value, bool):
        return value
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is str and isinstance(value, str):
        return value
    if tp not in (bool, int, float, str):
        raise TypeError(f"artifacts: no JSON reader for type {tp!r} (field {where})")
    name = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[tp]
    raise ValueError(f"{where} must be {name}; got {_kind(value)} {value!r:.40}")


def _dataclass_from_json(cls: type, value: Any, where: str) -> Any:
    if not isinstance(value, dict):
        raise ValueError(f"{where} must be an object; got {_kind(value)}")
    stored = [f for f in fields(cls) if f.init and f.metadata.get("json", True)]
    names = {f.name for f in stored}
    unknown = sorted(set(value) - names)
    if unknown:
        raise ValueError(f"{where} has unknown field(s) {unknown}")
    missing = [f.name for f in stored if f.name not in value
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ValueError(f"{where} lacks field(s) {missing}")
    hints = _hints(cls)
    converted = {n: _from_json(hints[n], v, f"{where}.{n}") for n, v in value.items()}
    try:
        return cls(**converted)
    except ValueError as exc:  # the dataclass's own checks (__post_init__)
        raise ValueError(f"{where}: {exc}") from None


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            type(None): "null"}.get(type(value), type(value).__name__)


class _Record:
    """``to_dict`` / ``from_dict`` for a part of an artifact (the same JSON checks as ``read``)."""

    def to_dict(self) -> dict[str, Any]:
        return _to_json(self)

    @classmethod
    def from_dict(cls, data: Any) -> Any:
        return _dataclass_from_json(cls, data, cls.__name__)


# ------------------------------------------------------------------------------------- bundle


@dataclass(frozen=True)
class FileRecord(_Record):
    """A file of the bundle, beside its JSON: name, size and sha256 at build time."""

    file: str
    bytes: int
    sha256: str

    def __post_init__(self) -> None:
        if not self.file or Path(self.file).name != self.file or self.file in (".", ".."):
            raise ValueError(f"file must be a bare file name beside the bundle; got {self.file!r}")
        if self.bytes < 0:
            raise ValueError(f"bytes must be >= 0; got {self.bytes}")
        if not _SHA256.match(self.sha256):
            raise ValueError(f"sha256 must be 64 lowercase hex digits; got {self.sha256!r}")

    @classmethod
    def of(cls, path: str | os.PathLike[str]) -> FileRecord:
        path = Path(path)
        return cls(path.name, path.stat().st_size, sha256_file(path))


@dataclass(frozen=True)
class Profile(_Record):
    """The engine's optimization profile: input shapes [N, C, H, W] at min, opt and max batch."""

    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def __post_init__(self) -> None:
        lo, opt, hi = self.min, self.opt, self.max
        if not len(lo) == len(opt) == len(hi) >= 2 or not lo[1:] == opt[1:] == hi[1:]:
            raise ValueError(f"profile shapes must differ in the batch only; got {lo}, {opt}, {hi}")
        if not 1 <= lo[0] <= opt[0] <= hi[0]:
            raise ValueError(f"profile batch must be 1 <= min <= opt <= max; got "
                             f"{lo[0]}, {opt[0]}, {hi[0]}")


@dataclass(frozen=True)
class InputSpec(_Record):
    name: str
    dtype: str
    layout: str
    profile: Profile


@dataclass(frozen=True)
class OutputSpec(_Record):
    """The engine's output tensor; ``classes`` is its width in the graph (logits per image)."""

    name: str
    dtype: str
    classes: int

    def __post_init__(self) -> None:
        if self.classes < 1:
            raise ValueError(f"output classes must be >= 1; got {self.classes}")


@dataclass(frozen=True)
class Calibration(_Record):
    """How the INT8 scales were found (``medtrt.precision.calibrate``)."""

    method: str
    images: int
    bins: int
    start_bin: int
    quantized_bins: int
    percentile: float | None
    seed: int
    reused_cache: bool
    cache_json: str
    trt_cache: str
    seconds: float


@dataclass(frozen=True)
class Quantization(_Record):
    """What the INT8 graph quantizes (``medtrt.precision.qdq``)."""

    activation_tensors: int
    scale_groups: int
    concat: str
    keep_fp16: tuple[str, ...]
    keep_fp16_layers: tuple[str, ...]
    share_concat_scales: bool
    kept_in_float: dict[str, str]
    fp16_layers: tuple[str, ...]
    gate_fp16_layers: tuple[str, ...]


@dataclass(frozen=True)
class SourceOnnx(_Record):
    """The FP32 ONNX the engine was built from: exported by medtrt (``export``), or adopted from
    a foreign graph (``foreign``: the file as it was given, before medtrt's changes)."""

    name: str
    sha256: str
    export: ExportInfo | None
    foreign: ForeignOnnx | None = None

    def __post_init__(self) -> None:
        if (self.export is None) == (self.foreign is None):
            raise ValueError("source_onnx must record either how medtrt exported it (export) or "
                             "the foreign graph it came from (foreign)")


@dataclass(frozen=True)
class TensorRTInfo(_Record):
    flavour: str
    version: str
    targets: tuple[str, ...]
    optimization_level: int
    workspace_bytes: int
    timing_cache: str | None
    layers: int
    warnings: tuple[str, ...]


@dataclass(frozen=True)
class BuildMachine(_Record):
    host: str
    gpu: str | None
    compute_capability: str | None
    gpu_status: str | None = None


@dataclass(frozen=True)
class AccuracyCheck(_Record):
    """The precision graph vs the FP32 graph in ONNX Runtime at build time (``medtrt build``)."""

    images: int
    reference: str
    metric: str  # "top1" (softmax) or "label decisions" (sigmoid)
    agreement: float
    max_abs_prob_diff: float
    top1_agreement: float | None = None
    decision_agreement: float | None = None
    images_with_all_decisions_equal: float | None = None

    def to_dict(self) -> dict[str, Any]:  # the other metric's fields are left out, not null
        return {k: v for k, v in _to_json(self).items() if v is not None}


@dataclass(frozen=True)
class Bundle:
    """``NAME.engine.json``: what the engine expects and produces, how it was built and checked.

    ``read`` validates the JSON and the files it lists; ``path`` is where it was read from or
    written to (not stored in the JSON).
    """

    FORMAT: ClassVar[str] = "medtrt-engine-bundle"
    SCHEMA_VERSION: ClassVar[int] = 3  # the newest this medtrt reads and writes
    OLDEST_SCHEMA_VERSION: ClassVar[int] = 2  # the oldest it reads

    precision: str
    engine: FileRecord
    precision_onnx: FileRecord
    input: InputSpec
    output: OutputSpec
    preset: Preset  # labels, output activation and threshold, pre-processing
    source_onnx: SourceOnnx
    tensorrt: TensorRTInfo
    build_machine: BuildMachine
    built_at: str
    accuracy_check: AccuracyCheck
    calibration: Calibration | None = None
    quantization: Quantization | None = None
    accuracy_gate: dict[str, Any] | None = None  # medtrt.precision.GateResult.to_json()
    timings: dict[str, float] = field(default_factory=dict)
    path: Path | None = field(default=None, compare=False, metadata={"json": False})

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}; got {self.precision!r}")
        if (self.calibration is not None) != (self.precision == "int8"):
            raise ValueError(f"a {self.precision} bundle "
                             f"{'lacks' if self.calibration is None else 'has'} calibration")
        if self.output.classes != self.preset.num_classes:
            raise ValueError(f"the model outputs {self.output.classes} classes but the bundle's "
                             f"preset lists {self.preset.num_classes} labels")
        want = (self.preset.in_channels, *self.preset.image_size)
        if tuple(self.input.profile.opt[1:]) != want:
            raise ValueError(f"the engine's input profile is {list(self.input.profile.opt[1:])} "
                             f"(C, H, W) but the preset's input is {list(want)}")

    # -- files -----------------------------------------------------------------------------------

    @staticmethod
    def json_path(path: str | os.PathLike[str]) -> Path:
        """``NAME.engine.json`` for ``NAME.engine`` or ``NAME.engine.json``."""
        path = Path(path)
        return path if path.name.endswith(".engine.json") else path.with_name(path.name + ".json")

    @property
    def engine_path(self) -> Path:
        return self._beside(self.engine.file)

    @property
    def precision_onnx_path(self) -> Path:
        return self._beside(self.precision_onnx.file)

    def _beside(self, name: str) -> Path:
        if self.path is None:
            raise ValueError("this Bundle has no path: read or write it first")
        return self.path.with_name(name)

    # -- JSON ------------------------------------------------------------------------------------

    @property
    def schema_version(self) -> int:
        """The lowest schema that describes this bundle: 3 for a foreign source, else 2."""
        return 3 if self.source_onnx.foreign is not None else 2

    def to_dict(self) -> dict[str, Any]:
        d = _to_json(self)
        d["accuracy_check"] = self.accuracy_check.to_dict()
        if self.source_onnx.foreign is None:  # schema 2's layout
            del d["source_onnx"]["foreign"]
        return {"format": self.FORMAT, "schema_version": self.schema_version, **d}

    @classmethod
    def from_dict(cls, data: Any, path: str | os.PathLike[str] | None = None) -> Bundle:
        """The bundle in ``data`` (parsed JSON); BundleError naming ``path`` when it is not one
        this medtrt reads, or is damaged."""
        where = Path(path) if path is not None else "bundle"
        _check_bundle_version(data, where)
        body = {k: v for k, v in data.items() if k not in ("format", "schema_version")}
        try:
            bundle = _dataclass_from_json(cls, body, "bundle")
        except ValueError as exc:
            raise BundleError(f"{where}: {exc}; the file was damaged or edited: "
                              f"{_rebuild_hint(data)}") from None
        return dataclasses.replace(bundle, path=Path(path)) if path is not None else bundle

    def write(self, path: str | os.PathLike[str]) -> Bundle:
        """Writes ``NAME.engine.json`` (atomically) beside the files it lists; returns the bundle
        with its ``path`` set."""
        path = self.json_path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        tmp.replace(path)
        return dataclasses.replace(self, path=path)

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> Bundle:
        """The bundle of ``NAME.engine`` or ``NAME.engine.json``, its JSON validated and its
        engine file checked (present, size, sha256); the precision ONNX is checked when present
        (``require_precision_onnx`` checks that it is)."""
        json_path = cls.json_path(path)
        if not json_path.is_file():
            raise BundleError(f"{json_path} is missing: an engine bundle is NAME.engine plus "
                              f"NAME.engine.json; {_GENERIC_REBUILD}")
        try:
            data = json.loads(json_path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BundleError(f"{json_path} is not valid JSON ({exc}): the file was damaged; "
                              f"{_GENERIC_REBUILD}") from None
        bundle = cls.from_dict(data, json_path)
        bundle._check_file(bundle.engine, "engine file")
        if bundle.precision_onnx_path.is_file():
            bundle._check_file(bundle.precision_onnx, "precision ONNX")
        return bundle

    def require_precision_onnx(self, why: str) -> Path:
        """The precision ONNX (checked by ``read``), or BundleError when it is missing."""
        onnx_path = self.precision_onnx_path
        if not onnx_path.is_file():
            raise BundleError(f"{onnx_path} is missing: the bundle {self.path} runs it in ONNX "
                              f"Runtime where TensorRT cannot run the engine ({why}); copy it "
                              f"beside the engine, or {self.rebuild_hint()}")
        return onnx_path

    def _check_file(self, record: FileRecord, what: str) -> None:
        path = self._beside(record.file)
        fix = self.rebuild_hint()
        if not path.is_file():
            raise BundleError(f"{what} {path} is missing (listed by {self.path}); {fix}")
        size = path.stat().st_size
        if size != record.bytes:
            raise BundleError(f"{what} {path} is {size} bytes but its bundle says {record.bytes} "
                              f"(truncated or replaced); {fix}")
        digest = sha256_file(path)
        if digest != record.sha256:
            raise BundleError(f"{what} {path} has sha256 {digest[:16]}... but its bundle "
                              f"{self.path} records {record.sha256[:16]}... (changed or replaced "
                              f"after the build); {fix}")

    def rebuild_hint(self) -> str:
        """How to rebuild this bundle: "rebuild it with `medtrt build ...`"."""
        return f"rebuild it with `{self.rebuild_command()}`"

    def rebuild_command(self) -> str:
        flags = {"fp32": "", "fp16": " --fp16", "int8": " --int8"}[self.precision]
        if self.calibration is not None:
            flags += f" --calib-cache {self.calibration.cache_json}"
        batch = [self.input.profile.min[0], self.input.profile.opt[0], self.input.profile.max[0]]
        if batch != [1, 32, 256]:
            flags += f" --batch {','.join(map(str, batch))}"
        return f"medtrt build {self.source_onnx.name}{flags}"

    # -- where it runs ---------------------------------------------------------------------------

    def why_not_runnable(self, device: int = 0) -> str | None:
        """Why TensorRT cannot run this engine here on GPU ``device`` (its flavour or version is
        not installed, no usable GPU, another GPU model), decided now; None when it can."""
        built = self.tensorrt
        try:
            trt, flavour = import_trt(built.flavour)
        except ImportError as exc:
            return (f"the engine was built with {built.flavour} {built.version}, which is not "
                    f"installed here ({exc})")
        if str(trt.__version__) != built.version:
            return (f"the engine was built with {flavour} {built.version} but {trt.__version__} "
                    f"is installed; {self.rebuild_hint()} here")
        ok, why = cuda_ready()
        if not ok:
            return (f"running a TensorRT engine needs a CUDA GPU: {why}; use backend='onnxruntime'"
                    " (runs the bundle's precision ONNX on the CPU)")
        count = native().cuda_device_count()
        if not 0 <= device < count:
            return (f"GPU {device} does not exist here ({count} visible); pass device=0"
                    f"{f'..{count - 1}' if count > 1 else ''}")
        if flavour == "tensorrt" and self.build_machine.gpu:
            here = require("torch").cuda.get_device_name(device)
            if here != self.build_machine.gpu:
                return (f"the engine was built on {self.build_machine.gpu} but this GPU is "
                        f"{here}; TensorRT engines are GPU-specific: {self.rebuild_hint()} here")
        return None


def _check_bundle_version(data: Any, where: Any) -> None:
    fmt = data.get("format") if isinstance(data, dict) else None
    if not isinstance(fmt, str) or not fmt.startswith(Bundle.FORMAT):
        raise BundleError(f"{where} is not a medtrt engine bundle (no \"format\": "
                          f"\"{Bundle.FORMAT}\"); {_GENERIC_REBUILD}")
    version = data.get("schema_version")
    if version is None:
        raise BundleError(f"{where} was written by an older medtrt (format {fmt!r}, no schema "
                          f"version; this medtrt reads schema {Bundle.OLDEST_SCHEMA_VERSION} to "
                          f"{Bundle.SCHEMA_VERSION}); "
                          f"{_rebuild_hint(data)}")
    if fmt != Bundle.FORMAT or not isinstance(version, int) or isinstance(version, bool):
        raise BundleError(f"{where}: format {fmt!r}, schema version {version!r} is not one "
                          f"medtrt writes (the file was damaged or edited); {_GENERIC_REBUILD}")
    if version > Bundle.SCHEMA_VERSION:
        raise BundleError(f"{where} was written by a newer medtrt (bundle schema {version}; this "
                          f"medtrt reads {Bundle.SCHEMA_VERSION}): upgrade medtrt, or "
                          f"{_rebuild_hint(data)} with this one")
    if version < Bundle.OLDEST_SCHEMA_VERSION:
        raise BundleError(f"{where} was written by an older medtrt (bundle schema {version}; this "
                          f"medtrt reads {Bundle.OLDEST_SCHEMA_VERSION} to "
                          f"{Bundle.SCHEMA_VERSION}); {_rebuild_hint(data)}")


def _rebuild_hint(data: Any) -> str:
    """The rebuild command from a bundle dict that may be damaged or old (best effort)."""
    source = data.get("source_onnx") if isinstance(data, dict) else None
    name = source.get("name") if isinstance(source, dict) else None
    if not isinstance(name, str) or not name:
        return _GENERIC_REBUILD
    flag = {"fp16": " --fp16", "int8": " --int8"}.get(data.get("precision"), "")
    return f"rebuild it with `medtrt build {name}{flag}`"


# ------------------------------------------------------------------------------- ONNX metadata


@dataclass(frozen=True)
class ExportInfo(_Record):
    """How ``medtrt export`` made the graph."""

    opset: int
    batch: int | str  # "dynamic" or a fixed batch size
    torch: str


@dataclass(frozen=True)
class ExportCheck(_Record):
    """ONNX Runtime vs PyTorch at one batch size, at export time."""

    batch: int
    max_abs_logit_error: float
    max_abs_logit: float


@dataclass(frozen=True)
class ForeignOnnx(_Record):
    """An ONNX graph medtrt did not export, as it was given (``medtrt build any.onnx --preset``):
    its file name and sha256 (of the .onnx file; ``external_data`` names the files its weights
    were read from), who made it, its input and output names, its batch ("dynamic" or the fixed
    size the engine's profile is fixed to), and the final Softmax/Sigmoid node medtrt removed so
    the activation is applied once, by medtrt (None when the graph output logits)."""

    name: str
    sha256: str
    external_data: tuple[str, ...]
    producer: str
    opset: int
    input: str
    output: str
    batch: int | str
    removed_activation: str | None

    def __post_init__(self) -> None:
        if not _SHA256.match(self.sha256):
            raise ValueError(f"sha256 must be 64 lowercase hex digits; got {self.sha256!r}")
        if self.removed_activation not in (None, "Softmax", "Sigmoid"):
            raise ValueError(f"removed_activation must be Softmax, Sigmoid or null; got "
                             f"{self.removed_activation!r}")


def output_classes(model: Any) -> int | None:
    """The class dimension (last) of an ONNX model's only output, when the graph fixes it."""
    outputs = model.graph.output
    if len(outputs) != 1:
        return None
    dims = outputs[0].type.tensor_type.shape.dim
    if not dims or not dims[-1].HasField("dim_value"):
        return None
    return int(dims[-1].dim_value)


@dataclass(frozen=True)
class OnnxMetadata:
    """What ``medtrt export`` stores in an ONNX file's ``metadata_props`` (``medtrt.*`` keys,
    JSON values), so later steps need no other input."""

    FORMAT: ClassVar[str] = "medtrt-onnx"
    SCHEMA_VERSION: ClassVar[int] = 2  # the newest this medtrt reads and writes

    preset: Preset
    source_checkpoint_sha256: str | None = None  # exported by medtrt: the checkpoint's sha256
    export: ExportInfo | None = None  # exported by medtrt: how
    export_check: tuple[ExportCheck, ...] | None = None  # absent when export skipped the check
    foreign: ForeignOnnx | None = None  # adopted: the foreign graph it came from (schema 2)

    def __post_init__(self) -> None:
        if (self.export is None) == (self.foreign is None):
            raise ValueError("the metadata must record either how medtrt exported the graph "
                             "(medtrt.export) or the foreign graph it came from (medtrt.foreign)")
        if self.export is not None and self.source_checkpoint_sha256 is None:
            raise ValueError("metadata lacks field(s) ['source_checkpoint_sha256']")

    @property
    def schema_version(self) -> int:
        """The lowest schema that describes this record: 2 with a foreign source, else 1."""
        return 2 if self.foreign is not None else 1

    def to_props(self) -> dict[str, str]:
        props = {"medtrt.format": f"{self.FORMAT}/{self.schema_version}",
                 "medtrt.preset": self.preset.to_json()}
        if self.source_checkpoint_sha256 is not None:
            props["medtrt.source_checkpoint_sha256"] = self.source_checkpoint_sha256
        for key in ("export", "export_check", "foreign"):
            value = getattr(self, key)
            if value is not None:
                props[f"medtrt.{key}"] = json.dumps(_to_json(value))
        return props

    def write(self, model: Any) -> None:
        """Sets the ``medtrt.*`` entries of an ``onnx.ModelProto``'s ``metadata_props``."""
        props = self.to_props()
        stale = [p for p in model.metadata_props if p.key.startswith("medtrt.") and p.key not in props]
        for entry in stale:  # e.g. an adopted graph's medtrt.export: not carried over
            model.metadata_props.remove(entry)
        entries = {p.key: p for p in model.metadata_props}
        for key, value in props.items():
            if key in entries:
                entries[key].value = value
            else:
                entry = model.metadata_props.add()
                entry.key, entry.value = key, value

    @classmethod
    def from_props(cls, props: dict[str, str], path: Any = "ONNX file") -> OnnxMetadata:
        fix = "re-export it with `medtrt export CHECKPOINT OUT.onnx`"
        _check_onnx_version(props, path, fix)
        values: dict[str, Any] = {}
        for f in fields(cls):
            key = f"medtrt.{f.name}"
            raw = props.get(key)
            if raw is None:
                continue
            try:
                values[f.name] = raw if f.name == "source_checkpoint_sha256" else json.loads(raw)
            except json.JSONDecodeError as exc:
                raise ArtifactError(f"{path}: metadata {key} is not valid JSON ({exc}); "
                                    f"{fix}") from None
        try:
            return _dataclass_from_json(cls, values, "metadata")
        except ValueError as exc:
            raise ArtifactError(f"{path}: {exc}; the medtrt metadata was damaged or edited: "
                                f"{fix}") from None

    @classmethod
    def from_model(cls, model: Any, path: Any = "ONNX file") -> OnnxMetadata:
        """The metadata of a loaded ``onnx.ModelProto``, its labels checked against the graph's
        output width."""
        meta = cls.from_props({p.key: p.value for p in model.metadata_props}, path)
        classes = output_classes(model)
        if classes is not None and classes != meta.preset.num_classes:
            raise ArtifactError(f"{path}: its preset lists {meta.preset.num_classes} labels but "
                                f"the graph outputs {classes} classes; re-export it with "
                                "`medtrt export CHECKPOINT OUT.onnx` (a checkpoint whose preset "
                                "matches its model)")
        return meta

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> OnnxMetadata:
        onnx = require("onnx")
        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception as exc:  # noqa: BLE001 - protobuf's errors have no common base
            raise ArtifactError(f"{path} is not a readable ONNX file ({exc}); export it with "
                                "`medtrt export`") from exc
        return cls.from_model(model, path)


def _check_onnx_version(props: dict[str, str], path: Any, fix: str) -> None:
    fmt = props.get("medtrt.format", "")
    name, _, version = fmt.partition("/")
    if name != OnnxMetadata.FORMAT or "medtrt.preset" not in props:
        raise ArtifactError(f"{path} was not exported by medtrt (no medtrt.preset metadata): give "
                            "its preset (--preset FILE|NAME, or --labels FILE --size N --channels "
                            "C --activation A; Engine(path, preset=...)), or export it with "
                            "`medtrt export`")
    if not version.isdigit():
        raise ArtifactError(f"{path}: metadata medtrt.format {fmt!r} has no schema version; "
                            f"{fix}")
    if int(version) > OnnxMetadata.SCHEMA_VERSION:
        raise ArtifactError(f"{path} was exported by a newer medtrt ({fmt}; this medtrt reads "
                            f"{OnnxMetadata.FORMAT}/{OnnxMetadata.SCHEMA_VERSION}): upgrade "
                            f"medtrt, or {fix} with this one")
