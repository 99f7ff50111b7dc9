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
