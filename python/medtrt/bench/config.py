"""`medtrt bench` settings: the modes, the backends and ``BenchConfig``."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BACKENDS", "CANDIDATE_VARIANTS", "CPU_GRAPHS", "CPU_RUNTIMES", "DEFAULT_BASELINE", "MODES", "NVJPEG", "BenchConfig"]

MODES = ("engine", "pipeline", "files")
BACKENDS = ("torch-cpu-fp32", "torch-cl-cpu-fp32", "torch-compile-cpu-fp32", "torch-cuda-fp32", "torch-cuda-fp16", "torch-compile-cuda-fp16",
            "ort-cpu-fp32", "ort-cpu-fp16", "ort-cpu-int8", "ov-cpu-fp32", "ov-cpu-fp16",
            "ov-cpu-int8", "ort-cpu-int8cpu", "ort-cpu-int8fp32", "ov-cpu-int8fp32",
            "auto-cpu-fp32", "auto-cpu-fp16", "auto-cpu-int8", "trt-fp16", "trt-int8",
            "torch-cuda-fp16+nvjpeg", "trt-fp16+nvjpeg", "trt-int8+nvjpeg",
            "torch-reference", "seed-dataloader")
# The CPU runtimes of medtrt.runtime.cpu_choice and the bench names' prefixes for them
# (ort-cpu-fp32 runs candidate "onnxruntime" of the FP32 graph, ov-cpu-int8 "openvino" of the
# INT8 one); auto-cpu-P loads the P bundle (else graph) with backend="auto" (the probe's
# choice). An INT8 bundle's CPU graphs (medtrt.runtime.int8_cpu) are int8cpu (the CPU INT8 graph)
# and int8fp32 (its FP32 twin): bench suffix <- cpu_choice candidate variant.
CPU_RUNTIMES = {"ort": "onnxruntime", "ov": "openvino"}
CPU_GRAPHS = {"int8cpu": "cpu-int8", "int8fp32": "fp32"}
CANDIDATE_VARIANTS = {"int8cpu": "int8cpu", "fp32": "int8fp32"}
NVJPEG = "+nvjpeg"  # files mode: the same backend with JPEGs decoded on the GPU
DEFAULT_BASELINE = {"engine": "torch-cpu-fp32", "pipeline": "torch-reference",
                    "files": "seed-dataloader"}


@dataclass(frozen=True)
class BenchConfig:
    mode: str = "engine"
    batches: tuple[int, ...] = (1, 8, 32, 128, 256)
    backends: tuple[str, ...] | None = None  # None: every backend that applies to the mode
    duration: float = 3.0  # seconds of timed calls per (backend, batch, repeat)
    repeats: int = 3
    warmup: int = 2  # calls before timing, per (backend, batch), first repeat
    baseline: str | None = None  # default per mode (DEFAULT_BASELINE)
    data: str | None = None  # files mode: an image folder; default: generated files
    file_format: str = "jpeg"  # generated files: jpeg (as MedNIST) or png
    threads: int = 0  # decode threads / DataLoader workers; 0: cpu count
    telemetry_hz: float = 10.0
    seed: int = 0

    @property
    def modes(self) -> tuple[str, ...]:
        return tuple(m.strip() for m in self.mode.split(","))

    def __post_init__(self) -> None:
        bad = [m for m in self.modes if m not in MODES]
        if bad or len(set(self.modes)) != len(self.modes):
            raise ValueError(f"--mode must be one or more of {MODES}, comma-separated, each once; "
                             f"got {self.mode!r}")
        if not self.batches or min(self.batches) < 1:
            raise ValueError(f"--batch needs positive sizes; got {self.batches}")
        unknown = [b for b in (*(self.backends or ()), *([self.baseline] if self.baseline else []))
                   if b not in BACKENDS]
        if unknown:
            raise ValueError(f"unknown backend(s) {unknown}; expected some of {list(BACKENDS)}")
        if self.file_format not in ("jpeg", "png"):
            raise ValueError(f"file format must be jpeg or png; got {self.file_format!r}")
        if self.duration <= 0 or self.repeats < 1 or self.warmup < 0:
            raise ValueError("--duration must be > 0, repeats >= 1, warmup >= 0")
