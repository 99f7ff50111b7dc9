"""A deterministic synthetic MedNIST-like data set: six classes of 64x64 grayscale JPEGs.

Each class has its own anatomy-like structure (head CT: skull ring and ventricles; CXR: lungs,
ribs and mediastinum; hand: palm and fingers; abdomen CT: body outline, liver, kidneys, spine;
chest CT: lungs in cross-section, heart, spine; breast MRI: paired lobes), drawn under a random
rotation, scale and shift with jittered parts, then random blur, intensity, contrast (gamma)
and noise. The layout is MedNIST's: ``OUT/<ClassName>/<index>.jpeg``.

Byte-identical for the same seed: every image has its own generator seeded by (seed, class,
index), and the arithmetic on arrays is limited to IEEE-exact operations (+ - * / sqrt, no
vectorised exp/sin/pow whose last bits vary between CPUs); angles, blur weights and the gamma
table are computed as Python scalars.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medtrt.models.presets import MEDNIST_LABELS

__all__ = ["CLASSES", "render", "synthesize", "SynthResult", "JPEG_QUALITY"]

CLASSES = MEDNIST_LABELS
JPEG_QUALITY = 92
SIZE = 64


class _Canvas:
    """Normalised coordinates in [-1, 1] under a random similarity transform."""

    def __init__(self, rng: np.random.Generator, size: int) -> None:
        angle = math.radians(rng.uniform(-15.0, 15.0))
        scale = rng.uniform(0.85, 1.15)
        dx, dy = rng.uniform(-0.1, 0.1, size=2)
        c, s = math.cos(angle), math.sin(angle)
        grid = (np.arange(size, dtype=np.float64) + 0.5) * (2.0 / size) - 1.0
        yy, xx = np.meshgrid(grid, grid, indexing="ij")
        xx, yy = xx - dx, yy - dy
        self.x = (c * xx + s * yy) / scale
        self.y = (-s * xx + c * yy) / scale
        self.edge = 2.0 / size / scale  # one pixel, for anti-aliased edges
        self.rng = rng
        self.img = np.zeros((size, size))

    def j(self, value: float, rel: float = 0.1) -> float:
        """``value`` jittered by up to ``rel`` of itself."""
        return value * (1.0 + self.rng.uniform(-rel, rel))

    def ellipse(self, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
        """Soft mask of an ellipse (1 inside, 0 outside, a one-pixel linear ramp between)."""
        d = np.sqrt(((self.x - cx) / rx) ** 2 + ((self.y - cy) / ry) ** 2) - 1.0
        return np.clip(0.5 - d * min(rx, ry) / self.edge, 0.0, 1.0)

    def bar(self, x0: float, y0: float, angle_deg: float, length: float, width: float) -> np.ndarray:
        """Soft mask of a rectangle starting at (x0, y0), pointing at ``angle_deg`` (0 = up)."""
        a = math.radians(angle_deg)
        ux, uy = math.sin(a), -math.cos(a)
        px, py = self.x - x0, self.y - y0
        along = px * ux + py * uy
        across = np.abs(px * uy - py * ux)
        inside_len = np.clip(np.minimum(along, length - along) / self.edge + 0.5, 0.0, 1.0)
        inside_w = np.clip((width / 2 - across) / self.edge + 0.5, 0.0, 1.0)
        return inside_len * inside_w

    def paint(self, mask: np.ndarray, value: float) -> None:
        self.img = self.img * (1.0 - mask) + value * mask


def _head_ct(c: _Canvas) -> None:
    rx, ry = c.j(0.72), c.j(0.86)
    c.paint(c.ellipse(0, 0, rx, ry), 1.0)  # skull
    c.paint(c.ellipse(0, 0, rx - c.j(0.09), ry - c.j(0.09)), c.j(0.45))  # brain
    for side in (-1, 1):  # lateral ventricles
        c.paint(c.ellipse(side * c.j(0.11), c.j(-0.05, 0.5), c.j(0.07), c.j(0.22)), c.j(0.12))
    c.paint(c.ellipse(0, c.j(0.25), c.j(0.05), c.j(0.05)), c.j(0.15))  # third ventricle


def _cxr(c: _Canvas) -> None:
    c.paint(c.ellipse(0, 0.15, c.j(0.95), c.j(1.05)), c.j(0.65))  # thorax
    lung = np.zeros_like(c.img)
    for side in (-1, 1):
        lung = np.maximum(lung, c.ellipse(side * c.j(0.38), c.j(0.05), c.j(0.3), c.j(0.62)))
    c.paint(lung, c.j(0.22))
    curve = c.j(0.25, 0.3)
    for k in range(6):  # ribs: bright arcs across the lung fields
        y_k = -0.55 + k * c.j(0.2, 0.05)
        rib = np.clip((0.035 - np.abs(c.y - (y_k + curve * c.x * c.x))) / c.edge + 0.5, 0.0, 1.0)
        c.img = c.img + 0.28 * rib * lung
    c.paint(c.bar(0, 0.9, 0, 1.7, c.j(0.2)), c.j(0.8))  # mediastinum and spine
    for side in (-1, 1):  # clavicles
        c.paint(c.bar(side * 0.05, -0.7, side * c.j(80, 0.05), 0.6, 0.06), 0.9)


def _hand(c: _Canvas) -> None:
    c.img += 0.05
    palm_y = c.j(0.4)
    c.paint(c.ellipse(0, palm_y, c.j(0.36), c.j(0.32)), c.j(0.7))
    spread = c.j(1.0, 0.2)
    for k, angle in enumerate((-22, -8, 5, 18)):  # four fingers with joints
        a = angle * spread
        x0 = (-0.24 + 0.16 * k) * c.j(1.0, 0.05)
        length = c.j((0.62, 0.72, 0.7, 0.58)[k], 0.08)
        finger = c.bar(x0, palm_y - 0.15, a, length, c.j(0.11))
        c.paint(finger, c.j(0.72))
        for joint in (0.35, 0.7):
            ja = math.radians(a)
            jx = x0 + math.sin(ja) * length * joint
            jy = palm_y - 0.15 - math.cos(ja) * length * joint
            c.paint(c.ellipse(jx, jy, 0.06, 0.02) * finger, 0.45)
    c.paint(c.bar(c.j(0.3), palm_y, c.j(-60, 0.15), c.j(0.45), c.j(0.12)), c.j(0.72))  # thumb


def _abdomen_ct(c: _Canvas) -> None:
    rx, ry = c.j(0.88), c.j(0.62)
    c.paint(c.ellipse(0, 0, rx, ry), c.j(0.3))  # fat layer
    c.paint(c.ellipse(0, 0, rx - c.j(0.08), ry - c.j(0.08)), c.j(0.48))  # muscle/organs
    c.paint(c.ellipse(c.j(-0.35), c.j(-0.1, 0.5), c.j(0.32), c.j(0.3)), c.j(0.6))  # liver
    c.paint(c.ellipse(c.j(0.35), c.j(-0.15, 0.5), c.j(0.16), c.j(0.14)), c.j(0.42))  # stomach
    for side in (-1, 1):  # kidneys
        c.paint(c.ellipse(side * c.j(0.33), c.j(0.25), c.j(0.1), c.j(0.14)), c.j(0.68))
    c.paint(c.ellipse(0, c.j(0.38), c.j(0.1), c.j(0.09)), 0.97)  # vertebra
    for _ in range(4):  # bowel gas
        c.paint(c.ellipse(c.rng.uniform(-0.3, 0.4), c.rng.uniform(-0.45, 0.05), 0.05, 0.05), 0.08)


def _chest_ct(c: _Canvas) -> None:
    rx, ry = c.j(0.9), c.j(0.66)
    c.paint(c.ellipse(0, 0, rx, ry), c.j(0.5))
    for side in (-1, 1):  # lungs in cross-section, with vessels
        c.paint(c.ellipse(side * c.j(0.4), c.j(-0.02), c.j(0.3), c.j(0.46)), c.j(0.06))
        for _ in range(5):
            vx = side * c.rng.uniform(0.25, 0.55)
            vy = c.rng.uniform(-0.3, 0.3)
            c.paint(c.ellipse(vx, vy, 0.025, 0.025), 0.4)
    c.paint(c.ellipse(c.j(0.06), c.j(0.05), c.j(0.2), c.j(0.2)), c.j(0.6))  # heart
    c.paint(c.ellipse(0, c.j(0.48), c.j(0.09), c.j(0.09)), 0.97)  # vertebra


def _breast_mri(c: _Canvas) -> None:
    c.img += 0.04
    c.paint(c.bar(-1.2, c.j(-0.35), 90, 2.4, c.j(0.5)), c.j(0.25))  # chest wall band
    top = c.j(-0.1, 0.5)
    for side in (-1, 1):  # paired lobes hanging below the chest wall
        lobe = c.ellipse(side * c.j(0.45), top, c.j(0.4), c.j(0.6)) * (c.y > top)
        c.paint(lobe, c.j(0.72))
        for _ in range(4):  # fibroglandular tissue
            gx = side * c.rng.uniform(0.3, 0.6)
            gy = top + c.rng.uniform(0.05, 0.35)
            c.paint(c.ellipse(gx, gy, c.rng.uniform(0.04, 0.1), c.rng.uniform(0.04, 0.1)) * lobe, 0.4)


_RENDERERS: dict[str, Callable[[_Canvas], None]] = {
    "AbdomenCT": _abdomen_ct,
    "BreastMRI": _breast_mri,
    "CXR": _cxr,
    "ChestCT": _chest_ct,
    "Hand": _hand,
    "HeadCT": _head_ct,
}


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    if sigma < 0.3:
        return img
    radius = int(math.ceil(3 * sigma))
    w = [math.exp(-0.5 * (i / sigma) ** 2) for i in range(-radius, radius + 1)]
    total = sum(w)
    padded = np.pad(img, radius, mode="edge")
    rows = sum((wi / total) * padded[:, i:i + img.shape[1]] for i, wi in enumerate(w))
    return sum((wi / total) * rows[i:i + img.shape[0], :] for i, wi in enumerate(w))


def render(label: str, rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    """One synthetic image of class ``label`` as uint8 [size, size]."""
    if label not in _RENDERERS:
        raise ValueError(f"unknown class {label!r}; expected one of {list(CLASSES)}")
    canvas = _Canvas(rng, size)
    _RENDERERS[label](canvas)
    img = _blur(canvas.img, rng.uniform(0.0, 1.2) * size / SIZE)
    img = img * rng.uniform(0.75, 1.2) + rng.uniform(-0.08, 0.08)
    img = img + rng.normal(0.0, rng.uniform(0.01, 0.06), size=img.shape)
    q = np.rint(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)
    gamma = rng.uniform(0.7, 1.4)
    lut = np.array([round(255.0 * (v / 255.0) ** gamma) for v in range(256)], dtype=np.uint8)
    return lut[q]


@dataclass(frozen=True)
class SynthResult:
    root: Path
    counts: dict[str, int]


def synthesize(out: str | os.PathLike[str], *, per_class: int = 300, seed: int = 0,
               size: int = SIZE, progress: Callable[[int, int], None] | None = None) -> SynthResult:
    """Write ``per_class`` JPEGs for each class under OUT/<ClassName>/<index>.jpeg.

    Files are written whole or not at all (temporary name, then rename); an existing file with
    the same name is replaced, so rerunning with the same seed reproduces the same bytes.
    """
    from PIL import Image

    if per_class < 1:
        raise ValueError(f"per_class must be >= 1; got {per_class}")
    root = Path(out)
    total = per_class * len(CLASSES)
    done = 0
    for class_index, label in enumerate(CLASSES):
        folder = root / label
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            rng = np.random.default_rng([seed, class_index, i])
            buf = io.BytesIO()
            Image.fromarray(render(label, rng, size), mode="L").save(
                buf, format="JPEG", quality=JPEG_QUALITY, optimize=False)
            target = folder / f"{i:06d}.jpeg"
            tmp = target.with_suffix(".jpeg.tmp")
            tmp.write_bytes(buf.getvalue())
            tmp.replace(target)
            done += 1
            if progress:
                progress(done, total)
    return SynthResult(root, {label: per_class for label in CLASSES})
