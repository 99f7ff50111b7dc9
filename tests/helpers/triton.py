"""The Triton environment the live tests use, a stand-in for Triton's
``triton_python_backend_utils`` (what medtrt.triton.backend's models call inside the stub), and
a bundle built on this CPU with TensorRT-RTX.

The Triton environment is the interpreter $MEDTRT_TRITON_PYTHON, else REPO/.venv-triton/bin/python:
nvidia-pytriton (the server binary with its Python backend), tritonclient, onnxruntime and
medtrt, with numpy < 2 (pytriton's pin), so not medtrt's own .venv. `make test` creates it and
names it, so a missing one fails there instead of skipping.
"""

from __future__ import annotations

import os
import subprocess
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from helpers.venvs import side_python

REPO = Path(__file__).resolve().parents[2]
MAKE_VENV = ("`make .venv-triton/.installed` (what `make test` does), or set "
             "MEDTRT_TRITON_PYTHON to an interpreter with nvidia-pytriton, tritonclient[http,grpc],"
             " onnxruntime and medtrt")


def triton_python() -> tuple[Path | None, str]:
    """(interpreter, why not): the Triton environment's interpreter, or None."""
    return side_python("MEDTRT_TRITON_PYTHON", ".venv-triton", "no Triton environment (the server "
                       "binary comes in nvidia-pytriton); " + MAKE_VENV)


def run_in(python: Path, *argv: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """``python argv...`` in the Triton environment, without this process's PYTHONPATH (which
    would put medtrt's .venv packages, numpy 2 included, in front of its own)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    return subprocess.run([str(python), *argv], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=REPO)


# -- a stand-in for triton_python_backend_utils --------------------------------------------------


class FakeTensor:
    def __init__(self, name: str, value: Any) -> None:
        self._name, self.value = name, value

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self.value

    @classmethod
    def from_dlpack(cls, name: str, capsule: Any) -> FakeTensor:  # pragma: no cover - GPU only
        raise AssertionError("the CPU models never hand over CUDA tensors")


@dataclass
class FakeRequest:
    inputs: dict[str, np.ndarray]


@dataclass
class FakeResponse:
    output_tensors: list[FakeTensor] = field(default_factory=list)
    error: Any = None

    def outputs(self) -> dict[str, np.ndarray]:
        return {t.name(): t.as_numpy() for t in self.output_tensors}


class FakeError:
    def __init__(self, message: str) -> None:
        self.text = message

    def message(self) -> str:
        return self.text


def fake_pb_utils() -> types.ModuleType:
    """A module with what medtrt.triton.backend uses of ``triton_python_backend_utils``."""
    m = types.ModuleType("triton_python_backend_utils")
    m.Tensor = FakeTensor
    m.InferenceResponse = FakeResponse
    m.TritonError = FakeError
    m.get_input_tensor_by_name = lambda r, name: FakeTensor(name, r.inputs[name])
    return m


def model_args(folder: Path, kind: str = "CPU") -> dict[str, str]:
    """The ``initialize`` arguments Triton's Python backend gives the model in ``folder``."""
    return {"model_config": _config_json(folder / "config.pbtxt"), "model_name": folder.name,
            "model_repository": str(folder), "model_version": "1",
            "model_instance_kind": kind, "model_instance_device_id": "0",
            "model_instance_name": f"{folder.name}_0"}


def _config_json(path: Path) -> str:
    """The JSON form Triton hands a model of its config (the parts the models read), from the
    generated text: input/output names and data types, parameters."""
    import json
    import re

    text = path.read_text()

    def blocks(kind: str) -> list[dict[str, str]]:
        return [dict(re.findall(r'^\s*(name|data_type): "?([A-Za-z0-9_]+)"?$', b, re.M))
                for b in re.findall(rf"^{kind} {{\n(.*?)^}}", text, re.S | re.M)]

    params = dict(re.findall(r'key: "([^"]+)"\n\s+value {\n\s+string_value: "([^"]*)"', text))
    return json.dumps({"input": blocks("input"), "output": blocks("output"),
                       "parameters": {k: {"string_value": v} for k, v in params.items()}})


def image_request(files: list[bytes]) -> FakeRequest:
    data = np.empty((len(files), 1), dtype=object)
    for i, f in enumerate(files):
        data[i, 0] = f
    return FakeRequest({"IMAGE": data})


def with_fake_pb_utils(monkeypatch: Any) -> types.ModuleType:
    module = fake_pb_utils()
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", module)
    return module
