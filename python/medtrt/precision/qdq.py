"""Explicit INT8 quantization: QuantizeLinear/DequantizeLinear nodes written into the ONNX graph.

Placement follows TensorRT's Q/DQ guidance:
- weights of Conv/Gemm: per-output-channel symmetric INT8 (an INT8 initializer feeding a
  DequantizeLinear with axis 0);
- activations: per-tensor symmetric INT8 (zero point 0, scale amax/127) on the inputs of
  Conv/Gemm/MatMul and of MaxPool/AveragePool (which TensorRT runs in INT8 and fuses);
- no Q/DQ after weighted layers for their own sake; BatchNormalization and ReLU are left for
  TensorRT to fuse;
- Concat (DenseNet's feature reuse): every input is quantized, and by default the inputs of one
  Concat share one scale (the largest amax among them), so TensorRT can concatenate in INT8
  without requantizing. ``share_concat_scales=False`` gives each input its own scale;
  ``quantize_concat=False`` leaves concatenation in floating point;
- residual Add (ResNet's shortcuts): TensorRT fuses an element-wise Add into the convolution
  that produces one of its inputs (one kernel: the Add is done in the convolution's epilogue),
  and NVIDIA's Q/DQ placement recommendation for residual networks is Q/DQ on the other input
  of that Add, the residual (shortcut), and none between the convolution and the Add; Q/DQ on
  both inputs does not give that fusion (TensorRT Developer Guide, Q/DQ layer-placement
  recommendations; NVIDIA's TensorFlow Quantization Toolkit does this for ResNet in
  ``ResNetV1QDQCase``, docs.nvidia.com/deeplearning/tensorrt/tensorflow-quantization-toolkit,
  "Add Custom QDQ Insertion Case"). So an ``Add`` of two computed tensors (neither an
  initializer nor a Constant's output), one of them the output of a Conv (directly or through
  BatchNormalization), gets Q/DQ on its other input. When both come from convolutions (a
  projection shortcut: 1x1 Conv + BN on the block's input), the shortcut is the input whose
  convolution reads a tensor the other input is computed from (the block's input, where the
  main branch starts); when that does not single one out, input 1 (``out + shortcut``, as
  PyTorch code writes it). An Add with a constant, or with no convolution behind either input,
  stays in floating point. ``quantize_residual_add=False`` turns the rule off; a graph without
  such Adds (DenseNet) gets the same plan either way.
Each quantized tensor gets one Q/DQ pair, whatever number of consumers read it through it (an
identity shortcut is usually also the input of the block's first convolution: one pair serves
both).

A ``QdqRecipe`` bundles these choices with layers kept in FP16 from the start (``stem``: the
weighted layers that read the network input through no other weighted layer; ``head``: those
whose output reaches the network output through none; or node names), as ``medtrt build
--concat float --keep-fp16 stem,head`` passes them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medtrt._lazy import require

__all__ = ["QdqPlan", "QdqRecipe", "plan_qdq", "insert_qdq", "keep_in_fp16", "name_nodes",
           "resolve_layers", "ACTIVATION_OPS", "WEIGHTED_OPS"]

log = logging.getLogger(__name__)

WEIGHTED_OPS = ("Conv", "Gemm", "MatMul")
POOL_OPS = ("MaxPool", "AveragePool")
ACTIVATION_OPS = WEIGHTED_OPS + POOL_OPS


@dataclass(frozen=True)
class QdqPlan:
    """Which activation tensors get Q/DQ, and which of them must share one scale."""

    tensors: tuple[str, ...]  # in graph order
    groups: tuple[tuple[str, ...], ...]  # tensors sharing one scale (singletons included)
    consumers: dict[str, tuple[str, ...]] = field(default_factory=dict)  # tensor -> node names
    skipped: dict[str, str] = field(default_factory=dict)  # tensor -> why it stays float

    def scales(self, amax: dict[str, float]) -> dict[str, float]:
        """Per-tensor INT8 scale: the largest amax of the tensor's group / 127 (0 where that
        amax is not positive and finite: the tensor stays in floating point)."""
        out = {}
        for group in self.groups:
            shared = max(float(amax[t]) for t in group)
            ok = shared > 0 and np.isfinite(shared)
            out.update({t: shared / 127.0 if ok else 0.0 for t in group})
        return out

    def group_of(self, tensor: str) -> tuple[str, ...]:
        for g in self.groups:
            if tensor in g:
                return g
        raise KeyError(tensor)


def name_nodes(model: Any) -> None:
    """Give unnamed nodes a stable name (op type and index); plans refer to nodes by name."""
    seen = set()
    for i, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{i}"
        seen.add(node.name)


def _conv_behind(tensor: str, producer: dict[str, Any]) -> Any | None:
    """The Conv whose output ``tensor`` is, directly or through a BatchNormalization, else None."""
    node = producer.get(tensor)
    if node is not None and node.op_type == "BatchNormalization":
        node = producer.get(node.input[0])
    return node if node is not None and node.op_type == "Conv" else None


def _computed_from(tensor: str, source: str, producer: dict[str, Any]) -> bool:
    """Whether ``source`` is ``tensor`` or one of the tensors it is computed from."""
    seen, todo = set(), [tensor]
    while todo:
        t = todo.pop()
        if t == source:
            return True
        if t in seen or t not in producer:
            continue
        seen.add(t)
        todo.extend(i for i in producer[t].input if i)
    return False


def _residual_input(node: Any, producer: dict[str, Any], constants: set[str]) -> str | None:
    """The input of a residual ``Add`` to quantize (see the module docstring), or None when the
    node is not one: another op, an input that is a constant, or no Conv behind either input."""
    if node.op_type != "Add" or len(node.input) != 2 or any(
            not t or t in constants for t in node.input):
        return None
    convs = [_conv_behind(t, producer) for t in node.input]
    if convs[0] is None and convs[1] is None:
        return None
    if convs[0] is None or convs[1] is None:
        return node.input[0] if convs[0] is None else node.input[1]
    # A projection shortcut: its convolution reads what the main branch starts from.
    shortcut = [i for i in (0, 1) if _computed_from(node.input[1 - i], convs[i].input[0], producer)]
    return node.input[shortcut[0] if len(shortcut) == 1 else 1]


def plan_qdq(model: Any, *, quantize_concat: bool = True,
             share_concat_scales: bool = True, quantize_residual_add: bool = True,
             exclude_nodes: Iterable[str] = ()) -> QdqPlan:
    """Decide Q/DQ placement for a float ONNX graph (see the module docstring).

    ``exclude_nodes``: node names whose inputs stay in floating point (e.g. layers kept in
    FP16 by an accuracy gate); their weights are not quantized either.
    """
    name_nodes(model)
    graph = model.graph
    initializers = {i.name for i in graph.initializer}
    producer = {t: n for n in graph.node for t in n.output}
    constants = initializers | {t for n in graph.node if n.op_type == "Constant" for t in n.output}
    excluded = set(exclude_nodes)
    consumers: dict[str, list[str]] = {}
    order: list[str] = []

    def want(tensor: str, node: Any) -> None:
        if tensor in initializers or not tensor:
            return
        if tensor not in consumers:
            consumers[tensor] = []
            order.append(tensor)
        consumers[tensor].append(node.name)

    parent: dict[str, str] = {}

    def find(t: str) -> str:
        while parent.setdefault(t, t) != t:
            parent[t] = parent[parent[t]]
            t = parent[t]
        return t

    for node in graph.node:
        if node.name in excluded:
            continue
        if node.op_type in ACTIVATION_OPS:
            want(node.input[0], node)
        elif node.op_type == "Concat" and quantize_concat:
            inputs = [t for t in node.input if t and t not in initializers]
            for t in inputs:
                want(t, node)
            if share_concat_scales:
                for t in inputs[1:]:
                    parent[find(t)] = find(inputs[0])
        elif quantize_residual_add:
            residual = _residual_input(node, producer, constants)
            if residual is not None:
                want(residual, node)
    groups: dict[str, list[str]] = {}
    for t in order:
        groups.setdefault(find(t), []).append(t)
    return QdqPlan(tuple(order), tuple(tuple(g) for g in groups.values()),
                   {t: tuple(c) for t, c in consumers.items()})


CONCAT_MODES = ("shared", "separate", "float")
LAYER_ALIASES = ("stem", "head")


def resolve_layers(model: Any, names: Iterable[str]) -> list[str]:
    """Node names for ``names``: node names as they are, plus ``stem`` / ``head`` resolved on the
    graph (weighted layers with no weighted layer before / after them on any path)."""
    name_nodes(model)
    graph = model.graph
    nodes = list(graph.node)
    weighted = [n for n in nodes if n.op_type in WEIGHTED_OPS]
    producer = {t: n for n in nodes for t in n.output}
    readers: dict[str, list[Any]] = {}
    for n in nodes:
        for t in n.input:
            readers.setdefault(t, []).append(n)

    def reaches_weighted(start: Any, step: Callable[[Any], Iterable[Any]]) -> bool:
        seen, todo = set(), list(step(start))
        while todo:
            n = todo.pop()
            if n.name in seen:
                continue
            seen.add(n.name)
            if n.op_type in WEIGHTED_OPS:
                return True
            todo.extend(step(n))
        return False

    def before(n: Any) -> list[Any]:
        return [producer[t] for t in n.input if t in producer]

    def after(n: Any) -> list[Any]:
        return [r for t in n.output for r in readers.get(t, ())]

    by_name = {n.name for n in nodes}
    out: list[str] = []
    for name in names:
        if name == "stem":
            found = [n.name for n in weighted if not reaches_weighted(n, before)]
        elif name == "head":
            found = [n.name for n in weighted if not reaches_weighted(n, after)]
        elif name in by_name:
            found = [name]
        else:
            raise ValueError(f"no layer named {name!r} in the graph; name nodes as in "
                             f"`medtrt debug-layers` output, or use {' / '.join(LAYER_ALIASES)}")
        out += [f for f in found if f not in out]
    return out


@dataclass(frozen=True)
class QdqRecipe:
    """Where INT8 goes: Concat handling and layers kept in FP16 from the start.

    ``concat``: "shared" (every Concat input quantized, one scale per Concat: TensorRT
    concatenates in INT8), "separate" (each input its own scale) or "float" (Concat and what
    follows it stay in floating point until the next weighted layer or pool quantizes its input:
    one quantization per value instead of two in DenseNet's BN-ReLU-Conv blocks).
    ``keep_fp16``: node names, ``stem`` or ``head`` (see ``resolve_layers``).
    """

    concat: str = "shared"
    keep_fp16: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.concat not in CONCAT_MODES:
            raise ValueError(f"concat must be one of {CONCAT_MODES}; got {self.concat!r}")
        object.__setattr__(self, "keep_fp16", tuple(self.keep_fp16))

    def layers(self, model: Any, fp16_layers: Iterable[str] = ()) -> list[str]:
        """Every layer left out of INT8: ``keep_fp16`` resolved on the graph, then
        ``fp16_layers`` (e.g. the gate's)."""
        return [*resolve_layers(model, self.keep_fp16), *fp16_layers]

    def plan(self, model: Any, fp16_layers: Iterable[str] = ()) -> QdqPlan:
        """The plan with ``keep_fp16`` and ``fp16_layers`` left unquantized."""
        return self._plan(model, self.layers(model, fp16_layers))

    def apply(self, model: Any, amax: dict[str, float],
              fp16_layers: Iterable[str] = ()) -> tuple[Any, QdqPlan]:
        """(The Q/DQ graph with the kept layers cast to FP16, its plan)."""
        kept = self.layers(model, fp16_layers)
        qdq, plan = insert_qdq(model, amax, plan=self._plan(model, kept))
        keep_in_fp16(qdq, kept)
        return qdq, plan

    def to_json(self, model: Any) -> dict[str, Any]:
        return {"concat": self.concat, "keep_fp16": list(self.keep_fp16),
                "keep_fp16_layers": self.layers(model)}

    def _plan(self, model: Any, kept: list[str]) -> QdqPlan:
        return plan_qdq(model, quantize_concat=self.concat != "float",
                        share_concat_scales=self.concat == "shared", exclude_nodes=kept)


def _weight_qdq(onnx: Any, numpy_helper: Any, w: np.ndarray, name: str,
                axis: int) -> tuple[list[Any], list[Any]]:
    """Per-channel symmetric INT8 weights along ``axis``: (initializers, [DequantizeLinear])."""
    reduce_axes = tuple(i for i in range(w.ndim) if i != axis)
    amax = np.abs(w).max(axis=reduce_axes) if reduce_axes else np.abs(w)
    scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
    shape = [1] * w.ndim
    shape[axis] = -1
    q = np.clip(np.rint(w / scale.reshape(shape)), -127, 127).astype(np.int8)
    inits = [numpy_helper.from_array(q, f"{name}_int8"),
             numpy_helper.from_array(scale, f"{name}_scale"),
             numpy_helper.from_array(np.zeros_like(scale, dtype=np.int8), f"{name}_zero_point")]
    dq = onnx.helper.make_node("DequantizeLinear", [f"{name}_int8", f"{name}_scale",
                                                    f"{name}_zero_point"], [f"{name}_dequant"],
                               name=f"{name}_DequantizeLinear", axis=axis)
    return inits, [dq]


def _replace_nodes(graph: Any, nodes: list[Any], new_initializers: list[Any]) -> None:
    """Set the graph's nodes; keep the initializers still read, plus the new ones."""
    del graph.node[:]
    graph.node.extend(nodes)
    used = {i for n in graph.node for i in n.input}
    kept = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept + new_initializers)


def insert_qdq(model: Any, amax: dict[str, float], *, plan: QdqPlan | None = None,
               out: str | os.PathLike[str] | None = None, **plan_kwargs: Any) -> tuple[Any, QdqPlan]:
    """Return (a copy of ``model`` with Q/DQ nodes, the plan used).

    ``amax`` maps activation tensor names to calibrated thresholds (|x| clipping values); every
    planned tensor needs one. A tensor whose (shared) amax is 0 -- it was all zeros on the
    calibration data -- stays in floating point and is listed in ``plan.skipped``.
    """
    onnx = require("onnx")

    model = onnx.ModelProto.FromString(model.SerializeToString())
    name_nodes(model)
    plan = plan or plan_qdq(model, **plan_kwargs)
    missing = [t for t in plan.tensors if t not in amax]
    if missing:
        raise ValueError(f"insert_qdq: no calibrated amax for {len(missing)} tensors, e.g. "
                         f"{missing[:3]}; calibrate the same FP32 graph first")
    graph = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 13:
        raise ValueError(f"insert_qdq: per-channel Q/DQ needs opset >= 13; the graph has {opset}")

    scale_of, skipped = _activation_scales(plan, amax)
    act_inits, act_nodes = _activation_qdq(onnx, graph, plan, scale_of)
    w_inits, weight_nodes = _weight_qdq_nodes(onnx, graph, plan)
    ordered: list[Any] = []
    for idx, node in enumerate(graph.node):
        ordered += act_nodes.get(idx, [])
        ordered += weight_nodes.get(idx, [])
        ordered.append(node)
    ordered += act_nodes.get(len(graph.node), [])
    _replace_nodes(graph, ordered, act_inits + w_inits)
    onnx.checker.check_model(model)
    final_plan = QdqPlan(plan.tensors, plan.groups, plan.consumers, skipped)
    if out is not None:
        onnx.save(model, str(out))
    return model, final_plan


def _activation_scales(plan: QdqPlan, amax: dict[str, float]) -> tuple[dict[str, float],
                                                                       dict[str, str]]:
    """Each planned tensor's scale; tensors whose shared amax is 0 are skipped, with why."""
    scale_of: dict[str, float] = {}
    skipped = dict(plan.skipped)
    for t, scale in plan.scales(amax).items():
        if scale > 0:
            scale_of[t] = scale
        else:
            shared = max(float(amax[u]) for u in plan.group_of(t))
            skipped[t] = f"amax {shared} (all zeros on the calibration data)"
    return scale_of, skipped


def _activation_qdq(onnx: Any, graph: Any, plan: QdqPlan,
                    scale_of: dict[str, float]) -> tuple[list[Any], dict[int, list[Any]]]:
    """Q/DQ pairs for the activations (keyed by the node index they go before), with the
    planned consumers rewired to the dequantized tensors."""
    from onnx import numpy_helper

    new_inits: list[Any] = []
    new_nodes: dict[int, list[Any]] = {}  # insert before node index
    rewire: dict[tuple[str, str], str] = {}  # (node name, tensor) -> dequantized tensor
    producer_index = {out_name: i for i, n in enumerate(graph.node) for out_name in n.output}
    for t in plan.tensors:
        if t not in scale_of:
            continue
        s = numpy_helper.from_array(np.array(scale_of[t], np.float32), f"{t}_act_scale")
        z = numpy_helper.from_array(np.array(0, np.int8), f"{t}_act_zero_point")
        new_inits += [s, z]
        q = onnx.helper.make_node("QuantizeLinear", [t, s.name, z.name], [f"{t}_quantized"],
                                  name=f"{t}_QuantizeLinear")
        dq = onnx.helper.make_node("DequantizeLinear", [f"{t}_quantized", s.name, z.name],
                                   [f"{t}_dequantized"], name=f"{t}_DequantizeLinear")
        at = producer_index.get(t, -1) + 1  # right after the producer (0 for graph inputs)
        new_nodes.setdefault(at, []).extend([q, dq])
        for node_name in plan.consumers.get(t, ()):
            rewire[(node_name, t)] = f"{t}_dequantized"
    for node in graph.node:
        for i, name in enumerate(node.input):
            if (node.name, name) in rewire:
                node.input[i] = rewire[(node.name, name)]
    return new_inits, new_nodes


def _weight_qdq_nodes(onnx: Any, graph: Any,
                      plan: QdqPlan) -> tuple[list[Any], dict[int, list[Any]]]:
    """Per-channel Q/DQ of the weights of the planned Conv/Gemm/MatMul nodes."""
    from onnx import numpy_helper

    initializers = {i.name: i for i in graph.initializer}
    planned_nodes = {c for cs in plan.consumers.values() for c in cs}
    new_inits: list[Any] = []
    weight_nodes: dict[int, list[Any]] = {}
    for idx, node in enumerate(graph.node):
        if node.op_type not in WEIGHTED_OPS or node.name not in planned_nodes:
            continue  # not weighted, or kept in floating point by the plan
        if len(node.input) < 2 or node.input[1] not in initializers:
            continue
        w = numpy_helper.to_array(initializers[node.input[1]]).astype(np.float32)
        if node.op_type == "Gemm":
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            axis = 0 if trans_b else 1
        elif node.op_type == "MatMul":
            axis = w.ndim - 1
        else:
            axis = 0
        inits, nodes = _weight_qdq(onnx, numpy_helper, w, node.input[1], axis)
        new_inits += inits
        weight_nodes.setdefault(idx, []).extend(nodes)
        node.input[1] = nodes[0].output[0]
    return new_inits, weight_nodes


FP16_OPS = WEIGHTED_OPS + POOL_OPS


def keep_in_fp16(model: Any, nodes: Iterable[str]) -> list[str]:
    """Run the named nodes of a (Q/DQ) float32 graph in FP16, in place.

    Each Conv/Gemm/MatMul/MaxPool/AveragePool named gets a Cast to FP16 on its activation input,
    FP16 copies of its weight and bias initializers, and a Cast back to FP32 on its output, so a
    strongly typed builder (TensorRT 11, TensorRT-RTX) runs exactly that layer in FP16. Nodes of
    other types (Concat: exact in any float precision) are left as they are. The nodes should
    have no Q/DQ of their own (plan them with ``exclude_nodes``). Returns the names cast.
    """
    onnx = require("onnx")
    from onnx import numpy_helper

    wanted = set(nodes)
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    new_inits: list[Any] = []
    ordered: list[Any] = []
    cast = []
    f16, f32 = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT
    for node in graph.node:
        if node.name not in wanted or node.op_type not in FP16_OPS:
            ordered.append(node)
            continue
        act = node.input[0]
        ordered.append(onnx.helper.make_node("Cast", [act], [f"{node.name}_in_fp16"],
                                             name=f"{node.name}_CastToFp16", to=f16))
        node.input[0] = f"{node.name}_in_fp16"
        for i in range(1, len(node.input)):
            name = node.input[i]
            if name in inits:
                arr = numpy_helper.to_array(inits[name]).astype(np.float16)
                new_inits.append(numpy_helper.from_array(arr, f"{name}_fp16_{node.name}"))
                node.input[i] = new_inits[-1].name
            elif name:
                raise ValueError(f"keep_in_fp16: input {i} ({name!r}) of {node.name} is not an "
                                 "initializer; plan the node with exclude_nodes first")
        out = node.output[0]
        node.output[0] = f"{node.name}_out_fp16"
        ordered.append(node)
        ordered.append(onnx.helper.make_node("Cast", [node.output[0]], [out],
                                             name=f"{node.name}_CastToFp32", to=f32))
        cast.append(node.name)
    unknown = wanted - {n.name for n in ordered}
    if unknown:
        raise ValueError(f"keep_in_fp16: no nodes named {sorted(unknown)[:5]} in the graph")
    _replace_nodes(graph, ordered, new_inits)
    onnx.checker.check_model(model)
    return cast
