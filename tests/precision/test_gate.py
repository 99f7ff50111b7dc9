"""INT8 accuracy gate: passes a good graph untouched, finds and repairs a broken layer by
keeping it in FP16, and reports when the allowed fallback is not enough. keep_in_fp16's graph."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from helpers.heldout import held_out
from medtrt.precision import (CalibrationConfig, GateConfig, accuracy_gate, calibrate,
                              insert_qdq, keep_in_fp16, plan_qdq)

STEM_CONV = "node_Conv_1698"  # DenseNet's first convolution, reading the image


@pytest.fixture(scope="module")
def setup(demo_model):
    data = held_out(demo_model)
    fp32 = onnx.load(str(demo_model.onnx))
    plan = plan_qdq(fp32)
    cal = calibrate(demo_model.onnx, data.train_paths[:256], plan.tensors,
                    CalibrationConfig(num_images=256))
    # Validation: training-split images the calibration did not use.
    return data, fp32, cal.amax, data.train_paths[256:512]


def _run(model, x):
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x})[0]


def test_keep_in_fp16_casts_one_layer(setup, demo_model):
    data, fp32, amax, _ = setup
    plan = plan_qdq(fp32, exclude_nodes=[STEM_CONV])
    assert "image" not in plan.tensors  # its only consumer is excluded
    model, _ = insert_qdq(fp32, amax, plan=plan)
    assert keep_in_fp16(model, [STEM_CONV]) == [STEM_CONV]
    nodes = {n.name: n for n in model.graph.node}
    conv = nodes[STEM_CONV]
    producers = {o: n for n in model.graph.node for o in n.output}
    assert producers[conv.input[0]].op_type == "Cast" and producers[conv.input[0]].input[0] == "image"
    weights = {i.name: i for i in model.graph.initializer}
    assert weights[conv.input[1]].data_type == onnx.TensorProto.FLOAT16
    consumers = [n for n in model.graph.node if conv.output[0] in n.input]
    assert [n.op_type for n in consumers] == ["Cast"]
    # The rest of the graph is still INT8 and the model still classifies like FP32.
    assert sum(n.op_type == "QuantizeLinear" for n in model.graph.node) == 240
    from medtrt.ops import resize_normalize
    from medtrt.export import read_metadata

    x = resize_normalize(data.images[:64], **read_metadata(demo_model.onnx)[0].preprocess_kwargs())
    ref = _run(fp32, x)
    assert np.mean(_run(model, x).argmax(1) == ref.argmax(1)) >= 0.98
    with pytest.raises(ValueError, match=r"no nodes named \['nope'\]"):
        keep_in_fp16(model, ["nope"])


def test_gate_passes_a_good_graph_untouched(setup, demo_model):
    _, fp32, amax, val = setup
    model, r = accuracy_gate(demo_model.onnx, amax, val)
    assert r.passed and r.fp16_layers == [] and r.sensitivity == [] and len(r.steps) == 1
    assert r.agreement == r.agreement_before >= 0.99 and r.images == 256
    assert r.accuracy is not None and r.accuracy["int8"] >= r.accuracy["fp32"] - 0.01
    assert sum(n.op_type == "QuantizeLinear" for n in model.graph.node) == 241


@pytest.mark.parametrize("factor", [1 / 40, 30.0])  # clipped to 2.5%, or a 30x coarser grid
def test_gate_finds_and_repairs_a_broken_layer(setup, demo_model, factor):
    _, _, amax, val = setup
    broken = dict(amax)
    broken["image"] *= factor
    model, r = accuracy_gate(demo_model.onnx, broken, val, config=GateConfig(candidates=6))
    assert r.agreement_before < 0.99, "the damage should break the gate"
    assert r.passed and r.fp16_layers == [STEM_CONV] and r.agreement >= 0.99
    first = r.sensitivity[0]
    assert first["layer"] == STEM_CONV and first["sqnr_db"] == min(s["sqnr_db"] for s in r.sensitivity)
    assert first["agreement_without_qdq"] > max(s["agreement_without_qdq"] for s in r.sensitivity[1:])
    assert [s["fp16_layers"] for s in r.steps] == [[], [STEM_CONV]]
    assert any(n.name == f"{STEM_CONV}_CastToFp16" for n in model.graph.node)


def test_gate_reports_when_the_fallback_limit_is_reached(setup, demo_model):
    _, _, amax, val = setup
    broken = dict(amax)
    broken["image"] /= 40
    _, r = accuracy_gate(demo_model.onnx, broken, val, config=GateConfig(max_fp16_layers=0))
    assert not r.passed and r.fp16_layers == [] and "FAILED" in r.summary()
    assert r.worst["int8"] != r.worst["fp32"]


def test_gate_skips_unreadable_validation_images(setup, demo_model, tmp_path):
    _, _, amax, val = setup
    folder = tmp_path / "val" / "Hand"
    folder.mkdir(parents=True)
    for p in val[:20]:
        (folder / p.name).symlink_to(p)
    (folder / "broken.png").write_bytes(b"not a png")
    _, r = accuracy_gate(demo_model.onnx, amax, tmp_path / "val")
    assert r.images == 20 and len(r.unreadable) == 1 and "broken.png" in r.unreadable[0]
    with pytest.raises(FileNotFoundError, match="validation folder .* does not exist"):
        accuracy_gate(demo_model.onnx, amax, tmp_path / "missing")
    with pytest.raises(ValueError, match="--min-agreement must be in"):
        GateConfig(min_agreement=1.5)


def test_gate_refuses_non_finite_outputs_with_the_fix(setup, demo_model, monkeypatch):
    """A Q/DQ graph giving NaN on a validation image stops the gate with the counts, the image
    and what to try (not an AssertionError from inside the agreement)."""
    import medtrt.precision.gate as gate
    from medtrt.errors import NonFiniteError

    _, _, amax, val = setup
    real = gate.ort_logits

    def nan_from_qdq(model, x, batch_size=32):
        out = real(model, x, batch_size)
        if isinstance(model, onnx.ModelProto):  # a Q/DQ variant; the FP32 graph is a path
            out[2] = np.nan
        return out

    monkeypatch.setattr(gate, "ort_logits", nan_from_qdq)
    with pytest.raises(NonFiniteError, match=r"^the outputs of the INT8 graph on the validation "
                       r"images hold non-finite values: 6 NaN and 0 infinite in 1 of 8 samples "
                       r"\(first: sample 2\); check the calibration data .*--keep-fp16"):
        accuracy_gate(demo_model.onnx, amax, val[:8])
