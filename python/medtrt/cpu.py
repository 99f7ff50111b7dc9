"""The CPU this process runs on: its model, core count and the instruction sets that decide
which kernels the CPU runtimes pick (``cpu_info``). One reading for every record that names a
CPU (bench JSON, the CPU backend probe's cache key, the tests' header) and for the choices that
depend on it (the CPU INT8 graph needs integer dot-product instructions: ``has_int8_dot``).

Linux reads ``/proc/cpuinfo``; elsewhere the model is ``platform.processor()`` and no flags are
known (so nothing that needs VNNI/AMX is assumed).
"""

from __future__ import annotations

import functools
import os
import platform
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CpuInfo", "ISA_FLAGS", "cpu_info", "has_int8_dot", "parse_cpuinfo"]

# /proc/cpuinfo flags reported, in this order: the vector ISAs and the integer dot-product
# (VNNI: avx512_vnni, avx_vnni) and matrix (AMX) extensions that INT8 kernels use.
ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni",
             "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")
_INT8_DOT = ("avx512_vnni", "avx_vnni", "amx_int8")


@dataclass(frozen=True)
class CpuInfo:
    model: str
    cores: int
    flags: tuple[str, ...]  # the ISA_FLAGS this CPU has

    @property
    def int8_dot(self) -> bool:
        """Integer dot-product instructions (VNNI or AMX-INT8) are there."""
        return any(f in self.flags for f in _INT8_DOT)

    def summary(self) -> str:
        return f"{self.model} ({', '.join(self.flags) or 'no AVX'}; {self.cores} cores)"

    def to_json(self) -> dict[str, object]:
        return {"model": self.model, "cores": self.cores, "isa": list(self.flags),
                "int8_dot": self.int8_dot}


def parse_cpuinfo(text: str) -> tuple[str, tuple[str, ...]]:
    """(model name, the ``ISA_FLAGS`` present) from ``/proc/cpuinfo`` text (its first
    processor: Linux lists the same flags for every core)."""
    model, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key == "flags" and not flags:
            flags = set(value.split())
    return model, tuple(f for f in ISA_FLAGS if f in flags)


@functools.lru_cache(maxsize=1)
def cpu_info() -> CpuInfo:
    """This machine's CPU (read once per process)."""
    cpuinfo = Path("/proc/cpuinfo")
    model, flags = parse_cpuinfo(cpuinfo.read_text()) if cpuinfo.exists() else ("", ())
    model = model or platform.processor() or "unknown CPU"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return CpuInfo(model, cores or 1, flags)


def has_int8_dot() -> bool:
    """This CPU has VNNI or AMX-INT8 (``cpu_info().int8_dot``)."""
    return cpu_info().int8_dot
