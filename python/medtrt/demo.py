"""The built-in demo model: the synthetic MedNIST-like set, the MONAI DenseNet-121 trained on it
(reproducibly: the same weights on every x86-64 CPU with AVX2) and its ONNX export, made once
per code version and cached. `make demo` runs on it, and so do the tests."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import medtrt.data.synth as _synth
import medtrt.export as _export
import medtrt.models.checkpoint as _checkpoint
import medtrt.models.presets as _presets
import medtrt.train as _train
from medtrt._lazy import require
from medtrt.data import synthesize
from medtrt.export import export_onnx
from medtrt.models import load_checkpoint
from medtrt.train import TrainConfig, train

__all__ = ["DEMO_SYNTH", "DEMO_TRAIN", "DemoModel", "cached_demo_model", "weights_sha256"]

DEMO_SYNTH = {"per_class": 300, "seed": 0}
# Reproducible training pins x86-64 AVX2 kernels (medtrt.train.REPRODUCIBLE_ENV). Elsewhere (an
# ARM machine) the demo trains with the default kernels: it works, but its weights are not the
# recorded ones that tests/test_train.py checks.
DEMO_TRAIN = TrainConfig(preset="mednist", epochs=2, seed=0,
                         reproducible=platform.machine().lower() in ("x86_64", "amd64"))


@dataclass(frozen=True)
class DemoModel:
    root: Path
    data: Path
    checkpoint: Path
    metrics: Path
    onnx: Path  # exported with a dynamic batch and verified against PyTorch
    trained_now: bool


def weights_sha256(checkpoint: str | os.PathLike[str]) -> str:
    """sha256 over a checkpoint's tensors (name, dtype, shape and bytes, in name order): the
    weights alone, not the metadata (paths, timings) saved beside them."""
    state = load_checkpoint(checkpoint)["state_dict"]
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def _code_key() -> str:
    """Digest of everything that decides the demo model: generator, training and model code,
    the settings, and the torch/MONAI versions."""
    torch = require("torch")
    monai = require("monai")
    h = hashlib.sha256()
    for mod in (_synth, _presets, _checkpoint, _export, _train):
        h.update(Path(mod.__file__).read_bytes())
    h.update(Path(__file__).read_bytes())
    h.update(json.dumps([DEMO_SYNTH, asdict(DEMO_TRAIN), torch.__version__, monai.__version__],
                        sort_keys=True).encode())
    return h.hexdigest()[:16]


def cached_demo_model(cache_dir: str | os.PathLike[str] | None = None, *,
                      progress: bool = True) -> DemoModel:
    """The synthetic MedNIST set, the model trained on it and its ONNX export, made once per
    code version.

    Lives under ``cache_dir`` (default $MEDTRT_CACHE or ./.cache/medtrt) in a folder named by
    a digest of the generator/training code and settings; built in a temporary folder and
    renamed when complete, so an interrupted run never leaves a half-made model behind.
    """
    cache = Path(cache_dir or os.environ.get("MEDTRT_CACHE") or Path.cwd() / ".cache" / "medtrt")
    root = cache / f"mednist-demo-{_code_key()}"
    done = DemoModel(root, root / "data", root / "model.pt", root / "model.train.json",
                     root / "model.onnx", False)
    if all(p.is_file() for p in (done.checkpoint, done.metrics, done.onnx)):
        return done
    tmp = cache / f".{root.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    synthesize(tmp / "data", **DEMO_SYNTH)
    train(tmp / "data", tmp / "model.pt", DEMO_TRAIN, progress=progress)
    # The checkpoint records the data root; point it at the final location.
    summary = json.loads((tmp / "model.train.json").read_text())
    summary["data"]["root"] = str((root / "data").resolve())
    (tmp / "model.train.json").write_text(json.dumps(summary, indent=2) + "\n")
    export_onnx(tmp / "model.pt", tmp / "model.onnx")
    if root.exists():
        shutil.rmtree(root)
    tmp.rename(root)
    return DemoModel(root, root / "data", root / "model.pt", root / "model.train.json",
                     root / "model.onnx", True)
