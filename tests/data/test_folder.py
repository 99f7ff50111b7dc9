"""The MedNIST folder layout and deterministic, stratified splits."""

from __future__ import annotations

import pytest
from PIL import Image
import numpy as np

from medtrt.data import scan_folder, split_folder


def make_layout(root, counts):
    for name, n in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(np.full((4, 4), i, np.uint8)).save(root / name / f"{i:06d}.jpeg")


def test_scan_and_split_are_deterministic_and_stratified(tmp_path):
    make_layout(tmp_path, {"HeadCT": 20, "Hand": 30, "CXR": 10})
    folder = scan_folder(tmp_path)
    assert folder.classes == ("CXR", "Hand", "HeadCT")
    assert folder.counts() == {"CXR": 10, "Hand": 30, "HeadCT": 20}
    a = split_folder(folder, ratios=(0.6, 0.2, 0.2), seed=3)
    b = split_folder(scan_folder(tmp_path), ratios=(0.6, 0.2, 0.2), seed=3)
    assert a == b
    assert a.train.counts() == {"CXR": 6, "Hand": 18, "HeadCT": 12}
    assert a.val.counts() == {"CXR": 2, "Hand": 6, "HeadCT": 4}
    parts = [set(p.paths) for p in (a.train, a.val, a.test)]
    assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
    assert set().union(*parts) == set(folder.paths)
    c = split_folder(folder, ratios=(0.6, 0.2, 0.2), seed=4)
    assert c.test.paths != a.test.paths


def test_class_order_and_errors(tmp_path):
    make_layout(tmp_path, {"B": 2, "A": 2})
    assert scan_folder(tmp_path, classes=("B", "A")).labels == (0, 0, 1, 1)
    with pytest.raises(ValueError, match=r"class folders \['C'\] are missing; found \['A', 'B'\]"):
        scan_folder(tmp_path, classes=("A", "C"))
    with pytest.raises(ValueError, match=r"ratios must be three non-negative numbers summing to 1"):
        split_folder(scan_folder(tmp_path), ratios=(0.5, 0.2, 0.2))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        scan_folder(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"no images \(expected ROOT/<ClassName>/\*.jpeg"):
        scan_folder(tmp_path / "empty")
