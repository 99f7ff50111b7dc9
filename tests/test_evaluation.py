"""medtrt eval: the metrics by hand, the report files, agreement with the reference, the CLI."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from medtrt.cli import main
from medtrt.evaluation import classification_metrics, evaluate


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
