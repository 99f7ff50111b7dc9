"""ONNX export: graph contract, metadata, parity with PyTorch, and the failure path."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from medtrt.data import read_image, scan_folder
from medtrt.errors import ExportError
from medtrt.export import VERIFY_BATCHES, _check_parity, export_onnx, read_metadata
from medtrt.models import create, load
from medtrt.reference import preprocess


def test_graph_contract_and_metadata(demo_model):
    graph = onnx.load(str(demo_model.onnx))
    onnx.checker.check_model(graph)
    (inp,), (out,) = graph.graph.input, graph.graph.output
    assert (inp.name, out.name) == ("image", "logits")
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert isinstance(dims[0], str) and dims[1:] == [1, 64, 64]  # dynamic batch, static C/H/W
    preset, props = read_metadata(demo_model.onnx)
    assert preset == load(demo_model.checkpoint)[1]
    assert preset.preprocess_kwargs()["out_size"] == (64, 64)
    checks = json.loads(props["medtrt.export_check"])
    assert [c["batch"] for c in checks] == list(VERIFY_BATCHES)
    assert all(c["max_abs_logit_error"] <= 1e-4 * c["max_abs_logit"] for c in checks)


@pytest.mark.parametrize("batch", VERIFY_BATCHES)
def test_onnxruntime_matches_pytorch_on_synthetic_set_images(demo_model, batch):
    folder = scan_folder(demo_model.data)
    paths = [folder.paths[i] for i in np.linspace(0, len(folder) - 1, batch).astype(int)]
    model, preset = load(demo_model.checkpoint)
    kw = preset.preprocess_kwargs()
    x = preprocess([read_image(p) for p in paths], kw.pop("out_size"), **kw).astype(np.float32)
    session = ort.InferenceSession(str(demo_model.onnx), providers=["CPUExecutionProvider"])
    got = session.run(["logits"], {"image": x})[0]
    with torch.inference_mode():
        expected = model(torch.from_numpy(x)).numpy()
    assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()


def test_parity_failure_is_loud(demo_model, tmp_path):
    other = create("mednist", seed=123)  # different weights than the exported graph
    x = np.random.default_rng(0).random((7, 1, 64, 64), dtype=np.float32)
    with pytest.raises(ExportError, match=r"disagree at batch 1: max \|dlogit\| = .* worst at "
                                          r"sample \d+, class \d+: onnx .* vs torch"):
        _check_parity(demo_model.onnx, other, (1, 7), x)


def test_failed_check_leaves_no_file(demo_model, tmp_path, monkeypatch):
    import medtrt.export as ex

    def boom(*args, **kwargs):
        raise ExportError("forced")

    monkeypatch.setattr(ex, "_check_parity", boom)
    with pytest.raises(ExportError, match="forced"):
        export_onnx(demo_model.checkpoint, tmp_path / "m.onnx", batch=3)
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_fixed_batch_export(demo_model, tmp_path):
    result = export_onnx(demo_model.checkpoint, tmp_path / "b4.onnx", batch=4)
    assert [c["batch"] for c in result.checks] == [4]
    dims = onnx.load(str(result.path)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [4, 1, 64, 64]


def test_bad_arguments(demo_model, tmp_path):
    with pytest.raises(ValueError, match=r"batch must be 'dynamic' or a positive int; got 0"):
        export_onnx(demo_model.checkpoint, tmp_path / "x.onnx", batch=0)
    with pytest.raises(ValueError, match=r"opset must be >= 18"):
        export_onnx(demo_model.checkpoint, tmp_path / "x.onnx", opset=13)
    (tmp_path / "plain.onnx").write_bytes(onnx.helper.make_model(onnx.helper.make_graph(
        [], "g", [], [])).SerializeToString())
    with pytest.raises(ValueError, match=r"was not exported by medtrt"):
        read_metadata(tmp_path / "plain.onnx")
