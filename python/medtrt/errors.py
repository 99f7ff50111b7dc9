"""Exceptions raised by medtrt.

User mistakes raise ``ValueError`` (or ``TypeError``) with the expected value, the actual value
and the fix. Failures of the machine or of a dependency raise the classes below.
"""

from __future__ import annotations

__all__ = [
    "MedtrtError",
    "CudaError",
    "MissingDependencyError",
    "ExtensionNotBuiltError",
    "ImageReadError",
    "CheckpointError",
    "ExportError",
    "GateError",
    "NonFiniteError",
    "ArtifactError",
    "BundleError",
]


class MedtrtError(Exception):
    """Base class of medtrt's own errors."""


class CudaError(MedtrtError, RuntimeError):
    """A CUDA runtime call failed; the message names the call, the error, the file and line."""


class MissingDependencyError(MedtrtError, ImportError):
    """An optional dependency is not installed; the message names the pip extra to install."""


class ExtensionNotBuiltError(MedtrtError, ImportError):
    """The compiled core ``medtrt._C`` is missing (e.g. running from a source checkout)."""


class ImageReadError(MedtrtError, ValueError):
    """An image file could not be read; ``path`` and ``reason`` say which and why."""

    def __init__(self, path: object, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot read image {self.path}: {reason}")

    def __reduce__(self) -> tuple[type, tuple[str, str]]:  # picklable across worker processes
        return (type(self), (self.path, self.reason))


class CheckpointError(MedtrtError, ValueError):
    """A checkpoint is not a medtrt checkpoint, or its weights do not fit its preset."""


class ExportError(MedtrtError, RuntimeError):
    """An exported graph failed its check against the PyTorch model."""


class GateError(MedtrtError):
    """The INT8 graph missed the accuracy gate of ``medtrt build --val`` even with the allowed
    FP16 fallback layers; ``report`` is the gate's outcome and ``path`` where it was written."""

    def __init__(self, message: str, report: dict, path: object) -> None:
        super().__init__(message)
        self.report = report
        self.path = str(path)


class NonFiniteError(MedtrtError, ValueError):
    """Outputs (logits, probabilities, scores) hold NaN or infinity where a measurement needs
    finite numbers; the message names the input, the counts, the first sample and the fix."""


class ArtifactError(MedtrtError, ValueError):
    """A file medtrt wrote and now reads (ONNX metadata, engine bundle) is missing, damaged, or
    from another medtrt version; the message names the file, what is wrong and the fix."""


class BundleError(ArtifactError):
    """An engine bundle is incomplete, damaged, from another medtrt, or built for another
    TensorRT or GPU."""
