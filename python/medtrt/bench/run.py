"""`medtrt bench`'s run: the backends made once, the interleaved timing windows, the report."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from medtrt.bench.backends import (Artifacts, Backend, BackendUnavailable, SeedDataLoader,
                                   find_artifacts, make_backend)
from medtrt.bench.config import BACKENDS, DEFAULT_BASELINE, BenchConfig
from medtrt.bench.report import write_report
from medtrt.bench.telemetry import Telemetry
from medtrt.data import list_images
from medtrt.data.synth import CLASSES, render
from medtrt.models.checkpoint import load_checkpoint
from medtrt.models.presets import Preset
from medtrt.ops import resize_normalize

__all__ = ["run_bench"]


def run_bench(model: str | os.PathLike[str], config: BenchConfig, out: str | os.PathLike[str], *,
              on_progress: Callable[[str, int, int], None] | None = None) -> dict[str, Any]:
    """Run the benchmark; write ``bench.json`` and PNGs under ``out``; return the report."""
    cfg = config
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    threads = cfg.threads or os.cpu_count() or 1
    art = find_artifacts(model)
    preset = Preset.from_dict(load_checkpoint(art.checkpoint)["preset"])
    baselines = {mode: cfg.baseline or DEFAULT_BASELINE[mode] for mode in cfg.modes}
    backends, skipped = _make_backends(cfg, art, threads, baselines)
    batches = sorted(set(cfg.batches))
    if ("seed-dataloader", "files") in backends and SeedDataLoader.BATCH not in batches:
        batches = sorted(set(batches) | {SeedDataLoader.BATCH})
    if cfg.threads:
        import importlib.util

        if importlib.util.find_spec("torch"):
            import torch

            torch.set_num_threads(cfg.threads)  # torch CPU backends (ORT/decode get it directly)
    choices = {name if len(cfg.modes) == 1 else f"{name} ({mode})": be.choice.to_json()
               for (name, mode), be in backends.items() if be.choice is not None}
    try:
        windows, trace, nvml = _measure(cfg, backends, batches, preset, on_progress)
    finally:
        for be in backends.values():
            be.close()
    return write_report(cfg, art, preset, baselines, threads, skipped, windows, trace, nvml, out,
                        choices)


def _make_backends(cfg: BenchConfig, art: Artifacts, threads: int, baselines: dict[str, str]
                   ) -> tuple[dict[tuple[str, str], Backend], dict[str, str]]:
    """Every (backend, mode) that can run here, and why each other one cannot ("skipped"; keyed
    "NAME (MODE)" when several modes run). A baseline that cannot run stops the run."""
    multi = len(cfg.modes) > 1
    backends: dict[tuple[str, str], Backend] = {}
    skipped: dict[str, str] = {}
    try:
        for mode in cfg.modes:
            names = list(cfg.backends or BACKENDS)
            if baselines[mode] not in names:
                names.insert(0, baselines[mode])
            for name in names:
                try:
                    backends[(name, mode)] = make_backend(name, mode, art, threads)
                except BackendUnavailable as exc:
                    skipped[f"{name} ({mode})" if multi else name] = exc.reason
            if (baselines[mode], mode) not in backends:
                why = skipped[f"{baselines[mode]} ({mode})" if multi else baselines[mode]]
                raise ValueError(f"baseline {baselines[mode]} cannot run in {mode} mode: {why}")
    except BaseException:
        for be in backends.values():
            be.close()
        raise
    return backends, skipped


def _measure(cfg: BenchConfig, backends: dict[tuple[str, str], Backend], batches: list[int],
             preset: Any, on_progress: Callable[[str, int, int], None] | None) -> tuple[Any, ...]:
    """The interleaved timing loop: {(backend, mode, batch): [window, ...]}, the telemetry trace."""
    windows: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    runs = [(n, b) for b in batches for n, _ in backends
            if n != "seed-dataloader" or b == SeedDataLoader.BATCH]
    total = cfg.repeats * len(runs)
    done = 0
    with tempfile.TemporaryDirectory() as tmpdir, Telemetry(cfg.telemetry_hz) as tel:
        inputs = {mode: _inputs(mode, preset, max(batches), cfg.seed, cfg.data, Path(tmpdir),
                                cfg.file_format)
                  for mode in cfg.modes}
        for rep in range(cfg.repeats):
            for batch in batches:
                for (name, mode), be in backends.items():
                    if name == "seed-dataloader" and batch != SeedDataLoader.BATCH:
                        continue  # the seed path runs at its own batch size only
                    # files mode: every call is one pass over all files in batches of `batch`
                    data = inputs[mode]
                    per_call = len(data) if mode == "files" else batch
                    x = be.prepare(batch, data if mode == "files" else data[:batch])
                    windows.setdefault((name, mode, batch), []).append(
                        _window(be, x, cfg.warmup if rep == 0 else 1, cfg.duration, per_call, tel))
                    done += 1
                    if on_progress:
                        where = f" {mode}" if len(cfg.modes) > 1 else ""
                        on_progress(f"{name}{where} batch {batch} (repeat {rep + 1}/{cfg.repeats})",
                                    done, total)
        trace = tel.samples
        nvml = tel.nvml_status
    return windows, trace, nvml


def _window(be: Backend, x: Any, warmup: int, duration: float, per_call: int,
            tel: Telemetry) -> dict[str, Any]:
    """One timed window: ``warmup`` calls, then calls (each synced) for ``duration`` seconds and
    at least three."""
    for _ in range(warmup):
        be.call(x)
    be.sync()
    lat: list[float] = []
    stages: list[dict[str, float]] = []
    t_start = tel.now()
    w0 = time.perf_counter()
    while True:
        c0 = time.perf_counter()
        be.call(x)
        be.sync()
        lat.append(time.perf_counter() - c0)
        if be.stage_times:
            stages.append(dict(be.stage_times))
        if time.perf_counter() - w0 >= duration and len(lat) >= 3:
            break
    wall = time.perf_counter() - w0
    return {"images_per_s": per_call * len(lat) / wall, "latency_s": lat, "stages": stages,
            "telemetry": tel.window(t_start, tel.now()), "calls": len(lat),
            "images_per_call": per_call, "wall_s": wall}


def _inputs(mode: str, preset: Any, n: int, seed: int, data: str | None, tmp: Path,
            file_format: str = "jpeg") -> Any:
    """The largest batch's inputs; smaller batches take a prefix."""
    rng = np.random.default_rng(seed)
    size = max(preset.image_size)
    if mode == "files":
        if data:
            paths = list_images(data)
            if not paths:
                raise ValueError(f"--data {data} holds no images")
            return [paths[i % len(paths)] for i in range(n)]
        from PIL import Image

        paths = []
        for i in range(min(n, 256)):  # distinct files, reused cyclically for larger batches
            p = tmp / f"{i:04d}.{'jpg' if file_format == 'jpeg' else 'png'}"
            Image.fromarray(render(CLASSES[i % len(CLASSES)], rng, size)).save(p, quality=95)
            paths.append(p)
        return [paths[i % len(paths)] for i in range(n)]
    images = [render(CLASSES[i % len(CLASSES)], rng, size) for i in range(min(n, 256))]
    images = [images[i % len(images)] for i in range(n)]
    if mode == "pipeline":
        return images
    return resize_normalize(images, **preset.preprocess_kwargs())
