"""A client of a generated repository's image models (``NAME_pipeline`` or ``NAME_engine``):
encoded image files in, labels, scores, indices and probabilities out, over HTTP or gRPC with
``tritonclient`` (``pip install 'medtrt[triton]'``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from medtrt._lazy import require
from medtrt.triton.configs import IMAGE, OUTPUTS

__all__ = ["Classification", "TritonClassifier", "bytes_input", "image_input"]

PROTOCOLS = ("http", "grpc")


@dataclass(frozen=True)
class Classification:
    """One request's answer: ``labels`` [B, k] (str), ``scores`` [B, k], ``indices`` [B, k]
    (best first) and ``probs`` [B, classes] (label order)."""

    labels: list[list[str]]
    scores: np.ndarray
    indices: np.ndarray
    probs: np.ndarray


def _module(protocol: str) -> Any:
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}; got {protocol!r}")
    return require(f"tritonclient.{protocol}")


def image_input(protocol: str, files: Sequence[bytes]) -> Any:
    """The ``IMAGE`` input of a request: one encoded file per batch row ([B, 1] BYTES)."""
    data = np.empty((len(files), 1), dtype=object)
    for i, f in enumerate(files):
        data[i, 0] = bytes(f)
    return bytes_input(protocol, data)


def bytes_input(protocol: str, data: np.ndarray, name: str = IMAGE) -> Any:
    """A BYTES input ``name`` holding ``data`` (an object array of bytes) as it is shaped."""
    tensor = _module(protocol).InferInput(name, list(data.shape), "BYTES")
    tensor.set_data_from_numpy(data)
    return tensor


class TritonClassifier:
    """``classify(files)`` against ``model`` at ``url`` (``host:port``). One client object per
    thread (tritonclient's are not shared between threads here). Errors are tritonclient's
    ``InferenceServerException``, carrying the server's message."""

    def __init__(self, url: str, model: str, *, protocol: str = "http",
                 timeout: float = 60.0) -> None:
        self.protocol, self.model = protocol, model
        module = _module(protocol)
        if protocol == "http":
            self.client = module.InferenceServerClient(url, connection_timeout=timeout,
                                                       network_timeout=timeout)
        else:
            self.client = module.InferenceServerClient(url)
        self.timeout = timeout
        self._outputs = [module.InferRequestedOutput(name) for name in OUTPUTS]

    def classify(self, files: Sequence[bytes]) -> Classification:
        return self.infer([image_input(self.protocol, files)])

    def infer(self, inputs: list[Any]) -> Classification:
        """A request with these (already made) inputs: for requests ``classify`` would not make,
        such as a wrong shape."""
        kwargs = {"client_timeout": self.timeout} if self.protocol == "grpc" else {}
        result = self.client.infer(self.model, inputs, outputs=self._outputs, **kwargs)
        labels = result.as_numpy("LABELS")
        return Classification(
            labels=[[x.decode() if isinstance(x, bytes) else str(x) for x in row]
                    for row in labels],
            scores=result.as_numpy("SCORES"), indices=result.as_numpy("INDICES"),
            probs=result.as_numpy("PROBS"))

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> TritonClassifier:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
