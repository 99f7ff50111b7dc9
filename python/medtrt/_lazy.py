"""Lazy imports of optional dependencies with an error that names the extra to install."""

from __future__ import annotations

import importlib
from types import ModuleType

from medtrt.errors import MissingDependencyError

__all__ = ["require"]

# module name -> (pip extra, what needs it)
_EXTRAS = {
    "torch": ("torch", "torch tensors, models, training and the PyTorch reference path"),
    "monai": ("torch", "the DenseNet-121 reference models"),
    "pydicom": ("dicom", "reading DICOM files"),
    "onnx": ("onnx", "ONNX export"),
    "onnxruntime": ("onnx", "running ONNX graphs on the CPU"),
    "onnxscript": ("onnx", "ONNX export with torch's dynamo exporter"),
    "openvino": ("openvino", "running ONNX graphs in OpenVINO on the CPU (backend='openvino', "
                             "and as a candidate of backend='auto' there)"),
    "matplotlib": ("report", "plots (medtrt eval)"),
    "polygraphy": ("debug", "layer-by-layer comparison (medtrt debug-layers)"),
    "pyarrow": ("parquet", "Parquet output and manifests (medtrt predict)"),
    "pyarrow.parquet": ("parquet", "Parquet output and manifests (medtrt predict)"),
    "pyarrow.compute": ("parquet", "Parquet output and manifests (medtrt predict)"),
    "ray": ("ray", "scale-out on Ray (medtrt predict --ray, medtrt.ray)"),
    "ray.data": ("ray", "scale-out on Ray (medtrt predict --ray, medtrt.ray)"),
    "tritonclient.http": ("triton", "talking to a Triton server (medtrt.triton.client)"),
    "tritonclient.grpc": ("triton", "talking to a Triton server (medtrt.triton.client)"),
    "tritonclient.grpc.model_config_pb2": ("triton", "Triton's config schema "
                                                     "(medtrt.triton.validate)"),
    "google.protobuf.text_format": ("triton", "Triton's config schema (medtrt.triton.validate)"),
}


def require(module: str) -> ModuleType:
    """Import ``module`` or raise MissingDependencyError naming the pip extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        extra, purpose = _EXTRAS.get(module, (module, "this feature"))
        raise MissingDependencyError(
            f"{module} is needed for {purpose} but is not installed; "
            f"install it with: pip install 'medtrt[{extra}]'"
        ) from exc
