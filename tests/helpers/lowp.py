"""PyTorch itself at lower precision: the yardstick for the parity suite's logit checks.

A test helper (the parity suite, tools/int8_recipes.py), outside the package: its INT8 path
runs medtrt.precision's calibration, and medtrt.reference sits below medtrt.precision.

A deployed artifact's error against the FP32 reference is judged relative to the error PyTorch
makes when it runs the same model at that precision on the same pre-processed inputs:

- ``fp64``: the model in float64, the yardstick for FP32 artifacts (two FP32 implementations
  differ by about their own rounding error against exact arithmetic);
- ``fp16``: the model and inputs cast to ``torch.float16`` (real FP16 kernels; slow on a CPU);
- ``int8``: fake quantization in PyTorch with medtrt's recipe: per-output-channel symmetric
  INT8 weights of every Conv/Linear, per-tensor symmetric INT8 inputs of every
  Conv/Linear/MaxPool/AvgPool, thresholds from medtrt's entropy calibration of the *PyTorch*
  activations on the calibration batches. DenseNet's concatenation inputs are not quantized
  here (``torch.cat`` is not a module), whereas medtrt's Q/DQ graph quantizes them with shared
  scales, so the artifact is expected to sit somewhat above this baseline; the parity suite's
  k for INT8 allows for that.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from medtrt._lazy import require
from medtrt._native import native
from medtrt.precision.calibrate import CalibrationConfig, compute_amax

__all__ = ["torch_logits", "PRECISIONS"]

PRECISIONS = ("fp64", "fp32", "fp16", "int8")


def _run(torch: Any, model: Any, x: np.ndarray, dtype: Any, batch_size: int) -> np.ndarray:
    out = []
    with torch.inference_mode():
        for s in range(0, len(x), batch_size):
            t = torch.from_numpy(np.ascontiguousarray(x[s:s + batch_size])).to(dtype)
            out.append(model(t).float().numpy())
    return np.concatenate(out)


def _quantized_modules(torch: Any, model: Any) -> list[tuple[str, Any]]:
    nn = torch.nn
    kinds = (nn.Conv2d, nn.Linear, nn.MaxPool2d, nn.AvgPool2d)
    return [(n, m) for n, m in model.named_modules() if isinstance(m, kinds)]


def _int8_logits(torch: Any, model: Any, x: np.ndarray, calibration: Iterable[np.ndarray],
                 method: str, batch_size: int) -> np.ndarray:
    c = native()
    mods = _quantized_modules(torch, model)
    hists = {n: c.AbsHistogram(2048) for n, _ in mods}
    handles = []

    def collector(name: str) -> Any:
        def hook(_m: Any, args: tuple[Any, ...]) -> None:
            hists[name].add(np.ascontiguousarray(args[0].detach().float().numpy()))
        return hook

    try:
        for n, m in mods:
            handles.append(m.register_forward_pre_hook(collector(n)))
        seen = 0
        for batch in calibration:
            _run(torch, model, np.asarray(batch, np.float32), torch.float32, batch_size)
            seen += len(batch)
        if seen == 0:
            raise ValueError("torch_logits(int8): the calibration batches were empty")
    finally:
        for h in handles:
            h.remove()
    amax = compute_amax(hists, CalibrationConfig(method=method))

    originals = {}
    handles = []

    def quantizer(scale: float) -> Any:
        def hook(_m: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
            q = torch.fake_quantize_per_tensor_affine(args[0], scale, 0, -128, 127)
            return (q, *args[1:])
        return hook

    try:
        for n, m in mods:
            if amax[n] > 0:
                handles.append(m.register_forward_pre_hook(quantizer(amax[n] / 127.0)))
            w = getattr(m, "weight", None)
            if w is not None:
                originals[n] = w.detach().clone()
                flat = w.detach().reshape(w.shape[0], -1).abs().amax(1)
                scale = torch.where(flat > 0, flat / 127.0, torch.ones_like(flat)).float()
                zero = torch.zeros(w.shape[0], dtype=torch.int32)
                with torch.no_grad():
                    w.copy_(torch.fake_quantize_per_channel_affine(w, scale, zero, 0, -127, 127))
        return _run(torch, model, x, torch.float32, batch_size)
    finally:
        for h in handles:
            h.remove()
        with torch.no_grad():
            for n, m in mods:
                if n in originals:
                    m.weight.copy_(originals[n])


def torch_logits(model: Any, x: np.ndarray, precision: str = "fp32", *,
                 calibration: Sequence[np.ndarray] | None = None, method: str = "entropy",
                 batch_size: int = 32) -> np.ndarray:
    """Logits of the torch ``model`` (CPU) on pre-processed NCHW float32 ``x`` at ``precision``.

    ``calibration``: pre-processed batches for ``int8`` thresholds (required there). The model
    is left as it was (dtype, weights, hooks).
    """
    torch = require("torch")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}; got {precision!r}")
    x = np.asarray(x, dtype=np.float32)
    model = copy.deepcopy(model).eval()  # the caller's model keeps its dtype, weights and mode
    if precision == "fp32":
        return _run(torch, model, x, torch.float32, batch_size)
    if precision in ("fp16", "fp64"):
        dtype = torch.float16 if precision == "fp16" else torch.float64
        return _run(torch, model.to(dtype), x, dtype, batch_size)
    if calibration is None:
        raise ValueError("torch_logits(int8) needs calibration= batches for the thresholds")
    return _int8_logits(torch, model, x, calibration, method, batch_size)
