"""The CPU the tests run on, for the pytest header and for records of CPU-dependent results."""

from __future__ import annotations

from medtrt.cpu import cpu_info


def cpu_summary() -> str:
    """The CPU's model name, the vector ISAs that decide kernel choice and the cores."""
    return cpu_info().summary()
