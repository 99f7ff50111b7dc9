"""Parity-suite fixtures, built once per session (see helpers/parity.py)."""

from __future__ import annotations

import pytest

from helpers.heldout import held_out
from helpers.parity import ParityCase, build_artifacts


@pytest.fixture(scope="session")
def mednist_case(demo_model, tmp_path_factory) -> ParityCase:
    from medtrt.data import read_image
    from medtrt.export import read_metadata
    from medtrt.models import load
    from medtrt.ops import resize_normalize
    from helpers.lowp import torch_logits

    data = held_out(demo_model)
    preset = read_metadata(demo_model.onnx)[0]
    kw = preset.preprocess_kwargs()
    x = resize_normalize(data.images, **kw)
    model, _ = load(demo_model.checkpoint)
    calib = data.train_paths[:256]  # calibration sees the training split only
    calib_x = [resize_normalize([read_image(p) for p in calib[s:s + 32]], **kw)
               for s in range(0, len(calib), 32)]
    case = ParityCase(preset, data.images, x, data.labels, torch_logits(model, x),
                      checkpoint=demo_model.checkpoint)
    case.baselines = {"fp32": torch_logits(model, x, "fp64"),
                      "fp16": torch_logits(model, x, "fp16"),
                      "int8": torch_logits(model, x, "int8", calibration=calib_x)}
    case.onnx = build_artifacts(demo_model.onnx, calib, tmp_path_factory.mktemp("parity-mednist"), 256)
    return case


@pytest.fixture(scope="session")
def chexnet_case(demo_model, tmp_path_factory) -> ParityCase:
    from helpers.chexnet import N_CALIB, chexnet_parity
    from medtrt.export import read_metadata
    from medtrt.models import load
    from medtrt.ops import resize_normalize
    from helpers.lowp import torch_logits

    c = chexnet_parity(demo_model)
    preset = read_metadata(c.onnx)[0]
    x = resize_normalize(c.test_images, **preset.preprocess_kwargs())
    model, _ = load(c.checkpoint)
    case = ParityCase(preset, c.test_images, x, c.test_labels, torch_logits(model, x),
                      checkpoint=c.checkpoint)
    case.onnx = build_artifacts(c.onnx, c.calib_paths, tmp_path_factory.mktemp("parity-chexnet"), N_CALIB)
    return case
