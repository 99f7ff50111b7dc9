"""Training: the cached demo model (the fixture of every later issue) and the CLI path."""

from __future__ import annotations

import json

import numpy as np

from medtrt.models import load
from medtrt.reference import predict
from medtrt.train import training_split


def test_demo_model_reaches_95_percent_on_held_out_images(demo_model):
    summary = json.loads(demo_model.metrics.read_text())
    assert summary["config"]["epochs"] <= 2
    assert summary["data"]["per_class"] == {c: 300 for c in summary["labels"]}
    assert [h["epoch"] for h in summary["history"]] == [1, 2]
    for h in summary["history"]:
        assert {"train_loss", "val_loss", "val_accuracy", "seconds"} <= h.keys()
    assert summary["test_accuracy"] >= 0.95
    # Re-measure independently: the PyTorch reference path on the held-out files.
    split = training_split(demo_model.metrics)
    assert split.test.root == demo_model.data
    assert len(split.test) == summary["data"]["test"] >= 150
    pred = predict(demo_model.checkpoint, list(split.test.paths), k=1)
    accuracy = float(np.mean(pred.top1 == np.asarray(split.test.labels)))
    assert accuracy >= 0.95
    assert abs(accuracy - summary["test_accuracy"]) < 0.02  # same model, same split


def test_checkpoint_carries_its_training_record(demo_model):
    model, preset = load(demo_model.checkpoint)
    assert preset.name == "mednist"
    from medtrt.models import load_checkpoint

    info = load_checkpoint(demo_model.checkpoint)["info"]["training"]
    assert info["test_accuracy"] == json.loads(demo_model.metrics.read_text())["test_accuracy"]
