"""Presets, model creation and self-describing checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medtrt.errors import CheckpointError
from medtrt.models import CHEXNET_LABELS, MEDNIST_LABELS, PRESETS, Preset, create, get_preset, load, save


@pytest.mark.parametrize("name,batch", [("mednist", 3), ("chexnet", 1)])
def test_presets_build_and_run_a_forward_pass(name, batch):
    preset = get_preset(name)
    model = create(preset, seed=0)
    assert not model.training
    x = torch.randn(batch, preset.in_channels, *preset.image_size)
    with torch.inference_mode():
        y = model(x)
    assert y.shape == (batch, preset.num_classes)
    assert torch.isfinite(y).all()


def test_preset_contents():
    m, c = PRESETS["mednist"], PRESETS["chexnet"]
    assert (m.in_channels, m.image_size, m.activation, m.labels) == (1, (64, 64), "softmax",
                                                                     MEDNIST_LABELS)
    assert m.preprocess_kwargs() == {"out_size": (64, 64), "channels": 1, "mean": [0.0], "std": [1.0]}
    assert (c.in_channels, c.image_size, c.activation, len(c.labels)) == (3, (224, 224), "sigmoid", 14)
    assert c.labels == CHEXNET_LABELS and c.labels[1] == "Cardiomegaly"
    assert c.preprocess_kwargs()["mean"] == [0.485, 0.456, 0.406]


def test_preset_json_round_trip():
    for preset in PRESETS.values():
        import json

        assert Preset.from_dict(json.loads(preset.to_json())) == preset
    with pytest.raises(ValueError, match=r"unknown preset field 'colour' \(preset fields: name, "):
        Preset.from_dict({**PRESETS["mednist"].to_dict(), "colour": 1})
    with pytest.raises(ValueError, match=r"unknown preset 'nope'; expected one of \['chexnet', 'mednist'\]"):
        get_preset("nope")


def test_checkpoint_round_trip_needs_no_other_argument(tmp_path):
    model = create("mednist", seed=1)
    path = save(model, "mednist", tmp_path / "m.pt", note="hello")
    loaded, preset = load(path)
    assert preset == PRESETS["mednist"] and not loaded.training
    x = torch.randn(2, 1, 64, 64)
    with torch.inference_mode():
        np.testing.assert_array_equal(loaded(x).numpy(), model(x).numpy())


def test_checkpoint_with_wrong_class_count_names_the_tensor(tmp_path):
    model = create(PRESETS["mednist"].with_labels(("a", "b", "c", "d", "e")), seed=0)
    path = save(model, "mednist", tmp_path / "bad.pt")  # 5-class weights, 6-label preset
    with pytest.raises(CheckpointError, match=r"tensor 'class_layers.out.weight' has shape "
                                              r"\(5, 1024\) but preset 'mednist'.*expects \(6, 1024\)"):
        load(path)


def test_checkpoint_missing_or_extra_tensors(tmp_path):
    model = create("mednist", seed=0)
    payload_path = save(model, "mednist", tmp_path / "m.pt")
    payload = torch.load(payload_path, weights_only=True)
    first = next(iter(payload["state_dict"]))
    del payload["state_dict"][first]
    torch.save(payload, tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match=rf"tensor '{first}' of preset 'mednist' is missing"):
        load(tmp_path / "missing.pt")
    payload = torch.load(payload_path, weights_only=True)
    payload["state_dict"]["extra.weight"] = torch.zeros(1)
    torch.save(payload, tmp_path / "extra.pt")
    with pytest.raises(CheckpointError, match=r"tensor 'extra.weight' is not part of preset"):
        load(tmp_path / "extra.pt")


def test_not_a_medtrt_checkpoint(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match=r"is not a medtrt checkpoint \(format None"):
        load(tmp_path / "plain.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a zip file")
    with pytest.raises(CheckpointError, match=r"is not a readable torch checkpoint"):
        load(tmp_path / "junk.pt")
    with pytest.raises(FileNotFoundError, match=r"does not exist"):
        load(tmp_path / "absent.pt")
