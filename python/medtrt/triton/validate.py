"""A model repository checked with Triton's own config schema (``tritonclient``'s
``model_config_pb2``, ``pip install 'medtrt[triton]'``): every ``config.pbtxt`` parsed, then
checked for what the schema alone does not catch: the name is the folder's, the version folder
holds the file the platform loads, a label file has one line per class, and each ensemble step
names a model of the repository and only tensors that model has, fed by the ensemble's inputs
or an earlier step with the same dtype and dims, producing every ensemble output, within each
step's max_batch_size.

``python -m medtrt.triton.validate REPO`` prints the report as JSON (exit 1 when it lists
problems).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from medtrt._lazy import require

__all__ = ["check_repository"]

_FILES = {"tensorrt_plan": "model.plan", "onnxruntime_onnx": "model.onnx", "python": "model.py"}


def _parse(path: Path) -> Any:
    text_format = require("google.protobuf.text_format")
    schema = require("tritonclient.grpc.model_config_pb2")
    return text_format.Parse(path.read_text(), schema.ModelConfig())


def check_repository(repo: str | Path) -> dict[str, Any]:
    """``{"models": {name: summary}, "problems": [...]}`` for every model folder of ``repo``
    (a folder with a config.pbtxt); a config the schema refuses is a problem naming it."""
    repo = Path(repo)
    configs: dict[str, Any] = {}
    problems: list[str] = []
    for path in sorted(repo.glob("*/config.pbtxt")):
        try:
            configs[path.parent.name] = _parse(path)
        except Exception as exc:  # noqa: BLE001 - text_format.ParseError and friends
            problems.append(f"{path}: Triton's schema refuses it: {exc}")
    if not configs and not problems:
        problems.append(f"{repo} has no model folder (NAME/config.pbtxt)")
    for folder, c in configs.items():
        problems += _model_problems(repo / folder, c)
    for folder, c in configs.items():
        if c.platform == "ensemble":
            problems += _ensemble_problems(folder, c, configs)
    return {"models": {f: _summary(c) for f, c in configs.items()}, "problems": problems}


def _summary(c: Any) -> dict[str, Any]:
    def tensors(ts: Any) -> list[dict[str, Any]]:
        return [{"name": t.name, "data_type": _type_name(t.data_type), "dims": list(t.dims),
                 **({"label_filename": t.label_filename}
                    if getattr(t, "label_filename", "") else {})}
                for t in ts]

    out = {"platform": c.platform, "backend": c.backend, "max_batch_size": c.max_batch_size,
           "inputs": tensors(c.input), "outputs": tensors(c.output),
           "instance_group": [{"kind": _kind_name(g.kind), "count": g.count}
                              for g in c.instance_group],
           "parameters": {k: v.string_value for k, v in c.parameters.items()}}
    if c.HasField("dynamic_batching"):
        out["dynamic_batching"] = {
            "preferred_batch_size": list(c.dynamic_batching.preferred_batch_size),
            "max_queue_delay_microseconds": c.dynamic_batching.max_queue_delay_microseconds}
    if c.platform == "ensemble":
        out["steps"] = [{"model_name": s.model_name, "input_map": dict(s.input_map),
                         "output_map": dict(s.output_map)}
                        for s in c.ensemble_scheduling.step]
    return out


def _type_name(value: int) -> str:
    return require("tritonclient.grpc.model_config_pb2").DataType.Name(value)


def _kind_name(value: int) -> str:
    return require("tritonclient.grpc.model_config_pb2").ModelInstanceGroup.Kind.Name(value)


def _model_problems(folder: Path, c: Any) -> list[str]:
    where = f"{folder.name}/config.pbtxt"
    out = []
    if c.name != folder.name:
        out.append(f"{where}: name {c.name!r} is not its folder's ({folder.name!r})")
    if c.max_batch_size < 1:
        out.append(f"{where}: max_batch_size {c.max_batch_size}; expected >= 1 (batched)")
    kind = c.platform or c.backend
    if kind != "ensemble":
        wanted = _FILES.get(kind)
        if wanted is None:
            out.append(f"{where}: platform/backend {kind!r} is not one medtrt writes")
        elif not (folder / "1" / wanted).is_file():
            out.append(f"{where}: {folder.name}/1/{wanted} is missing")
    elif not (folder / "1").is_dir():
        out.append(f"{where}: the ensemble's version folder {folder.name}/1 is missing")
    for t in [*c.input, *c.output]:
        if not t.dims or any(d < 1 for d in t.dims):
            out.append(f"{where}: tensor {t.name!r} has dims {list(t.dims)}; expected fixed "
                       "positive dims")
        if getattr(t, "label_filename", ""):
            labels = folder / t.label_filename
            lines = labels.read_text().splitlines() if labels.is_file() else None
            if lines is None or len(lines) != t.dims[-1]:
                out.append(f"{where}: {t.label_filename} has "
                           f"{'no file' if lines is None else f'{len(lines)} lines'}; "
                           f"output {t.name!r} has {t.dims[-1]} classes")
    return out


def _ensemble_problems(name: str, c: Any, configs: dict[str, Any]) -> list[str]:
    where = f"{name}/config.pbtxt"
    out: list[str] = []
    # ensemble tensor -> (data_type, dims) as produced so far
    known = {t.name: (t.data_type, list(t.dims)) for t in c.input}
    for i, step in enumerate(c.ensemble_scheduling.step):
        model = configs.get(step.model_name)
        if model is None:
            out.append(f"{where}: step {i} runs {step.model_name!r}, not in the repository")
            continue
        if model.max_batch_size < c.max_batch_size:
            out.append(f"{where}: max_batch_size {c.max_batch_size} exceeds step "
                       f"{step.model_name!r}'s {model.max_batch_size}")
        inputs = {t.name: (t.data_type, list(t.dims)) for t in model.input}
        outputs = {t.name: (t.data_type, list(t.dims)) for t in model.output}
        missing = sorted(set(inputs) - set(step.input_map))
        if missing:
            out.append(f"{where}: step {i} ({step.model_name}) feeds no tensor to its "
                       f"input(s) {missing}")
        for key, tensor in step.input_map.items():
            if key not in inputs:
                out.append(f"{where}: step {i} maps {key!r}, not an input of {step.model_name}")
            elif tensor not in known:
                out.append(f"{where}: step {i} reads {tensor!r}, which no earlier step or "
                           "ensemble input provides")
            elif known[tensor] != inputs[key]:
                out.append(f"{where}: step {i} feeds {tensor!r} {_shape(known[tensor])} to "
                           f"{step.model_name}.{key} {_shape(inputs[key])}")
        for key, tensor in step.output_map.items():
            if key not in outputs:
                out.append(f"{where}: step {i} maps {key!r}, not an output of "
                           f"{step.model_name}")
            else:
                known[tensor] = outputs[key]
    for t in c.output:
        if t.name not in known:
            out.append(f"{where}: ensemble output {t.name!r} is produced by no step")
        elif known[t.name] != (t.data_type, list(t.dims)):
            out.append(f"{where}: ensemble output {t.name!r} is declared "
                       f"{_shape((t.data_type, list(t.dims)))} but its step produces "
                       f"{_shape(known[t.name])}")
    return out


def _shape(spec: tuple[int, list[int]]) -> str:
    return f"{_type_name(spec[0])} {spec[1]}"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.stderr.write("usage: python -m medtrt.triton.validate REPO\n")
        return 2
    report = check_repository(args[0])
    sys.stdout.write(json.dumps(report, indent=1) + "\n")
    return 1 if report["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
