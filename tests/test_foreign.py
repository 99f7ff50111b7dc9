"""Foreign ONNX (medtrt.foreign): graphs exported by plain ``torch.onnx.export`` -- a small conv
classifier ending in Softmax (weights in a separate file), and the demo DenseNet-121 with a final
Sigmoid and a static batch -- built with a preset (FP16 and INT8, TensorRT-RTX on the CPU), run
by Engine on the CPU, and equal to the source PyTorch model (the activation applied once); each
graph or preset that does not fit is refused in one line."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import onnx
import pytest
import torch

from helpers.foreign import (assert_parity, build_bundle, engine_probs, fit, graph, plain_export,
                             reference_probs, small_classifier, spread)
from medtrt import Engine
from medtrt.artifacts import Bundle, OnnxMetadata, sha256_file
from medtrt.build import BuildOptions, build
from medtrt.cli import main
from medtrt.foreign import graph_io, read_onnx
from medtrt.models import MEDNIST_LABELS, load, load_preset
from medtrt.precision import QdqRecipe
from medtrt.runtime.loader import load_stage

pytestmark = pytest.mark.trt


@pytest.fixture(scope="module")
def small(split, calib_dir, tmp_path_factory):
    """The small classifier (3×32×32, the six MedNIST labels, final Softmax, dynamic batch),
    briefly fitted, exported plainly and re-saved with onnx.save(save_as_external_data=True);
    its preset file names a labels file; FP16 and INT8 bundles built from a copy that is then
    deleted (the bundles must not need it)."""
    root = tmp_path_factory.mktemp("small")
    (root / "labels.txt").write_text("\n".join(MEDNIST_LABELS) + "\n")
    (root / "small.json").write_text(json.dumps({
        "name": "small", "in_channels": 3, "image_size": 32, "labels_file": "labels.txt",
        "activation": "softmax", "mean": [0.5], "std": [0.25]}))
    preset = load_preset(root / "small.json")
    torch.manual_seed(0)
    model = fit(small_classifier(6), list(split.train.paths), list(split.train.labels), preset)
    exported = plain_export(model, torch.zeros(2, 3, 32, 32), root / "export" / "small.onnx",
                            dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1024)},))
    src = root / "src"
    src.mkdir()
    onnx.save(onnx.load(str(exported)), str(src / "small.onnx"), save_as_external_data=True,
              all_tensors_to_one_file=True, location="small.weights", size_threshold=0)
    kept = root / "kept"
    shutil.copytree(src, kept)
    out = root / "out"
    built = {p: build_bundle(src / "small.onnx", out, p, root / "small.json", calib_dir,
                       batch=(1, 8, 16)) for p in ("fp16", "int8")}
    shutil.rmtree(src)
    return {"model": model, "preset": preset, "onnx": kept / "small.onnx", "root": root,
            "out": out, "built": built}


@pytest.fixture(scope="module")
def demo_sigmoid(demo_model, calib_dir, tmp_path_factory):
    """The demo DenseNet-121 followed by a Sigmoid, exported plainly at a static batch of 4, and
    its FP16 and INT8 bundles (profile fixed to 4: no --batch given). INT8 with the accurate
    recipe (`--concat float --keep-fp16 stem,head`, as the parity suite's CheXNet-shaped model):
    this model's labels sit near the 0.5 threshold (a sigmoid over logits trained for a softmax),
    so the default recipe flips about 1% of its decisions; stem and head are resolved on the
    graph without its Sigmoid."""
    root = tmp_path_factory.mktemp("demo")
    densenet, mednist = load(demo_model.checkpoint)
    model = torch.nn.Sequential(densenet, torch.nn.Sigmoid()).eval()
    path = plain_export(model, torch.zeros(4, 1, 64, 64), root / "densenet.onnx")
    preset = replace(mednist, name="mednist-sigmoid", activation="sigmoid")
    built = {"fp16": build_bundle(path, root / "out", "fp16", preset, calib_dir),
             "int8": build_bundle(path, root / "out", "int8", preset, calib_dir,
                            recipe=QdqRecipe(concat="float", keep_fp16=("stem", "head")))}
    return {"model": model, "preset": preset, "onnx": path, "out": root / "out", "built": built}


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_small_classifier_scores_equal_the_source_model(small, images, precision):
    ref = reference_probs(small["model"], images, small["preset"])  # its own Softmax included
    probs = engine_probs(small["built"][precision].engine, images)
    assert_parity(probs, ref, precision, f"small {precision}")
    b = small["built"][precision].bundle
    assert b.input.name == "input" and b.output.name == "linear"  # the exporter's names
    assert b.input.profile.min[0] == 1 and b.input.profile.max[0] == 16


def test_small_classifier_onnx_runs_in_engine_with_a_preset(small, images):
    ref = reference_probs(small["model"], images, small["preset"])
    probs = engine_probs(small["onnx"], images, preset=small["root"] / "small.json")
    assert_parity(probs, ref, "fp32", "small fp32 (ONNX Runtime)")


def test_the_bundle_records_the_foreign_source(small):
    b = small["built"]["fp16"].bundle
    f = b.source_onnx.foreign
    assert f.name == "small.onnx" and f.sha256 == sha256_file(small["onnx"])
    assert f.external_data == ("small.weights",) and f.removed_activation == "Softmax"
    assert f.batch == "dynamic" and f.input == "input" and f.producer.startswith("pytorch")
    assert b.source_onnx.name == "small.medtrt.onnx" and b.source_onnx.export is None
    assert b.preset == small["preset"]
    raw = json.loads(small["built"]["fp16"].bundle_json.read_text())
    assert raw["schema_version"] == 3 and Bundle.read(small["built"]["fp16"].bundle_json) == b
    # The adopted graph holds its weights and medtrt's metadata, and ends in logits.
    adopted = onnx.load(str(small["out"] / "small.medtrt.onnx"), load_external_data=False)
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in adopted.graph.initializer)
    assert adopted.graph.node[-1].op_type == "Gemm"
    props = {p.key: p.value for p in adopted.metadata_props}
    assert props["medtrt.format"] == "medtrt-onnx/2" and "medtrt.export" not in props
    assert OnnxMetadata.from_model(adopted).foreign == f
    for precision in ("fp16", "int8"):
        g = onnx.load(str(small["built"][precision].precision_onnx)).graph
        assert {"Softmax", "Sigmoid"}.isdisjoint(n.op_type for n in g.node)
    # It rebuilds with no preset argument, from the command its bundle names.
    assert b.rebuild_command() == "medtrt build small.medtrt.onnx --fp16 --batch 1,8,16"
    again = build(small["out"] / "small.medtrt.onnx", small["out"] / "again",
                  BuildOptions(flavour="tensorrt_rtx", check_images=8, batch=(1, 8, 16)))
    assert again.bundle.source_onnx == b.source_onnx and again.bundle.preset == b.preset


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_demo_model_with_sigmoid_and_static_batch_equals_the_source(demo_sigmoid, images,
                                                                     precision):
    """No double activation: the engine's probabilities are the source's own Sigmoid outputs."""
    b = demo_sigmoid["built"][precision].bundle
    assert (b.input.profile.min[0], b.input.profile.max[0]) == (4, 4)
    assert b.source_onnx.foreign.removed_activation == "Sigmoid"
    assert b.source_onnx.foreign.batch == 4
    if precision == "int8":  # the head is the graph's last Gemm, now that the Sigmoid is gone
        assert b.quantization.keep_fp16_layers[-1].startswith("node_linear")
    ref = reference_probs(demo_sigmoid["model"], images, demo_sigmoid["preset"])
    probs = engine_probs(demo_sigmoid["built"][precision].engine, images)  # 48 = 12 x 4
    assert_parity(probs, ref, precision, f"densenet+sigmoid {precision}", activation="sigmoid")


def test_demo_model_onnx_with_static_batch_runs_in_engine(demo_sigmoid, images):
    """Seven images through a graph fixed to batch 4: chunks of 4, the last one padded."""
    loaded = load_stage(demo_sigmoid["onnx"], device="cpu", preset=demo_sigmoid["preset"])
    assert (loaded.min_batch, loaded.profile_max, loaded.fallback) == (4, 4, None)
    loaded.stage.close()
    ref = reference_probs(demo_sigmoid["model"], images[:7], demo_sigmoid["preset"])
    probs = engine_probs(demo_sigmoid["onnx"], images[:7], preset=demo_sigmoid["preset"])
    assert_parity(probs, ref, "fp32", "densenet+sigmoid fp32 (ONNX Runtime)",
                  activation="sigmoid")


def test_what_does_not_fit_is_one_line(small, demo_sigmoid, tmp_path, capsys):
    root = small["root"]
    (root / "five.json").write_text(json.dumps({
        "in_channels": 3, "image_size": 32, "labels": list(MEDNIST_LABELS[:5]),
        "activation": "softmax"}))
    (root / "typo.json").write_text(json.dumps({
        "in_channels": 3, "image_size": 32, "lables": list(MEDNIST_LABELS),
        "activation": "softmax"}))
    two = graph({"a": ["N", 1, 64, 64], "b": ["N", 1, 64, 64]}, {"y": ["N", 1, 64, 64]},
                [onnx.helper.make_node("Add", ["a", "b"], ["y"])])
    onnx.save(two, str(tmp_path / "two.onnx"))
    vol = graph({"x": ["N", 1, 8, 64, 64]}, {"y": ["N", 1, 8, 64, 64]},
                [onnx.helper.make_node("Relu", ["x"], ["y"])])
    onnx.save(vol, str(tmp_path / "volume.onnx"))
    small_onnx, demo_onnx = str(small["onnx"]), str(demo_sigmoid["onnx"])
    cases = [
        (["build", small_onnx, "--preset", str(root / "five.json")],
         "small.onnx: the graph outputs 6 classes but preset 'five' lists 5 labels; give 6 labels"),
        (["build", str(tmp_path / "two.onnx"), "--preset", "mednist"],
         "two.onnx has 2 inputs ('a', 'b'); medtrt runs 2-D image classifiers: one float32 input "
         "N×C×H×W, one output N×classes"),
        (["build", str(tmp_path / "volume.onnx"), "--preset", "mednist"],
         "volume.onnx: input 'x' is 5-D (N×1×8×64×64); medtrt runs 2-D image classifiers"),
        (["build", small_onnx, "--preset", str(root / "typo.json")],
         "typo.json: unknown preset field 'lables' (did you mean 'labels'?)"),
        (["build", small_onnx, "--preset", "mednist"],
         "small.onnx: input 'input' has 3 channels but preset 'mednist' has in_channels 1; pass "
         "--channels 3"),
        (["build", small_onnx, "--preset", str(root / "small.json"), "--size", "64"],
         "small.onnx: input 'input' is 32×32 but preset 'small' has image_size 64×64; pass --size "
         "32x32"),
        (["build", demo_onnx, "--preset", "mednist"],
         "densenet.onnx: the graph ends in Sigmoid (independent labels) but preset 'mednist' has "
         "activation 'softmax'; pass --activation sigmoid"),
        (["build", demo_onnx, "--preset", "mednist", "--activation", "sigmoid", "--batch",
          "1,8,16"], "densenet.onnx has a fixed batch of 4, so the engine's profile is 4,4,4: "
                     "drop --batch (or pass --batch 4,4,4)"),
        (["build", small_onnx, "--fp16"],
         "small.onnx was not exported by medtrt (no medtrt.preset metadata): give its preset "
         "(--preset FILE|NAME"),
        (["build", small_onnx, "--labels", str(root / "labels.txt"), "--size", "32"],
         "no preset to start from (the model carries none and --preset was not given): add "
         "--channels, --activation"),
    ]
    out = tmp_path / "out"
    for argv, message in cases:
        assert main(argv + ["--out", str(out), "--trt", "tensorrt_rtx"]) == 1, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], (argv, err)
    assert not out.exists()  # refused before any work


def test_preset_show_on_a_bundle_and_json_round_trip(small, capsys):
    bundle = small["built"]["int8"].engine
    assert main(["preset", "show", str(bundle)]) == 0
    printed = capsys.readouterr().out
    assert "engine bundle" in printed and "adopted from small.onnx" in printed
    assert "medtrt removed its final Softmax" in printed and "AbdomenCT" in printed
    assert main(["preset", "show", str(bundle), "--json"]) == 0
    path = small["root"] / "shown.json"
    path.write_text(capsys.readouterr().out)
    assert replace(load_preset(path), name="small") == small["preset"]


def test_eval_takes_a_preset_for_a_foreign_onnx(small, split, tmp_path, capsys):
    data = tmp_path / "data"
    for p, y in spread(list(zip(split.test.paths, split.test.labels)), 24):
        (data / MEDNIST_LABELS[y]).mkdir(parents=True, exist_ok=True)
        (data / MEDNIST_LABELS[y] / p.name).symlink_to(p)
    assert main(["eval", str(small["onnx"]), "--data", str(data), "--preset",
                 str(small["root"] / "small.json"), "--device", "cpu", "--out",
                 str(tmp_path / "eval"), "-q"]) == 0
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert report["images"] == report["evaluated"] == 24 and report["failed"] == []
    assert report["task"] != "multi-label" and report["accuracy"] > 0.5


def test_engine_refuses_a_preset_for_a_bundle_and_a_model_without_one(small):
    with pytest.raises(ValueError, match=r"preset= applies to an ONNX file; small\.fp16\.engine "
                                         r"carries its own preset"):
        Engine(small["built"]["fp16"].engine, device="cpu", preset="mednist")
    with pytest.raises(ValueError, match=r"small\.onnx was not exported by medtrt .*give its "
                                         r"preset"):
        Engine(small["onnx"], device="cpu")


def test_a_graph_without_a_final_activation_keeps_its_output(small, tmp_path):
    """A foreign graph that outputs logits already: nothing removed, the output name kept."""
    model = onnx.load(str(small["out"] / "small.medtrt.onnx"))
    del model.metadata_props[:]
    onnx.save(model, str(tmp_path / "logits.onnx"))
    source = read_onnx(tmp_path / "logits.onnx", small["preset"], weights=False)
    assert source.removed is None and source.meta.foreign.removed_activation is None
    assert source.io.output == model.graph.output[0].name and source.io.classes == 6
    assert source.runnable() == str(tmp_path / "logits.onnx")  # the file itself runs


def test_an_output_without_a_declared_shape_is_inferred():
    model = graph({"x": ["N", 3, 32, 32]}, {}, [
        onnx.helper.make_node("GlobalAveragePool", ["x"], ["pooled"]),
        onnx.helper.make_node("Flatten", ["pooled"], ["scores"])])
    model.graph.output.append(onnx.helper.make_tensor_value_info("scores", onnx.TensorProto.FLOAT,
                                                                 None))
    io = graph_io(model, "m.onnx")
    assert (io.input_shape, io.output_shape, io.batch, io.classes) == (("N", 3, 32, 32),
                                                                       ("N", 3), None, 3)
