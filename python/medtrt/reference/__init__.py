"""Reference computations that the fast paths are checked against."""

from __future__ import annotations

from medtrt.reference.numpy_ref import activate, preprocess

__all__ = ["activate", "preprocess"]
