"""The Python-backend models of a generated repository (``medtrt.triton.export``). Each
generated ``1/model.py`` is one line, ``from medtrt.triton.backend import XModel as
TritonPythonModel``, so the code runs from the installed medtrt, inside Triton's stub process.

- ``PreprocessModel``: ``IMAGE`` (encoded JPEG/PNG/DICOM bytes, one per batch row) -> the
  network input: ``medtrt.data.decode_image``, then ``resize_normalize`` with the preset beside
  it (CUDA kernel on a GPU instance where torch sees the GPU, else the CPU twin).
- ``ComputeModel``: network input -> logits, by the stage medtrt's loader picks for the bundle
  beside it (TensorRT on a GPU instance that can run the engine, else its precision ONNX in
  ONNX Runtime on the CPU; the fallback is logged).
- ``PostprocessModel``: logits -> ``LABELS``, ``SCORES``, ``INDICES`` (top-k) and ``PROBS``,
  by ``topk`` with the preset's activation.
- ``EngineModel``: ``IMAGE`` -> the same results through ``medtrt.Engine`` on the bundle.

Requests of one ``execute`` call (the dynamic batcher's batch) are decoded one by one and run
together; a request whose image cannot be read gets an error response naming it, and the others
are answered. An unexpected failure answers every request of the call with an error; the model
(and the server) stays up.
"""

from __future__ import annotations

import importlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medtrt import __version__
from medtrt._lazy import require
from medtrt._native import cuda_ready
from medtrt.data.readers import decode_image
from medtrt.errors import ImageReadError
from medtrt.models.presets import Preset
from medtrt.ops.resize_normalize import resize_normalize, resize_normalize_mixed
from medtrt.ops.topk import topk
from medtrt.runtime.engine import Engine
from medtrt.runtime.loader import Loaded, load_stage
from medtrt.triton.configs import IMAGE

__all__ = ["ComputeModel", "EngineModel", "PostprocessModel", "PreprocessModel"]

log = logging.getLogger(__name__)

_NUMPY = {"TYPE_FP32": np.float32, "TYPE_FP16": np.float16}


class _TritonModel:
    """What every model does at load: the config, its version folder, its device (``"cpu"``
    or the GPU index of a ``KIND_GPU`` instance), its parameters; and the error handling."""

    def initialize(self, args: dict[str, str]) -> None:
        self.pb = importlib.import_module("triton_python_backend_utils")
        self.config = json.loads(args["model_config"])
        self.name = args["model_name"]
        self.folder = Path(args["model_repository"]) / str(args["model_version"])
        gpu = args.get("model_instance_kind") == "GPU"
        self.device: Any = int(args.get("model_instance_device_id") or 0) if gpu else "cpu"
        self.params = {k: v.get("string_value", "")
                       for k, v in self.config.get("parameters", {}).items()}
        exported = self.params.get("medtrt_version")
        if exported and exported != __version__:
            log.warning("%s was exported by medtrt %s; medtrt %s is serving it (export the "
                        "repository again with this medtrt if results differ)", self.name,
                        exported, __version__)
        self.setup()

    def setup(self) -> None:
        raise NotImplementedError

    def run(self, requests: list[Any]) -> list[Any]:
        raise NotImplementedError

    def execute(self, requests: list[Any]) -> list[Any]:
        try:
            return self.run(requests)
        except Exception as exc:  # noqa: BLE001 - one error response per request, stay up
            log.exception("%s: execute failed", self.name)
            return [self.error(f"{self.name}: {type(exc).__name__}: {exc}") for _ in requests]

    def finalize(self) -> None:
        pass

    # -- helpers ---------------------------------------------------------------------------------

    def error(self, message: str) -> Any:
        return self.pb.InferenceResponse(output_tensors=[], error=self.pb.TritonError(message))

    def inputs(self, requests: list[Any], name: str) -> list[np.ndarray]:
        return [self.pb.get_input_tensor_by_name(r, name).as_numpy() for r in requests]

    def preset(self) -> Preset:
        return Preset.from_dict(json.loads((self.folder / "preset.json").read_text()))

    def bundle_json(self) -> Path:
        found = sorted(self.folder.glob("*.engine.json"))
        if len(found) != 1:
            raise FileNotFoundError(f"{self.folder}: expected one NAME.engine.json beside "
                                    f"model.py; found {[p.name for p in found]} (export the "
                                    "repository again)")
        return found[0]

    def decode(self, requests: list[Any]) -> tuple[list[list[np.ndarray]], dict[int, str]]:
        """The images of each request (``IMAGE``, one encoded file per batch row), and the error
        of each request that has an unreadable one."""
        images: list[list[np.ndarray]] = []
        errors: dict[int, str] = {}
        for r, data in enumerate(self.inputs(requests, IMAGE)):
            try:
                images.append([_decode(x, i) for i, x in enumerate(data.reshape(-1))])
            except ImageReadError as exc:
                images.append([])
                errors[r] = str(exc)
        return images, errors

    def respond(self, parts: list[list[np.ndarray]], errors: dict[int, str],
                run: Callable[[list[np.ndarray]], dict[str, np.ndarray]]) -> list[Any]:
        """``run`` over the items of every good request at once, its outputs split back per
        request; where that raises ValueError, once per request, so the failure is the bad
        request's only."""
        good = [r for r in range(len(parts)) if r not in errors]
        outputs: dict[int, dict[str, np.ndarray]] = {}
        try:
            if good:
                merged = run([x for r in good for x in parts[r]])
                start = 0
                for r in good:
                    stop = start + len(parts[r])
                    outputs[r] = {k: v[start:stop] for k, v in merged.items()}
                    start = stop
        except ValueError:
            for r in good:
                try:
                    outputs[r] = run(parts[r])
                except ValueError as exc:
                    errors[r] = f"{self.name}: {exc}"
        return [self.error(errors[r]) if r in errors else
                self.pb.InferenceResponse(output_tensors=[self.tensor(k, v) for k, v in
                                                          outputs[r].items()])
                for r in range(len(parts))]

    def tensor(self, name: str, value: Any) -> Any:
        if isinstance(value, np.ndarray):
            return self.pb.Tensor(name, value)
        dlpack = require("torch").utils.dlpack  # a CUDA tensor: handed over in place
        return self.pb.Tensor.from_dlpack(name, dlpack.to_dlpack(value))


def _decode(data: Any, index: int) -> np.ndarray:
    image = decode_image(bytes(data), name=f"IMAGE[{index}]")
    if image.dtype.kind == "f" and not np.isfinite(image).all():
        raise ImageReadError(f"IMAGE[{index}]", "the decoded pixels contain NaN or Inf")
    return image


def _results(scores: np.ndarray, indices: np.ndarray, labels: Sequence[str],
             k: int) -> dict[str, np.ndarray]:
    """Top-k outputs from every class ranked (``topk`` with k = classes): labels (bytes),
    scores, indices, and the probabilities back in label order."""
    probs = np.empty_like(scores)
    np.put_along_axis(probs, indices.astype(np.int64), scores, axis=1)
    top = indices[:, :k]
    names = np.array([[labels[j].encode() for j in row] for row in top], dtype=object)
    return {"LABELS": names.reshape(top.shape), "SCORES": scores[:, :k].astype(np.float32),
            "INDICES": top.astype(np.int32), "PROBS": probs.astype(np.float32)}


class PreprocessModel(_TritonModel):
    """Encoded images -> the network input (see the module docstring)."""

    def setup(self) -> None:
        out = self.config["output"][0]
        self.output, self.dtype = out["name"], _NUMPY[out["data_type"]]
        self.kwargs = self.preset().preprocess_kwargs()
        self.cuda = None
        if self.device != "cpu":
            self.cuda = _cuda_device(self.device, self.name)

    def run(self, requests: list[Any]) -> list[Any]:
        parts, errors = self.decode(requests)
        return self.respond(parts, errors, lambda images: {self.output: self.prepare(images)})

    def prepare(self, images: list[np.ndarray]) -> Any:
        if self.cuda is None:
            return resize_normalize_mixed(images, dtype=self.dtype, **self.kwargs)
        torch = require("torch")
        groups: dict[np.dtype, list[int]] = {}
        for i, x in enumerate(images):
            groups.setdefault(x.dtype, []).append(i)
        out = None
        with torch.cuda.device(self.cuda):
            for idx in groups.values():  # one kernel launch per stored dtype
                y = resize_normalize([torch.from_numpy(images[i]).to(self.cuda) for i in idx],
                                     dtype=self.dtype, **self.kwargs)
                if out is None:
                    out = torch.empty((len(images), *y.shape[1:]), dtype=y.dtype,
                                      device=self.cuda)
                out[idx] = y
            torch.cuda.current_stream(self.cuda).synchronize()  # Triton reads it after return
        return out


class PostprocessModel(_TritonModel):
    """Logits -> labels, scores, indices and probabilities (see the module docstring)."""

    def setup(self) -> None:
        self.input = self.config["input"][0]["name"]
        self.preset_ = self.preset()
        self.k = int(self.params.get("k") or min(5, self.preset_.num_classes))

    def run(self, requests: list[Any]) -> list[Any]:
        parts = [list(x) for x in self.inputs(requests, self.input)]
        return self.respond(parts, {}, self.rank)

    def rank(self, rows: list[np.ndarray]) -> dict[str, np.ndarray]:
        logits = np.stack(rows)
        scores, indices = topk(logits, self.preset_.num_classes,
                               activation=self.preset_.activation)
        return _results(scores, indices, self.preset_.labels, self.k)


class ComputeModel(_TritonModel):
    """Network input -> logits by the bundle's stage (see the module docstring)."""

    def setup(self) -> None:
        backend = "onnxruntime" if self.device == "cpu" else "auto"
        loaded = load_stage(self.bundle_json(), backend, self.device)
        if loaded.fallback:
            log.warning("%s: %s", self.name, loaded.fallback)
        self.runner = StageRunner(loaded)
        self.input = self.config["input"][0]["name"]
        self.output = self.config["output"][0]
        self.out_dtype = _NUMPY[self.output["data_type"]]

    def run(self, requests: list[Any]) -> list[Any]:
        parts = [list(x) for x in self.inputs(requests, self.input)]
        return self.respond(parts, {}, lambda rows: {
            self.output["name"]: self.runner(np.stack(rows)).astype(self.out_dtype)})

    def finalize(self) -> None:
        self.runner.close()


class EngineModel(_TritonModel):
    """Encoded images -> results through ``medtrt.Engine`` (see the module docstring)."""

    def setup(self) -> None:
        backend = "onnxruntime" if self.device == "cpu" else "auto"
        self.engine = Engine(self.bundle_json(), device=self.device, backend=backend)
        if self.engine.fallback:
            log.warning("%s: %s", self.name, self.engine.fallback)
        self.k = int(self.params.get("k") or min(5, self.engine.preset.num_classes))

    def run(self, requests: list[Any]) -> list[Any]:
        parts, errors = self.decode(requests)
        return self.respond(parts, errors, self.classify)

    def classify(self, images: list[np.ndarray]) -> dict[str, np.ndarray]:
        p = self.engine.preset
        r = self.engine.infer(images, k=p.num_classes, return_probs=True)
        ranked = np.take_along_axis(r.probs, r.indices.astype(np.int64), axis=1)
        return _results(ranked, r.indices, p.labels, self.k)

    def finalize(self) -> None:
        self.engine.close()


def _cuda_device(index: int, name: str) -> str | None:
    """``cuda:N`` where the CUDA kernels and torch can run on GPU ``index``; else None, the
    reason logged (pre-processing then runs on the CPU)."""
    ok, why = cuda_ready()
    if ok:
        try:
            torch = require("torch")
            if torch.cuda.is_available() and index < torch.cuda.device_count():
                return f"cuda:{index}"
            why = f"torch sees no GPU {index}"
        except ImportError as exc:
            why = str(exc)
    log.warning("%s: pre-processing on the CPU, not GPU %s: %s", name, index, why)
    return None


@dataclass(frozen=True)
class _View:
    """One call's batch for a stage (a ``medtrt.runtime.stages.StageView``)."""

    slot: int
    batch: int
    stream: int
    input: int
    logits: int


class StageRunner:
    """A compute stage called on whole arrays (what ``ComputeModel`` runs): NumPy buffers for a
    CPU stage, device tensors on a CUDA stream of its own for a GPU one. Batches above the
    profile maximum run in parts; below its minimum they are padded (as ``Engine.infer``)."""

    def __init__(self, loaded: Loaded) -> None:
        self.stage = loaded.stage
        p = loaded.preset
        self.input_shape, self.classes = (p.in_channels, *p.image_size), p.num_classes
        self.min_batch, self.max_batch = loaded.min_batch, loaded.profile_max
        self._host: dict[int, np.ndarray] = {}
        self._stream: Any = None
        self.stage.bind(self)

    def host_input(self, view: _View) -> np.ndarray:
        return self._host[view.input][:view.batch]

    def host_logits(self, view: _View) -> np.ndarray:
        return self._host[view.logits][:view.batch]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        step = self.max_batch or len(x)
        return np.concatenate([self._part(x[i:i + step]) for i in range(0, len(x), step)])

    def _part(self, x: np.ndarray) -> np.ndarray:
        n = len(x)
        if n < self.min_batch:
            x = np.concatenate([x, np.repeat(x[-1:], self.min_batch - n, axis=0)])
        if self.stage.device == "cpu":
            xin = np.ascontiguousarray(x, dtype=self.stage.input_dtype)
            out = np.empty((len(x), self.classes), self.stage.logits_dtype)
            self._host = {xin.ctypes.data: xin, out.ctypes.data: out}
            self.stage(_View(0, len(x), 0, xin.ctypes.data, out.ctypes.data))
            return out[:n].astype(np.float32)
        torch = require("torch")
        if self._stream is None:  # one stream of its own, made once
            self._stream = torch.cuda.Stream(device=self.stage.device)
        stream = self._stream
        with torch.cuda.stream(stream):
            xin = torch.from_numpy(np.ascontiguousarray(x)).to(
                self.stage.device, getattr(torch, self.stage.input_dtype))
            out = torch.empty((len(x), self.classes), device=self.stage.device,
                              dtype=getattr(torch, self.stage.logits_dtype))
        self.stage(_View(0, len(x), stream.cuda_stream, xin.data_ptr(), out.data_ptr()))
        stream.synchronize()
        return out[:n].float().cpu().numpy()

    def close(self) -> None:
        self.stage.close()
