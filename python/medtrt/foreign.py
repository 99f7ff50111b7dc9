"""ONNX graphs medtrt did not export, and the preset a model file carries.

``read_onnx(path, preset)`` is how build and Engine open an ONNX file. A graph exported by
medtrt carries its preset; any other graph needs one (``--preset FILE|NAME``, flags, or
``Engine(path, preset=...)``) and must be a 2-D image classifier: exactly one float32 input
N×C×H×W and one output N×classes. Its shapes (static or symbolic) are checked against the
preset, each misfit said in one line.

The activation is applied once, by medtrt. A graph that already ends in Softmax or Sigmoid
(through Identity nodes) has that node removed, so the graph outputs logits like a medtrt
export: the precision graphs, calibration, the accuracy checks and the engine all see logits,
and the preset's activation (which must be the node's) is applied by the pipeline as for any
other model. Removing the node rather than telling the pipeline to skip its activation keeps one
meaning for the engine's output everywhere (FP16 and INT8 thresholds, ``return_probs`` logits,
the parity checks) and keeps a saturating Sigmoid out of the reduced-precision graph.

A fixed batch dimension is kept: the engine's profile is fixed to it (``medtrt build`` chooses
it, and refuses another ``--batch``), and ONNX Runtime runs it in batches of that size.

``medtrt build`` writes the graph it builds from as ``NAME.medtrt.onnx`` when it differs from
the file given (a foreign graph, a removed node, or another preset): the graph with medtrt's
metadata, including a ``ForeignOnnx`` record of the original file and its sha256, so it can be
rebuilt, run and inspected with no preset argument.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from medtrt._lazy import require
from medtrt.artifacts import Bundle, ForeignOnnx, OnnxMetadata, output_classes, sha256_file
from medtrt.errors import ArtifactError, CheckpointError
from medtrt.models.checkpoint import load_checkpoint
from medtrt.models.presets import PRESETS, Preset, load_preset
from medtrt.onnxio import external_data_files, load_onnx, load_weights, save_onnx

__all__ = ["ACTIVATION_OPS", "Carried", "GraphIO", "OnnxSource", "adopted_path", "carried_preset",
           "graph_io", "read_onnx", "remove_final_activation", "write_adopted"]

ACTIVATION_OPS = {"Softmax": "softmax", "Sigmoid": "sigmoid"}  # graph node -> preset activation
_PASS_THROUGH = ("Identity",)
_DTYPES = {1: "float32", 10: "float16", 11: "float64", 16: "bfloat16", 2: "uint8", 3: "int8",
           6: "int32", 7: "int64"}


def _dims(value_info: Any) -> tuple[int | str, ...]:
    """A tensor's shape: ints for static dims, the symbol (or "?") for the others."""
    return tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else
                 (d.dim_param or "?") for d in value_info.type.tensor_type.shape.dim)


def _show(dims: tuple[int | str, ...]) -> str:
    return "×".join(str(d) for d in dims)


@dataclass(frozen=True)
class GraphIO:
    """The image input and class-score output of a graph, as it declares them."""

    input: str
    input_shape: tuple[int | str, ...]  # N, C, H, W: ints where static
    output: str
    output_shape: tuple[int | str, ...]  # N, classes

    @property
    def batch(self) -> int | None:
        """The fixed batch size, or None when the batch dimension is dynamic."""
        n = self.input_shape[0]
        return n if isinstance(n, int) else None

    @property
    def classes(self) -> int | None:
        k = self.output_shape[1]
        return k if isinstance(k, int) else None

    def describe(self) -> str:
        return (f"input {self.input!r} {_show(self.input_shape)} float32 -> output "
                f"{self.output!r} {_show(self.output_shape)}")


def graph_io(model: Any, path: Any = "ONNX file") -> GraphIO:
    """The graph's one float32 input N×C×H×W and one output N×classes; ArtifactError saying in
    one line what does not fit (names the file)."""
    graph = model.graph
    weights = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in weights]
    fix = "medtrt runs 2-D image classifiers: one float32 input N×C×H×W, one output N×classes"
    if len(inputs) != 1:
        raise ArtifactError(f"{path} has {len(inputs)} inputs "
                            f"({', '.join(repr(i.name) for i in inputs)}); {fix}")
    if len(graph.output) != 1:
        raise ArtifactError(f"{path} has {len(graph.output)} outputs "
                            f"({', '.join(repr(o.name) for o in graph.output)}); {fix}")
    x, y = inputs[0], graph.output[0]
    if y.type.HasField("tensor_type") and not y.type.tensor_type.HasField("shape"):
        y = _inferred(model, y)  # some exporters leave the output's shape out
    for what, v, rank in (("input", x, 4), ("output", y, 2)):
        if not v.type.HasField("tensor_type"):
            raise ArtifactError(f"{path}: {what} {v.name!r} is not a tensor; {fix}")
        kind = _DTYPES.get(v.type.tensor_type.elem_type, f"type {v.type.tensor_type.elem_type}")
        if kind != "float32":
            raise ArtifactError(f"{path}: {what} {v.name!r} is {kind}; {fix} (export the FP32 "
                                "graph: `medtrt build --fp16/--int8` makes the others)")
        dims = _dims(v)
        if len(dims) != rank:
            shape = _show(dims) if dims else "of unknown shape"
            raise ArtifactError(f"{path}: {what} {v.name!r} is {len(dims)}-D ({shape}); {fix}")
    io = GraphIO(x.name, _dims(x), y.name, _dims(y))
    n_in, n_out = io.input_shape[0], io.output_shape[0]
    if isinstance(n_out, int) and n_out != n_in:  # a symbolic output batch may be anything
        raise ArtifactError(f"{path}: the input's batch dimension ({n_in}) and the output's "
                            f"({n_out}) differ; {fix}, the same N in both")
    return io


def _inferred(model: Any, output: Any) -> Any:
    """``output`` with the shape ONNX shape inference gives it (as it is when inference
    cannot)."""
    onnx = require("onnx")
    try:
        inferred = onnx.shape_inference.infer_shapes(model).graph.output
    except Exception:  # noqa: BLE001 - inference is best effort; the caller reports the shape
        return output
    return next((o for o in inferred if o.name == output.name), output)


def _check_fits(io: GraphIO, preset: Preset, path: Any, model: Any) -> GraphIO:
    """ArtifactError naming the first dimension of the graph that contradicts the preset; the
    GraphIO with the class count from shape inference when the graph leaves it symbolic."""
    _, c, h, w = io.input_shape
    where = f"preset {preset.name!r}"
    if isinstance(c, int) and c != preset.in_channels:
        raise ArtifactError(f"{path}: input {io.input!r} has {c} channels but {where} has "
                            f"in_channels {preset.in_channels}; pass --channels {c} (or fix the "
                            "preset)")
    size = tuple(preset.image_size)
    if any(isinstance(g, int) and g != want for g, want in zip((h, w), size)):
        raise ArtifactError(f"{path}: input {io.input!r} is {h}×{w} but {where} has image_size "
                            f"{size[0]}×{size[1]}; pass --size {h}x{w} (or fix the preset)")
    if io.classes is None:
        inferred = output_classes(require("onnx").shape_inference.infer_shapes(model))
        if inferred is None:
            raise ArtifactError(f"{path}: output {io.output!r} is {_show(io.output_shape)}: its "
                                "class dimension is not fixed, so the labels cannot be checked "
                                "against it; export the graph with a static class dimension")
        io = replace(io, output_shape=(io.output_shape[0], inferred))
    if io.classes != preset.num_classes:
        raise ArtifactError(f"{path}: the graph outputs {io.classes} classes but {where} lists "
                            f"{preset.num_classes} labels; give {io.classes} labels (--labels "
                            "FILE, one per line)")
    return io


def _final_activation(model: Any) -> tuple[Any, list[Any]] | None:
    """(the Softmax/Sigmoid node whose output is the graph output, the Identity nodes between),
    or None."""
    graph = model.graph
    producer = {t: n for n in graph.node for t in n.output}
    node, chain = producer.get(graph.output[0].name), []
    while node is not None and node.op_type in _PASS_THROUGH:
        chain.append(node)
        node = producer.get(node.input[0])
    if node is None or node.op_type not in ACTIVATION_OPS:
        return None
    return node, chain


def remove_final_activation(model: Any, preset: Preset, path: Any = "ONNX file") -> str | None:
    """Removes, in place, a final Softmax/Sigmoid (see the module docstring) and returns its op
    type (None when the graph ends otherwise). The graph output becomes the node's input.
    ArtifactError when the node is not the preset's activation, or a Softmax is not over the
    classes."""
    found = _final_activation(model)
    if found is None:
        return None
    node, chain = found
    act = ACTIVATION_OPS[node.op_type]
    if act != preset.activation:
        meaning = ("one class per image" if act == "softmax" else "independent labels")
        raise ArtifactError(f"{path}: the graph ends in {node.op_type} ({meaning}) but preset "
                            f"{preset.name!r} has activation {preset.activation!r}; pass "
                            f"--activation {act} (or set \"activation\": \"{act}\" in the preset)")
    if node.op_type == "Softmax":
        axis = next((a.i for a in node.attribute if a.name == "axis"), None)
        if axis not in (None, 1, -1):
            raise ArtifactError(f"{path}: the graph's final Softmax runs over axis {axis}, not "
                                "over the classes (axis 1); medtrt cannot take it for the "
                                "model's activation: export the graph without it")
    graph = model.graph
    graph.output[0].name = node.input[0]  # the logits
    for info in [v for v in graph.value_info if v.name == node.input[0]]:
        graph.value_info.remove(info)
    # The node and the Identity nodes after it are dead now: dropped, unless something else
    # reads their outputs (then they stay, harmless).
    dead = {t for n in (node, *chain) for t in n.output}
    ours = [bool(set(n.output) & dead) for n in graph.node]
    if not any(set(n.input) & dead for n, mine in zip(graph.node, ours) if not mine):
        keep = [n for n, mine in zip(graph.node, ours) if not mine]
        del graph.node[:]
        graph.node.extend(keep)
    return node.op_type


@dataclass(frozen=True)
class OnnxSource:
    """An ONNX file opened for build or Engine: the graph (final activation removed), the
    metadata with the preset that applies, its input/output, the node removed, and whether the
    graph or its preset differ from the file (then ``write_adopted`` writes the file a build
    starts from)."""

    path: Path
    model: Any  # onnx.ModelProto
    meta: OnnxMetadata
    io: GraphIO
    removed: str | None  # the final node removed on opening ("Softmax", "Sigmoid")
    changed: bool
    weights: bool  # the model holds its external weights (read_onnx(weights=True))
    external: tuple[str, ...] = ()  # the files beside it its weights are stored in

    @property
    def preset(self) -> Preset:
        return self.meta.preset

    def runnable(self) -> str | bytes:
        """What ONNX Runtime should load: the file when its graph is what runs, else the graph
        without its final node, serialized (external weights read in first)."""
        if self.removed is None:
            return str(self.path)
        model = self.model
        if not self.weights and external_data_files(model):
            model = require("onnx").ModelProto()
            model.CopyFrom(self.model)
            load_weights(model, self.path)
        try:
            return model.SerializeToString()
        except ValueError as exc:  # protobuf's 2 GiB limit
            raise ArtifactError(f"{self.path}: the graph without its final {self.removed} is too "
                                f"big to hand to ONNX Runtime in memory ({exc}); build it with "
                                "`medtrt build` and run the bundle") from None


def read_onnx(path: str | os.PathLike[str], preset: Any = None, *,
              weights: bool = True) -> OnnxSource:
    """Opens ``path`` with ``preset`` (a Preset, a preset file or a built-in name; None: the one
    the graph carries, which a graph not exported by medtrt lacks) -- see the module docstring.
    ``weights=False`` leaves external weights unread. One-line ArtifactError for a graph that
    does not fit."""
    path = Path(path)
    model = load_onnx(path, weights=False)
    external = external_data_files(model)
    if weights and external:
        load_weights(model, path)
    props = {p.key: p.value for p in model.metadata_props}
    if preset is None:
        meta = OnnxMetadata.from_model(model, path)  # one not exported by medtrt: how to give one
        io = _check_fits(graph_io(model, path), meta.preset, path, model)
        return OnnxSource(path, model, meta, io, None, False, weights, external)
    preset = load_preset(preset)
    io = _check_fits(graph_io(model, path), preset, path, model)
    given_output = io.output
    removed = remove_final_activation(model, preset, path)
    io = replace(io, output=model.graph.output[0].name)
    if "medtrt.preset" in props:  # exported (or adopted) by medtrt; another preset given
        carried = OnnxMetadata.from_props(props, path)
        return OnnxSource(path, model, replace(carried, preset=preset), io, removed,
                          removed is not None or preset != carried.preset, weights, external)
    producer = " ".join(p for p in (model.producer_name, model.producer_version) if p)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    record = ForeignOnnx(name=path.name, sha256=sha256_file(path), external_data=external,
                         producer=producer or "unknown", opset=opset, input=io.input,
                         output=given_output, batch=io.batch or "dynamic",
                         removed_activation=removed)
    return OnnxSource(path, model, OnnxMetadata(preset, foreign=record), io, removed, True,
                      weights, external)


def adopted_path(source: OnnxSource, folder: Path) -> Path:
    """``STEM.medtrt.onnx`` in ``folder`` for a source ``STEM.onnx`` (or ``STEM.medtrt.onnx``)."""
    stem = source.path.name.removesuffix(".onnx").removesuffix(".medtrt")
    return folder / f"{stem}.medtrt.onnx"


def write_adopted(source: OnnxSource, folder: str | os.PathLike[str]) -> OnnxSource:
    """Writes the changed graph with its metadata as ``STEM.medtrt.onnx`` in ``folder`` (see the
    module docstring) and returns it opened from there, ready to build from."""
    if not source.weights:
        raise ValueError("write_adopted needs the weights: open the graph with read_onnx(path)")
    model = source.model
    source.meta.write(model)
    path = save_onnx(model, adopted_path(source, Path(folder)))
    require("onnx").checker.check_model(str(path))  # from the file: also past protobuf's 2 GiB
    return read_onnx(path)


@dataclass(frozen=True)
class Carried:
    """What a model file carries: its kind, its preset (None when it has none: ``reason`` says
    why) and, for an ONNX graph, its input/output and the final activation node if any."""

    path: str
    kind: str
    preset: Preset | None
    reason: str = ""
    io: GraphIO | None = None
    final_activation: str | None = None
    foreign: ForeignOnnx | None = None


def carried_preset(model: str | os.PathLike[str]) -> Carried:
    """The preset an engine bundle, an ONNX file, a checkpoint or a preset file carries, or a
    built-in preset by name. A file with none gives ``preset=None`` and the reason; an unreadable
    file raises as its reader does."""
    path = Path(model)
    if not path.exists() and str(model) in PRESETS:
        return Carried(str(model), "built-in preset", PRESETS[str(model)])
    if path.name.endswith((".engine", ".engine.json")):
        json_path = Bundle.json_path(path)
        if not json_path.is_file():
            raise FileNotFoundError(f"{json_path} does not exist (an engine bundle is NAME.engine "
                                    "plus NAME.engine.json)")
        try:
            data = json.loads(json_path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ArtifactError(f"{json_path} is not valid JSON ({exc})") from None
        bundle = Bundle.from_dict(data, json_path)
        return Carried(str(path), "engine bundle", bundle.preset, foreign=bundle.source_onnx.foreign)
    if path.suffix == ".json":
        return Carried(str(path), "preset file", load_preset(path))
    if path.suffix == ".onnx":
        return _carried_by_onnx(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist, and is not a built-in preset "
                                f"({', '.join(sorted(PRESETS))})")
    try:
        payload = load_checkpoint(path)
    except CheckpointError as exc:
        return Carried(str(path), "checkpoint", None, str(exc))
    return Carried(str(path), "medtrt checkpoint", Preset.from_dict(payload["preset"]))


def _carried_by_onnx(path: Path) -> Carried:
    model = load_onnx(path, weights=False)
    io = graph_io(model, path)
    found = _final_activation(model)
    act = found[0].op_type if found is not None else None
    if "medtrt.preset" not in {p.key for p in model.metadata_props}:
        return Carried(str(path), "ONNX (not exported by medtrt)", None,
                       "the graph has no medtrt metadata", io, act)
    meta = OnnxMetadata.from_model(model, path)
    kind = "ONNX adopted by medtrt build" if meta.foreign is not None else "ONNX exported by medtrt"
    return Carried(str(path), kind, meta.preset, io=io, final_activation=act,
                   foreign=meta.foreign)
