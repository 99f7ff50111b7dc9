"""Running models: ``Engine`` and its ``Results``."""

from __future__ import annotations

from medtrt.runtime.engine import BundleError, Engine
from medtrt.runtime.results import Result, Results

__all__ = ["BundleError", "Engine", "Result", "Results"]
