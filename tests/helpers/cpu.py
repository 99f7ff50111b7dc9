"""The CPU the tests run on, for the pytest header and for records of CPU-dependent results."""

from __future__ import annotations

import os
from pathlib import Path


def cpu_summary() -> str:
    """The CPU's model name and the vector ISAs that decide kernel choice (for reports)."""
    model, flags = "unknown CPU", set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model == "unknown CPU":
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    isa = [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile")
           if f in flags]
    return f"{model} ({', '.join(isa) or 'no AVX2'}; {os.cpu_count()} cores)"
