"""medtrt eval: the metrics by hand, the report files, agreement with the reference, the CLI."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from medtrt.cli import main
from medtrt.evaluation import classification_metrics, evaluate, multilabel_metrics


def test_metrics_by_hand():
    labels = np.array([0, 0, 1, 2, 2])
    probs = np.array([[0.9, 0.05, 0.05],   # 0 -> 0, conf 0.9
                      [0.3, 0.6, 0.1],     # 0 -> 1, conf 0.6
                      [0.2, 0.7, 0.1],     # 1 -> 1, conf 0.7
                      [0.1, 0.1, 0.8],     # 2 -> 2, conf 0.8
                      [0.5, 0.1, 0.4]])    # 2 -> 0, conf 0.5
    m = classification_metrics(labels, probs, ("a", "b", "c"), ece_bins=2)
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["confusion"] == [[1, 1, 0], [0, 1, 0], [1, 0, 1]]
    assert m["per_class"]["a"] == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2})
    assert m["per_class"]["b"]["precision"] == pytest.approx(0.5) and m["per_class"]["b"]["recall"] == 1.0
    assert m["per_class"]["c"]["f1"] == pytest.approx(2 * 1.0 * 0.5 / 1.5)
    # bins [0, 0.5], (0.5, 1]: {0.5: wrong} and {0.9 ok, 0.6 wrong, 0.7 ok, 0.8 ok}
    ece = 1 / 5 * abs(0 - 0.5) + 4 / 5 * abs(3 / 4 - (0.9 + 0.6 + 0.7 + 0.8) / 4)
    assert m["ece"] == pytest.approx(ece)
    assert [b["count"] for b in m["reliability"]] == [1, 4]


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


def test_multilabel_metrics_by_hand():
    targets = np.array([[1, 0], [0, np.nan], [1, 1], [0, 0]], np.float64)
    probs = np.array([[0.9, 0.2],    # label a: pos 0.9 -> TP;  b: neg 0.2 -> TN
                      [0.6, 0.9],    # a: neg 0.6 -> FP;        b: unknown, left out
                      [0.4, 0.7],    # a: pos 0.4 -> FN;        b: pos 0.7 -> TP
                      [0.1, 0.6]])   # a: neg 0.1 -> TN;        b: neg 0.6 -> FP
    m = multilabel_metrics(targets, probs, ("a", "b"), threshold=0.5, ece_bins=2)
    a, b = m["per_label"]["a"], m["per_label"]["b"]
    assert (a["tp"], a["fn"], a["fp"], a["tn"]) == (1, 1, 1, 1)
    assert (b["tp"], b["fn"], b["fp"], b["tn"]) == (1, 0, 1, 1)
    assert a["auroc"] == pytest.approx(3 / 4)   # pos {0.9, 0.4} vs neg {0.6, 0.1}: 3 of 4 pairs
    assert b["auroc"] == pytest.approx(1.0)     # pos {0.7} vs neg {0.2, 0.6}
    assert b["precision"] == pytest.approx(0.5) and b["recall"] == 1.0
    assert m["macro_auroc"] == pytest.approx(7 / 8)
    assert m["exact_match"] == pytest.approx(1 / 4)     # only image 0 has every known label right
    assert m["label_accuracy"] == pytest.approx(4 / 7)
    # pooled over the 7 known pairs; bins [0, 0.5]: {0.2 n, 0.4 p, 0.1 n}, (0.5, 1]: {0.9 p, 0.6 n, 0.7 p, 0.6 n}
    ece = 3 / 7 * abs(1 / 3 - 0.7 / 3) + 4 / 7 * abs(2 / 4 - 2.8 / 4)
    assert m["ece"] == pytest.approx(ece)
    one_class = multilabel_metrics(np.array([[1.0], [1.0]]), np.array([[0.9], [0.3]]), ("a",))
    assert one_class["per_label"]["a"]["auroc"] is None and one_class["macro_auroc"] is None


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
    from medtrt.reference import predict
    from medtrt.testing import auroc

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
