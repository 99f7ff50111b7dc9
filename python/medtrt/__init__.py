"""medtrt: fast, verified TensorRT deployments of medical-imaging classifiers.

``import medtrt`` needs only NumPy. The compiled core (``medtrt._C``) is loaded on first use of
an op; torch, TensorRT and the other heavy dependencies are imported only by the features that
need them, and a missing one raises ``medtrt.errors.MissingDependencyError`` naming what to
install.
"""

from __future__ import annotations

from medtrt import errors, ops
from medtrt._native import build_info
from medtrt.runtime import Engine, Results

__version__ = "0.1.0"

__all__ = ["Engine", "Results", "__version__", "build_info", "errors", "ops"]
