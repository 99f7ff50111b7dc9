"""medtrt eval: the report files, agreement with the reference, the CLI (the metrics by hand:
tests/test_metrics.py)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from medtrt.cli import main
from medtrt.evaluation import evaluate


@pytest.fixture(scope="module")
def folder(demo_model, tmp_path_factory):
    from medtrt.train import training_split

    split = training_split(demo_model.metrics)
    root = tmp_path_factory.mktemp("evaldata")
    per_class: dict[int, int] = {}
    for path, label in zip(split.test.paths, split.test.labels):
        if per_class.get(label, 0) < 4:
            per_class[label] = per_class.get(label, 0) + 1
            dest = root / split.test.classes[label]
            dest.mkdir(exist_ok=True)
            shutil.copy(path, dest / path.name)
    (root / split.test.classes[0] / "broken.jpeg").write_bytes(b"\xff\xd8\xff not a jpeg")
    return root


def test_evaluate_writes_the_report(demo_model, folder, tmp_path):
    result = evaluate(demo_model.onnx, folder, reference=demo_model.checkpoint, out=tmp_path / "e")
    r = result.report
    assert r["images"] == 25 and len(r["failed"]) == 1 and "broken.jpeg" in r["failed"][0]["path"]
    assert r["accuracy"] >= 0.95 and sum(m["support"] for m in r["per_class"].values()) == 24
    assert r["reference"]["top1_agreement"] == 1.0 and r["reference"]["max_abs_dprob"] < 1e-4
    assert 0 <= r["ece"] <= 1 and r["latency_ms_per_image"]["p95"] > 0
    for key in ("confusion", "reliability"):
        assert result.files[key].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(result.files["json"].read_text())["accuracy"] == r["accuracy"]
    assert "| Hand |" in result.files["summary"].read_text()


def test_cli_eval_and_its_errors(demo_model, folder, tmp_path, capsys):
    assert main(["eval", str(demo_model.onnx), "--data", str(folder), "--out", str(tmp_path / "o"),
                 "--quiet"]) == 0
    assert "accuracy" in capsys.readouterr().out and (tmp_path / "o" / "eval.json").exists()
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    (bad / "Hand").rename(bad / "Foot")
    assert main(["eval", str(demo_model.onnx), "--data", str(bad), "--quiet"]) == 1
    assert "class folders ['Foot'] are not labels of the model" in capsys.readouterr().err


@pytest.fixture(scope="module")
def chexnet_folder(demo_model, tmp_path_factory):
    """32 synthetic multi-label test images of the CheXNet-shaped stand-in as PNGs, a wide label
    table with a few unknowns, one unreadable image and one row naming a missing file."""
    from PIL import Image

    from helpers.chexnet import chexnet_parity
    from medtrt.models.presets import CHEXNET_LABELS

    c = chexnet_parity(demo_model)
    root = tmp_path_factory.mktemp("chexnet-eval")
    rows = ["Path," + ",".join(CHEXNET_LABELS)]
    targets = c.test_labels[:32].astype(np.float32)
    targets[[3, 7], [0, 5]] = np.nan
    for i, (image, t) in enumerate(zip(c.test_images[:32], targets)):
        Image.fromarray(image).save(root / f"img{i:03d}.png")
        rows.append(f"img{i:03d}.png," + ",".join("-1" if np.isnan(v) else str(int(v)) for v in t))
    (root / "broken.png").write_bytes(b"\x89PNG not really")
    rows.append("broken.png," + ",".join(["0"] * 14))
    rows.append("gone.png," + ",".join(["1"] * 14))
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return c, root, targets


def test_evaluate_multilabel(chexnet_folder, tmp_path):
    from medtrt.metrics import auroc
    from medtrt.reference import predict

    c, root, targets = chexnet_folder
    result = evaluate(c.onnx, root, reference=c.checkpoint, out=tmp_path / "e")
    r = result.report
    assert r["task"] == "multi-label" and r["images"] == 34 and r["evaluated"] == 32
    assert sorted(x["path"].rsplit("/", 1)[-1] for x in r["failed"]) == ["broken.png", "gone.png"]
    ref = predict(c.checkpoint, c.test_images[:32]).probs
    known = ~np.isnan(targets[:, 0])
    expect = auroc(targets[known, :1] == 1, ref[known, :1])[0]
    assert r["per_label"]["Atelectasis"]["auroc"] == pytest.approx(expect, abs=1e-3)
    assert r["per_label"]["Atelectasis"]["positives"] + r["per_label"]["Atelectasis"]["negatives"] == 31
    assert r["reference"]["decision_agreement"] == 1.0
    assert r["reference"]["max_abs_auroc_change"] < 1e-3 and r["reference"]["max_abs_dprob"] < 1e-4
    assert 0 <= r["ece"] <= 1 and 0.5 < r["macro_auroc"] <= 1
    for key in ("confusion", "reliability"):
        assert result.files[key].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = result.files["summary"].read_text()
    assert "| Pleural_Thickening |" in summary and "macro AUROC" in summary


def test_cli_eval_multilabel_and_its_errors(chexnet_folder, demo_model, folder, tmp_path, capsys):
    c, root, _ = chexnet_folder
    table = tmp_path / "elsewhere.csv"
    table.write_text((root / "labels.csv").read_text())
    assert main(["eval", str(c.onnx), "--data", str(root), "--labels", str(table),
                 "--out", str(tmp_path / "o"), "--quiet"]) == 0
    assert "macro AUROC" in capsys.readouterr().out
    assert json.loads((tmp_path / "o" / "eval.json").read_text())["task"] == "multi-label"
    assert main(["eval", str(c.onnx), "--data", str(tmp_path), "--quiet"]) == 1
    assert "label table" in capsys.readouterr().err
    assert main(["eval", str(demo_model.onnx), "--data", str(folder), "--labels", str(table), "--quiet"]) == 1
    assert "is single-label and reads class folders (drop --labels)" in capsys.readouterr().err


def test_reference_of_another_model_is_refused(chexnet_folder, demo_model, tmp_path):
    c, root, _ = chexnet_folder
    with pytest.raises(ValueError, match=r"pass the checkpoint the model was exported from"):
        evaluate(c.onnx, root, reference=demo_model.checkpoint, out=tmp_path / "e")


def test_non_finite_model_outputs_are_listed_not_counted(tmp_path):
    """An image the model gives NaN probabilities (an overflow at its precision) is reported in
    `failed` and left out of the metrics, not dropped silently."""
    from types import SimpleNamespace

    from PIL import Image

    from medtrt.evaluation import _run
    from medtrt.models import get_preset

    rng = np.random.default_rng(7)
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(paths[-1])

    class NanEngine:
        preset = get_preset("mednist")

        def infer(self, images, k, return_probs):
            probs = rng.dirichlet(np.ones(6), size=len(images)).astype(np.float32)
            probs[1] = np.nan
            return SimpleNamespace(probs=probs, errors=[])

    out = _run(NanEngine(), paths, None, 8, None)
    assert out.ok.tolist() == [True, False, True]
    assert [f["path"] for f in out.failures] == [str(paths[1])]
    assert "probabilities hold NaN or infinity" in out.failures[0]["error"]
