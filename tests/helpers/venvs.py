"""The environments of their own that `make test` creates beside .venv (.venv-torchvision,
.venv-triton) and names to the tests by an environment variable."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def side_python(variable: str, venv: str, missing: str) -> tuple[Path | None, str]:
    """(interpreter, why not): $``variable`` when set (asked for explicitly: a broken one must
    fail, not skip), else REPO/``venv``/bin/python when it exists, else None and ``missing``."""
    given = os.environ.get(variable)
    if given:
        return Path(given), ""
    default = REPO / venv / "bin" / "python"
    if default.exists():
        return default, ""
    return None, missing
