"""Loads the compiled core with a clear message when it is missing."""

from __future__ import annotations

import functools
from types import ModuleType
from typing import Any

from medtrt.errors import ExtensionNotBuiltError

__all__ = ["native", "build_info", "cuda_ready"]


@functools.cache
def native() -> ModuleType:
    """Return ``medtrt._C``, importing it on first use."""
    try:
        from medtrt import _C
    except ImportError as exc:
        raise ExtensionNotBuiltError(
            "medtrt's compiled core (medtrt._C) is not built in this environment; "
            "install the package (`pip install .` or `make test` from the repository) "
            f"instead of importing it from the source tree ({exc})"
        ) from exc
    return _C


def build_info() -> dict[str, Any]:
    """How the compiled core was built and what CUDA it sees right now."""
    c = native()
    info = dict(c.build_info())
    info["cuda_device_count"] = c.cuda_device_count()
    info["cuda_device_status"] = c.cuda_device_status()
    info["cuda_driver_version"] = c.cuda_driver_version()
    return info


def cuda_ready() -> tuple[bool, str]:
    """(True, "") when CUDA kernels can run here, else (False, the reason)."""
    c = native()
    if not c.cuda_compiled():
        return False, "medtrt was built without CUDA (no nvcc at build time)"
    if c.cuda_device_count() == 0:
        return False, c.cuda_device_status() or "no CUDA device is visible"
    return True, ""
