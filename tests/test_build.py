"""`medtrt build`: FP32, FP16 and INT8 engine bundles built without a GPU (TensorRT-RTX in CI),
calibration-cache reuse, and the errors a user can hit."""

from __future__ import annotations

import json
import struct
from collections import Counter

import numpy as np
import onnx
import pytest

from helpers.heldout import held_out
from medtrt.artifacts import Bundle, Profile, sha256_file
from medtrt.build import BuildOptions, build
from medtrt.cli import main
from medtrt.errors import MissingDependencyError
from medtrt.precision import CalibrationConfig
from medtrt.trt import BuildError, engine_header_version


@pytest.fixture(scope="module")
def calib_dir(demo_model, tmp_path_factory):
    """A calibration folder of training-split images only (links into the demo data)."""
    root = tmp_path_factory.mktemp("calib")
    for i, p in enumerate(held_out(demo_model).train_paths[:300]):
        (root / f"{i:04d}{p.suffix}").symlink_to(p)
    return root


@pytest.fixture(scope="module")
def bundles(demo_model, calib_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundles")
    results = {p: build(demo_model.onnx, out, BuildOptions(
        precision=p, calib=str(calib_dir) if p == "int8" else None,
        calibration=CalibrationConfig(num_images=256), batch=(1, 8, 64))) for p in ("fp32", "fp16", "int8")}
    return out, results


@pytest.mark.trt
@pytest.mark.parametrize("precision,ops", [("fp32", {"Conv"}), ("fp16", {"Cast", "Conv"}),
                                           ("int8", {"QuantizeLinear", "DequantizeLinear"})])
def test_bundle_contents(bundles, demo_model, precision, ops):
    out, results = bundles
    r = results[precision]
    assert r.engine.stat().st_size > 1_000_000
    b = r.bundle
    assert engine_header_version(r.engine) == b.tensorrt.version
    assert Bundle.read(r.bundle_json) == b and b.path == r.bundle_json and b.precision == precision
    assert b.input.name == "image" and b.input.layout == "NCHW"
    assert b.input.profile == Profile((1, 1, 64, 64), (8, 1, 64, 64), (64, 1, 64, 64))
    assert b.preset.labels[0] == "AbdomenCT" and b.preset.activation == "softmax"
    assert b.output.classes == b.preset.num_classes == 6
    assert b.preset.preprocess_kwargs()["out_size"] == (64, 64)
    assert b.source_onnx.sha256 == sha256_file(demo_model.onnx)
    assert b.engine.sha256 == sha256_file(r.engine) and b.engine.bytes == r.engine.stat().st_size
    assert b.precision_onnx.sha256 == sha256_file(r.precision_onnx)
    assert b.tensorrt.flavour in ("tensorrt", "tensorrt_rtx")
    raw = json.loads(r.bundle_json.read_text())
    assert raw["format"] == "medtrt-engine-bundle" and raw["schema_version"] == 2
    assert "executed" not in raw  # whether it runs is decided where it is loaded
    assert b.accuracy_check.top1_agreement >= 0.99
    assert b.accuracy_check.metric == "top1"
    assert b.accuracy_check.agreement == b.accuracy_check.top1_agreement
    graph = onnx.load(str(out / b.precision_onnx.file))
    present = Counter(n.op_type for n in graph.graph.node)
    assert ops <= set(present), present
    if precision == "int8":
        assert b.calibration.method == "entropy" and b.calibration.images == 256
        assert present["QuantizeLinear"] == b.quantization.activation_tensors == 241
    else:
        assert "QuantizeLinear" not in present and b.calibration is None


@pytest.mark.trt
def test_calibration_cache_reuse_gives_identical_scales(bundles, demo_model, tmp_path):
    out, results = bundles
    cache = out / "model.int8.calib.json"
    again = build(demo_model.onnx, tmp_path, BuildOptions(precision="int8", calib_cache=str(cache),
                                                          batch=(1, 8, 64)))
    assert again.bundle.calibration.reused_cache is True
    assert "calibration_s" not in again.timings  # no data pass

    def scales(path):
        g = onnx.load(str(path)).graph
        inits = {i.name: onnx.numpy_helper.to_array(i) for i in g.initializer}
        return {n.input[0]: inits[n.input[1]].item() for n in g.node if n.op_type == "QuantizeLinear"}

    assert scales(again.precision_onnx) == scales(results["int8"].precision_onnx)


@pytest.mark.trt
def test_trt_text_cache_format(bundles):
    out, _ = bundles
    lines = (out / "model.int8.calib.cache").read_text().splitlines()
    assert lines[0].startswith("TRT-") and lines[0].endswith("-EntropyCalibration2")
    amax = {t: v["amax"] for t, v in json.loads((out / "model.int8.calib.json").read_text())["tensors"].items()}
    assert len(lines) - 1 == len(amax)
    for line in lines[1:]:
        name, hexed = line.rsplit(": ", 1)
        (scale,) = struct.unpack(">f", bytes.fromhex(hexed))
        assert scale == np.float32(amax[name] / 127)


@pytest.mark.trt
def test_cache_from_another_onnx_is_refused(bundles, demo_model, tmp_path):
    out, _ = bundles
    data = json.loads((out / "model.int8.calib.json").read_text())
    data["source_onnx_sha256"] = "0" * 64
    (tmp_path / "other.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"was made from a different ONNX .* recalibrate with --calib DIR"):
        build(demo_model.onnx, tmp_path, BuildOptions(precision="int8", calib_cache=str(tmp_path / "other.json")))


@pytest.mark.trt
def test_cli_build_prints_summary(demo_model, tmp_path, capsys):
    assert main(["build", str(demo_model.onnx), "--fp16", "--out", str(tmp_path), "--batch", "1,4,16"]) == 0
    printed = capsys.readouterr().out
    assert (tmp_path / "model.fp16.engine").is_file()
    # What this machine can do, decided now (not a fact written into the bundle at build time).
    why = Bundle.read(tmp_path / "model.fp16.engine").why_not_runnable(0)
    said = ("TensorRT can run it here (GPU 0)" if why is None else
            f"TensorRT cannot run it on this machine: {why}")
    assert "FP16" in printed and said in " ".join(printed.split()) and "not executed" not in printed


@pytest.mark.trt
def test_unsupported_op_names_the_node(tmp_path, demo_model):
    from medtrt.export import read_metadata

    preset, props = read_metadata(demo_model.onnx)
    x = onnx.helper.make_tensor_value_info("image", onnx.TensorProto.FLOAT, ["N", 1, 64, 64])
    y = onnx.helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["N", 6])
    node = onnx.helper.make_node("FancyPool", ["image"], ["logits"], name="my_fancy_pool",
                                 domain="com.example")
    model = onnx.helper.make_model(onnx.helper.make_graph([node], "g", [x], [y]),
                                   opset_imports=[onnx.helper.make_opsetid("", 18),
                                                  onnx.helper.make_opsetid("com.example", 1)])
    for key in ("medtrt.format", "medtrt.preset"):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, props[key]
    onnx.save(model, str(tmp_path / "fancy.onnx"))
    from medtrt.trt import build_engine

    with pytest.raises(BuildError, match=r"cannot parse .*fancy.onnx:\n  node 'my_fancy_pool' \(FancyPool\)"):
        build_engine(tmp_path / "fancy.onnx", tmp_path / "fancy.engine")


def test_no_tensorrt_flavour_names_both_packages(monkeypatch, demo_model, tmp_path):
    import sys

    for name in ("tensorrt", "tensorrt_rtx"):
        monkeypatch.setitem(sys.modules, name, None)  # makes `import name` fail
    with pytest.raises(MissingDependencyError, match=r"tensorrt-cu13 .* tensorrt-rtx-cu13"):
        build(demo_model.onnx, tmp_path, BuildOptions())
    assert not list(tmp_path.iterdir())  # failed before doing any work


def test_build_argument_errors(demo_model, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.onnx").write_text("not a model")
    few = tmp_path / "few"
    few.mkdir()
    for p in held_out(demo_model).train_paths[:3]:
        (few / p.name).symlink_to(p)
    bad = tmp_path / "bad"
    bad.mkdir()
    for p in held_out(demo_model).train_paths[:3]:
        (bad / p.name).symlink_to(p)
    (bad / "zzz_broken.jpeg").write_bytes(b"")
    cases = [
        (["build", str(demo_model.onnx), "--int8"], "--int8 needs calibration data: pass --calib DIR"),
        (["build", str(demo_model.onnx), "--int8", "--calib", str(tmp_path / "empty")],
         "holds no images"),
        (["build", str(demo_model.onnx), "--int8", "--calib", str(tmp_path / "absent")],
         "does not exist"),
        (["build", str(demo_model.onnx), "--int8", "--calib", str(few), "--calib-images", "10"],
         "holds 3 images; 10 were asked for"),
        (["build", str(tmp_path / "notes.onnx")], "is not an ONNX file"),
        (["build", str(demo_model.onnx), "--fp16", "--calib", str(few)], "only apply to --int8"),
        (["build", str(demo_model.onnx), "--batch", "8,4,16"], "1 <= min <= opt <= max"),
        (["build", str(demo_model.onnx), "--int8", "--calib", str(bad), "--calib-images", "4"],
         "cannot read image"),
        (["build", str(demo_model.onnx), "--fp16", "--keep-fp16", "stem"], "apply to --int8 builds"),
        (["build", str(demo_model.onnx), "--int8", "--calib", str(few), "--calib-images", "3",
          "--keep-fp16", "stem,nope"], "no layer named 'nope'"),
    ]
    for argv, message in cases:
        assert main(argv + ["--out", str(tmp_path / "o")]) == 1, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], (argv, err)


@pytest.fixture(scope="module")
def broken_cache(bundles, tmp_path_factory):
    """The INT8 bundle's calibration cache with the input image's threshold clipped 40x: the
    stem convolution breaks and the INT8 graph misses the gate."""
    out, _ = bundles
    data = json.loads((out / "model.int8.calib.json").read_text())
    data["tensors"]["image"]["amax"] /= 40
    path = tmp_path_factory.mktemp("broken") / "broken.calib.json"
    path.write_text(json.dumps(data))
    return path


@pytest.fixture(scope="module")
def val_dir(demo_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("val")
    for p in held_out(demo_model).train_paths[300:556]:  # not used for calibration
        (root / p.parent.name).mkdir(exist_ok=True)
        (root / p.parent.name / p.name).symlink_to(p)
    return root


@pytest.mark.trt
def test_accuracy_gate_keeps_the_broken_layer_in_fp16(demo_model, broken_cache, val_dir, tmp_path,
                                                      capsys):
    assert main(["build", str(demo_model.onnx), "--int8", "--calib-cache", str(broken_cache),
                 "--val", str(val_dir), "--min-agreement", "0.99", "--out", str(tmp_path),
                 "--batch", "1,4,16"]) == 0
    b = Bundle.read(tmp_path / "model.int8.engine.json")
    gate = b.accuracy_gate
    assert gate["passed"] and gate["agreement_before"] < 0.99 <= gate["agreement"]
    assert gate["fp16_layers"] == list(b.quantization.fp16_layers) == ["node_Conv_1698"]
    # The bundle counts the gated graph: the image's own Q/DQ went with the stem conv.
    assert b.quantization.activation_tensors == 240
    assert gate["accuracy"]["int8"] >= gate["accuracy"]["fp32"] - 0.01 and gate["images"] == 256
    graph = onnx.load(str(tmp_path / "model.int8.onnx")).graph
    assert "node_Conv_1698_CastToFp16" in {n.name for n in graph.node}
    assert not any(n.op_type == "QuantizeLinear" and n.input[0] == "image" for n in graph.node)
    printed = " ".join(capsys.readouterr().out.split())
    assert "accuracy gate" in printed and "FP16 layers: node_Conv_1698" in printed


@pytest.mark.trt
def test_recipe_keeps_the_stem_in_fp16_from_the_start(demo_model, broken_cache, val_dir, tmp_path,
                                                      capsys):
    """--concat float --keep-fp16 stem: the broken threshold is the stem's input, which the recipe
    no longer quantizes, so the gate passes with no fallback layer; the bundle records the recipe."""
    assert main(["build", str(demo_model.onnx), "--int8", "--calib-cache", str(broken_cache),
                 "--concat", "float", "--keep-fp16", "stem", "--val", str(val_dir),
                 "--out", str(tmp_path), "--batch", "1,4,16"]) == 0
    b = Bundle.read(tmp_path / "model.int8.engine.json")
    q, gate = b.quantization, b.accuracy_gate
    assert gate["passed"] and gate["agreement_before"] >= 0.99 and gate["fp16_layers"] == []
    assert q.concat == "float" and q.keep_fp16 == ("stem",) and not q.share_concat_scales
    assert q.fp16_layers == q.keep_fp16_layers == ("node_Conv_1698",)
    assert q.gate_fp16_layers == ()
    graph = onnx.load(str(tmp_path / "model.int8.onnx")).graph
    quantized = {n.input[0] for n in graph.node if n.op_type == "QuantizeLinear"}
    assert "image" not in quantized and len(quantized) == q.activation_tensors < 241
    assert "node_Conv_1698_CastToFp16" in {n.name for n in graph.node}
    printed = " ".join(capsys.readouterr().out.replace("│", " ").split())  # wrapped cells rejoined
    assert "Concat float; FP16 layers: node_Conv_1698" in printed, printed


@pytest.mark.trt
def test_accuracy_gate_failure_stops_the_build(demo_model, broken_cache, val_dir, tmp_path, capsys):
    code = main(["build", str(demo_model.onnx), "--int8", "--calib-cache", str(broken_cache),
                 "--val", str(val_dir), "--max-fp16-layers", "0", "--out", str(tmp_path)])
    err = " ".join(capsys.readouterr().err.split())
    assert code == 1
    assert "gate FAILED: top1 agreement" in err and "no engine built" in err and "debug-layers" in err
    report = json.loads((tmp_path / "model.int8.gate.json").read_text())
    assert report["passed"] is False and report["agreement"] < 0.99
    assert not (tmp_path / "model.int8.engine").exists()
    assert main(["build", str(demo_model.onnx), "--fp16", "--val", str(val_dir),
                 "--out", str(tmp_path)]) == 1
    assert "--val (the accuracy gate) applies to --int8 builds" in capsys.readouterr().err


def test_accuracy_check_of_a_multilabel_model_compares_label_decisions(demo_model, tmp_path):
    """Sigmoid presets are checked on per-label decisions at the preset threshold, not argmax."""
    from helpers.chexnet import chexnet_parity
    from medtrt.build import _check_accuracy
    from medtrt.export import read_metadata
    from medtrt.precision import to_fp16

    c = chexnet_parity(demo_model)
    preset = read_metadata(c.onnx)[0]
    to_fp16(c.onnx, tmp_path / "m.fp16.onnx")
    acc = _check_accuracy(c.onnx, tmp_path / "m.fp16.onnx", preset, c.test_images[:48],
                          precision="fp16")
    assert acc["metric"] == "label decisions" and "top1_agreement" not in acc
    assert acc["agreement"] == acc["decision_agreement"] >= 0.99
    assert acc["images_with_all_decisions_equal"] <= acc["decision_agreement"]
    assert acc["images"] == 48 and acc["max_abs_prob_diff"] < 0.05


def test_non_finite_logits_stop_the_accuracy_check_with_the_graph_and_the_fix(tmp_path):
    """NaN or infinite logits (an FP16 overflow, a broken calibration) are refused with the graph,
    the counts, the first image and what to try; +inf is caught on the logits, where a sigmoid
    would have hidden it as probability 1."""
    from medtrt.build import _accuracy_report
    from medtrt.errors import NonFiniteError
    from medtrt.models import get_preset

    rng = np.random.default_rng(0)
    ref = rng.normal(size=(16, 6)).astype(np.float32)
    bad = ref + np.float32(0.01) * rng.normal(size=ref.shape).astype(np.float32)
    bad[[3, 9], 2] = np.nan
    bad[9, 4] = np.inf
    mednist, chexnet = get_preset("mednist"), get_preset("chexnet")
    paths = {"graph": tmp_path / "m.fp16.onnx", "fp32": tmp_path / "m.onnx"}
    fp16_message = (r"logits of the FP16 graph \S*m\.fp16\.onnx on the 16 accuracy-check images "
                    r"hold non-finite values: 2 NaN and 1 infinite in 2 of 16 samples \(first: "
                    r"sample 3\); no engine was built; an activation probably overflows FP16.*"
                    r"`medtrt debug-layers \S*m\.onnx \S*m\.fp16\.onnx")
    with pytest.raises(NonFiniteError, match=fp16_message):
        _accuracy_report(bad, ref, mednist, precision="fp16", **paths)
    with pytest.raises(ValueError, match=r"INT8 graph .*check the calibration data .*--keep-fp16"):
        _accuracy_report(bad, ref, mednist, precision="int8", **paths)
    with pytest.raises(NonFiniteError, match=r"FP32 graph \S*m\.onnx .*re-export it"):
        _accuracy_report(ref, bad, mednist, precision="fp16", **paths)
    logits14 = rng.normal(size=(4, 14))
    inf14 = logits14.copy()
    inf14[1, 0] = np.inf
    with pytest.raises(NonFiniteError, match=r"0 NaN and 1 infinite in 1 of 4 samples \(first: "
                                             r"sample 1\)"):
        _accuracy_report(inf14, logits14, chexnet, precision="fp16", **paths)
    acc = _accuracy_report(ref + np.float32(1e-3), ref, mednist, precision="fp16", **paths)
    assert acc["top1_agreement"] == acc["agreement"] == 1.0 and acc["images"] == 16


@pytest.mark.trt
def test_cli_build_stops_on_non_finite_outputs_without_a_traceback(demo_model, tmp_path,
                                                                   monkeypatch, capsys):
    """The FP16 graph made to give NaN for one check image: `medtrt build` exits 1 with the
    accuracy check's message and builds no engine."""
    import medtrt.build

    real = medtrt.build.ort_logits

    def nan_from_fp16(model, x, batch_size=32):
        out = real(model, x, batch_size)
        if str(model).endswith(".fp16.onnx"):
            out[5, 0] = np.nan
        return out

    monkeypatch.setattr(medtrt.build, "ort_logits", nan_from_fp16)
    assert main(["build", str(demo_model.onnx), "--fp16", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("medtrt: error: the logits of the FP16 graph ") and "Traceback" not in err
    assert "1 NaN and 0 infinite in 1 of 64 samples (first: sample 5)" in err
    assert not list(tmp_path.glob("*.engine"))
