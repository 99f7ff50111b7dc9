"""FP16 graph: structure (FP16 weights, sensitive ops in FP32, FP32 I/O by default) and accuracy
against the PyTorch FP32 reference on the held-out synthetic set (ONNX Runtime, CPU)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from helpers.heldout import held_out, onnx_probs
from medtrt.export import read_metadata
from medtrt.precision import to_fp16


@pytest.fixture(scope="module")
def fp16_model(demo_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("fp16") / "model.fp16.onnx"
    return to_fp16(demo_model.onnx, path), path


def test_structure(fp16_model):
    model, _ = fp16_model
    g = model.graph
    assert g.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # FP32 I/O
    assert g.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    conv_weights = {n.input[1] for n in g.node if n.op_type == "Conv"}
    types = {i.name: i.data_type for i in g.initializer}
    assert conv_weights and all(types[w] == onnx.TensorProto.FLOAT16 for w in conv_weights)
    # The global-average-pool reduction runs in FP32: a Cast to FP32 feeds it.
    producers = {o: n for n in g.node for o in n.output}
    (reduce,) = [n for n in g.node if n.op_type == "ReduceMean"]
    cast = producers[reduce.input[0]]
    assert cast.op_type == "Cast"
    assert next(a.i for a in cast.attribute if a.name == "to") == onnx.TensorProto.FLOAT


def test_fp16_io_option(demo_model):
    model = to_fp16(demo_model.onnx, keep_io_types=False)
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16


def test_accuracy_against_pytorch_fp32(demo_model, fp16_model):
    _, path = fp16_model
    data = held_out(demo_model)
    preset = read_metadata(demo_model.onnx)[0]
    probs = onnx_probs(path, data.images, preset)
    agreement = float(np.mean(probs.argmax(1) == data.reference_probs.argmax(1)))
    max_dprob = float(np.abs(probs - data.reference_probs).max())
    assert agreement >= 0.995, agreement
    assert max_dprob <= 1e-2, max_dprob
