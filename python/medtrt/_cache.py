"""Where medtrt keeps what it derives once per machine (TensorRT timing caches, the CPU backend
choices, an INT8 bundle's CPU graphs): ``$MEDTRT_CACHE``, else ``~/.cache/medtrt``."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir"]


def cache_dir() -> Path:
    """``$MEDTRT_CACHE`` (unset or empty: ``~/.cache/medtrt``)."""
    return Path(os.environ.get("MEDTRT_CACHE") or Path.home() / ".cache" / "medtrt")
