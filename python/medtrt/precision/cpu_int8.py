"""The graphs an INT8 bundle runs on a CPU, derived from its precision ONNX alone.

The precision ONNX is laid out for TensorRT (``medtrt.precision.qdq``): symmetric INT8 Q/DQ on
the inputs of convolutions, pools and Concats, BatchNormalization and ReLU left for TensorRT to
fuse. ONNX Runtime on a CPU fuses little of it (a ReLU before a symmetric INT8 Q stays, so the
1x1 convolutions run in float; every BatchNormalization runs in float between a DQ and a Q;
QLinearConv runs NHWC, so Transposes surround every quantized convolution): that graph runs
slower than the FP32 graph on a CPU. Two graphs are derived from it instead, deterministically
(same input bytes, same output bytes) and with no second calibration:

``cpu_int8_graph``: the same quantization, laid out for ONNX Runtime's integer kernels
(u8 activations x s8 weights: VNNI's and AMX's fast path, ``QLinearConv``):

- a quantized ReLU output is quantized as uint8 with zero point 0 and the graph's scale
  amax/127 (the TensorRT graph's grid: values 0..127), read from the ReLU's input; the ReLU is
  removed (the uint8 Q clamps at 0 exactly as ReLU does), so Conv -> Q becomes one
  ``QLinearConv``. The finer amax/255 was measured too (RMS logit error against FP32 on the
  demo's 180 held-out images): 0.82-0.93x the TensorRT graph's with the default recipe, but
  1.6x with ``--concat separate`` and 1.9x with ``--keep-fp16 stem,head``; on the TensorRT
  grid it is 0.89-1.03x on all six graphs tried (those three, ``--concat float``, max and
  entropy calibration). Values up to 127 also keep VPMADDUBSW's int16 sums from saturating
  on CPUs without VNNI;
- every other quantized tensor keeps its scale as uint8 with zero point 128 (the same grid as
  symmetric INT8, shifted: exact), so a convolution's input and output have one type;
- a Concat whose inputs share one scale (TensorRT's shared Concat scales) has its output on
  that grid: it is quantized there (lossless), and a Q the TensorRT graph puts on it with
  another scale (the next Concat's) is dropped: ``QLinearConcat`` requantizes that input as
  TensorRT does; a MaxPool of a quantized tensor keeps its grid (lossless) the same way;
- a BatchNormalization between a quantized tensor and a Q (directly or through a removed ReLU:
  DenseNet's BN-ReLU before each convolution) becomes a 1x1 depthwise convolution whose INT8
  weight is +-127 with scale |gamma/sigma|/127 per channel (exact) and an INT32 bias: the
  DQ -> BN -> Q chain becomes one depthwise ``QLinearConv``, and the integer chain is unbroken;
- a BatchNormalization right after a convolution with INT8 weights (a graph whose exporter did
  not fold it) is folded into the weight scales (the INT8 values stay; their sign flips where
  gamma/sigma < 0) and the bias;
- the float bias of a convolution or Gemm with a quantized input becomes INT32 at input scale
  x weight scale (what ``QLinearConv`` takes).

Where a tensor's consumer read the float tensor in the TensorRT graph, it reads the quantized
one here: the same value for a Concat output or MaxPool (lossless), one more rounding where it
is not (an AveragePool output read by a BatchNormalization; with ``--concat separate``, a
Concat output).

``fp32_graph``: the Q/DQ pairs on activations removed and the INT8 weights dequantized into
float initializers: FP32 compute with INT8-rounded weights (the FP32 source graph is not part of
a bundle). What a CPU without integer dot-product instructions runs.

``cpu_graph_path`` writes either into the medtrt cache (``$MEDTRT_CACHE/cpu-graphs``, keyed by
the precision ONNX's sha256 and ``REWRITE_VERSION``), not beside the bundle: a bundle stays
what the build wrote, readable by every medtrt (no new file, no new schema), and every INT8
bundle already built gets its CPU graphs. Deriving both takes about a second for DenseNet-121.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medtrt._cache import cache_dir as medtrt_cache_dir
from medtrt._lazy import require
from medtrt.artifacts import sha256_file
from medtrt.precision.qdq import name_nodes

__all__ = ["GRAPH_KINDS", "REWRITE_VERSION", "cpu_graph_path", "cpu_int8_graph", "fp32_graph"]

log = logging.getLogger(__name__)

REWRITE_VERSION = 2  # bump when either rewrite changes its output: the cache key includes it
GRAPH_KINDS = ("cpu-int8", "fp32")


@dataclass(frozen=True)
class _Act:
    """An activation tensor the TensorRT graph quantizes: symmetric INT8, one scale."""

    tensor: str
    scale: np.float32
    q: Any  # the QuantizeLinear node
    dqs: tuple[Any, ...]  # the DequantizeLinear nodes reading it


@dataclass(frozen=True)
class _Enc:
    """How the CPU graph quantizes a tensor: uint8, ``scale``, ``zero``; ``source`` is what the
    Q reads (the tensor, or the input of the ReLU that produced it)."""

    scale: np.float32
    zero: int
    source: str


class _Graph:
    """Lookups over one graph: initializers, producers, consumers."""

    def __init__(self, onnx: Any, model: Any) -> None:
        self.onnx, self.model, self.graph = onnx, model, model.graph
        self.refresh()

    def refresh(self) -> None:
        self.inits = {i.name: i for i in self.graph.initializer}
        self.producer = {o: n for n in self.graph.node for o in n.output}
        self.consumers: dict[str, list[Any]] = {}
        for n in self.graph.node:
            for t in n.input:
                self.consumers.setdefault(t, []).append(n)
        self.outputs = {o.name for o in self.graph.output}

    def array(self, name: str) -> np.ndarray:
        return self.onnx.numpy_helper.to_array(self.inits[name])

    def const(self, name: str) -> np.ndarray | None:
        return self.array(name) if name in self.inits else None

    def weight(self, tensor: str) -> tuple[Any, np.ndarray, np.ndarray] | None:
        """(DQ node, int8 values, scales) when ``tensor`` is an INT8 initializer dequantized
        with zero point 0 (per tensor or per channel), else None."""
        dq = self.producer.get(tensor)
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in self.inits:
            return None
        q, scale = self.array(dq.input[0]), self.const(dq.input[1])
        zero = self.const(dq.input[2]) if len(dq.input) > 2 and dq.input[2] else None
        if q.dtype != np.int8 or scale is None or (zero is not None and zero.any()):
            return None
        return dq, q, scale


def _activations(g: _Graph) -> dict[str, _Act]:
    """The TensorRT graph's activation Q/DQ pairs: a QuantizeLinear of a computed tensor (or the
    graph input) with a scalar scale and INT8 zero point 0, read only by DequantizeLinear nodes
    with the same scale and zero point."""
    acts: dict[str, _Act] = {}
    for q in g.graph.node:
        if q.op_type != "QuantizeLinear" or q.input[0] in g.inits or len(q.input) < 3:
            continue
        scale, zero = g.const(q.input[1]), g.const(q.input[2])
        if scale is None or zero is None or scale.size != 1 or zero.dtype != np.int8 or zero.any():
            continue
        dqs = g.consumers.get(q.output[0], [])
        if dqs and all(d.op_type == "DequantizeLinear" and list(d.input[1:3]) == list(q.input[1:3])
                       for d in dqs) and q.output[0] not in g.outputs:
            acts[q.input[0]] = _Act(q.input[0], np.float32(scale.item()), q, tuple(dqs))
    return acts


def _dequantized(g: _Graph, acts: dict[str, _Act]) -> dict[str, str]:
    """TensorRT DQ output -> the tensor it dequantizes."""
    return {d.output[0]: a.tensor for a in acts.values() for d in a.dqs}


def _shared_grid(node: Any, acts: dict[str, _Act], dq_of: dict[str, str]) -> np.float32 | None:
    """The scale all inputs of a Concat are dequantized with in the TensorRT graph (its output
    lies on that grid), or None."""
    if node.op_type != "Concat" or not node.input:
        return None
    scales = {acts[dq_of[t]].scale if t in dq_of else None for t in node.input}
    return scales.pop() if len(scales) == 1 and None not in scales else None


def _relu_source(g: _Graph, act: _Act) -> str | None:
    """The ReLU's input when ``act`` is a ReLU output that nothing reads unquantized, else None."""
    relu = g.producer.get(act.tensor)
    if relu is None or relu.op_type != "Relu" or act.tensor in g.outputs:
        return None
    return relu.input[0]


def _encodings(g: _Graph, acts: dict[str, _Act]) -> tuple[dict[str, _Enc], set[str]]:
    """Every tensor the CPU graph quantizes, in graph order, and the ReLUs it removes."""
    dq_of = _dequantized(g, acts)
    enc: dict[str, _Enc] = {}
    dropped: set[str] = set()
    for inp in g.graph.input:
        if inp.name in acts:
            enc[inp.name] = _Enc(acts[inp.name].scale, 128, inp.name)
    for node in g.graph.node:
        out = node.output[0] if node.output else ""
        grid = _shared_grid(node, acts, dq_of)
        if grid is not None:  # lossless: the Concat of values on one grid
            enc[out] = _Enc(grid, 128, out)
        elif node.op_type == "MaxPool" and len(node.output) == 1 and node.input[0] in dq_of \
                and dq_of[node.input[0]] in enc:
            enc[out] = _Enc(enc[dq_of[node.input[0]]].scale, enc[dq_of[node.input[0]]].zero, out)
        elif out in acts:
            source = _relu_source(g, acts[out])
            if source is None:
                enc[out] = _Enc(acts[out].scale, 128, out)
            else:
                enc[out] = _Enc(acts[out].scale, 0, source)
                dropped.add(g.producer[out].name)
    return enc, dropped


class _Writer:
    """The CPU graph's nodes and new initializers, in order."""

    def __init__(self, g: _Graph, enc: dict[str, _Enc]) -> None:
        self.g, self.enc = g, enc
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self.by_source: dict[str, list[str]] = {}
        for t, e in enc.items():
            self.by_source.setdefault(e.source, []).append(t)
        self.dequantizes = {self.dq_name(t): e for t, e in enc.items()}

    def init(self, array: np.ndarray, name: str) -> str:
        self.inits.append(self.g.onnx.numpy_helper.from_array(array, name))
        return name

    def node(self, op: str, inputs: list[str], outputs: list[str], name: str, **attrs: Any) -> None:
        self.nodes.append(self.g.onnx.helper.make_node(op, inputs, outputs, name=name, **attrs))

    @staticmethod
    def dq_name(t: str) -> str:
        return f"{t}_cpu_dq"

    def quantize(self, produced: str) -> None:
        """The Q/DQ pair of each tensor whose Q reads ``produced``."""
        for t in self.by_source.get(produced, ()):
            e = self.enc[t]
            scale = self.init(np.array(e.scale, np.float32), f"{t}_cpu_scale")
            zero = self.init(np.array(e.zero, np.uint8), f"{t}_cpu_zero_point")
            self.node("QuantizeLinear", [e.source, scale, zero], [f"{t}_cpu_q"], f"{t}_cpu_Q")
            self.node("DequantizeLinear", [f"{t}_cpu_q", scale, zero], [self.dq_name(t)],
                      f"{t}_cpu_DQ")



def _int32_bias(w: _Writer, node: Any, x: _Enc, w_scale: np.ndarray, bias: np.ndarray) -> None:
    """Set ``node``'s bias (input 2) to ``bias`` as INT32 at (input scale x weight scale),
    dequantized."""
    bias = bias.astype(np.float64)
    scale = (np.float64(x.scale) * w_scale.astype(np.float64)).astype(np.float32)
    scale = np.broadcast_to(scale, bias.shape).astype(np.float32)
    q = np.clip(np.rint(bias / scale.astype(np.float64)), -2**31, 2**31 - 1).astype(np.int32)
    name = f"{node.name}_cpu_bias"
    w.node("DequantizeLinear", [w.init(q, f"{name}_int32"), w.init(scale, f"{name}_scale"),
                                w.init(np.zeros_like(q), f"{name}_zero_point")],
           [f"{name}_dq"], f"{name}_DQ", axis=0)
    del node.input[2:]
    node.input.append(f"{name}_dq")


def _bn_affine(g: _Graph, bn: Any) -> tuple[np.ndarray, np.ndarray]:
    """BatchNormalization as y = a * x + c per channel (float64)."""
    gamma, beta, mean, var = (g.array(t).astype(np.float64) for t in bn.input[1:5])
    eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
    a = gamma / np.sqrt(var + eps)
    return a, beta - mean * a


def _depthwise_bn(w: _Writer, bn: Any, x: _Enc, rank: int) -> None:
    """BatchNormalization of a quantized tensor as a 1x1 depthwise Conv: INT8 weight +-127 with
    scale |a|/127 per channel (exact), INT32 bias."""
    a, c = _bn_affine(w.g, bn)
    channels = a.size
    w_scale = np.where(a != 0, np.abs(a) / 127.0, 1.0).astype(np.float32)
    w_int8 = (np.sign(a) * 127).astype(np.int8).reshape((channels,) + (1,) * (rank - 1))
    name = f"{bn.name}_cpu_depthwise"
    w.node("DequantizeLinear", [w.init(w_int8, f"{name}_int8"), w.init(w_scale, f"{name}_scale"),
                                w.init(np.zeros(channels, np.int8), f"{name}_zero_point")],
           [f"{name}_weight"], f"{name}_weight_DQ", axis=0)
    conv = w.g.onnx.helper.make_node("Conv", [bn.input[0], f"{name}_weight"], [bn.output[0]],
                                     name=name, group=channels, kernel_shape=[1] * (rank - 2))
    _int32_bias(w, conv, x, w_scale, c)
    w.nodes.append(conv)


def _emit(w: _Writer, node: Any, ranks: dict[str, int]) -> None:
    """One node of the TensorRT graph into the CPU graph (rewritten where a rule applies)."""
    x = w.dequantizes.get(node.input[0]) if node.input else None
    ends_in_q = node.output and node.output[0] in w.by_source
    if node.op_type == "BatchNormalization" and x is not None and ends_in_q \
            and len(node.output) == 1 and ranks.get(node.input[0], 0) >= 3:
        _depthwise_bn(w, node, x, ranks[node.input[0]])
        return
    if node.op_type in ("Conv", "Gemm") and x is not None and len(node.input) > 2 \
            and node.input[2] in w.g.inits:
        weight = w.g.weight(node.input[1])
        if weight is not None:
            _int32_bias(w, node, x, weight[2], w.g.array(node.input[2]))
    w.nodes.append(node)


def _fold_conv_bn(g: _Graph) -> int:
    """Fold each BatchNormalization that follows a Conv with INT8 weights (its only reader)
    into the weight scales and bias, in place; returns how many."""
    folded, removed = 0, set()
    for bn in list(g.graph.node):
        conv = g.producer.get(bn.input[0]) if bn.op_type == "BatchNormalization" else None
        if conv is None or conv.op_type != "Conv" or len(g.consumers[conv.output[0]]) != 1 \
                or len(bn.output) != 1 or conv.output[0] in g.outputs:
            continue
        weight = g.weight(conv.input[1])
        if weight is None or len(g.consumers[conv.input[1]]) != 1 \
                or len(g.consumers[weight[0].input[0]]) != 1:
            continue
        dq, q, scale = weight
        if scale.size > 1 and _axis(dq) != 0:
            continue
        a, c = _bn_affine(g, bn)
        sign = np.where(a < 0, -1, 1).astype(np.int8).reshape((-1,) + (1,) * (q.ndim - 1))
        scale = np.where(a != 0, np.broadcast_to(scale, a.shape) * np.abs(a), 1.0)
        sign = np.where(a.reshape(sign.shape) == 0, 0, sign).astype(np.int8)
        bias = g.array(conv.input[2]).astype(np.float64) if len(conv.input) > 2 \
            and conv.input[2] else np.zeros_like(a)
        _set_init(g, dq.input[0], (q * sign).astype(np.int8))
        _set_init(g, dq.input[1], scale.astype(np.float32))
        if len(dq.input) > 2 and dq.input[2]:
            _set_init(g, dq.input[2], np.zeros(a.size, np.int8))
        del dq.attribute[:]
        dq.attribute.append(g.onnx.helper.make_attribute("axis", 0))
        bias_name = f"{conv.name}_folded_bias"
        _set_init(g, bias_name, (a * bias + c).astype(np.float32))
        del conv.input[2:]
        conv.input.append(bias_name)
        conv.output[0] = bn.output[0]
        removed.add(bn.name)
        folded += 1
    _keep_nodes(g, [n for n in g.graph.node if n.name not in removed])
    return folded


def _axis(node: Any) -> int:
    return next((a.i for a in node.attribute if a.name == "axis"), 1)


def _set_init(g: _Graph, name: str, array: np.ndarray) -> None:
    tensor = g.onnx.numpy_helper.from_array(array, name)
    if name in g.inits:
        g.inits[name].CopyFrom(tensor)
    else:
        g.graph.initializer.append(tensor)
        g.inits[name] = g.graph.initializer[-1]


def _keep_nodes(g: _Graph, nodes: list[Any], new_inits: list[Any] = ()) -> None:
    """Set the graph's nodes; keep only the initializers still read; refresh the lookups."""
    del g.graph.node[:]
    g.graph.node.extend(nodes)
    used = {t for n in g.graph.node for t in n.input}
    kept = [i for i in list(g.graph.initializer) + list(new_inits) if i.name in used]
    del g.graph.initializer[:]
    g.graph.initializer.extend(kept)
    g.refresh()


def _ranks(onnx: Any, model: Any) -> dict[str, int]:
    """Tensor ranks from ONNX shape inference (what a depthwise Conv's kernel needs)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    infos = list(inferred.graph.value_info) + list(inferred.graph.input)
    return {v.name: len(v.type.tensor_type.shape.dim) for v in infos
            if v.type.tensor_type.HasField("shape")}


def _load(model_or_path: Any) -> tuple[Any, Any]:
    onnx = require("onnx")
    if isinstance(model_or_path, (str, os.PathLike)):
        model = onnx.load(str(model_or_path))
    else:
        model = onnx.ModelProto.FromString(model_or_path.SerializeToString())
    name_nodes(model)
    return onnx, model


def cpu_int8_graph(precision_onnx: Any) -> Any:
    """The CPU INT8 graph (``onnx.ModelProto``) of a TensorRT-layout Q/DQ graph (a path or a
    ModelProto, left unchanged); see the module docstring. ValueError when the graph has no
    activation Q/DQ to rewrite."""
    onnx, model = _load(precision_onnx)
    g = _Graph(onnx, model)
    folded = _fold_conv_bn(g)
    acts = _activations(g)
    if not acts:
        raise ValueError("cpu_int8_graph: the graph has no symmetric INT8 activation Q/DQ pairs "
                         "(is it a medtrt INT8 precision ONNX?)")
    enc, dropped = _encodings(g, acts)
    ranks = _ranks(onnx, model)
    dq_of = _dequantized(g, acts)
    skip = {n.name for a in acts.values() for n in (a.q, *a.dqs)} | dropped
    w = _Writer(g, enc)
    ranks |= {w.dq_name(t): ranks[t] for t in enc if t in ranks}
    for t in [i.name for i in g.graph.input]:
        w.quantize(t)
    for node in g.graph.node:
        if node.name in skip:
            continue
        for i, t in enumerate(node.input):
            t = dq_of.get(t, t)
            if t in enc:
                node.input[i] = w.dq_name(t)
        _emit(w, node, ranks)
        for out in node.output:
            w.quantize(out)
    _keep_nodes(g, w.nodes, w.inits)
    onnx.checker.check_model(model)
    log.debug("cpu_int8_graph: %d tensors quantized as uint8, %d ReLUs removed, %d BN folded",
              len(enc), len(dropped), folded)
    return model


def fp32_graph(precision_onnx: Any) -> Any:
    """The FP32 graph (``onnx.ModelProto``) of a Q/DQ graph: activation Q/DQ pairs removed, INT8
    weights dequantized into float initializers (FP32 compute, INT8-rounded weights)."""
    onnx, model = _load(precision_onnx)
    g = _Graph(onnx, model)
    acts = _activations(g)
    dq_of = _dequantized(g, acts)
    skip = {n.name for a in acts.values() for n in (a.q, *a.dqs)}
    new_inits = []
    for node in g.graph.node:
        weight = g.weight(node.output[0]) if node.op_type == "DequantizeLinear" else None
        if weight is not None:
            dq, q, scale = weight
            shape = [1] * q.ndim
            if scale.size > 1:
                shape[_axis(dq)] = -1
            real = (q.astype(np.float32) * scale.reshape(shape)).astype(np.float32)
            new_inits.append(onnx.numpy_helper.from_array(real, dq.output[0]))
            skip.add(node.name)
    nodes = [n for n in g.graph.node if n.name not in skip]
    for node in nodes:
        for i, t in enumerate(node.input):
            node.input[i] = dq_of.get(t, t)
    _keep_nodes(g, nodes, new_inits)
    onnx.checker.check_model(model)
    return model


def cpu_graph_path(precision_onnx: str | os.PathLike[str], kind: str, *, sha256: str | None = None,
                   cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The ``kind`` ("cpu-int8" or "fp32") graph of ``precision_onnx`` as a file in the cache,
    derived on the first call: ``CACHE/cpu-graphs/SHA16.KIND.vN.onnx``. ``sha256``: the
    precision ONNX's (a bundle records it; computed when not given). ``cache_dir``: default
    $MEDTRT_CACHE or ~/.cache/medtrt."""
    if kind not in GRAPH_KINDS:
        raise ValueError(f"kind must be one of {GRAPH_KINDS}; got {kind!r}")
    digest = sha256 or sha256_file(precision_onnx)
    root = Path(cache_dir) if cache_dir else medtrt_cache_dir()
    path = root / "cpu-graphs" / f"{digest[:16]}.{kind}.v{REWRITE_VERSION}.onnx"
    if path.is_file():
        return path
    model = (cpu_int8_graph if kind == "cpu-int8" else fp32_graph)(precision_onnx)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_bytes(model.SerializeToString())
    tmp.replace(path)
    log.info("%s: derived its %s graph into %s", precision_onnx, kind, path)
    return path
