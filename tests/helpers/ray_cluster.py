"""Processes of a Ray cluster seen from outside (Linux /proc): the engine actors of
``medtrt.ray`` by their process title, and what is left of a session after its driver died."""

from __future__ import annotations

import time
from pathlib import Path

# Ray titles an actor's process "ray::<class>"; Ray Data's map actors are MapWorker(<op>).
PREDICTOR_TITLE = b"ray::MapWorker(MapBatches(_Predictor))"


def _cmdline(pid: int) -> bytes:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes()
    except OSError:  # gone
        return b""


def _pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def predictor_pids() -> list[int]:
    """The processes of medtrt.ray's engine actors, on this machine."""
    return [pid for pid in _pids() if _cmdline(pid).startswith(PREDICTOR_TITLE)]


def session_id(pid: int) -> int | None:
    try:
        stat = (Path("/proc") / str(pid) / "stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[3])  # fields after "(comm)": state ppid pgrp sid


def in_session(sid: int) -> dict[int, str]:
    """pid -> command of the live processes of session ``sid``."""
    out = {}
    for pid in _pids():
        if session_id(pid) == sid:
            text = _cmdline(pid).replace(b"\0", b" ").decode(errors="replace").strip()
            if text:
                out[pid] = text
    return out


def wait_until(condition, timeout: float, period: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(period)
    return condition()
