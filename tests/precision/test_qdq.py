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
