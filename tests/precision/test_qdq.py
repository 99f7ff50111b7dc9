"""INT8 Q/DQ graph: placement per TensorRT's guidance, shared Concat scales, and accuracy against
the PyTorch FP32 reference on the held-out set (calibrated on the training split only)."""

from __future__ import annotations


import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from helpers.heldout import held_out, onnx_probs
from medtrt.export import read_metadata
from medtrt.precision import CalibrationConfig, calibrate, insert_qdq, plan_qdq


@pytest.fixture(scope="module")
def int8(demo_model, tmp_path_factory):
    fp32 = onnx.load(str(demo_model.onnx))
    plan = plan_qdq(fp32)
    data = held_out(demo_model)
    cal = calibrate(demo_model.onnx, data.train_paths, plan.tensors,
                    CalibrationConfig(num_images=256))
    path = tmp_path_factory.mktemp("int8") / "model.int8.onnx"
    model, final = insert_qdq(fp32, cal.amax, plan=plan, out=path)
    return fp32, model, final, path, cal, data


def scale_of(model, tensor):
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    q = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == tensor)
    return float(inits[q.input[1]]), inits[q.input[2]]


def test_every_weighted_layer_reads_quantized_inputs_and_weights(int8):
    _, model, _, _, _, _ = int8
    producers = {o: n for n in model.graph.node for o in n.output}
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    weighted = [n for n in model.graph.node if n.op_type in ("Conv", "Gemm")]
    assert len(weighted) == 121
    for node in weighted:
        act, weight = producers[node.input[0]], producers[node.input[1]]
        assert act.op_type == "DequantizeLinear", node.name
        assert weight.op_type == "DequantizeLinear", node.name
        w_int8, w_scale, w_zero = (inits[t] for t in weight.input)
        assert w_int8.dtype == np.int8 and np.abs(w_int8).max() <= 127
        assert w_scale.shape == (w_int8.shape[0],)  # per output channel
        assert w_zero.dtype == np.int8 and not w_zero.any()
        assert next(a.i for a in weight.attribute if a.name == "axis") == 0
        if node.op_type == "Gemm" and len(node.input) > 2:
            assert node.input[2] in inits and inits[node.input[2]].dtype == np.float32  # bias float
    # BatchNormalization and Relu are left for TensorRT to fuse: no Q/DQ in front of them.
    for node in model.graph.node:
        if node.op_type in ("BatchNormalization", "Relu"):
            assert producers[node.input[0]].op_type != "DequantizeLinear", node.name


def test_concat_inputs_share_one_scale(int8, demo_model):
    fp32, model, _, _, cal, _ = int8
    concats = [n for n in fp32.graph.node if n.op_type == "Concat"]
    assert len(concats) == 58
    for node in concats:
        scales = {scale_of(model, t)[0] for t in node.input}
        assert len(scales) == 1, node.name
        assert scales.pop() == pytest.approx(np.float32(max(cal.amax[t] for t in node.input) / 127))
    unshared, _ = insert_qdq(fp32, cal.amax, share_concat_scales=False)
    distinct = sum(len({scale_of(unshared, t)[0] for t in n.input}) > 1 for n in concats)
    assert distinct > len(concats) // 2


def test_activation_quantization_is_symmetric_int8(int8):
    _, model, final, _, _, _ = int8
    for t in final.tensors:
        scale, zero = scale_of(model, t)
        assert scale > 0 and zero.dtype == np.int8 and zero == 0


def test_accuracy_against_pytorch_fp32(int8, demo_model):
    _, _, _, path, _, data = int8
    preset = read_metadata(demo_model.onnx)[0]
    probs = onnx_probs(path, data.images, preset)
    agreement = float(np.mean(probs.argmax(1) == data.reference_probs.argmax(1)))
    ref_acc = float(np.mean(data.reference_probs.argmax(1) == data.labels))
    int8_acc = float(np.mean(probs.argmax(1) == data.labels))
    assert agreement >= 0.99, agreement
    assert ref_acc - int8_acc <= 0.005, (ref_acc, int8_acc)


def test_missing_amax_is_refused(int8):
    fp32, _, final, _, cal, _ = int8
    partial = dict(cal.amax)
    partial.pop(final.tensors[3])
    with pytest.raises(ValueError, match=r"no calibrated amax for 1 tensors"):
        insert_qdq(fp32, partial)


def test_all_zero_tensor_stays_float(int8):
    fp32, _, final, _, cal, _ = int8
    amax = dict(cal.amax)
    amax[final.tensors[0]] = 0.0  # as if it were all zeros on the calibration data
    model, plan = insert_qdq(fp32, amax)
    assert final.tensors[0] in plan.skipped
    assert not any(n.op_type == "QuantizeLinear" and n.input[0] == final.tensors[0]
                   for n in model.graph.node)


def test_recipe_float_concat_and_fp16_stem_and_head(int8):
    """--concat float --keep-fp16 stem,head: Concat inputs are no longer quantized (only the
    inputs of weighted layers and pools are), the stem convolution and the classifier read float
    inputs and run in FP16 between Casts, and every other weighted layer is still INT8."""
    from medtrt.precision import QdqRecipe, resolve_layers

    fp32, _, default_plan, _, cal, _ = int8
    convs = [n for n in fp32.graph.node if n.op_type == "Conv"]
    gemm = [n.name for n in fp32.graph.node if n.op_type == "Gemm"]
    assert resolve_layers(fp32, ["stem"]) == [convs[0].name]
    assert resolve_layers(fp32, ["head", "stem", convs[5].name, "head"]) == [
        *gemm, convs[0].name, convs[5].name]
    with pytest.raises(ValueError, match="no layer named 'nope'.*stem / head"):
        resolve_layers(fp32, ["nope"])
    with pytest.raises(ValueError, match="concat must be one of"):
        QdqRecipe(concat="int8")

    recipe = QdqRecipe(concat="float", keep_fp16=("stem", "head"))
    model, plan = recipe.apply(fp32, cal.amax)
    concat_inputs = {t for n in fp32.graph.node if n.op_type == "Concat" for t in n.input}
    pool_or_weighted = {n.input[0] for n in fp32.graph.node
                        if n.op_type in ("Conv", "Gemm", "MaxPool", "AveragePool")}
    assert set(plan.tensors) <= pool_or_weighted
    assert set(default_plan.tensors) - set(plan.tensors) >= concat_inputs - pool_or_weighted
    assert len(plan.tensors) == len(pool_or_weighted) - 2  # stem and head inputs stay float
    assert all(len(g) == 1 for g in plan.groups)
    producers = {o: n for n in model.graph.node for o in n.output}
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm"):
            continue
        kept = node.name in (convs[0].name, *gemm)
        assert (producers[node.input[0]].op_type == "Cast") == kept, node.name
        weight = producers.get(node.input[1])  # kept: an FP16 initializer, no producer
        assert (weight is not None and weight.op_type == "DequantizeLinear") != kept, node.name
    quantized = {n.input[0] for n in model.graph.node if n.op_type == "QuantizeLinear"}
    assert quantized == set(plan.tensors)
    assert recipe.to_json(fp32) == {"concat": "float", "keep_fp16": ["stem", "head"],
                                    "keep_fp16_layers": [convs[0].name, *gemm]}


def residual_graph(seed=0):
    """A small residual network written node by node: a stem convolution, an identity block
    (its Add reads the shortcut first), a block with a projection shortcut (1x1 Conv + BN, read
    first too), a block whose two branches are both a single convolution on the same tensor, an
    Add with an initializer, an Add with a Constant node, an Add of two tensors with no
    convolution behind them, then pooling and a classifier."""
    rng = np.random.default_rng(seed)
    h = onnx.helper
    inits = []

    def weight(name, *shape):
        inits.append(numpy_helper.from_array(rng.normal(0, 0.3, shape).astype(np.float32), name))
        return name

    def conv(x, out, cin, cout, k=3):
        return h.make_node("Conv", [x, weight(f"{out}_w", cout, cin, k, k),
                                    weight(f"{out}_b", cout)], [out], name=out,
                           pads=[k // 2] * 4)

    def bn(x, out, c):
        names = [weight(f"{out}_{p}", c) for p in ("scale", "bias", "mean")]
        inits.append(numpy_helper.from_array(rng.uniform(0.5, 2, c).astype(np.float32),
                                             f"{out}_var"))
        return h.make_node("BatchNormalization", [x, *names, f"{out}_var"], [out], name=out)

    def op(kind, inputs, out):
        return h.make_node(kind, inputs, [out], name=out)

    inits.append(numpy_helper.from_array(rng.normal(0, 1, (1, 8, 1, 1)).astype(np.float32),
                                         "offset"))
    nodes = [
        conv("x", "stem", 3, 8), op("Relu", ["stem"], "r0"),
        # identity block: Add(shortcut r0, main branch Conv-BN)
        conv("r0", "c1", 8, 8), bn("c1", "b1", 8), op("Relu", ["b1"], "r1"),
        conv("r1", "c2", 8, 8), bn("c2", "b2", 8), op("Add", ["r0", "b2"], "add_identity"),
        op("Relu", ["add_identity"], "y1"),
        # projection shortcut: Add(shortcut Conv-BN on y1, main branch Conv)
        conv("y1", "c3", 8, 8), op("Relu", ["c3"], "r3"), conv("r3", "c4", 8, 8),
        conv("y1", "proj", 8, 8, k=1), bn("proj", "proj_bn", 8),
        op("Add", ["proj_bn", "c4"], "add_projection"), op("Relu", ["add_projection"], "y2"),
        # two single convolutions on the same tensor: neither is the other's shortcut
        conv("y2", "left", 8, 8), conv("y2", "right", 8, 8, k=1),
        op("Add", ["left", "right"], "add_tie"),
        # constants and convolution-free Adds stay float
        op("Add", ["add_tie", "offset"], "add_initializer"),
        h.make_node("Constant", [], ["half"], name="half",
                    value=numpy_helper.from_array(np.full((1, 8, 1, 1), 0.5, np.float32))),
        op("Add", ["half", "add_initializer"], "add_constant"),
        op("Relu", ["add_constant"], "r5"), op("Add", ["r5", "add_constant"], "add_plain"),
        op("GlobalAveragePool", ["add_plain"], "pooled"), op("Flatten", ["pooled"], "flat"),
        h.make_node("Gemm", ["flat", weight("fc_w", 6, 8), weight("fc_b", 6)], ["logits"],
                    name="fc", transB=1),
    ]
    info = h.make_tensor_value_info
    g = h.make_graph(nodes, "residual", [info("x", onnx.TensorProto.FLOAT, ["N", 3, 16, 16])],
                     [info("logits", onnx.TensorProto.FLOAT, ["N", 6])], inits)
    model = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def test_residual_add_quantizes_the_shortcut_only():
    """TensorRT fuses a residual Add into the convolution feeding it when only the other input
    (the shortcut) carries Q/DQ: the identity shortcut, the projection shortcut (whichever
    input it is), input 1 when neither branch is the other's shortcut; never a constant, never
    an Add with no convolution behind it."""
    model = residual_graph()
    plan = plan_qdq(model)
    adds = {n.name for n in model.graph.node if n.op_type == "Add"}
    at_adds = {t: [c for c in cs if c in adds] for t, cs in plan.consumers.items()}
    assert {t: cs for t, cs in at_adds.items() if cs} == {
        "r0": ["add_identity"], "proj_bn": ["add_projection"], "right": ["add_tie"]}
    assert plan.consumers["r0"] == ("c1", "add_identity")  # one tensor, one Q/DQ pair
    assert all(len(g) == 1 for g in plan.groups)
    # Without the rule the plan is the rest of the same plan, in the same order.
    without = plan_qdq(model, quantize_residual_add=False)
    assert without.tensors == tuple(t for t in plan.tensors if t not in ("proj_bn", "right"))
    assert without.consumers == {t: tuple(c for c in cs if c not in adds)
                                 for t, cs in plan.consumers.items() if t not in ("proj_bn",
                                                                                  "right")}
    # The Q/DQ graph: each residual Add reads its shortcut dequantized, its convolution's output
    # as it is; the constant and convolution-free Adds read no DequantizeLinear.
    amax = dict.fromkeys(plan.tensors, 4.0)
    qdq, _ = insert_qdq(model, amax, plan=plan)
    producers = {o: n.op_type for n in qdq.graph.node for o in n.output}
    reads = {n.name: [producers.get(t, "initializer") for t in n.input]
             for n in qdq.graph.node if n.op_type == "Add"}
    assert reads == {"add_identity": ["DequantizeLinear", "BatchNormalization"],
                     "add_projection": ["DequantizeLinear", "Conv"],
                     "add_tie": ["Conv", "DequantizeLinear"],
                     "add_initializer": ["Add", "initializer"],
                     "add_constant": ["Constant", "Add"],
                     "add_plain": ["Relu", "Add"]}
    assert sum(n.op_type == "QuantizeLinear" for n in qdq.graph.node) == len(plan.tensors)


def test_graphs_without_residual_adds_keep_their_plan(demo_model):
    """DenseNet-121 has no Add: the residual rule changes nothing in its plan."""
    fp32 = onnx.load(str(demo_model.onnx))
    assert not any(n.op_type == "Add" for n in fp32.graph.node)
    assert plan_qdq(fp32) == plan_qdq(fp32, quantize_residual_add=False)
    plan = plan_qdq(fp32)
    assert (len(plan.tensors), len(plan.groups)) == (241, 183)
