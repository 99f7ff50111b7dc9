"""tests/helpers/lowp.py: PyTorch at FP64/FP16/INT8, the parity suite's yardstick."""

from __future__ import annotations

import pytest


def test_reference_yardstick_leaves_the_model_untouched(demo_model):
    import numpy as np
    import torch

    from medtrt.models import load
    from helpers.lowp import torch_logits

    model, _ = load(demo_model.checkpoint)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = np.random.default_rng(0).random((2, 1, 64, 64), dtype=np.float32)
    torch_logits(model, x, "fp16")
    torch_logits(model, x, "int8", calibration=[x])
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert next(model.parameters()).dtype == torch.float32


def test_int8_needs_calibration_and_precisions_are_checked(demo_model):
    import numpy as np

    from medtrt.models import load
    from helpers.lowp import torch_logits

    model, _ = load(demo_model.checkpoint)
    x = np.zeros((1, 1, 64, 64), np.float32)
    with pytest.raises(ValueError, match="needs calibration= batches"):
        torch_logits(model, x, "int8")
    with pytest.raises(ValueError, match="precision must be one of"):
        torch_logits(model, x, "bf16")
    # fake quantization really changes the outputs, FP64 barely does
    cal = [np.random.default_rng(1).random((4, 1, 64, 64), dtype=np.float32)]
    ref = torch_logits(model, cal[0])
    assert 1e-4 < np.abs(torch_logits(model, cal[0], "int8", calibration=cal) - ref).max()
    assert np.abs(torch_logits(model, cal[0], "fp64") - ref).max() < 1e-4
