"""Exceptions raised by medtrt.

User mistakes raise ``ValueError`` (or ``TypeError``) with the expected value, the actual value
and the fix. Failures of the machine or of a dependency raise the classes below.
"""

from __future__ import annotations

__all__ = ["MedtrtError", "CudaError", "MissingDependencyError", "ExtensionNotBuiltError"]


class MedtrtError(Exception):
    """Base class of medtrt's own errors."""


class CudaError(MedtrtError, RuntimeError):
    """A CUDA runtime call failed; the message names the call, the error, the file and line."""


class MissingDependencyError(MedtrtError, ImportError):
    """An optional dependency is not installed; the message names the pip extra to install."""


class ExtensionNotBuiltError(MedtrtError, ImportError):
    """The compiled core ``medtrt._C`` is missing (e.g. running from a source checkout)."""
