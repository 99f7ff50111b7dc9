"""The machine a benchmark ran on (``machine_info``) and what it did meanwhile (``Telemetry``:
CPU and memory through psutil, GPU utilisation, memory, power and temperature through NVML)."""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

import medtrt
from medtrt.cpu import cpu_info

__all__ = ["Telemetry", "machine_info"]


def machine_info(cwd: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Date, commit, host, CPU, GPU/driver and library versions for a benchmark record. The
    commit is $MEDTRT_COMMIT or that of the git checkout at ``cwd`` (default: the current
    directory, where `medtrt bench` is run from)."""
    def run(cmd: list[str]) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=30,
                                  cwd=cwd).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    cpu = cpu_info()
    versions = {"python": platform.python_version(), "numpy": np.__version__,
                "medtrt": medtrt.__version__}
    for mod in ("torch", "onnxruntime", "tensorrt", "tensorrt_rtx", "monai"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:
            pass
    gpu = run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"])
    return {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "commit": os.environ.get("MEDTRT_COMMIT") or run(["git", "rev-parse", "HEAD"]),
            "dirty": bool(run(["git", "status", "--porcelain", "--untracked-files=no"])),
            "host": platform.node(), "cpu": cpu.model, "cores": cpu.cores, "isa": list(cpu.flags),
            "gpu": gpu.split(",")[0].strip() if gpu else None,
            "driver": gpu.split(",")[1].strip() if "," in gpu else None,
            "versions": versions, "build": medtrt.build_info()}


class Telemetry:
    """Background sampler: psutil CPU % and RSS; NVML GPU util, memory, power, temperature."""

    def __init__(self, hz: float) -> None:
        self.period = 1.0 / hz
        self.samples: list[dict[str, float]] = []
        self.nvml_status = "not tried"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._handle = None
        self._nvml = None
        try:
            import psutil

            self._proc = psutil.Process()
            psutil.cpu_percent(None)
            self._psutil = psutil
        except ImportError:
            self._psutil = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            self._nvml = pynvml
            self.nvml_status = "ok"
        except Exception as exc:  # no driver / library / GPU: GPU telemetry is absent, said so
            self.nvml_status = f"unavailable: {type(exc).__name__}: {exc}".strip()

    @property
    def has_gpu(self) -> bool:
        return self._nvml is not None

    def __enter__(self) -> Telemetry:
        self._t0 = time.perf_counter()
        self._thread = threading.Thread(target=self._loop, name="medtrt-telemetry", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        if self._nvml:
            try:
                self._nvml.nvmlShutdown()
            except Exception:
                pass

    def now(self) -> float:
        return time.perf_counter() - self._t0

    def _loop(self) -> None:
        while not self._stop.wait(self.period):
            s: dict[str, float] = {"t": self.now()}
            if self._psutil:
                s["cpu_percent"] = self._psutil.cpu_percent(None)
                s["rss_bytes"] = float(self._proc.memory_info().rss)
            if self._nvml:
                n, h = self._nvml, self._handle
                try:
                    s["gpu_util"] = float(n.nvmlDeviceGetUtilizationRates(h).gpu)
                    s["gpu_mem_bytes"] = float(n.nvmlDeviceGetMemoryInfo(h).used)
                    s["power_w"] = n.nvmlDeviceGetPowerUsage(h) / 1000.0
                    s["temp_c"] = float(n.nvmlDeviceGetTemperature(h, n.NVML_TEMPERATURE_GPU))
                except Exception:
                    pass
            self.samples.append(s)

    def window(self, t0: float, t1: float) -> dict[str, float | None]:
        rows = [s for s in self.samples if t0 <= s["t"] <= t1]

        def mean(k: str) -> float | None:
            v = [r[k] for r in rows if k in r]
            return float(np.mean(v)) if v else None

        def peak(k: str) -> float | None:
            v = [r[k] for r in rows if k in r]
            return float(np.max(v)) if v else None

        power = mean("power_w")
        # Mean sampled power x the window's length: the samples cover the window evenly, and
        # integrating between the first and last sample would drop its edges.
        energy = power * (t1 - t0) if power is not None else None
        return {"samples": len(rows), "cpu_percent": mean("cpu_percent"),
                "peak_rss_bytes": peak("rss_bytes"), "gpu_util": mean("gpu_util"),
                "peak_gpu_mem_bytes": peak("gpu_mem_bytes"), "power_w": mean("power_w"),
                "temp_c": peak("temp_c"), "energy_j": energy}
