"""The MedNIST folder layout (ROOT/<ClassName>/<file>.jpeg) and deterministic splits."""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medtrt.data.readers import IMAGE_SUFFIXES, list_images

__all__ = ["ImageFolder", "Split", "scan_folder", "split_folder"]


@dataclass(frozen=True)
class ImageFolder:
    """Image files under ROOT/<class>/..., classes sorted by name (as MedNIST and torchvision)."""

    root: Path
    classes: tuple[str, ...]
    paths: tuple[Path, ...]
    labels: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.paths)

    def counts(self) -> dict[str, int]:
        c = np.bincount(np.asarray(self.labels, dtype=np.int64), minlength=len(self.classes))
        return {name: int(n) for name, n in zip(self.classes, c)}


@dataclass(frozen=True)
class Split:
    train: ImageFolder
    val: ImageFolder
    test: ImageFolder


def scan_folder(root: str | os.PathLike[str], *, classes: tuple[str, ...] | None = None) -> ImageFolder:
    """Index ROOT/<ClassName>/* image files. ``classes`` fixes the label order (and requires
    each of them to exist); otherwise every subfolder holding images is a class, sorted."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder {root} does not exist")
    found = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if classes is None:
        classes = tuple(found)
    missing = [c for c in classes if c not in found]
    if missing:
        raise ValueError(f"{root}: class folders {missing} are missing; found {found}")
    paths: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        files = list_images(root / name)
        paths += files
        labels += [label] * len(files)
    if not paths:
        raise ValueError(f"{root}: no images (expected ROOT/<ClassName>/*.jpeg, the MedNIST "
                         f"layout; suffixes {IMAGE_SUFFIXES})")
    return ImageFolder(root, tuple(classes), tuple(paths), tuple(labels))


def split_folder(folder: ImageFolder, *, ratios: tuple[float, float, float] = (0.8, 0.1, 0.1),
                 seed: int = 0) -> Split:
    """Stratified train/val/test split, the same for the same files, ratios and seed.

    Each class is shuffled with its own generator (seeded by ``seed`` and the class name), so
    adding a class does not reshuffle the others.
    """
    if len(ratios) != 3 or any(r < 0 for r in ratios) or not np.isclose(sum(ratios), 1.0):
        raise ValueError(f"ratios must be three non-negative numbers summing to 1; got {ratios}")
    parts: list[list[int]] = [[], [], []]
    labels = np.asarray(folder.labels)
    for label, name in enumerate(folder.classes):
        idx = np.flatnonzero(labels == label)
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        idx = idx[rng.permutation(len(idx))]
        n_train = int(round(ratios[0] * len(idx)))
        n_val = int(round(ratios[1] * len(idx)))
        parts[0] += idx[:n_train].tolist()
        parts[1] += idx[n_train:n_train + n_val].tolist()
        parts[2] += idx[n_train + n_val:].tolist()

    def subset(ix: list[int]) -> ImageFolder:
        ix = sorted(ix)
        return ImageFolder(folder.root, folder.classes, tuple(folder.paths[i] for i in ix),
                           tuple(folder.labels[i] for i in ix))

    return Split(subset(parts[0]), subset(parts[1]), subset(parts[2]))
