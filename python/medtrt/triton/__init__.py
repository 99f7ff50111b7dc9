"""Serving with NVIDIA Triton Inference Server: a model repository generated from an engine
bundle (``export_triton``), the Python-backend models it uses (``medtrt.triton.backend``,
imported inside Triton), a check of a repository against Triton's own config schema
(``medtrt.triton.validate``), a client (``medtrt.triton.client``) and a local server started
from the ``nvidia-pytriton`` wheel's Triton binary (``medtrt.triton.server``). See
docs/serving.md.
"""

from __future__ import annotations

from medtrt.triton.configs import ModelNames
from medtrt.triton.export import PLATFORMS, ExportOptions, TritonExport, export_triton

__all__ = ["ExportOptions", "ModelNames", "PLATFORMS", "TritonExport", "export_triton"]
