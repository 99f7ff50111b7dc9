"""`medtrt debug-layers`: Polygraphy runs both graphs layer by layer (ONNX Runtime, CPU) and the
report points at the layer where a broken INT8 threshold enters."""

from __future__ import annotations

import json
import sys

import onnx
import pytest

from helpers.heldout import held_out
from medtrt.cli import main
from medtrt.precision import CalibrationConfig, calibrate, insert_qdq, plan_qdq

BROKEN_TENSOR, ITS_CONV = "relu_20", "node_Conv_1728"


@pytest.fixture(scope="module")
def graphs(demo_model, tmp_path_factory):
    data = held_out(demo_model)
    fp32 = onnx.load(str(demo_model.onnx))
    plan = plan_qdq(fp32)
    assert plan.consumers[BROKEN_TENSOR] == (ITS_CONV,)
    cal = calibrate(demo_model.onnx, data.train_paths[:64], plan.tensors,
                    CalibrationConfig(num_images=64))
    out = tmp_path_factory.mktemp("debug")
    insert_qdq(fp32, cal.amax, plan=plan, out=out / "good.int8.onnx")
    broken = dict(cal.amax)
    broken[BROKEN_TENSOR] /= 30
    insert_qdq(fp32, broken, plan=plan, out=out / "broken.int8.onnx")
    images = out / "images"
    images.mkdir()
    for p in data.train_paths[100:102]:
        (images / p.name).symlink_to(p)
    return out, images


def test_report_points_at_the_broken_layer(graphs, demo_model):
    from medtrt.precision.debug import compare_layers

    out, images = graphs
    broken = compare_layers(demo_model.onnx, out / "broken.int8.onnx", images, num_images=2)
    good = compare_layers(demo_model.onnx, out / "good.int8.onnx", images, num_images=2)
    assert broken.images == 2 and len(broken.layers) == len(good.layers) > 300
    worst = broken.worst(1)[0]
    assert worst.producer == ITS_CONV and worst.op == "Conv" and not worst.passed
    assert worst.growth > 5 * max(d.growth for d in good.layers)
    assert broken.output_rel_error > 2 * good.output_rel_error
    # Upstream of the broken threshold the two INT8 graphs are identical.
    order = [d.tensor for d in broken.layers]
    cut = order.index(worst.tensor)
    assert [d.rel_error for d in broken.layers[:cut]] == [d.rel_error for d in good.layers[:cut]]


def test_cli_prints_the_table_and_writes_json(graphs, demo_model, tmp_path, capsys):
    out, images = graphs
    assert main(["debug-layers", str(demo_model.onnx), str(out / "broken.int8.onnx"),
                 "--data", str(images), "--images", "1", "--top", "3",
                 "--out", str(tmp_path / "layers.json")]) == 0
    printed = capsys.readouterr().out
    assert ITS_CONV in printed and "where the error grows" in printed
    report = json.loads((tmp_path / "layers.json").read_text())
    assert report["worst"][0]["producer"] == ITS_CONV and report["images"] == 1


def test_missing_polygraphy_names_the_extra(graphs, demo_model, monkeypatch):
    from medtrt.errors import MissingDependencyError
    from medtrt.precision.debug import compare_layers

    out, images = graphs
    monkeypatch.setitem(sys.modules, "polygraphy.backend.onnx", None)
    with pytest.raises(MissingDependencyError, match=r"medtrt\[debug\]"):
        compare_layers(demo_model.onnx, out / "good.int8.onnx", images)


def test_cli_names_a_file_that_is_not_onnx(graphs, demo_model, tmp_path, capsys):
    out, images = graphs
    (tmp_path / "notes.onnx").write_text("not a graph")
    assert main(["debug-layers", str(demo_model.onnx), str(tmp_path / "notes.onnx"),
                 "--data", str(images)]) == 1
    assert "notes.onnx is not an ONNX file" in capsys.readouterr().err
