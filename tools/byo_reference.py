#!/usr/bin/env python3
"""Reference checkpoints and outputs from torchvision's own densenet121, for medtrt's importer.

Run with an interpreter that has torchvision (not medtrt's: medtrt is not imported here):

    python3.11 -m venv /tmp/tv && /tmp/tv/bin/pip install torch==2.14.1 torchvision==0.29.1
    /tmp/tv/bin/python tools/byo_reference.py OUT_DIR [--seed 0]

Writes into OUT_DIR, for each variant, the checkpoint a user of that code would have, and
``expected.pt`` with the inputs and what torchvision's model (eval mode) returns for them:

- ``torchvision``: ``densenet121(num_classes=14).state_dict()``; logits.
- ``dataparallel``: ``{"epoch", "state_dict"}`` of ``nn.DataParallel(model)`` (``module.``).
- ``chexnet``: the CheXNet re-implementation: a wrapper module whose ``densenet121`` attribute is
  torchvision's model with ``classifier = Sequential(Linear, Sigmoid)``, in DataParallel;
  outputs are sigmoid probabilities.
- ``legacy``: the old torchvision names (``norm.1``, ``conv.2``; no ``num_batches_tracked``),
  checked here by loading it through torchvision's own legacy loader.
- ``xrv_shapes``: torchvision's network with TorchXRayVision's shapes (1 input channel, 18
  outputs) plus an ``op_threshs`` buffer (with NaNs), as TorchXRayVision's state dicts have.
  This is torchvision's computation, not TorchXRayVision's package.

Batch-norm statistics and affine parameters and the classifier bias are drawn at random (the
defaults are identities), so a misplaced norm tensor changes the outputs.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision.models import densenet as tv_densenet

INPUT_SIZE = 64  # DenseNet-121 is size-agnostic; small inputs keep the CPU work short
BATCH = 3


class CheXNet(nn.Module):
    """The layout of CheXNet re-implementations (e.g. arnoweng/CheXNet's DenseNet121)."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.densenet121 = torchvision.models.densenet121(weights=None)
        features = self.densenet121.classifier.in_features
        self.densenet121.classifier = nn.Sequential(nn.Linear(features, classes), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.densenet121(x)


def randomize(model: nn.Module, gen: torch.Generator) -> nn.Module:
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.weight.data = 0.5 + torch.rand(n, generator=gen)
            m.bias.data = 0.2 * torch.randn(n, generator=gen)
            m.running_mean = 0.2 * torch.randn(n, generator=gen)
            m.running_var = 0.5 + torch.rand(n, generator=gen)
            m.num_batches_tracked.fill_(7)
        elif isinstance(m, nn.Linear):
            m.bias.data = 0.5 * torch.randn(m.out_features, generator=gen)
    return model.eval()


def tv_model(classes: int, channels: int = 3) -> nn.Module:
    model = torchvision.models.densenet121(weights=None, num_classes=classes)
    if channels != 3:
        model.features.conv0 = nn.Conv2d(channels, 64, kernel_size=7, stride=2, padding=3,
                                         bias=False)
    return model


def legacy_names(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision's current names back to the old ones, counters dropped (old checkpoints)."""
    pattern = re.compile(r"^(.*denselayer\d+\.(?:norm|conv))([12])\.(.*)$")
    out = {}
    for key, value in state_dict.items():
        if key.endswith("num_batches_tracked"):
            continue
        m = pattern.match(key)
        out[f"{m.group(1)}.{m.group(2)}.{m.group(3)}" if m else key] = value
    return out


class _Weights:
    """Duck-typed WeightsEnum entry: lets torchvision's own legacy loader read a local dict."""

    def __init__(self, state_dict: dict[str, torch.Tensor]) -> None:
        self.state_dict = state_dict

    def get_state_dict(self, progress: bool = False, check_hash: bool = False) -> dict:
        return dict(self.state_dict)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    x3 = torch.randn(BATCH, 3, INPUT_SIZE, INPUT_SIZE, generator=gen)
    x1 = torch.randn(BATCH, 1, INPUT_SIZE, INPUT_SIZE, generator=gen)
    expected: dict[str, torch.Tensor] = {}
    manifest: dict[str, dict] = {}

    def write(name: str, payload: object, model: nn.Module, x: torch.Tensor, **meta: object):
        torch.save(payload, args.out / f"{name}.pt")
        with torch.inference_mode():
            expected[name] = model(x)
        manifest[name] = {"file": f"{name}.pt", "channels": x.shape[1],
                          "classes": expected[name].shape[1], **meta}

    m = randomize(tv_model(14), gen)
    write("torchvision", m.state_dict(), m, x3, output="logits")
    m = randomize(tv_model(14), gen)
    write("dataparallel", {"epoch": 3, "state_dict": nn.DataParallel(m).state_dict()}, m, x3,
          output="logits")
    m = randomize(CheXNet(14), gen)
    write("chexnet", {"epoch": 9, "best_loss": 0.1, "state_dict": nn.DataParallel(m).state_dict()},
          m, x3, output="sigmoid")
    m = randomize(tv_model(14), gen)
    legacy = legacy_names(m.state_dict())
    check = tv_model(14).eval()
    tv_densenet._load_state_dict(check, _Weights(legacy), progress=False)  # torchvision's own
    with torch.inference_mode():
        assert torch.equal(check(x3), m(x3)), "torchvision's loader disagrees with the renaming"
    write("legacy", legacy, m, x3, output="logits")
    m = randomize(tv_model(18, channels=1), gen)
    threshs = torch.rand(18, generator=gen) * 0.2
    threshs[[14, 16]] = float("nan")
    write("xrv_shapes", {**m.state_dict(), "op_threshs": threshs}, m, x1, output="logits")

    torch.save({"inputs": {3: x3, 1: x1}, "outputs": expected}, args.out / "expected.pt")
    (args.out / "manifest.json").write_text(json.dumps({
        "seed": args.seed, "torch": torch.__version__, "torchvision": torchvision.__version__,
        "variants": manifest}, indent=1))
    print(f"wrote {len(manifest)} variants to {args.out} (torch {torch.__version__}, "
          f"torchvision {torchvision.__version__})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
