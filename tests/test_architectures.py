"""Architectures other than DenseNet-121 through build -> Engine -> parity. A MONAI ResNet (residual
Adds, identity and projection shortcuts, a final Softmax) exported by plain ``torch.onnx.export``
as a user would, built FP16 and INT8 (accuracy gate on) with TensorRT-RTX on the CPU, run by
Engine on the CPU, and equal to the source PyTorch model within medtrt.testing.PARITY; its INT8
graph carries Q/DQ on the residual shortcuts (medtrt.precision.qdq), and the accuracy gate can take
a residual Add out of INT8."""

from __future__ import annotations

from dataclasses import replace

import onnx
import pytest
import torch

from helpers.foreign import (assert_parity, build_bundle, engine_probs, fit, plain_export,
                             reference_probs, resnet_classifier, spread)
from medtrt.models import load_preset
from medtrt.precision import GateConfig, QdqRecipe, accuracy_gate, read_cache

pytestmark = pytest.mark.trt


@pytest.fixture(scope="module")
def val_dir(split, tmp_path_factory):
    """64 training images the calibration did not use, for the accuracy gate."""
    root = tmp_path_factory.mktemp("val")
    calib = set(spread(split.train.paths, 64))
    rest = [p for p in split.train.paths if p not in calib]
    for i, p in enumerate(spread(rest, 64)):
        (root / f"{i:03d}{p.suffix}").symlink_to(p)
    return root


@pytest.fixture(scope="module")
def resnet(split, calib_dir, val_dir, tmp_path_factory):
    """The MONAI ResNet (helpers.foreign.resnet_classifier: the six MedNIST labels, final
    Softmax), fitted for 120 Adam steps on the training split, exported plainly with a dynamic
    batch, and its FP16 and INT8 bundles (INT8 with the accuracy gate on ``val_dir``)."""
    root = tmp_path_factory.mktemp("resnet")
    preset = replace(load_preset("mednist"), name="mednist-resnet", architecture="monai.ResNet")
    torch.manual_seed(0)
    model = fit(resnet_classifier(6), list(split.train.paths), list(split.train.labels), preset)
    path = plain_export(model, torch.zeros(2, 1, 64, 64), root / "resnet.onnx",
                        dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1024)},))
    out = root / "out"
    built = {"fp16": build_bundle(path, out, "fp16", preset, calib_dir, batch=(1, 8, 16)),
             "int8": build_bundle(path, out, "int8", preset, calib_dir, batch=(1, 8, 16),
                                  val=str(val_dir))}
    return {"model": model, "preset": preset, "onnx": path, "out": out, "built": built}


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_resnet_scores_equal_the_source_model(resnet, images, precision):
    ref = reference_probs(resnet["model"], images, resnet["preset"])  # its own Softmax included
    probs = engine_probs(resnet["built"][precision].engine, images)
    assert_parity(probs, ref, precision, f"resnet {precision}")
    b = resnet["built"][precision].bundle
    assert b.source_onnx.foreign.removed_activation == "Softmax"
    assert b.preset == resnet["preset"] and b.output.classes == 6


def _residual_adds(graph):
    """{Add node: (its inputs' producers)} of a graph's Adds that read no constant."""
    producers = {o: n for n in graph.node for o in n.output}
    return {n.name: tuple(producers[t] for t in n.input) for n in graph.node
            if n.op_type == "Add" and all(t in producers for t in n.input)}


def test_resnet_int8_graph_quantizes_the_residual_shortcuts(resnet):
    """Each residual Add reads its shortcut through Q/DQ and the convolution it fuses with
    directly; the identity shortcut shares the Q/DQ pair of the block's first convolution, a
    projection shortcut is its 1x1 convolution's output. The gate kept every layer in INT8."""
    fp32 = onnx.load(str(resnet["out"] / "resnet.medtrt.onnx"))
    adds = _residual_adds(fp32.graph)
    assert len(adds) == 4 and all(p[0].op_type == "Conv" for p in adds.values())
    identity = [a for a, p in adds.items() if p[1].op_type != "Conv"]
    assert len(identity) == 1  # the first stage; the other three project their shortcut
    weights = {i.name: tuple(i.dims) for i in fp32.graph.initializer}
    assert all(weights[p[1].input[1]][2:] == (1, 1) for a, p in adds.items() if a not in identity)

    built = resnet["built"]["int8"]
    int8 = onnx.load(str(built.precision_onnx)).graph
    producers = {o: n for n in int8.node for o in n.output}
    readers = {}
    for n in int8.node:
        for t in n.input:
            readers.setdefault(t, []).append(n)
    for name, (main, shortcut) in _residual_adds(int8).items():
        assert main.op_type == "Conv", name  # fused with the Add: no Q/DQ between them
        assert shortcut.op_type == "DequantizeLinear", name
        quantized = producers[producers[shortcut.input[0]].input[0]]
        if name in identity:  # the block's input: its first convolution reads the same pair
            assert quantized.op_type == "MaxPool"
            assert sorted(r.op_type for r in readers[shortcut.output[0]]) == ["Add", "Conv"]
        else:  # the projection's output, read by the Add alone
            assert quantized.op_type == "Conv"
            assert [r.name for r in readers[shortcut.output[0]]] == [name]
    q = built.bundle.quantization
    assert q.activation_tensors == 14  # 11 inputs of Conv/Gemm/MaxPool + 3 projection shortcuts
    gate = built.bundle.accuracy_gate
    assert gate["passed"] and gate["fp16_layers"] == [] and gate["images"] == 64


def test_gate_can_take_a_residual_add_out_of_int8(resnet, val_dir):
    """The first block's identity shortcut (the max-pool output) quantized with a range 1000x too
    small breaks the gate. Both its readers are candidates, the block's first convolution and the
    residual Add: they share one Q/DQ pair, and a reader taken out of INT8 reads the float tensor
    (the convolution in FP16, the Add as it is) while the other still reads it quantized."""
    built = resnet["built"]["int8"]
    fp32_path = resnet["out"] / "resnet.medtrt.onnx"
    fp32 = onnx.load(str(fp32_path))
    amax = dict(read_cache(built.precision_onnx.with_name("resnet.int8.calib.json")).amax)
    add, (_, pool) = next((a, p) for a, p in _residual_adds(fp32.graph).items()
                          if p[1].op_type == "MaxPool")
    shortcut = pool.output[0]
    conv = next(n.name for n in fp32.graph.node if n.op_type == "Conv" and shortcut in n.input)
    amax[shortcut] /= 1000
    _, r = accuracy_gate(fp32_path, amax, val_dir, config=GateConfig(candidates=4))
    assert r.agreement_before < 0.99, "the damage should break the gate"
    assert r.passed and r.agreement >= 0.99 and set(r.fp16_layers) <= {conv, add}
    ranked = {s["layer"]: s["op"] for s in r.sensitivity}
    assert ranked[add] == "Add" and ranked[conv] == "Conv"

    model, _ = QdqRecipe().apply(fp32, amax, [add])
    readers = {n.name: n for n in model.graph.node if shortcut in n.input or
               f"{shortcut}_dequantized" in n.input}
    assert shortcut in readers[add].input  # float, no DequantizeLinear
    assert f"{shortcut}_dequantized" in readers[conv].input
