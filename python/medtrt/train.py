"""Training a preset's model on a folder data set (the MedNIST layout).

Images are read once, pre-processed with the compiled ``medtrt.ops.resize_normalize`` exactly
as at inference, and kept in memory; augmentation (small random affine, intensity jitter) runs
per batch on tensors. AdamW with a one-cycle schedule; per-epoch loss and validation accuracy go
to a JSON file next to the checkpoint, and the held-out test accuracy is measured at the end.
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medtrt._lazy import require
from medtrt.data import iter_images, scan_folder, split_folder
from medtrt.data.folder import ImageFolder, Split
from medtrt.models import create, save
from medtrt.models.presets import Preset, get_preset
from medtrt.ops import resize_normalize_mixed

__all__ = ["TrainConfig", "TrainResult", "train", "training_split", "load_split_arrays",
           "REPRODUCIBLE_ENV", "REPRODUCIBLE_THREADS"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    preset: str = "mednist"
    epochs: int = 2
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    augment: bool = True
    device: str = "auto"  # "auto": CUDA when torch sees it, else CPU
    threads: int | None = None  # CPU threads for torch; default: all cores
    # The same weights on every x86-64 CPU with AVX2 (see REPRODUCIBLE_ENV); CPU only, slower.
    reproducible: bool = False


@dataclass(frozen=True)
class TrainResult:
    checkpoint: Path
    metrics: Path
    history: list[dict[str, float]]
    test_accuracy: float
    seconds: float
    skipped_files: list[str] = field(default_factory=list)


def load_split_arrays(folder: ImageFolder, preset: Preset) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Read and pre-process a split: (inputs float32 [N, C, H, W], labels int64 [N], unreadable)."""
    images, labels, bad = [], [], []
    for result, label in zip(iter_images(folder.paths), folder.labels):
        if result.ok:
            images.append(result.image)
            labels.append(label)
        else:
            bad.append(str(result.path))
    if not images:
        raise ValueError(f"{folder.root}: none of {len(folder.paths)} images could be read")
    x = resize_normalize_mixed(images, **preset.preprocess_kwargs())
    return x, np.asarray(labels, np.int64), bad


def training_split(metrics: str | os.PathLike[str]) -> Split:
    """The train/val/test split a training run used, rebuilt from its ``<name>.train.json``
    (data root, labels, ratios and seed are recorded there)."""
    summary = json.loads(Path(metrics).read_text())
    data = summary["data"]
    return split_folder(scan_folder(data["root"], classes=tuple(summary["labels"])),
                        ratios=tuple(data["split"]), seed=data["split_seed"])


def _augment(torch: Any, x: Any, gen: Any) -> Any:
    """Random rotation (±10°), scale (0.9-1.1), shift (±6%) and intensity jitter per image."""
    F = torch.nn.functional
    n = x.shape[0]
    angle = (torch.rand(n, generator=gen) * 2 - 1) * math.radians(10)
    scale = 1 + (torch.rand(n, generator=gen) * 2 - 1) * 0.1
    shift = (torch.rand(n, 2, generator=gen) * 2 - 1) * 0.06
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1),
                         torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta.to(x.device), list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    gain = (1 + (torch.rand(n, 1, 1, 1, generator=gen) * 2 - 1) * 0.1).to(x.device)
    bias = ((torch.rand(n, 1, 1, 1, generator=gen) * 2 - 1) * 0.05).to(x.device)
    return x * gain + bias


def _evaluate(torch: Any, model: Any, x: Any, y: Any, batch: int) -> tuple[float, float]:
    model.eval()
    loss, correct = 0.0, 0
    with torch.inference_mode():
        for s in range(0, len(x), batch):
            logits = model(x[s:s + batch])
            loss += float(torch.nn.functional.cross_entropy(logits, y[s:s + batch], reduction="sum"))
            correct += int((logits.argmax(1) == y[s:s + batch]).sum())
    n = max(len(x), 1)
    return loss / n, correct / n


def train(data_dir: str | os.PathLike[str], out: str | os.PathLike[str],
          config: TrainConfig | dict[str, Any] | None = None, *,
          progress: bool = True) -> TrainResult:
    """Train ``config.preset`` on ROOT/<Class>/* images; write OUT (checkpoint) and OUT.json.

    With ``config.reproducible`` the training runs in a child process under REPRODUCIBLE_ENV
    (see there), so that the weights come out the same on every x86-64 CPU with AVX2."""
    cfg = config if isinstance(config, TrainConfig) else TrainConfig(**(config or {}))
    if cfg.reproducible and os.environ.get(_CHILD) != "1":
        return _train_in_child(data_dir, out, cfg, progress)
    torch = require("torch")
    t0 = time.perf_counter()
    folder, preset = _labelled_folder(data_dir, get_preset(cfg.preset))
    split = split_folder(folder, ratios=cfg.split, seed=cfg.seed)
    if min(len(split.train), len(split.val)) == 0:
        raise ValueError(f"{data_dir}: split {cfg.split} leaves an empty train or val set "
                         f"({len(folder)} images)")

    device = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    reproducible = _pin_torch(torch) if cfg.reproducible else None
    if device == "cpu" and not reproducible:
        torch.set_num_threads(cfg.threads or os.cpu_count() or 1)
    torch.manual_seed(cfg.seed)
    arrays = {name: load_split_arrays(getattr(split, name), preset) for name in ("train", "val", "test")}
    skipped = [p for _, _, bad in arrays.values() for p in bad]
    tensors = {name: (torch.from_numpy(x).to(device), torch.from_numpy(y).to(device))
               for name, (x, y, _) in arrays.items()}
    model = create(preset, seed=cfg.seed).to(device)
    history = _fit(torch, model, tensors, cfg, device, progress)
    test_loss, test_acc = _evaluate(torch, model, *tensors["test"], cfg.batch_size * 4)
    seconds = time.perf_counter() - t0

    out = Path(out)
    summary = {
        "preset": preset.name,
        "labels": list(preset.labels),
        "config": asdict(cfg),
        "device": device,
        "data": {"root": str(Path(data_dir).resolve()), "images": len(folder),
                 "per_class": folder.counts(), "train": len(split.train), "val": len(split.val),
                 "test": len(split.test), "split": list(cfg.split), "split_seed": cfg.seed,
                 "skipped_files": skipped},
        "history": history,
        "test_loss": test_loss,
        "test_accuracy": test_acc,
        "seconds": seconds,
        "torch": str(torch.__version__),
        "reproducible": reproducible,
    }
    save(model.cpu(), preset, out, training=summary)
    metrics = out.parent / (out.stem + ".train.json")
    metrics.write_text(json.dumps(summary, indent=2) + "\n")
    return TrainResult(out, metrics, history, test_acc, seconds, skipped)


def _labelled_folder(data_dir: str | os.PathLike[str], preset: Preset) -> tuple[ImageFolder, Preset]:
    """The data folder with the preset's label order, or the folder's own labels if they differ."""
    if preset.activation != "softmax":
        raise ValueError(f"train: preset {preset.name!r} is multi-label ({preset.activation}); "
                         "folder training supports single-label (softmax) presets")
    found = scan_folder(data_dir)
    if set(found.classes) == set(preset.labels):
        return scan_folder(data_dir, classes=preset.labels), preset
    log.info("labels taken from the data folder: %s", ", ".join(found.classes))
    return found, preset.with_labels(found.classes)


def _fit(torch: Any, model: Any, tensors: dict[str, tuple[Any, Any]], cfg: TrainConfig,
         device: str, progress: bool) -> list[dict[str, float]]:
    """AdamW with a one-cycle schedule over ``cfg.epochs``; per-epoch losses and accuracy."""
    x_train, y_train = tensors["train"]
    steps_per_epoch = math.ceil(len(x_train) / cfg.batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, pct_start=0.3,
                                                total_steps=cfg.epochs * steps_per_epoch)
    gen = torch.Generator().manual_seed(cfg.seed)
    history: list[dict[str, float]] = []
    bar = _progress(progress, cfg.epochs * steps_per_epoch)
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        e0 = time.perf_counter()
        order = torch.randperm(len(x_train), generator=gen).to(device)
        total, seen = 0.0, 0
        for step in range(steps_per_epoch):
            idx = order[step * cfg.batch_size:(step + 1) * cfg.batch_size]
            xb, yb = x_train[idx], y_train[idx]
            if cfg.augment:
                xb = _augment(torch, xb, gen)
            loss = torch.nn.functional.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
            seen += len(idx)
            bar(f"epoch {epoch}/{cfg.epochs} loss {total / seen:.3f}")
        val_loss, val_acc = _evaluate(torch, model, *tensors["val"], cfg.batch_size * 4)
        history.append({"epoch": epoch, "train_loss": total / seen, "val_loss": val_loss,
                        "val_accuracy": val_acc, "seconds": time.perf_counter() - e0})
        log.info("epoch %d: train loss %.4f, val loss %.4f, val accuracy %.4f", epoch,
                 total / seen, val_loss, val_acc)
    bar(None)
    return history


def _progress(enabled: bool, total: int) -> Callable[[str | None], None]:
    """A rich progress bar advanced once per call; ``None`` closes it."""
    if not enabled:
        return lambda _desc: None
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    prog = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                    TimeElapsedColumn(), TimeRemainingColumn(), transient=False)
    task = prog.add_task("training", total=total)
    prog.start()

    def advance(desc: str | None) -> None:
        if desc is None:
            prog.stop()
        else:
            prog.update(task, advance=1, description=desc)

    return advance


# ---- reproducible training ----------------------------------------------------------------------

# What decides the bits of a CPU training run is which kernels run and how their sums are split.
# Pinned here: ATen's vectorized kernels at AVX2 (by default AVX-512 where the CPU has it), MKL's
# conditional-numerical-reproducibility branch COMPATIBLE in strict mode (the only fixed branch
# MKL offers on non-Intel CPUs too), NumPy's dispatch without AVX-512, and two threads (reduction
# splits depend on the thread count). oneDNN and NNPACK are switched off in the child: their
# blocking follows the CPU's cache sizes. The variables must be set before torch starts, hence
# the child process. Measured on a 2-core Xeon: about 3x slower than the default kernels.
REPRODUCIBLE_THREADS = 2
REPRODUCIBLE_ENV = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "MKL_CBWR": "COMPATIBLE,STRICT",
    "OMP_NUM_THREADS": str(REPRODUCIBLE_THREADS),
    "MKL_NUM_THREADS": str(REPRODUCIBLE_THREADS),
    "NPY_DISABLE_CPU_FEATURES": "X86_V4,AVX512_ICL,AVX512_SPR",
    # Not a numeric pin: waiting threads sleep instead of spinning, so two pinned threads on a
    # busy machine do not crawl (measured: 21 s instead of 97 s for a small run under load).
    "OMP_WAIT_POLICY": "PASSIVE",
}
_CHILD = "MEDTRT_REPRODUCIBLE_CHILD"


def _pin_torch(torch: Any) -> dict[str, Any]:
    """In the child: oneDNN/NNPACK off, the fixed thread count, and a check that the pins took."""
    missing = {k: v for k, v in REPRODUCIBLE_ENV.items() if os.environ.get(k) != v}
    capability = torch.backends.cpu.get_cpu_capability()
    if missing or capability != "AVX2":
        raise RuntimeError(
            f"reproducible training needs an x86-64 CPU with AVX2 and the environment "
            f"{REPRODUCIBLE_ENV} set before torch starts (missing: {missing}; torch's CPU "
            f"capability: {capability}); train through medtrt.train.train, which starts the "
            "child process itself")
    torch.backends.mkldnn.enabled = False
    torch.backends.nnpack.set_flags(False)
    torch.set_num_threads(REPRODUCIBLE_THREADS)
    return {"env": dict(REPRODUCIBLE_ENV), "threads": REPRODUCIBLE_THREADS,
            "cpu_capability": capability, "mkldnn": False, "nnpack": False}


def _train_in_child(data_dir: str | os.PathLike[str], out: str | os.PathLike[str],
                    cfg: TrainConfig, progress: bool) -> TrainResult:
    if cfg.device not in ("auto", "cpu"):
        raise ValueError(f"reproducible training runs on the CPU; got device={cfg.device!r}")
    cfg_json = json.dumps({**asdict(cfg), "device": "cpu", "split": list(cfg.split)})
    env = {**os.environ, **REPRODUCIBLE_ENV, _CHILD: "1"}
    cmd = [sys.executable, "-m", "medtrt.train", str(data_dir), str(out), cfg_json,
           "1" if progress else "0"]
    done = subprocess.run(cmd, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"reproducible training of {data_dir} failed (exit {done.returncode}; "
                           "its error is printed above)")
    metrics = Path(out).parent / (Path(out).stem + ".train.json")
    summary = json.loads(metrics.read_text())
    return TrainResult(Path(out), metrics, summary["history"], summary["test_accuracy"],
                       summary["seconds"], summary["data"]["skipped_files"])


def _child_main(argv: list[str]) -> int:
    data_dir, out, cfg_json, progress = argv
    raw = json.loads(cfg_json)
    cfg = TrainConfig(**{**raw, "split": tuple(raw["split"])})
    train(data_dir, out, cfg, progress=progress == "1")
    return 0


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))

