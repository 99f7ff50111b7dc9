"""`medtrt preset show`: what a checkpoint, an ONNX file or a built-in preset carries (bundles:
tests/test_foreign.py, beside the bundles it builds), as text or as a preset file."""

from __future__ import annotations

import onnx
import pytest

from helpers.foreign import graph
from medtrt.cli import main
from medtrt.models import PRESETS, load_preset


@pytest.mark.parametrize("which", ["checkpoint", "onnx", "builtin"])
def test_show_prints_the_preset_and_its_json_reads_back(demo_model, tmp_path, capsys, which):
    model = {"checkpoint": demo_model.checkpoint, "onnx": demo_model.onnx,
             "builtin": "mednist"}[which]
    kind = {"checkpoint": "medtrt checkpoint", "onnx": "ONNX exported by medtrt",
            "builtin": "built-in preset"}[which]
    assert main(["preset", "show", str(model)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"{model}: {kind}") and "1 channel(s), 64x64" in printed
    assert "6: AbdomenCT, BreastMRI, CXR, ChestCT, Hand, HeadCT" in printed
    if which == "onnx":
        assert "graph: input 'image' batch×1×64×64 float32 -> output 'logits' batch×6" in printed
    assert main(["preset", "show", str(model), "--json"]) == 0
    (tmp_path / "p.json").write_text(capsys.readouterr().out)
    assert load_preset(tmp_path / "p.json") == PRESETS["mednist"]


def test_show_says_when_a_model_carries_none_and_how_to_give_one(tmp_path, capsys):
    model = graph({"input": ["N", 3, 224, 224]}, {"probs": ["N", 14]},
                  [onnx.helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
                   onnx.helper.make_node("Flatten", ["pooled"], ["flat"]),
                   onnx.helper.make_node("Slice", ["flat", "zero", "fourteen", "one"], ["logits"]),
                   onnx.helper.make_node("Sigmoid", ["logits"], ["probs"])])
    for name, value in (("zero", 0), ("fourteen", 14), ("one", 1)):
        model.graph.initializer.append(onnx.helper.make_tensor(name, onnx.TensorProto.INT64,
                                                               [1], [value]))
    onnx.save(model, str(tmp_path / "chexnet.onnx"))
    (tmp_path / "labels.txt").write_text("\n".join(PRESETS["chexnet"].labels))
    assert main(["preset", "show", str(tmp_path / "chexnet.onnx")]) == 1
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith(f"{tmp_path / 'chexnet.onnx'} (ONNX (not exported by medtrt)) "
                                 "carries no preset: the graph has no medtrt metadata; give one "
                                 "with --preset FILE|NAME")
    assert printed[1] == ("graph: input 'input' N×3×224×224 float32 -> output 'probs' N×14; ends "
                          "in Sigmoid (removed when built or run: the preset's activation is "
                          "applied once, by medtrt)")
    # With the flags, the preset they make is shown and checked against the graph.
    flags = ["--labels", str(tmp_path / "labels.txt"), "--size", "224", "--channels", "3",
             "--activation", "sigmoid"]
    assert main(["preset", "show", str(tmp_path / "chexnet.onnx"), *flags]) == 0
    assert "14: Atelectasis, Cardiomegaly" in capsys.readouterr().out
    assert main(["preset", "show", str(tmp_path / "chexnet.onnx"), *flags[:-1], "softmax"]) == 1
    assert ("the graph ends in Sigmoid (independent labels) but preset 'chexnet' has activation "
            "'softmax'") in capsys.readouterr().err
