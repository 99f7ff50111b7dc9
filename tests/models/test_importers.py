"""Importing DenseNet-121 checkpoints of other libraries (medtrt.models.importers, `medtrt import`).

Expected outputs never come from medtrt's key mapping: the MONAI layout is compared with MONAI's
own model, the torchvision layouts with torchvision's own densenet121 (run in .venv-torchvision by
tools/byo_reference.py; `make test` creates it). timm's own model is compared through the whole
path in tests/test_byo.py; here its key names and TorchXRayVision's are built from a MONAI model's
weights to test the plumbing (prefixes, buffers, refusals).
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from dataclasses import replace

import numpy as np
import pytest
import torch
from helpers.byo import make_reference, torchvision_python
from monai.networks.nets import DenseNet121

from medtrt.cli import main
from medtrt.errors import CheckpointError
from medtrt.export import export_onnx
from medtrt.models import PRESETS, load, load_checkpoint
from medtrt.models.importers import XRV_LABELS, detect_layout, import_checkpoint
from medtrt.reference import preprocess
from medtrt.runtime import Engine
from medtrt.testing import assert_close

MEDNIST = PRESETS["mednist"]
CHEXNET = PRESETS["chexnet"]
# TorchXRayVision's input: 1 channel, 224x224, 8-bit pixels to [-1024, 1024].
XRV = replace(CHEXNET, name="xrv", in_channels=1, labels=XRV_LABELS, mean=(0.5,),
              std=(1 / 2048,))


def monai_model(channels: int, classes: int, seed: int) -> torch.nn.Module:
    """MONAI's DenseNet121 with random norm statistics and affines (the defaults are
    identities, under which a misplaced norm tensor would go unnoticed)."""
    torch.manual_seed(seed)
    model = DenseNet121(spatial_dims=2, in_channels=channels, out_channels=classes)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.2)
            m.running_mean.normal_(0, 0.2)
            m.running_var.uniform_(0.5, 1.5)
        elif isinstance(m, torch.nn.Linear):
            m.bias.data.normal_(0, 0.5)
    return model.eval()


def outputs(model: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.inference_mode():
        return model(x).numpy()


def timm_names(state_dict: dict) -> dict:
    """MONAI's keys written the way timm's DenseNet names them (timm/models/densenet.py:
    denselayerN.norm1/conv1/norm2/conv2, transitionN.norm/conv, norm5, classifier)."""
    out = {}
    for key, value in state_dict.items():
        key = key.replace(".layers.", ".").replace("class_layers.out.", "classifier.")
        out[key] = value
    return out


@pytest.fixture(scope="module")
def mednist_source(tmp_path_factory):
    """The MedNIST tutorial's artifact: a plain MONAI DenseNet121 state dict."""
    model = monai_model(1, 6, seed=3)
    path = tmp_path_factory.mktemp("monai") / "best_metric_model.pth"
    torch.save(model.state_dict(), path)
    return model, path


# -- MONAI layout, against MONAI's own model -------------------------------------------------


@pytest.mark.parametrize("wrap", ["raw", "dataparallel_under_model_state_dict"])
def test_monai_layout_matches_monais_own_model(mednist_source, tmp_path, wrap):
    model, path = mednist_source
    if wrap != "raw":
        path = tmp_path / "wrapped.pth"
        sd = {f"module.{k}": v for k, v in model.state_dict().items()}
        torch.save({"epoch": 12, "model_state_dict": sd}, path)
    report = import_checkpoint(path, "auto", "mednist", tmp_path / "m.pt")
    assert (report.layout, report.layout_detected, report.renamed) == (
        "monai-densenet121", True, 0 if wrap == "raw" else 727)
    imported, preset = load(tmp_path / "m.pt")
    assert preset == MEDNIST
    x = torch.randn(4, 1, 64, 64, generator=torch.Generator().manual_seed(5))
    np.testing.assert_array_equal(outputs(imported, x), outputs(model, x))
    info = load_checkpoint(tmp_path / "m.pt")["info"]["imported"]
    assert info["layout"] == "monai-densenet121" and len(info["source_sha256"]) == 64
    if wrap != "raw":
        assert any("'module.' of DataParallel" in n for n in info["notes"])
        assert any("other entries ignored: epoch" in n for n in info["notes"])


def test_imported_checkpoint_exports_and_runs_in_engine(mednist_source, tmp_path):
    """The result is a normal medtrt checkpoint: export, then the ONNX Runtime Engine on the CPU,
    against MONAI's own model on the same pre-processed images."""
    model, path = mednist_source
    import_checkpoint(path, "monai-densenet121", "mednist", tmp_path / "m.pt")
    export_onnx(tmp_path / "m.pt", tmp_path / "m.onnx")
    images = list(np.random.default_rng(6).integers(0, 256, (5, 80, 72), dtype=np.uint8))
    engine = Engine(tmp_path / "m.onnx", backend="onnxruntime")
    got = engine.infer(images, return_probs=True).probs
    kw = MEDNIST.preprocess_kwargs()
    x = torch.from_numpy(preprocess(images, kw.pop("out_size"), **kw).astype(np.float32))
    expected = torch.softmax(torch.from_numpy(outputs(model, x)), dim=1).numpy()
    assert_close(got, expected, atol=1e-5, name="Engine(imported) vs MONAI softmax")


# -- torchvision layouts, against torchvision's own densenet121 ------------------------------


@pytest.fixture(scope="module")
def torchvision_reference(tmp_path_factory):
    python, why = torchvision_python()
    if python is None:
        pytest.skip(why)
    out = tmp_path_factory.mktemp("torchvision-reference")
    manifest = make_reference(python, out)
    return out, manifest, torch.load(out / "expected.pt", weights_only=True)


@pytest.mark.parametrize("variant,arch", [
    ("torchvision", "auto"), ("dataparallel", "auto"), ("chexnet", "torchvision-densenet121"),
    ("legacy", "auto"), ("xrv_shapes", "auto")])
def test_torchvision_variants_match_torchvisions_own_model(torchvision_reference, tmp_path,
                                                            variant, arch):
    folder, manifest, ref = torchvision_reference
    meta = manifest["variants"][variant]
    preset = XRV if variant == "xrv_shapes" else CHEXNET
    extra = {"source_activation": "sigmoid"} if variant == "chexnet" else {}
    report = import_checkpoint(folder / meta["file"], arch, preset, tmp_path / "m.pt", **extra)
    assert report.layout == ("xrv-densenet121" if variant == "xrv_shapes"
                             else "torchvision-densenet121")
    model, _ = load(tmp_path / "m.pt")
    got = outputs(model, ref["inputs"][meta["channels"]])
    if meta["output"] == "sigmoid":  # the source's own Sigmoid; medtrt applies the preset's
        got = 1 / (1 + np.exp(-got.astype(np.float64)))
    expected = ref["outputs"][variant].numpy()
    assert_close(got, expected, atol=1e-5 * np.abs(expected).max(), rtol=1e-4,
                 name=f"{variant}: imported vs torchvision {manifest['torchvision']}")


# -- timm and TorchXRayVision: their documented key layouts, plumbing only -------------------


def test_timm_layout_maps_like_torchvision_and_refuses_the_deep_stem(tmp_path):
    model = monai_model(3, 14, seed=4)
    timm_sd = timm_names(model.state_dict())
    assert detect_layout(timm_sd)[0] == "torchvision-densenet121"  # the same key names
    torch.save(timm_sd, tmp_path / "timm.pth")
    report = import_checkpoint(tmp_path / "timm.pth", "timm-densenet121", "chexnet",
                               tmp_path / "m.pt")
    assert report.layout == "timm-densenet121" and not report.layout_detected
    x = torch.randn(2, 3, 64, 64)
    np.testing.assert_array_equal(outputs(load(tmp_path / "m.pt")[0], x), outputs(model, x))
    deep = {**timm_sd, "features.conv1.weight": torch.zeros(32, 32, 3, 3)}  # densenet121d stem
    torch.save(deep, tmp_path / "deep.pth")
    with pytest.raises(CheckpointError, match=r"1 keys have no place in MONAI's DenseNet121 "
                                              r"\(layout timm-densenet121\), e.g. "
                                              r"'features.conv1.weight'"):
        import_checkpoint(tmp_path / "deep.pth", "timm-densenet121", "chexnet", tmp_path / "d.pt")


def test_xrv_layout_keeps_op_threshs_out_of_the_weights(tmp_path):
    model = monai_model(1, 18, seed=5)
    threshs = torch.tensor([0.07] * 14 + [float("nan"), 0.03, float("nan"), 0.05])
    torch.save({**timm_names(model.state_dict()), "op_threshs": threshs}, tmp_path / "xrv.pt")
    report = import_checkpoint(tmp_path / "xrv.pt", "auto", XRV, tmp_path / "m.pt")
    assert report.layout == "xrv-densenet121"
    info = load_checkpoint(tmp_path / "m.pt")["info"]["imported"]
    assert info["xrv_op_threshs"][14] is None and info["xrv_op_threshs"][15] == pytest.approx(0.03)
    assert any("plain sigmoid probabilities" in n for n in info["notes"])
    assert not any("[-1024, 1024]; preset" in n for n in info["notes"])  # XRV's range: no warning
    with pytest.raises(CheckpointError, match=r"'op_threshs'.*op_threshs is TorchXRayVision's: "
                                              r"--arch xrv-densenet121"):
        import_checkpoint(tmp_path / "xrv.pt", "torchvision-densenet121", XRV, tmp_path / "t.pt")


# -- whole pickled models and the final activation -------------------------------------------


def test_whole_pickled_model_needs_unsafe_pickle_and_its_softmax_is_recorded(tmp_path):
    model = monai_model(1, 6, seed=6)
    whole = torch.nn.Sequential(OrderedDict(net=model, act=torch.nn.Softmax(dim=1)))
    torch.save(whole, tmp_path / "whole.pt")
    with pytest.raises(CheckpointError, match=r"pickled Python objects .* pass --unsafe-pickle"):
        import_checkpoint(tmp_path / "whole.pt", "auto", "mednist", tmp_path / "m.pt")
    report = import_checkpoint(tmp_path / "whole.pt", "auto", "mednist", tmp_path / "m.pt",
                               unsafe_pickle=True)
    assert report.source_activation == "softmax" and not report.activation_adopted
    x = torch.randn(3, 1, 64, 64)
    got = torch.softmax(torch.from_numpy(outputs(load(tmp_path / "m.pt")[0], x)), dim=1)
    np.testing.assert_allclose(got.numpy(), outputs(whole, x), atol=1e-6)  # applied once
    sigmoid_preset = replace(MEDNIST, activation="sigmoid")
    with pytest.raises(CheckpointError, match=r"^the source model ends in softmax but preset "
                                              r"'mednist' applies sigmoid; pass "
                                              r"--adopt-activation"):
        import_checkpoint(tmp_path / "whole.pt", "auto", sigmoid_preset, tmp_path / "s.pt",
                          unsafe_pickle=True)
    report = import_checkpoint(tmp_path / "whole.pt", "auto", sigmoid_preset, tmp_path / "s.pt",
                               unsafe_pickle=True, adopt_activation=True)
    assert report.activation_adopted and load(tmp_path / "s.pt")[1].activation == "softmax"


# -- bad inputs: one clear line each ---------------------------------------------------------


def test_unknown_architecture_keys(tmp_path):
    resnet = {"conv1.weight": torch.zeros(64, 3, 7, 7), "layer1.0.conv1.weight":
              torch.zeros(64, 64, 1, 1), "fc.weight": torch.zeros(14, 2048)}
    torch.save(resnet, tmp_path / "resnet.pth")
    with pytest.raises(CheckpointError, match=r"^unknown architecture: no 'features.conv0.weight' "
                                              r"key .* among 3 keys, e.g. 'conv1.weight', "
                                              r"'layer1.0.conv1.weight', 'fc.weight'; expected "
                                              r"one of the layouts monai-densenet121, "):
        import_checkpoint(tmp_path / "resnet.pth", "auto", "chexnet", tmp_path / "m.pt")


def test_wrong_number_of_classes_and_wrong_shape(mednist_source, tmp_path):
    model, path = mednist_source
    with pytest.raises(CheckpointError, match=r"the classifier has 6 outputs \('class_layers.out"
                                              r".weight' is \(6, 1024\)\) but preset 'chexnet' "
                                              r"has 14 labels; give a preset with 6 labels$"):
        import_checkpoint(path, "auto", "chexnet", tmp_path / "m.pt")
    sd = {f"densenet121.{k}": v for k, v in timm_names(model.state_dict()).items()}
    sd["densenet121.features.denseblock2.denselayer3.conv2.weight"] = torch.zeros(32, 128, 1, 1)
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=re.escape(
            "tensor 'densenet121.features.denseblock2.denselayer3.conv2.weight' (MONAI "
            "'features.denseblock2.denselayer3.layers.conv2.weight') has shape (32, 128, 1, 1) "
            "but MONAI's DenseNet121 for preset 'mednist' (1 input channels, 6 labels) expects "
            "(32, 128, 3, 3)")):
        import_checkpoint(tmp_path / "bad.pth", "auto", "mednist", tmp_path / "m.pt")
    del sd["densenet121.features.norm5.bias"]
    torch.save(sd, tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match=r"1 tensors of MONAI's DenseNet121 are missing "
                                              r"\(layout torchvision-densenet121\), e.g. "
                                              r"'features.norm5.bias'$"):
        import_checkpoint(tmp_path / "missing.pth", "auto", "mednist", tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match=r"--arch monai-densenet121 but the keys are those "
                                              r"of torchvision-densenet121"):
        import_checkpoint(tmp_path / "missing.pth", "monai-densenet121", "mednist",
                          tmp_path / "m.pt")


# -- the command line ------------------------------------------------------------------------


def test_cli_import_prints_what_it_detected(mednist_source, tmp_path, capsys):
    _, path = mednist_source
    preset_file = tmp_path / "p.json"
    preset_file.write_text(json.dumps(replace(MEDNIST, name="mine").to_dict()))
    assert main(["import", str(path), "--preset", str(preset_file), "-o",
                 str(tmp_path / "m.pt")]) == 0
    out = capsys.readouterr().out
    assert "layout: monai-densenet121 (detected); 0 tensors renamed" in out
    assert f"wrote {tmp_path / 'm.pt'} (preset mine, 6 labels, softmax" in out
    assert load(tmp_path / "m.pt")[1].name == "mine"
    assert main(["import", str(path), "--preset", "chexnet", "-o", str(tmp_path / "x.pt")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("medtrt: error: ") and "14 labels" in err[0]
