"""Protobuf text format for Triton's ``config.pbtxt``, written from plain Python values.

A config is a dict: field name -> value. Strings are quoted, numbers and booleans bare, an
``Enum`` (``Enum("TYPE_FP32")``) is written bare, a dict is a nested message, a list of dicts is
a repeated message (one block per item, as ``text_format.MessageToString`` writes it; map fields
such as ``parameters`` and ``input_map`` are lists of ``{"key": ..., "value": ...}``), and a list
of scalars is ``name: [ a, b ]``. None values and empty lists are left out. The tests parse every
file written with Triton's own schema (``tritonclient.grpc.model_config_pb2``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["Enum", "to_pbtxt"]


@dataclass(frozen=True)
class Enum:
    """An enum value (``TYPE_FP32``, ``KIND_GPU``): written without quotes."""

    name: str

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ValueError(f"an enum value is an identifier; got {self.name!r}")


def to_pbtxt(message: dict[str, Any]) -> str:
    """``message`` in protobuf text format, two-space indented, ending in a newline."""
    return "\n".join(_message_lines(message, 0)) + "\n"


def _message_lines(message: dict[str, Any], depth: int) -> list[str]:
    pad = "  " * depth
    lines: list[str] = []
    for key, value in message.items():
        if value is None or (isinstance(value, list) and not value):
            continue
        if isinstance(value, dict):
            lines += [f"{pad}{key} {{", *_message_lines(value, depth + 1), f"{pad}}}"]
        elif isinstance(value, list) and all(isinstance(v, dict) for v in value):
            for item in value:
                lines += [f"{pad}{key} {{", *_message_lines(item, depth + 1), f"{pad}}}"]
        elif isinstance(value, list):
            lines.append(f"{pad}{key}: [ {', '.join(_scalar(v) for v in value)} ]")
        else:
            lines.append(f"{pad}{key}: {_scalar(value)}")
    return lines


def _scalar(value: Any) -> str:
    if isinstance(value, Enum):
        return value.name
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        escaped = (value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
                   .replace("\r", "\\r").replace("\t", "\\t"))
        return f'"{escaped}"'
    raise TypeError(f"no protobuf text form for {type(value).__name__} {value!r}")
