"""The ``config.pbtxt`` of each model of a generated repository, as dicts (``medtrt.triton.pbtxt``
writes them). Everything comes from the bundle: the engine's input name, dims (C, H, W; the batch
dimension is Triton's ``max_batch_size``) and dtype, the output's name, width and dtype, the
profile (``max_batch_size`` = its maximum batch, preferred batch sizes = its opt and max), the
labels (``label_filename``) and, for the Python-backend models, the preset they read beside
their ``model.py``.

Client-facing tensors of the image models (``NAME_pipeline``, ``NAME_engine``): ``IMAGE``
(TYPE_STRING, one encoded JPEG/PNG/DICOM file per batch row) in; ``LABELS`` (TYPE_STRING [k]),
``SCORES`` (FP32 [k]), ``INDICES`` (INT32 [k]), best first, and ``PROBS`` (FP32 [classes], in
label order) out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from medtrt.artifacts import Bundle
from medtrt.triton.pbtxt import Enum

__all__ = ["IMAGE", "OUTPUTS", "ModelNames", "compute_config", "engine_config",
           "pipeline_config", "postprocess_config", "preprocess_config"]

IMAGE = "IMAGE"
OUTPUTS = ("LABELS", "SCORES", "INDICES", "PROBS")
_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16"}
_PLATFORMS = {"tensorrt": "tensorrt_plan", "onnxruntime": "onnxruntime_onnx"}


@dataclass(frozen=True)
class ModelNames:
    """The models of one export: the network (``NAME``), its pre- and post-processing, the
    ensemble that chains the three, and the one Python model that runs ``medtrt.Engine``."""

    name: str

    @property
    def compute(self) -> str:
        return self.name

    @property
    def preprocess(self) -> str:
        return f"{self.name}_preprocess"

    @property
    def postprocess(self) -> str:
        return f"{self.name}_postprocess"

    @property
    def pipeline(self) -> str:
        return f"{self.name}_pipeline"

    @property
    def engine(self) -> str:
        return f"{self.name}_engine"


@dataclass(frozen=True)
class Serving:
    """How every model of the export is scheduled: instances per GPU (``gpu``) or in all
    (``cpu``), the dynamic batcher's queue delay, top-k, medtrt's version (checked by the
    Python models when they load)."""

    kind: str
    instances: int
    max_queue_delay_us: int
    k: int
    medtrt_version: str


def _dtype(name: str) -> Enum:
    if name not in _TYPES:
        raise ValueError(f"engine tensors of dtype {name!r}; Triton configs are written for "
                         f"{sorted(_TYPES)}")
    return Enum(_TYPES[name])


def _batching(bundle: Bundle, s: Serving) -> dict[str, Any]:
    profile = bundle.input.profile
    preferred = sorted({profile.opt[0], profile.max[0]})
    return {"max_batch_size": profile.max[0], "dynamic_batching": {
        "preferred_batch_size": preferred, "max_queue_delay_microseconds": s.max_queue_delay_us}}


def _instances(s: Serving) -> dict[str, Any]:
    kind = Enum("KIND_GPU" if s.kind == "gpu" else "KIND_CPU")
    return {"instance_group": [{"count": s.instances, "kind": kind}]}


def _parameters(s: Serving, **extra: Any) -> dict[str, Any]:
    values = {"medtrt_version": s.medtrt_version, **extra}
    return {"parameters": [{"key": k, "value": {"string_value": str(v)}}
                           for k, v in values.items()]}


def _network_input(bundle: Bundle) -> dict[str, Any]:
    return {"name": bundle.input.name, "data_type": _dtype(bundle.input.dtype),
            "dims": list(bundle.input.profile.opt[1:])}


def _network_output(bundle: Bundle, labels: bool = False) -> dict[str, Any]:
    out = {"name": bundle.output.name, "data_type": _dtype(bundle.output.dtype),
           "dims": [bundle.output.classes]}
    if labels:
        out["label_filename"] = "labels.txt"
    return out


def _image_input() -> list[dict[str, Any]]:
    return [{"name": IMAGE, "data_type": Enum("TYPE_STRING"), "dims": [1]}]


def _result_outputs(k: int, classes: int) -> list[dict[str, Any]]:
    return [{"name": "LABELS", "data_type": Enum("TYPE_STRING"), "dims": [k]},
            {"name": "SCORES", "data_type": Enum("TYPE_FP32"), "dims": [k]},
            {"name": "INDICES", "data_type": Enum("TYPE_INT32"), "dims": [k]},
            {"name": "PROBS", "data_type": Enum("TYPE_FP32"), "dims": [classes]}]


def compute_config(names: ModelNames, bundle: Bundle, platform: str,
                   s: Serving) -> dict[str, Any]:
    """The network: the TensorRT plan, the precision ONNX in ONNX Runtime, or (``python``) the
    bundle run by medtrt's stage loader (TensorRT on a GPU instance that can, else ONNX
    Runtime), tensors in and out as the engine has them."""
    head: dict[str, Any] = {"name": names.compute}
    if platform == "python":
        head["backend"] = "python"
    else:
        head["platform"] = _PLATFORMS[platform]
    return {**head, **_batching(bundle, s), "input": [_network_input(bundle)],
            "output": [_network_output(bundle, labels=True)], **_instances(s),
            **(_parameters(s) if platform == "python" else {})}


def preprocess_config(names: ModelNames, bundle: Bundle, s: Serving) -> dict[str, Any]:
    """Encoded image files -> the network input (decode, then medtrt's resize_normalize with the
    bundle's preset; on the GPU for a GPU instance where torch sees one)."""
    out = _network_input(bundle)
    return {"name": names.preprocess, "backend": "python", **_batching(bundle, s),
            "input": _image_input(), "output": [out], **_instances(s), **_parameters(s)}


def postprocess_config(names: ModelNames, bundle: Bundle, s: Serving) -> dict[str, Any]:
    """Logits -> labels, scores, indices (top-k) and probabilities (medtrt's topk with the
    preset's activation)."""
    return {"name": names.postprocess, "backend": "python", **_batching(bundle, s),
            "input": [_network_output(bundle)],
            "output": _result_outputs(s.k, bundle.output.classes), **_instances(s),
            **_parameters(s, k=s.k)}


def pipeline_config(names: ModelNames, bundle: Bundle, s: Serving) -> dict[str, Any]:
    """The ensemble: IMAGE -> preprocess -> network -> postprocess -> results."""
    net_in, net_out = bundle.input.name, bundle.output.name

    def step(model: str, inputs: dict[str, str], outputs: dict[str, str]) -> dict[str, Any]:
        return {"model_name": model, "model_version": -1,
                "input_map": [{"key": k, "value": v} for k, v in inputs.items()],
                "output_map": [{"key": k, "value": v} for k, v in outputs.items()]}

    steps = [step(names.preprocess, {IMAGE: IMAGE}, {net_in: "preprocessed"}),
             step(names.compute, {net_in: "preprocessed"}, {net_out: "logits"}),
             step(names.postprocess, {net_out: "logits"}, {o: o for o in OUTPUTS})]
    return {"name": names.pipeline, "platform": "ensemble",
            "max_batch_size": bundle.input.profile.max[0], "input": _image_input(),
            "output": _result_outputs(s.k, bundle.output.classes),
            "ensemble_scheduling": {"step": steps}}


def engine_config(names: ModelNames, bundle: Bundle, s: Serving) -> dict[str, Any]:
    """One Python model that runs ``medtrt.Engine`` on the bundle: decode, the compiled pipeline
    (resize_normalize -> network -> topk), the results; same tensors as the pipeline."""
    return {"name": names.engine, "backend": "python", **_batching(bundle, s),
            "input": _image_input(), "output": _result_outputs(s.k, bundle.output.classes),
            **_instances(s), **_parameters(s, k=s.k)}
