"""Reading and writing ONNX files whose weights may live in separate files (external data).

ONNX keeps a model in one protobuf, which cannot exceed 2 GiB; bigger models store their
weights in files beside the graph (``onnx.save(..., save_as_external_data=True)``). medtrt reads
such graphs with their weights, and writes each graph it makes (adopted, FP16, INT8) as one
self-contained file unless its weights are too big for that, in which case they go to
``NAME.onnx.data`` beside it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from medtrt._lazy import require
from medtrt.errors import ArtifactError

__all__ = ["INLINE_LIMIT", "external_data_files", "load_onnx", "load_weights", "save_onnx"]

# Weights above this many bytes are written as external data (protobuf's limit is 2 GiB, and
# the graph itself and the metadata need room too).
INLINE_LIMIT = 1536 << 20


def load_onnx(path: str | os.PathLike[str], *, weights: bool = True) -> Any:
    """The ``onnx.ModelProto`` in ``path``; ``weights=False`` leaves external data unread (the
    graph and the inline weights only). ArtifactError when it is not a readable ONNX file or its
    external data is missing."""
    onnx = require("onnx")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX file {path} does not exist")
    try:
        return onnx.load(str(path), load_external_data=weights)
    except FileNotFoundError as exc:  # a weights file the graph names is absent
        raise ArtifactError(f"{path}: its weights are stored in a separate file that is missing "
                            f"({exc}); keep the external data files beside the .onnx") from None
    except Exception as exc:  # noqa: BLE001 - protobuf's errors have no common base
        raise ArtifactError(f"{path} is not an ONNX file: {exc}") from None


def load_weights(model: Any, path: str | os.PathLike[str]) -> None:
    """Reads, in place, the external weights of ``model`` (loaded from ``path`` without them)."""
    onnx = require("onnx")
    try:
        onnx.external_data_helper.load_external_data_for_model(model, str(Path(path).parent))
    except (FileNotFoundError, OSError) as exc:
        raise ArtifactError(f"{path}: its weights are stored in a separate file that cannot be "
                            f"read ({exc}); keep the external data files beside the .onnx") from None


def external_data_files(model: Any) -> tuple[str, ...]:
    """The files (relative to the graph) that hold weights of ``model``, in first-use order."""
    onnx = require("onnx")
    seen: dict[str, None] = {}
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            for entry in tensor.external_data:
                if entry.key == "location":
                    seen.setdefault(entry.value)
    return tuple(seen)


def save_onnx(model: Any, path: str | os.PathLike[str]) -> Path:
    """Write ``model`` (weights loaded) to ``path``: one file, or the graph plus
    ``NAME.onnx.data`` when its weights exceed ``INLINE_LIMIT``. The one-file case is written
    atomically (a temporary name, then renamed)."""
    onnx = require("onnx")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    weights = sum(len(t.raw_data) for t in model.graph.initializer)
    if weights > INLINE_LIMIT:
        copy = onnx.ModelProto()
        copy.CopyFrom(model)  # save_as_external_data moves the weights out of the proto it saves
        onnx.save(copy, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                  location=f"{path.name}.data", size_threshold=1024)
        return path
    tmp = path.with_name(path.name + ".tmp")
    onnx.save(model, str(tmp))
    tmp.replace(path)
    return path
