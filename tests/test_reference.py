"""The PyTorch reference path."""

from __future__ import annotations

import numpy as np
import pytest

from medtrt.data import read_image, scan_folder
from medtrt.reference import predict


def test_predict_from_paths_and_arrays_agree(demo_model):
    folder = scan_folder(demo_model.data)
    paths = [folder.paths[i] for i in range(0, len(folder), 97)]
    by_path = predict(demo_model.checkpoint, paths, k=3)
    by_array = predict(demo_model.checkpoint, [read_image(p) for p in paths], k=3, batch_size=4)
    np.testing.assert_allclose(by_path.logits, by_array.logits, rtol=1e-5, atol=1e-5)
    assert by_path.indices.shape == (len(paths), 3)
    assert np.all(np.diff(by_path.scores, axis=1) <= 0)
    np.testing.assert_allclose(by_path.probs.sum(axis=1), 1.0, atol=1e-9)
    assert by_path.labels[0][0] in by_path.preset.labels


def test_predict_errors(demo_model):
    with pytest.raises(ValueError, match=r"k must be in \[1, 6\]; got 7"):
        predict(demo_model.checkpoint, [np.zeros((64, 64), np.uint8)], k=7)
    with pytest.raises(ValueError, match=r"empty batch"):
        predict(demo_model.checkpoint, [])
    from medtrt.models import load

    model, _ = load(demo_model.checkpoint)
    with pytest.raises(ValueError, match=r"pass preset= with a torch module"):
        predict(model, [np.zeros((64, 64), np.uint8)])
