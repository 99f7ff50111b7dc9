"""The CPU graphs of an INT8 bundle (medtrt.precision.cpu_int8): what ONNX Runtime fuses in the
CPU INT8 graph, its accuracy against PyTorch FP32 and against the TensorRT-layout graph it is
derived from, the FP32 twin, determinism and the on-disk cache, and the Conv->BN fold on a
graph whose exporter left BatchNormalization unfolded."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from helpers.foreign import assert_parity
from helpers.heldout import onnx_probs
from medtrt.cpu import has_int8_dot
from medtrt.precision import cpu_int8, insert_qdq
from medtrt.precision.cpu_int8 import cpu_graph_path, cpu_int8_graph, fp32_graph
from medtrt.reference import predict


@pytest.fixture(scope="module")
def graphs(int8_bundle, tmp_path_factory):
    root = tmp_path_factory.mktemp("cpu-graphs")
    paths = {"trt": int8_bundle.precision_onnx_path, "cpu-int8": root / "cpu-int8.onnx",
             "fp32": root / "fp32.onnx"}
    onnx.save(cpu_int8_graph(paths["trt"]), paths["cpu-int8"])
    onnx.save(fp32_graph(paths["trt"]), paths["fp32"])
    return paths


@pytest.fixture(scope="module")
def probs(demo_model, images, graphs, int8_bundle):
    out = {k: onnx_probs(p, images, int8_bundle.preset) for k, p in graphs.items()}
    out["torch"] = predict(demo_model.checkpoint, images).probs
    return out


def ops(model) -> Counter:
    return Counter(n.op_type for n in model.graph.node)


def ort_optimized(path, tmp_path) -> Counter:
    """The op types of the graph ONNX Runtime runs (all optimizations, this CPU)."""
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return ops(onnx.load(str(tmp_path / "optimized.onnx")))


def test_onnx_runtime_runs_every_convolution_and_batchnorm_as_qlinearconv(graphs, tmp_path):
    """DenseNet-121: 120 convolutions, and 61 of its 62 BatchNormalizations (all but norm5, which
    feeds ReduceMean in float) as depthwise convolutions: 181 QLinearConv, no float Conv, every
    Concat integer, Transposes only at the graph's input and output."""
    trt, cpu = onnx.load(str(graphs["trt"])), onnx.load(str(graphs["cpu-int8"]))
    assert (ops(trt)["Conv"], ops(trt)["BatchNormalization"], ops(trt)["Relu"]) == (120, 62, 121)
    assert (ops(cpu)["Conv"], ops(cpu)["BatchNormalization"], ops(cpu)["Relu"]) == (181, 1, 1)
    run = ort_optimized(graphs["cpu-int8"], tmp_path)
    assert run["QLinearConv"] == 181, run
    assert not {"Conv", "FusedConv"} & set(run), run  # nchwc Conv counts as "Conv" too
    assert run["QLinearConcat"] == 58 and run["QLinearAveragePool"] == 3, run
    assert run["Transpose"] <= 2 and run["BatchNormalization"] == 1, run
    # The TensorRT layout, for contrast: half its convolutions stay float (ReLU before an INT8 Q).
    assert ort_optimized(graphs["trt"], tmp_path)["QLinearConv"] < 120


def test_cpu_int8_graph_accuracy_vs_pytorch_and_the_tensorrt_graph(probs):
    """Within the INT8 parity bound of PyTorch FP32 and of the TensorRT-layout graph, and as
    close to PyTorch as that graph (the same quantization grids): RMS log-probability error at
    most 1.25x its, max |dprob| at most one percentage point more."""
    if not has_int8_dot():
        pytest.skip("no VNNI/AMX: ONNX Runtime's u8s8 kernels use VPMADDUBSW, whose int16 sums can "
                    "saturate (onnxruntime.ai quantization docs); medtrt runs FP32 there")
    assert_parity(probs["cpu-int8"], probs["torch"], "int8", "CPU INT8 graph vs PyTorch FP32")
    assert_parity(probs["cpu-int8"], probs["trt"], "int8", "CPU INT8 graph vs TensorRT layout")
    err = {k: np.abs(probs[k] - probs["torch"]).max() for k in ("cpu-int8", "trt")}
    assert err["cpu-int8"] <= err["trt"] + 0.01, err
    rms = {k: np.sqrt(np.mean((np.log(probs[k]) - np.log(probs["torch"])) ** 2))
           for k in ("cpu-int8", "trt")}
    assert rms["cpu-int8"] <= 1.25 * rms["trt"], rms


def test_fp32_graph_is_float_compute_with_int8_rounded_weights(graphs, probs):
    model = onnx.load(str(graphs["fp32"]))
    assert not {"QuantizeLinear", "DequantizeLinear"} & set(ops(model))
    trt = onnx.load(str(graphs["trt"]))
    inits = {i.name: numpy_helper.to_array(i) for i in trt.graph.initializer}
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    w = next(i for i in model.graph.initializer if i.name == conv.input[1])
    q = inits[conv.input[1].replace("_dequant", "_int8")]
    scale = inits[conv.input[1].replace("_dequant", "_scale")]
    np.testing.assert_array_equal(numpy_helper.to_array(w),
                                  q.astype(np.float32) * scale.reshape(-1, 1, 1, 1))
    assert_parity(probs["fp32"], probs["torch"], "int8", "FP32 graph (INT8 weights) vs PyTorch")


def test_graphs_are_deterministic_and_cached_by_sha256(int8_bundle, tmp_path, monkeypatch):
    source = int8_bundle.precision_onnx_path
    assert cpu_int8_graph(source).SerializeToString() == cpu_int8_graph(source).SerializeToString()
    path = cpu_graph_path(source, "cpu-int8", cache_dir=tmp_path)
    assert path.parent == tmp_path / "cpu-graphs"
    assert path.name.startswith(int8_bundle.precision_onnx.sha256[:16])
    assert path.read_bytes() == cpu_int8_graph(source).SerializeToString()

    def no_derivation(_):
        raise AssertionError("derived again instead of read from the cache")

    monkeypatch.setattr(cpu_int8, "cpu_int8_graph", no_derivation)
    assert cpu_graph_path(source, "cpu-int8", cache_dir=tmp_path) == path
    with pytest.raises(ValueError, match="kind must be one of"):
        cpu_graph_path(source, "int4", cache_dir=tmp_path)


def test_a_graph_without_int8_activations_is_refused(demo_model):
    with pytest.raises(ValueError, match="no symmetric INT8 activation Q/DQ pairs"):
        cpu_int8_graph(demo_model.onnx)


def conv_bn_graph(rng) -> onnx.ModelProto:
    """Conv -> BatchNormalization (some gamma < 0, one 0) -> Relu -> Conv: BN left unfolded."""
    c = 8
    inits = [numpy_helper.from_array(a.astype(np.float32), n) for n, a in [
        ("w1", rng.normal(size=(c, 3, 3, 3))), ("b1", rng.normal(size=c)),
        ("gamma", np.r_[rng.uniform(0.5, 2, c - 3), -1.5, -0.7, 0.0]),
        ("beta", rng.normal(size=c)), ("mean", rng.normal(size=c)),
        ("var", rng.uniform(0.5, 2, c)), ("w2", rng.normal(size=(4, c, 1, 1)))]]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["y1"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("BatchNormalization", ["y1", "gamma", "beta", "mean", "var"], ["y2"],
                              name="bn"),
             helper.make_node("Relu", ["y2"], ["y3"], name="relu"),
             helper.make_node("Conv", ["y3", "w2"], ["out"], name="conv2")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                     ["n", 3, 6, 6])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["n", 4, 6, 6])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


def run(model, x):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def test_batchnorm_after_an_int8_conv_is_folded_into_its_weight_scales(rng):
    fp32 = conv_bn_graph(rng)
    x = rng.uniform(-1, 1, (4, 3, 6, 6)).astype(np.float32)
    probe = onnx.ModelProto.FromString(fp32.SerializeToString())
    probe.graph.output.append(helper.make_tensor_value_info("y3", TensorProto.FLOAT, ["n", 8, 6, 6]))
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    y3 = session.run(["y3"], {"x": x})[0]
    qdq, _ = insert_qdq(fp32, {"x": 1.0, "y3": float(np.abs(y3).max())})
    cpu = cpu_int8_graph(qdq)
    assert "BatchNormalization" not in ops(cpu) and ops(cpu)["Relu"] == 0
    w_int8 = {i.name: numpy_helper.to_array(i) for i in qdq.graph.initializer}["w1_int8"]
    folded = {i.name: numpy_helper.to_array(i) for i in cpu.graph.initializer}["w1_int8"]
    sign = np.r_[np.ones(5), -1, -1, 0].astype(np.int8).reshape(-1, 1, 1, 1)
    np.testing.assert_array_equal(folded, w_int8 * sign)  # the INT8 values stay
    # One output step of the TensorRT graph's INT8 grid, at most: the CPU graph quantizes the
    # ReLU output on a finer (uint8) grid of the same amax.
    step = float(np.abs(y3).max()) / 127 * np.abs(numpy_helper.to_array(
        fp32.graph.initializer[-1])).sum(axis=1).max()
    assert np.abs(run(cpu, x) - run(qdq, x)).max() <= step
