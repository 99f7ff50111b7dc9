"""`medtrt bench`: backends side by side on one model, with telemetry.

Modes (what one timed call covers):
    engine    pre-processed NCHW float32 inputs already where the backend computes (host for CPU
              backends, device for CUDA ones) -> logits: compute only, by the very stage the
              Engine runs for that file (``medtrt.runtime.loader``), called over the bench's own
              buffers.
    pipeline  host uint8 images -> top-k on the host, through medtrt.Engine (pinned
              double-buffered slots on a GPU; the kernels' CPU twins on a CPU). The
              ``torch-reference`` baseline does the same with NumPy pre-processing + eager torch.
    files     a folder's worth of image files (as many as the largest batch; generated ones are
              JPEG like MedNIST's) -> top-k, one call per pass over all of them in batches of the
              given size: decode in a thread pool overlapped with the pipeline
              (Engine.infer_many). The ``+nvjpeg`` backends decode JPEGs on the GPU instead
              (batched nvJPEG, Engine(decode="nvjpeg")) and the pipeline reads them there. The
              ``seed-dataloader`` baseline is the seed case study's CPU path: a PyTorch
              DataLoader (Pillow decode, one worker per core) feeding the eager model, batch 32.

Several modes in one run (``mode="engine,pipeline"``) interleave them too, and each backend
that ran in two modes gets the ratio between them at each batch size (``mode_ratios``:
pipeline / engine is the share of compute-only throughput the whole pipeline keeps; the goal
is >= 0.95 at batch 256 with the torch FP16 stage on a GPU).

Backends are interleaved: each repeat visits every batch size and every backend in turn, so
drift (thermal, other load) affects all alike; each (backend, batch) window runs warm-up calls
and then calls for ``duration`` seconds; figures are medians over repeats. A background thread
samples CPU utilisation and memory (psutil) and, where NVML works, GPU utilisation, memory,
power and temperature at ``telemetry_hz``; energy is the integral of power over a window.

Artifacts are found next to the checkpoint MODEL (the layout `make demo` and `medtrt build`
leave): ``<stem>.onnx`` (export) and ``<stem>.fp16|int8.onnx`` / ``.engine`` beside it or in
``engines/``. A backend whose artifact or hardware is missing is skipped with the reason.

Modules: ``config`` (BenchConfig, the backend names), ``backends`` (make_backend and the
backends), ``buffers`` (engine mode's buffers), ``run`` (run_bench and the timing loop),
``report`` (bench.json and the plots), ``telemetry`` (machine_info, Telemetry).
"""

from __future__ import annotations

from medtrt.bench.backends import (Artifacts, Backend, BackendUnavailable, StageCompute,
                                   find_artifacts, make_backend)
from medtrt.bench.config import BACKENDS, MODES, BenchConfig
from medtrt.bench.report import plot
from medtrt.bench.run import run_bench
from medtrt.bench.telemetry import Telemetry, machine_info

__all__ = ["BACKENDS", "MODES", "Artifacts", "Backend", "BackendUnavailable", "BenchConfig",
           "StageCompute", "Telemetry", "find_artifacts", "machine_info", "make_backend", "plot",
           "run_bench"]
