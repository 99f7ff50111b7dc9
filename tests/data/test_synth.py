"""The synthetic MedNIST-like generator: layout, content and byte-identical determinism."""

from __future__ import annotations

import hashlib

import numpy as np
from PIL import Image

from medtrt.data import scan_folder, synthesize
from medtrt.data.synth import CLASSES


def digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.jpeg")):
        h.update(str(p.relative_to(root)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def test_layout_and_images(tmp_path):
    result = synthesize(tmp_path / "s", per_class=4, seed=7)
    folder = scan_folder(tmp_path / "s")
    assert folder.classes == tuple(sorted(CLASSES)) == CLASSES
    assert folder.counts() == {c: 4 for c in CLASSES} == result.counts
    for path in folder.paths:
        with Image.open(path) as im:
            assert (im.format, im.mode, im.size) == ("JPEG", "L", (64, 64))
            assert np.asarray(im).std() > 10  # structure, not a blank frame
    assert not list((tmp_path / "s").rglob("*.tmp"))


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    synthesize(tmp_path / "a", per_class=5, seed=11)
    synthesize(tmp_path / "b", per_class=5, seed=11)
    synthesize(tmp_path / "c", per_class=5, seed=12)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    assert digest(tmp_path / "a") != digest(tmp_path / "c")


def test_classes_differ_more_than_samples_within_a_class(tmp_path):
    synthesize(tmp_path / "s", per_class=12, seed=0)
    means = {}
    for c in CLASSES:
        imgs = [np.asarray(Image.open(p), np.float64) for p in sorted((tmp_path / "s" / c).iterdir())]
        means[c] = np.mean(imgs, axis=0)
        spread = np.mean([np.abs(i - means[c]).mean() for i in imgs])
        assert spread > 3, f"{c}: samples nearly identical (mean abs deviation {spread:.1f})"
    between = min(np.abs(means[a] - means[b]).mean() for a in CLASSES for b in CLASSES if a < b)
    assert between > 5, f"two class means are nearly identical ({between:.1f})"
