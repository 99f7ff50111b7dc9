"""Image files for the `medtrt predict` tests: fresh synthetic MedNIST-like images written as
JPEG, 16-bit PNG and DICOM (with identifying tags), plus files that must fail or be skipped."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from medtrt.data.synth import CLASSES, render

from helpers.dicom import write_dicom

TAGS = {"SOPInstanceUID": "1.2.826.0.1.3680043.8.498.1", "SeriesInstanceUID": "1.2.3.4.5",
        "StudyInstanceUID": "1.2.3.4", "PatientID": "PAT-0042"}


def write_jpeg(path: Path, rng: np.random.Generator, label: str | None = None) -> Path:
    label = label or CLASSES[int(rng.integers(len(CLASSES)))]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(render(label, rng)).save(path, format="JPEG", quality=92)
    return path


def write_png16(path: Path, rng: np.random.Generator) -> Path:
    pixels = render(CLASSES[int(rng.integers(len(CLASSES)))], rng).astype(np.uint16) * 257
    Image.fromarray(pixels).save(path, format="PNG")
    return path


def write_ct(path: Path, rng: np.random.Generator, tags: dict[str, str] = TAGS) -> Path:
    return write_dicom(path, render("HeadCT", rng), tags=tags)


def mixed_folder(root: Path, rng: np.random.Generator) -> list[tuple[str, bool]]:
    """A folder of good and bad files; returns the rows a walk must give, in order:
    (path, ok). notes.txt is not an image and has no row."""
    files = {
        "a/1.jpeg": lambda p: write_jpeg(p, rng, "CXR"),
        "a/2.jpeg": lambda p: write_jpeg(p, rng, "Hand"),
        "a/b/3.jpeg": lambda p: write_jpeg(p, rng, "HeadCT"),
        "a/c.png": lambda p: write_png16(p, rng),
        "ct.dcm": lambda p: write_ct(p, rng),
        "jpeg.dat": lambda p: write_jpeg(p, rng, "AbdomenCT"),  # a JPEG by content
        "notes.txt": lambda p: p.write_text("not an image\n"),
        "text.jpg": lambda p: p.write_text("a text file that claims to be a JPEG\n"),
        "truncated.jpeg": lambda p: p.write_bytes(write_jpeg(p, rng).read_bytes()[:300]),
        "z/4.jpeg": lambda p: write_jpeg(p, rng, "BreastMRI"),
    }
    for name, make in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        make(path)
    bad = {"text.jpg", "truncated.jpeg"}
    return [(os.path.join(str(root), n), n not in bad) for n in sorted(files)
            if n != "notes.txt"]


def crash_on_marker(items, settings):
    """A chunk decoder for DecodePool tests: the process dies on a file whose name has 'crash'
    in it (as a decoder crash would kill it), and decodes the others as usual."""
    from medtrt.predict.decode import decode_chunk

    if any("crash" in os.path.basename(i.path) for i in items):
        os._exit(11)
    return decode_chunk(items, settings)
