"""Reference checkpoints from torchvision's and timm's own models (tools/byo_reference.py), made
by an interpreter that has them: medtrt's own environment does not (its torch build does not
pair with a torchvision wheel), so the reference runs in a separate venv, which `make test`
creates and names (a missing one then fails instead of skipping).

The interpreter is $MEDTRT_TORCHVISION_PYTHON, else REPO/.venv-torchvision/bin/python.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from helpers.venvs import side_python

REPO = Path(__file__).resolve().parents[2]
TOOL = REPO / "tools" / "byo_reference.py"
MAKE_VENV = ("`make .venv-torchvision/.installed` (what `make test` does), or python3.11 -m "
             "venv .venv-torchvision && .venv-torchvision/bin/pip install torch==2.14.1 "
             "torchvision==0.29.1 timm==1.0.29 (or set MEDTRT_TORCHVISION_PYTHON)")


def torchvision_python() -> tuple[Path | None, str]:
    """(interpreter, why not): the interpreter that runs tools/byo_reference.py, or None."""
    return side_python("MEDTRT_TORCHVISION_PYTHON", ".venv-torchvision", "no interpreter with "
                       "torchvision for the reference checkpoints; make one: " + MAKE_VENV)


def make_reference(python: Path, out: Path, seed: int = 0, *, fit: Path | None = None,
                   backbone: Path | None = None) -> dict:
    """Run the reference tool into ``out`` (with ``fit`` and ``backbone``: the variants built on
    that trained MONAI state dict, from that DATA.npz); its manifest (variants, versions)."""
    argv = [str(python), str(TOOL), str(out), "--seed", str(seed)]
    argv += ["--fit", str(fit), "--backbone", str(backbone)] if fit else []
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"{TOOL.name} failed under {python}:\n{proc.stderr[-3000:]}")
    return json.loads((out / "manifest.json").read_text())
