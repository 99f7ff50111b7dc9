"""``export_triton``: an engine bundle -> a Triton Inference Server model repository.

    REPO/NAME/              the network: config.pbtxt, labels.txt, 1/model.plan (tensorrt),
                            1/model.onnx (onnxruntime) or 1/model.py + the bundle (python)
    REPO/NAME_preprocess/   Python backend: encoded image files -> network input
    REPO/NAME_postprocess/  Python backend: logits -> labels, scores, indices, probabilities
    REPO/NAME_pipeline/     ensemble of the three: IMAGE bytes in, LABELS/SCORES/... out
    REPO/NAME_engine/       Python backend: the same interface, running medtrt.Engine whole
    REPO/README.md          the TensorRT the plan needs, the matching Triton release, how to run

The Python models' ``model.py`` is one import from ``medtrt.triton.backend``: medtrt (with its
compiled core, and onnxruntime for CPU instances) must be installed in the Python that Triton's
Python-backend stub runs (docs/serving.md says how, in NVIDIA's container and elsewhere).

A plan loads only in the TensorRT it was built with, and TensorRT-RTX plans do not load in
Triton's TensorRT backend at all: a TensorRT-RTX bundle is refused for ``platform="tensorrt"``
unless ``allow_tensorrt_rtx`` (then the repository is written, with that warning in README).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medtrt import __version__
from medtrt.artifacts import Bundle
from medtrt.triton.configs import (ModelNames, Serving, compute_config, engine_config,
                                   pipeline_config, postprocess_config, preprocess_config)
from medtrt.triton.pbtxt import to_pbtxt
from medtrt.triton.readme import readme_text

__all__ = ["ExportOptions", "PLATFORMS", "TritonExport", "export_triton"]

log = logging.getLogger(__name__)

PLATFORMS = ("tensorrt", "onnxruntime", "python")
KINDS = ("gpu", "cpu")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


@dataclass(frozen=True)
class ExportOptions:
    """What ``export_triton`` writes.

    name: the network model's name (default: the preset's name); the others get suffixes.
    platform: how the network is served: ``tensorrt`` (the plan, GPU), ``onnxruntime`` (the
        precision ONNX, Triton's ONNX Runtime backend, CPU) or ``python`` (the bundle through
        medtrt's stage loader in the Python backend: TensorRT on a GPU instance that can run it,
        else its precision ONNX in ONNX Runtime).
    kind: ``gpu`` or ``cpu`` instances for every model (default: gpu for tensorrt, cpu else).
    instances: instances per GPU (gpu) or in all (cpu), for each model.
    max_queue_delay_us: how long the dynamic batcher waits to fill a preferred batch.
    k: labels per image in the results (default min(5, classes), as Engine.infer).
    engine_model: also write NAME_engine (one Python model running medtrt.Engine).
    allow_tensorrt_rtx: write a tensorrt repository for a TensorRT-RTX bundle anyway.
    overwrite: replace this export's model folders where they exist.
    """

    name: str | None = None
    platform: str = "tensorrt"
    kind: str | None = None
    instances: int = 1
    max_queue_delay_us: int = 100
    k: int | None = None
    engine_model: bool = True
    allow_tensorrt_rtx: bool = False
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.platform not in PLATFORMS:
            raise ValueError(f"platform must be one of {PLATFORMS}; got {self.platform!r}")
        if self.kind is not None and self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}; got {self.kind!r}")
        if self.platform == "tensorrt" and self.kind == "cpu":
            raise ValueError("a TensorRT plan runs on GPU instances; for CPU serving use "
                             "platform 'onnxruntime' or 'python'")
        if self.name is not None and not _NAME.match(self.name):
            raise ValueError(f"name must be letters, digits, '_' or '-' (a Triton model "
                             f"name and folder); got {self.name!r}")
        if self.instances < 1:
            raise ValueError(f"instances must be >= 1; got {self.instances}")
        if self.max_queue_delay_us < 0:
            raise ValueError(f"max_queue_delay_us must be >= 0; got {self.max_queue_delay_us}")

    @classmethod
    def of(cls, options: ExportOptions | dict[str, Any] | None) -> ExportOptions:
        if options is None:
            return cls()
        return options if isinstance(options, cls) else cls(**options)


@dataclass(frozen=True)
class TritonExport:
    """What ``export_triton`` wrote: the repository, the model names (``models[0]`` is the
    network, ``pipeline`` the ensemble clients call), the README and its warnings."""

    repository: Path
    names: ModelNames
    platform: str
    kind: str
    models: tuple[str, ...]
    readme: Path
    warnings: tuple[str, ...]

    @property
    def pipeline(self) -> str:
        return self.names.pipeline


def export_triton(bundle: str | os.PathLike[str] | Bundle, out: str | os.PathLike[str],
                  options: ExportOptions | dict[str, Any] | None = None) -> TritonExport:
    """Writes the model repository for ``bundle`` (``NAME.engine`` or its ``.engine.json``, or a
    read ``Bundle``) into ``out``; see the module docstring. ValueError (or BundleError) for a
    bundle Triton cannot serve this way, with the fix."""
    opts = ExportOptions.of(options)
    b = bundle if isinstance(bundle, Bundle) else Bundle.read(bundle)
    names = ModelNames(opts.name or _default_name(b))
    warnings = _check(b, opts)
    kind = opts.kind or ("gpu" if opts.platform == "tensorrt" else "cpu")
    classes = b.output.classes
    k = opts.k if opts.k is not None else min(5, classes)
    if not 1 <= k <= classes:
        raise ValueError(f"k must be in [1, {classes}] (the model's labels); got {k}")
    serving = Serving(kind, opts.instances, opts.max_queue_delay_us, k, __version__)
    repo = Path(out)
    models = [names.compute, names.preprocess, names.postprocess, names.pipeline]
    models += [names.engine] if opts.engine_model else []
    _prepare(repo, models, opts.overwrite)
    _write_compute(repo, names, b, opts.platform, serving)
    _write_python(repo / names.preprocess, preprocess_config(names, b, serving), "Preprocess", b)
    _write_python(repo / names.postprocess, postprocess_config(names, b, serving), "Postprocess",
                  b)
    _write_config(repo / names.pipeline, pipeline_config(names, b, serving))
    (repo / names.pipeline / "1").mkdir(exist_ok=True)  # an ensemble's version folder is empty
    if opts.engine_model:
        _write_python(repo / names.engine, engine_config(names, b, serving), "Engine", b,
                      with_bundle=True)
    result = TritonExport(repo, names, opts.platform, kind, tuple(models), repo / "README.md",
                          tuple(warnings))
    result.readme.write_text(readme_text(result, b, opts))
    for w in warnings:
        log.warning("%s", w)
    return result


def _default_name(bundle: Bundle) -> str:
    name = re.sub(r"[^A-Za-z0-9_-]+", "_", bundle.preset.name).strip("_-")
    return name or "model"


def _check(bundle: Bundle, opts: ExportOptions) -> list[str]:
    """Refusals (ValueError) and warnings for serving this bundle on ``opts.platform``."""
    warnings = []
    trt = bundle.tensorrt
    if trt.flavour == "tensorrt_rtx" and opts.platform == "tensorrt":
        why = (f"{bundle.path} was built with TensorRT-RTX {trt.version}: Triton's TensorRT "
               "backend runs plans of full TensorRT only, so model.plan will not load in any "
               "Triton release")
        if not opts.allow_tensorrt_rtx:
            raise ValueError(f"{why}; rebuild it with full TensorRT (`medtrt build ... "
                             "--trt tensorrt`, with the TensorRT of your Triton release), or "
                             "export --platform onnxruntime|python (or --allow-tensorrt-rtx to "
                             "write it anyway)")
        warnings.append(why)
    profile = bundle.input.profile
    if profile.min[0] > 1 and opts.platform != "python":
        raise ValueError(f"{bundle.path}: the engine's profile starts at batch {profile.min[0]} "
                         f"but Triton's dynamic batcher sends any batch from 1 to "
                         f"{profile.max[0]}; rebuild with `--batch 1,{profile.opt[0]},"
                         f"{profile.max[0]}`, or export --platform python (which pads)")
    if opts.platform != "tensorrt":
        bundle.require_precision_onnx(f"--platform {opts.platform} serves it")
    if opts.engine_model:
        bundle.require_precision_onnx("NAME_engine runs it on CPU instances")
    return warnings


def _prepare(repo: Path, models: list[str], overwrite: bool) -> None:
    there = [m for m in models if (repo / m).exists()]
    if there and not overwrite:
        raise ValueError(f"{repo} already has model folder(s) {there}; pass overwrite=True "
                         "(--overwrite) to replace them, or another --name")
    for m in there:
        shutil.rmtree(repo / m)
    repo.mkdir(parents=True, exist_ok=True)


def _write_config(folder: Path, config: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.pbtxt").write_text(to_pbtxt(config))


def _write_compute(repo: Path, names: ModelNames, bundle: Bundle, platform: str,
                   serving: Serving) -> None:
    folder = repo / names.compute
    config = compute_config(names, bundle, platform, serving)
    if platform == "python":
        _write_python(folder, config, "Compute", bundle, with_bundle=True)
    else:
        _write_config(folder, config)
        (folder / "1").mkdir()
        if platform == "tensorrt":
            shutil.copyfile(bundle.engine_path, folder / "1" / "model.plan")
        else:
            shutil.copyfile(bundle.precision_onnx_path, folder / "1" / "model.onnx")
    (folder / "labels.txt").write_text("".join(f"{label}\n" for label in bundle.preset.labels))


def _write_python(folder: Path, config: dict[str, Any], model: str, bundle: Bundle, *,
                  with_bundle: bool = False) -> None:
    """A Python-backend model: config, ``1/model.py`` (one import of ``medtrt.triton.backend``),
    the preset, and the bundle's files when it runs the network."""
    _write_config(folder, config)
    version = folder / "1"
    version.mkdir()
    source = bundle.path.name if bundle.path else "a bundle"
    (version / "model.py").write_text(
        f"# Generated by `medtrt export-triton` (medtrt {__version__}) from {source}.\n"
        "# Triton's Python backend loads this file; the model is medtrt's, so medtrt must be\n"
        "# installed in the Python environment Triton's stub runs (see ../../README.md).\n"
        f"from medtrt.triton.backend import {model}Model as TritonPythonModel  # noqa: F401\n")
    (version / "preset.json").write_text(bundle.preset.to_json() + "\n")
    if with_bundle:
        for path in (bundle.engine_path, bundle.path, bundle.precision_onnx_path):
            shutil.copyfile(path, version / path.name)


