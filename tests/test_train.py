"""Training: the cached demo model (the fixture of every later issue) and the CLI path."""

from __future__ import annotations

import json
import os

import numpy as np

from medtrt.models import load, load_checkpoint
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


# sha256 of the demo model's weights (medtrt.demo.weights_sha256). It is trained with
# TrainConfig(reproducible=True): pinned kernels (AVX2 in ATen, MKL's COMPATIBLE branch, no
# oneDNN/NNPACK) and two threads, so every x86-64 CPU with AVX2 gives these bits. Recorded on an
# Intel Xeon with AVX-512/VNNI/AMX; CI checks it on whichever CPU it gets (the pytest header
# names it), AMD EPYC (AVX2) and Intel Xeon (AVX-512) alike.
DEMO_WEIGHTS_SHA256 = "32a68e7e470ccff775bb8f41ac3807bc224e01d428e1f5c4bd232cfa8d41d58b"


def test_demo_model_weights_are_the_same_on_every_cpu(demo_model, record_property):
    from helpers.cpu import cpu_summary
    from medtrt.demo import weights_sha256

    got = weights_sha256(demo_model.checkpoint)
    record_property("cpu", cpu_summary())
    record_property("weights_sha256", got)
    info = load_checkpoint(demo_model.checkpoint)["info"]["training"]["reproducible"]
    assert info["cpu_capability"] == "AVX2" and info["threads"] == 2 and not info["mkldnn"]
    assert got == DEMO_WEIGHTS_SHA256, (
        f"the demo model trained on {cpu_summary()} has weights {got}, not the recorded "
        f"{DEMO_WEIGHTS_SHA256}: reproducible training is not reproducible on this CPU (or the "
        "training code changed: then record the new digest)")


def _train_small(tmp_path, name, extra_env):
    """A small reproducible training run in a child process with extra environment."""
    import subprocess
    import sys

    code = ("import sys; from medtrt.data import synthesize; from medtrt.train import "
            "TrainConfig, train; from medtrt.demo import weights_sha256; "
            "synthesize(sys.argv[1] + '/data', per_class=12, seed=1); "
            "train(sys.argv[1] + '/data', sys.argv[1] + '/m.pt', TrainConfig(epochs=1, "
            "batch_size=16, reproducible=True), progress=False); "
            "print(weights_sha256(sys.argv[1] + '/m.pt'))")
    out = tmp_path / name
    done = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True,
                          text=True, env={**os.environ, **extra_env}, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.split()[-1]


def test_reproducible_training_ignores_the_cpus_own_instruction_sets(tmp_path):
    """What an AVX2-only CPU would pick where nothing is pinned (oneDNN, MKL and NumPy capped at
    AVX2) gives the same weights as this CPU's own choice: the recipe leaves no ISA-dependent
    kernel in the path (meaningful on an AVX-512 machine; on an AVX2 one both runs are alike)."""
    own = _train_small(tmp_path, "own", {})
    capped = _train_small(tmp_path, "capped", {"ONEDNN_MAX_CPU_ISA": "AVX2",
                                               "MKL_ENABLE_INSTRUCTIONS": "AVX2"})
    assert own == capped


def test_reproducible_training_refuses_to_run_without_its_pins():
    """In a process where torch started without the pinned environment, the recipe refuses
    instead of silently training other bits."""
    import subprocess
    import sys

    code = ("import torch; from medtrt.train import _pin_torch; _pin_torch(torch)")
    env = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "MKL_CBWR")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=120)
    assert done.returncode != 0
    assert "reproducible training needs an x86-64 CPU with AVX2" in done.stderr
    assert "ATEN_CPU_CAPABILITY" in done.stderr
