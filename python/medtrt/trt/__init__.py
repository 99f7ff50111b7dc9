"""TensorRT through its Python API: flavour selection and the engine builder.

Two flavours share one code path: ``tensorrt`` (TensorRT 10.x / 11.x, data-center and desktop
GPUs; needs a GPU to build) and ``tensorrt_rtx`` (TensorRT-RTX; builds ahead of time without a
GPU for RTX-class targets SM75-SM121, no SM90). Precision is in the ONNX graph (strongly typed
networks): no precision flags, no calibrators.
"""

from __future__ import annotations

from medtrt.trt.builder import BuildError, EngineBuild, build_engine, engine_header_version, import_trt

__all__ = ["BuildError", "EngineBuild", "build_engine", "engine_header_version", "import_trt"]
