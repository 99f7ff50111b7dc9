"""The bench report: figures per (backend, mode, batch) from the timed windows, ratios to the
baselines and between modes, ``bench.json`` and the plots (matplotlib PNGs)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from medtrt._lazy import require
from medtrt.bench.backends import Artifacts, SeedDataLoader
from medtrt.bench.config import CANDIDATE_VARIANTS, CPU_RUNTIMES, MODES, BenchConfig
from medtrt.bench.telemetry import machine_info

__all__ = ["auto_check", "plot", "write_report"]


def _pct(v: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(v), q))


def write_report(cfg: BenchConfig, art: Artifacts, preset: Any, baselines: dict[str, str],
                 threads: int, skipped: dict[str, str],
                 windows: dict[tuple[str, str, int], list[dict[str, Any]]],
                 trace: list[dict[str, float]], nvml: str, out: Path,
                 choices: dict[str, Any] | None = None) -> dict[str, Any]:
    """The report of a run (the medtrt-bench/1 schema), written to ``out/bench.json`` with its
    plots beside it. ``choices``: how each auto-cpu-P backend's runtime was chosen
    (``BackendChoice.to_json()``), checked against this run's figures (``auto_check``)."""
    results = []
    order = {m: i for i, m in enumerate(cfg.modes)}
    for (name, mode, batch), ws in sorted(windows.items(),
                                          key=lambda kv: (order[kv[0][1]], kv[0][2], kv[0][0])):
        lat = [v for w in ws for v in w["latency_s"]]
        thr = [w["images_per_s"] for w in ws]
        stage_keys = sorted({k for w in ws for s in w["stages"] for k in s})
        # Engine.last_stage_times are milliseconds (CUDA events, or host timers on the CPU twin)
        stage_ms = {k: float(np.median([s.get(k, 0.0) for w in ws for s in w["stages"]]))
                    for k in stage_keys} or None
        tele = [w["telemetry"] for w in ws]

        def med(key: str) -> float | None:
            v = [t[key] for t in tele if t.get(key) is not None]
            return float(np.median(v)) if v else None

        per_call = ws[0]["images_per_call"]
        energy = [(t["energy_j"], w["calls"] * per_call) for t, w in zip(tele, ws) if t.get("energy_j")]
        results.append({
            "backend": name, "batch": batch, "mode": mode,
            "images_per_s": float(np.median(thr)), "images_per_s_repeats": thr,
            "latency_ms": {"p50": 1e3 * _pct(lat, 50), "p95": 1e3 * _pct(lat, 95),
                           "p99": 1e3 * _pct(lat, 99), "calls": len(lat),
                           "images_per_call": per_call},
            "stage_ms": stage_ms,
            "cpu_percent": med("cpu_percent"), "peak_rss_bytes": med("peak_rss_bytes"),
            "gpu_util": med("gpu_util"), "peak_gpu_mem_bytes": med("peak_gpu_mem_bytes"),
            "power_w": med("power_w"), "temp_c": med("temp_c"),
            "images_per_j": (float(np.median([n / e for e, n in energy])) if energy else None),
        })
    base = {(r["mode"], r["batch"]): r["images_per_s"] for r in results
            if r["backend"] == baselines[r["mode"]]}
    for r in results:
        ref = base.get((r["mode"], r["batch"])) or (base.get(("files", SeedDataLoader.BATCH))
                                                    if r["mode"] == "files" else None)
        r["ratio_to_baseline"] = r["images_per_s"] / ref if ref else None
    by = {(r["backend"], r["mode"], r["batch"]): r["images_per_s"] for r in results}
    mode_ratios = []
    for (name, mode, batch), value in by.items():
        for lower in MODES[:MODES.index(mode)]:  # pipeline / engine, files / engine, files / pipeline
            other = by.get((name, lower, batch))
            if other:
                mode_ratios.append({"backend": name, "batch": batch, "ratio": f"{mode}/{lower}",
                                    "value": value / other})
    report = {
        "format": "medtrt-bench/1", "machine": machine_info(), "model": str(art.checkpoint),
        "preset": preset.name, "config": {**asdict(cfg), "threads": threads},
        "baseline": ",".join(dict.fromkeys(baselines.values())), "baselines": baselines,
        "artifacts": {"onnx": {k: str(v) for k, v in art.onnx.items()},
                                            "engines": {k: str(v) for k, v in art.engines.items()}},
        "skipped": skipped, "telemetry": {"nvml": nvml, "hz": cfg.telemetry_hz,
                                          "trace": trace[:: max(1, len(trace) // 2000)]},
        "results": results, "mode_ratios": mode_ratios,
        "backend_choices": choices or {}, "auto_check": auto_check(choices or {}, results),
    }
    report["plots"] = plot(report, out)
    (out / "bench.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def auto_check(choices: dict[str, Any], results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For each auto-cpu-P backend (engine mode): the candidate its probe chose, and the bench
    backends that run each of its candidates (ort-cpu-P for "onnxruntime", ov-cpu-P for
    "openvino") as measured in this run at the probe's batch: is the choice the fastest here?
    ``agrees`` is None where this run did not measure every candidate at that batch."""
    prefix = {runtime: p for p, runtime in CPU_RUNTIMES.items()}
    measured = {(r["backend"], r["batch"]): r["images_per_s"] for r in results
                if r["mode"] == "engine"}
    checks = []
    for name, choice in choices.items():
        if not name.startswith("auto-cpu-") or " (" in name:
            continue
        prec, batch = name.rsplit("-", 1)[1], choice["batch"]
        ran = [t for t in choice["timings"] if t["images_per_s"] is not None]
        bench = {t["name"]: _bench_name(t["name"], prec, prefix) for t in ran}
        here = {n: measured.get((b, batch)) for n, b in bench.items()}
        complete = bool(ran) and len(here) == len(ran) and all(v is not None
                                                               for v in here.values())
        fastest = max(here, key=lambda n: here[n]) if complete else None
        checks.append({"auto": name, "chose": choice["name"], "source": choice["source"],
                       "batch": batch, "probe_images_per_s": {t["name"]: t["images_per_s"]
                                                              for t in ran},
                       "bench_backends": bench, "bench_images_per_s": here,
                       "fastest_in_bench": fastest,
                       "agrees": (fastest == choice["name"]) if complete else None})
    return checks


def _bench_name(candidate: str, prec: str, prefix: dict[str, str]) -> str:
    """The bench backend that runs a cpu_choice candidate: onnxruntime -> ort-cpu-P,
    openvino-fp32 (an INT8 bundle's FP32 twin) -> ov-cpu-int8fp32, onnxruntime-int8cpu ->
    ort-cpu-int8cpu."""
    runtime, _, variant = candidate.partition("-")
    return f"{prefix.get(runtime, runtime)}-cpu-{CANDIDATE_VARIANTS.get(variant, prec)}"


def plot(report: dict[str, Any], out: Path) -> list[str]:
    """Throughput vs batch, latency percentiles, stage breakdown and telemetry traces (PNG)."""
    require("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = report["results"]
    multi = len({r["mode"] for r in res}) > 1

    def label(r: dict[str, Any]) -> str:
        return f"{r['backend']} ({r['mode']})" if multi else r["backend"]

    names = sorted({label(r) for r in res})
    title = (f"{report['preset']} - {report['config']['mode']} mode - "
             f"{report['machine']['gpu'] or report['machine']['cpu']}")
    files = []

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for n in names:
        rows = sorted((r for r in res if label(r) == n), key=lambda r: r["batch"])
        ax.plot([r["batch"] for r in rows], [r["images_per_s"] for r in rows], "o-", label=n)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size")
    ax.set_ylabel("images / s (median of repeats)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "throughput.png", dpi=120)
    plt.close(fig)
    files.append("throughput.png")

    batch = max(r["batch"] for r in res)
    rows = [r for r in res if r["batch"] == batch] or res
    fig, ax = plt.subplots(figsize=(7, 4.5))
    xs = np.arange(len(rows))
    for i, q in enumerate(("p50", "p95", "p99")):
        ax.bar(xs + (i - 1) * 0.27, [r["latency_ms"][q] for r in rows], 0.27, label=q)
    ax.set_xticks(xs, [label(r) for r in rows], rotation=30, ha="right", fontsize=7)
    ax.set_ylabel(f"latency per call, ms (batch {rows[0]['batch']})")
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "latency.png", dpi=120)
    plt.close(fig)
    files.append("latency.png")

    staged = [r for r in rows if r["stage_ms"]]
    if staged:
        keys = ["decode", "staging", "h2d", "preprocess", "compute", "postprocess", "d2h"]
        fig, ax = plt.subplots(figsize=(7, 4.5))
        bottom = np.zeros(len(staged))
        for k in keys:
            v = np.array([r["stage_ms"].get(k, 0.0) for r in staged])
            if v.any():
                ax.bar(range(len(staged)), v, bottom=bottom, label=k)
                bottom += v
        ax.set_xticks(range(len(staged)), [label(r) for r in staged], rotation=30,
                      ha="right", fontsize=7)
        ax.set_ylabel(f"ms per call (batch {staged[0]['batch']}, median)")
        ax.set_title("stage breakdown - " + title, fontsize=9)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "stages.png", dpi=120)
        plt.close(fig)
        files.append("stages.png")

    if report["telemetry"]["trace"]:
        files.append(_plot_telemetry(plt, report["telemetry"], title, out))
    return files


def _plot_telemetry(plt: Any, telemetry: dict[str, Any], title: str, out: Path) -> str:
    """CPU, memory, GPU utilisation, power and temperature over the run (telemetry.png)."""
    trace = telemetry["trace"]
    series = [("cpu_percent", "CPU %"), ("rss_bytes", "host RSS (GiB)"), ("gpu_util", "GPU util %"),
              ("power_w", "GPU power (W)"), ("gpu_mem_bytes", "GPU memory (GiB)"),
              ("temp_c", "GPU temp (C)")]
    series = [(k, lab) for k, lab in series if any(k in s for s in trace)]
    fig, axes = plt.subplots(len(series), 1, figsize=(7, 1.6 * len(series) + 0.6), sharex=True)
    for ax, (k, lab) in zip(np.atleast_1d(axes), series):
        pts = [(s["t"], s[k] / (2**30 if k.endswith("bytes") else 1)) for s in trace if k in s]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], lw=0.8)
        ax.set_ylabel(lab, fontsize=7)
        ax.grid(alpha=0.3)
    np.atleast_1d(axes)[-1].set_xlabel("seconds")
    np.atleast_1d(axes)[0].set_title(f"telemetry ({telemetry['nvml']}) - {title}", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "telemetry.png", dpi=120)
    plt.close(fig)
    return "telemetry.png"
