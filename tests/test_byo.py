"""Bring your own model, the whole path for each source format: a checkpoint as its library
writes it -> ``medtrt import`` -> export -> FP16 and INT8 builds (TensorRT-RTX on the CPU) ->
``Engine`` on the CPU, against the source library's own model on the same pre-processed images,
within ``PARITY``.

Sources (none from medtrt's key mapping):
- ``monai``: the MedNIST tutorial's artifact, a plain MONAI DenseNet121 state dict (the demo
  model's trained weights), run by MONAI's own DenseNet121 here.
- ``chexnet_fit``: a CheXNet re-implementation on torchvision's densenet121 (a wrapper attribute,
  DataParallel's ``module.``, ``Sequential(Linear, Sigmoid)``), 3 channels.
- ``timm_fit``: timm's own ``densenet121`` with ``in_chans=1``.
- ``xrv_fit``: torchvision's network with TorchXRayVision's shapes (1 channel, 18 labels, an
  ``op_threshs`` buffer) on TorchXRayVision's intensity range; TorchXRayVision's package itself
  is not installable here.
The last three carry the same trained network, built and run by torchvision/timm in their own
interpreter (tools/byo_reference.py --fit, helpers/byo.py); the sigmoid ones get a multi-label
head fitted on its features. All at 64x64 (DenseNet-121 is size-agnostic).
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from helpers.byo import make_reference, torchvision_python
from helpers.foreign import assert_parity, build_bundle, engine_probs, spread
from monai.networks.nets import DenseNet121

from medtrt.cli import main
from medtrt.data import read_image
from medtrt.export import export_onnx
from medtrt.models import MEDNIST_LABELS, PRESETS, load
from medtrt.models.importers import XRV_LABELS, import_checkpoint
from medtrt.ops import resize_normalize
from medtrt.reference import activate
from medtrt.testing import assert_close

pytestmark = pytest.mark.trt

MEDNIST = PRESETS["mednist"]
PRESETS_BY_SOURCE = {
    "monai": MEDNIST,
    # Gray replicated to 3 channels on MedNIST's intensity scale (the stem's weights split).
    "chexnet_fit": replace(MEDNIST, name="chexnet-style", in_channels=3, activation="sigmoid"),
    "timm_fit": replace(MEDNIST, name="timm-style"),
    # TorchXRayVision's input: 8-bit pixels to [-1024, 1024].
    "xrv_fit": replace(PRESETS["chexnet"], name="xrv-style", in_channels=1, image_size=(64, 64),
                       labels=XRV_LABELS, mean=(0.5,), std=(1 / 2048,)),
}
LAYOUT = {"monai": "monai-densenet121", "chexnet_fit": "torchvision-densenet121",
          "timm_fit": "timm-densenet121", "xrv_fit": "xrv-densenet121"}
ARCH = {"monai": "auto", "chexnet_fit": "torchvision-densenet121",
        "timm_fit": "timm-densenet121", "xrv_fit": "auto"}


def pre(images, preset):
    return resize_normalize(images, **preset.preprocess_kwargs())


@pytest.fixture(scope="module")
def data(split, images, calib_dir):
    """192 training images (with labels) for fitting, the calibration folder and the 48
    held-out images."""
    train = spread(list(zip(split.train.paths, split.train.labels)), 192)
    return {"train": [read_image(p) for p, _ in train],
            "labels": np.array([y for _, y in train], dtype=np.int64), "eval": images,
            "calib": calib_dir}


@pytest.fixture(scope="module")
def monai_source(demo_model, data, tmp_path_factory):
    """The tutorial's best_metric_model.pth (the demo model's trained weights), and MONAI's own
    DenseNet121's logits on ``eval``."""
    trained, _ = load(demo_model.checkpoint)
    path = tmp_path_factory.mktemp("monai-source") / "best_metric_model.pth"
    torch.save(trained.state_dict(), path)
    model = DenseNet121(spatial_dims=2, in_channels=1, out_channels=6)
    model.load_state_dict(torch.load(path, weights_only=True))
    with torch.inference_mode():
        logits = model.eval()(torch.from_numpy(pre(data["eval"], MEDNIST))).numpy()
    return path, logits, {"output": "logits", "library": "monai"}


@pytest.fixture(scope="module")
def library_sources(data, monai_source, tmp_path_factory):
    """The torchvision/timm sources, carrying the trained network: checkpoints and their
    libraries' outputs on ``eval``."""
    python, why = torchvision_python()
    if python is None:
        pytest.skip(why)
    root = tmp_path_factory.mktemp("library-sources")
    arrays = {"labels": data["labels"]}
    for name in ("chexnet_fit", "timm_fit", "xrv_fit"):
        arrays[f"{name}.train"] = pre(data["train"], PRESETS_BY_SOURCE[name])
        arrays[f"{name}.eval"] = pre(data["eval"], PRESETS_BY_SOURCE[name])
    np.savez(root / "data.npz", **arrays)
    manifest = make_reference(python, root, fit=root / "data.npz", backbone=monai_source[0])
    expected = torch.load(root / "expected.pt", weights_only=True)["outputs"]
    return {name: (root / meta["file"], expected[name].numpy(), meta)
            for name, meta in manifest["variants"].items()}


def test_the_library_sources_carry_the_trained_network(library_sources, monai_source):
    """timm's model with the whole trained network computes what MONAI's does: the reference
    tool's own renaming is right, so the sources are the trained model (not medtrt's mapping:
    that one is what the pipeline tests check against them)."""
    _, timm_logits, _ = library_sources["timm_fit"]
    assert_close(timm_logits, monai_source[1], atol=1e-4, name="timm vs MONAI logits")


@pytest.fixture(scope="module", params=list(PRESETS_BY_SOURCE))
def pipeline(request, data, tmp_path_factory):
    """One source format through import, export and both builds; the source's probabilities."""
    name = request.param
    root = tmp_path_factory.mktemp(name)
    if name == "monai":
        source, scores, meta = request.getfixturevalue("monai_source")
    else:
        source, scores, meta = request.getfixturevalue("library_sources")[name]
    preset = PRESETS_BY_SOURCE[name]
    reference = scores if meta["output"] == "sigmoid" else activate(scores, preset.activation)
    extra = {"source_activation": "sigmoid"} if name == "chexnet_fit" else {}
    report = import_checkpoint(source, ARCH[name], preset, root / "model.pt", **extra)
    export_onnx(root / "model.pt", root / "model.onnx")
    built = {p: build_bundle(root / "model.onnx", root / "out", p, None, data["calib"])
             for p in ("fp16", "int8")}
    return {"name": name, "preset": preset, "report": report, "reference": reference,
            "built": built, "root": root, "meta": meta}


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_each_source_format_builds_and_matches_its_library(pipeline, data, precision):
    """FP32: the exported ONNX in ONNX Runtime; FP16/INT8: the bundles (their precision ONNX:
    TensorRT cannot run here)."""
    name, preset = pipeline["name"], pipeline["preset"]
    assert pipeline["report"].layout == LAYOUT[name]
    if precision == "fp32":
        model = pipeline["root"] / "model.onnx"
    else:
        model = pipeline["built"][precision].engine
        assert pipeline["built"][precision].bundle.preset == preset
    assert_parity(engine_probs(model, data["eval"]), pipeline["reference"], precision,
                  f"{name} {precision} vs {pipeline['meta']['library']}",
                  activation=preset.activation)


@pytest.mark.parametrize("pipeline", ["monai", "timm_fit"], indirect=True)
def test_an_imported_checkpoint_evaluates(pipeline, split, tmp_path):
    """`medtrt eval` on an imported checkpoint (the PyTorch reference path) over a folder
    labelled by class (the single-label sources)."""
    root = tmp_path / "data"
    for p, y in spread(list(zip(split.test.paths, split.test.labels)), 24):
        (root / MEDNIST_LABELS[y]).mkdir(parents=True, exist_ok=True)
        (root / MEDNIST_LABELS[y] / p.name).symlink_to(p)
    assert main(["eval", str(pipeline["root"] / "model.pt"), "--data", str(root), "--device",
                 "cpu", "--out", str(tmp_path / "eval"), "-q"]) == 0
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert report["images"] == report["evaluated"] == 24 and report["failed"] == []
    assert report["accuracy"] >= 0.9
