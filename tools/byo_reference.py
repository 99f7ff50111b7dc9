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

With ``--fit DATA.npz --backbone MONAI.pt`` it writes instead the sources of the whole-pipeline
test (import, export, FP16/INT8 build, Engine): each library's own model carrying a trained
network (the MONAI DenseNet121 state dict given, renamed here to torchvision's names), so INT8
meets a trained model's activations, not a random one's. DATA.npz holds ``labels`` and, per
variant, ``<variant>.train`` and ``<variant>.eval`` (pre-processed N×C×H×W float32, made by
medtrt's pre-processing for that variant's preset). Variants:

- ``timm_fit``: timm's ``densenet121`` (``in_chans=1``) with the trained network whole,
  classifier included: its logits are the MONAI model's (how the test checks the renaming).
- ``chexnet_fit``: the CheXNet wrapper above, 3 channels (the stem's weights split over them),
  a ``Sequential(Linear, Sigmoid)`` head fitted on the trained features, in DataParallel;
  outputs are its own sigmoid probabilities.
- ``xrv_fit``: torchvision's network with TorchXRayVision's shapes (1 channel, 18 outputs, an
  ``op_threshs`` buffer) reading TorchXRayVision's [-1024, 1024] intensities (the input mapping
  folded into the stem), an 18-label head fitted on the trained features; outputs are logits.

The fitted heads are multi-label (the class labels one-hot; the columns past the classes learn
to stay negative).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch import nn
from torch.nn import functional as F
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


def fit_linear(features: torch.Tensor, labels: torch.Tensor, out: int, *,
               steps: int = 300) -> nn.Linear:
    """A multi-label linear classifier (labels one-hot) fitted on fixed features: full-batch
    Adam with weight decay."""
    head = nn.Linear(features.shape[1], out)
    opt = torch.optim.Adam(head.parameters(), lr=1e-2, weight_decay=1e-3)
    target = F.one_hot(labels, out).float()
    for _ in range(steps):
        opt.zero_grad()
        F.binary_cross_entropy_with_logits(head(features), target).backward()
        opt.step()
    return head.eval()


def tv_features(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """torchvision DenseNet's forward up to the classifier (its own functions)."""
    with torch.no_grad():
        return torch.flatten(F.adaptive_avg_pool2d(F.relu(net.features(x)), (1, 1)), 1)


def trained_features(monai: dict[str, torch.Tensor], *, channels: int = 1,
                     input_scale: float = 1.0, input_offset: float = 0.0
                     ) -> dict[str, torch.Tensor]:
    """A MONAI DenseNet121's trained ``features.*`` under torchvision's names (this tool's own
    renaming: drop ``.layers.``; the tests check it by outputs, not by names).

    ``channels=3``: the stem's weights split over three channels (a gray image replicated to
    three gives the same result). ``input_scale``/``input_offset``: the source model reads
    ``x * input_scale + input_offset`` where the MONAI model read ``x``; folded into the stem
    and its norm's running mean (exact away from the zero padding at the borders).
    """
    out = {k.replace(".layers.", "."): v.clone() for k, v in monai.items()
           if k.startswith("features.")}
    w = out["features.conv0.weight"]
    if channels == 3:
        w = w.repeat(1, 3, 1, 1) / 3
    # x = (x' - offset) / scale, so conv(x; w) = conv(x'; w / scale) - offset / scale * sum(w):
    # the stem reads x' with w / scale, and norm0's mean takes the constant.
    out["features.conv0.weight"] = w / input_scale
    out["features.norm0.running_mean"] += input_offset / input_scale * w.sum((1, 2, 3))
    return out


def fitted(args: argparse.Namespace) -> int:
    import timm  # only the --fit variants need it

    data = np.load(args.fit)
    labels = torch.from_numpy(data["labels"]).long()
    monai = torch.load(args.backbone, map_location="cpu", weights_only=True)
    expected: dict[str, torch.Tensor] = {}
    manifest: dict[str, dict] = {}

    def write(name: str, model: nn.Module, payload: object, **meta: object) -> None:
        torch.save(payload, args.out / f"{name}.pt")
        with torch.inference_mode():
            expected[name] = model.eval()(torch.from_numpy(data[f"{name}.eval"]))
        manifest[name] = {"file": f"{name}.pt", "classes": expected[name].shape[1], **meta}

    def train_x(name: str) -> torch.Tensor:
        return torch.from_numpy(data[f"{name}.train"])

    classes = monai["class_layers.out.weight"].shape[0]
    # timm: the trained network whole, its classifier included (so its outputs are the MONAI
    # model's: the test checks this tool's renaming by that).
    m = timm.create_model("densenet121", pretrained=False, num_classes=classes, in_chans=1)
    m.load_state_dict({**trained_features(monai),
                       "classifier.weight": monai["class_layers.out.weight"],
                       "classifier.bias": monai["class_layers.out.bias"]}, strict=False)
    write("timm_fit", m, m.state_dict(), output="logits", library=f"timm {timm.__version__}")
    # The CheXNet wrapper: 3 channels, a multi-label head fitted on the trained features.
    m = CheXNet(classes)
    net = m.densenet121
    net.load_state_dict(trained_features(monai, channels=3), strict=False)
    head = fit_linear(tv_features(net.eval(), train_x("chexnet_fit")), labels, classes)
    net.classifier[0].load_state_dict(head.state_dict())
    write("chexnet_fit", m, {"epoch": 9, "state_dict": nn.DataParallel(m).state_dict()},
          output="sigmoid", library=f"torchvision {torchvision.__version__}")
    # TorchXRayVision's shapes: 18 outputs on [-1024, 1024] intensities (x' = 2048 x - 1024).
    m = tv_model(18, channels=1)
    m.load_state_dict(trained_features(monai, input_scale=2048.0, input_offset=-1024.0),
                      strict=False)
    head = fit_linear(tv_features(m.eval(), train_x("xrv_fit")), labels, 18)
    m.classifier.load_state_dict(head.state_dict())
    threshs = torch.linspace(0.05, 0.6, 18)
    write("xrv_fit", m, {**m.state_dict(), "op_threshs": threshs}, output="logits",
          library=f"torchvision {torchvision.__version__} (TorchXRayVision's shapes)")
    torch.save({"outputs": expected}, args.out / "expected.pt")
    (args.out / "manifest.json").write_text(json.dumps({
        "torch": torch.__version__, "torchvision": torchvision.__version__,
        "timm": timm.__version__, "variants": manifest}, indent=1))
    print(f"wrote {len(manifest)} fitted variants to {args.out}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fit", type=Path, help="DATA.npz: write the fitted variants instead")
    parser.add_argument("--backbone", type=Path,
                        help="with --fit: a trained MONAI DenseNet121 state dict")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    if args.fit:
        if not args.backbone:
            parser.error("--fit needs --backbone")
        return fitted(args)
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
