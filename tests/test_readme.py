"""README's Quickstart runs as printed: export -> INT8 build -> Engine on three files of
different formats (on this machine Engine runs the bundle's precision ONNX on the CPU)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

from helpers.dicom import write_dicom

REPO = Path(__file__).resolve().parents[1]


def quickstart() -> str:
    text = (REPO / "README.md").read_text()
    section = text.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S)[1]


def test_the_quickstart_runs(demo_model, tmp_path):
    from PIL import Image

    from medtrt.data import read_image
    from medtrt.train import training_split

    split = training_split(demo_model.metrics)
    calib = tmp_path / "calib_images"
    calib.mkdir()
    for i, p in enumerate(split.train.paths[:512]):  # the default calibration size
        (calib / f"{i:03d}{p.suffix}").symlink_to(p)
    jpeg, png, dcm = split.test.paths[:3]
    (tmp_path / "a.jpeg").symlink_to(jpeg)
    Image.fromarray(read_image(png)).save(tmp_path / "b.png")
    write_dicom(tmp_path / "c.dcm", read_image(dcm).astype(np.uint16))
    code = quickstart().replace('"model.pt"', repr(str(demo_model.checkpoint)))
    assert '"calib_images/"' in code and '"a.jpeg", "b.png", "c.dcm"' in code
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600, env=os.environ.copy())
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert [line.split()[0] for line in lines] == ["a.jpeg", "b.png", "c.dcm"], proc.stdout
    labels = {p.parent.name for p in (jpeg, png, dcm)}
    assert all(any(label in line for label in labels) for line in lines), proc.stdout
