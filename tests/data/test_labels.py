"""Multi-label CSV tables: the wide (CheXpert-like) and NIH layouts, unknowns, lookups, errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from medtrt.data import read_label_table

LABELS = ("Atelectasis", "Effusion", "Pleural_Thickening")


def _image(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(path)


def test_wide_table_with_unknowns_and_a_missing_file(tmp_path):
    for name in ("a.png", "b.png", "sub/c.png"):
        _image(tmp_path / name)
    (tmp_path / "labels.csv").write_text(
        "Path,Effusion,Atelectasis,Pleural Thickening,Sex\n"
        "a.png,1,0,-1,F\n"
        "b.png,0.0,1.0,,M\n"
        "sub/c.png,0,0,1,F\n"
        "gone.png,1,1,1,M\n")
    t = read_label_table(tmp_path / "labels.csv", LABELS)
    assert [p.name for p in t.paths] == ["a.png", "b.png", "c.png"]
    expect = np.array([[0, 1, np.nan], [1, 0, np.nan], [0, 0, 1]], np.float32)
    np.testing.assert_array_equal(t.targets, expect)
    assert t.missing_files == ("gone.png",) and t.missing_labels == ()


def test_partial_columns_are_reported(tmp_path):
    _image(tmp_path / "a.png")
    (tmp_path / "t.csv").write_text("image,effusion\na.png,1\n")
    t = read_label_table(tmp_path / "t.csv", LABELS)
    assert t.missing_labels == ("Atelectasis", "Pleural_Thickening")
    assert np.isnan(t.targets[0, 0]) and t.targets[0, 1] == 1


def test_nih_layout_and_lookup_by_name(tmp_path):
    _image(tmp_path / "images_001" / "images" / "00000001_000.png")
    _image(tmp_path / "images_002" / "images" / "00000002_000.png")
    (tmp_path / "Data_Entry_2017.csv").write_text(
        "Image Index,Finding Labels,Follow-up #\n"
        "00000001_000.png,Effusion|Pleural_Thickening,0\n"
        "00000002_000.png,No Finding,0\n")
    t = read_label_table(tmp_path / "Data_Entry_2017.csv", LABELS)
    np.testing.assert_array_equal(t.targets, [[0, 1, 1], [0, 0, 0]])
    assert t.paths[0].parent.parent.name == "images_001"


def test_errors_name_the_fix(tmp_path):
    _image(tmp_path / "a.png")
    with pytest.raises(FileNotFoundError, match=r"needs a CSV with an image column"):
        read_label_table(tmp_path / "absent.csv", LABELS)
    cases = [
        ("path,Effusion\na.png,maybe\n", r"t.csv:2: column 'Effusion' holds 'maybe'; expected 1, 0, -1"),
        ("path,Cardiomegaly\na.png,1\n", r"no column names a label of the model"),
        ("Image Index,Finding Labels\na.png,Hernia\n", r"findings \['hernia'\] are not labels of the model"),
        ("path,Effusion\nnope.png,1\n", r"none of its 1 rows names an existing image"),
    ]
    for text, message in cases:
        (tmp_path / "t.csv").write_text(text)
        with pytest.raises(ValueError, match=message):
            read_label_table(tmp_path / "t.csv", LABELS)
