#!/usr/bin/env python3
"""Regenerates the Performance tables of docs/benchmarks.md from benchmarks/results/: bench_ops_*.json,
bench_calibration.json, bench_calibration_speed.json and every medtrt bench report
(bench-*/bench.json)."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- perf-table -->", "<!-- /perf-table -->"


def table(path: Path) -> list[str]:
    report = json.loads(path.read_text())
    m = report["machine"]
    lines = []
    for where in ("cpu", "gpu"):
        section = report.get(where, {})
        if "results" not in section:
            continue
        device = section.get("device") or f"{m['cpu']} ({m['cores']} cores)"
        lines += [
            f"**{where.upper()}: {device}** — {m['date'][:10]}, commit `{m['commit'][:10]}`"
            f"{' (dirty tree)' if m.get('dirty') else ''}, batch {report['batch']}, "
            f"copy bandwidth {section['copy_bandwidth_Bps'] / 1e9:.1f} GB/s "
            f"({section['copy']}); source `{path.relative_to(ROOT)}`",
            "",
            "| op | case | median ms | GB/s | % of copy |",
            "|---|---|---:|---:|---:|",
        ]
        for r in section["results"]:
            lines.append(f"| {r['op']} | {r['case']} | {r['median_s'] * 1e3:.3f} | "
                         f"{r['bandwidth_Bps'] / 1e9:.2f} | {100 * r['fraction_of_copy']:.1f} |")
        lines.append("")
    return lines


def calibration(path: Path) -> list[str]:
    r = json.loads(path.read_text())
    m = r["machine"]
    return [
        f"**Calibration: medtrt vs ONNX Runtime's entropy calibrator** — {m['cpu']} "
        f"({m['cores']} cores), {m['date'][:10]}, commit `{m['commit'][:10]}`; source "
        f"`{path.relative_to(ROOT)}`",
        "",
        "| images | tensors | medtrt | ONNX Runtime | time ratio | thresholds within "
        f"{r['agreement_tolerance_bins']:g} bins | median signed rel. diff |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        f"| {r['images']} | {r['compared']} | {r['medtrt_seconds']:.1f} s | {r['ort_seconds']:.1f} s "
        f"| {r['time_ratio']:.3f} | {100 * r['fraction_agreeing']:.1f} % | "
        f"{100 * r['median_signed_rel_diff']:+.1f} % |",
        "",
        *_decomposition(r),
    ]


SPEED_PHASES = ("read", "session", "ort", "histograms", "thresholds", "other")


def _speed_row(name: str, s: dict, fp32_run: float) -> str:
    return (f"| {name} | {s['total']:.2f} | {s['total'] / fp32_run:.1f}x | "
            + " | ".join(f"{s[p]:.2f}" for p in SPEED_PHASES) + " |")


def calibration_speed(path: Path) -> list[str]:
    r = json.loads(path.read_text())
    m = r["machine"]
    fp32 = r["fp32"]["median"]
    others = [c["other_processes_cpu_s"] for c in r.get("cpu_during_each_repeat", [])]
    return [
        f"**Calibration speed: before and after issue #22** — {m['cpu']} ({m['cores']} cores), "
        f"{m['date'][:10]}, commit `{m['commit'][:10]}`{' (dirty tree)' if m.get('dirty') else ''}, "
        f"{r['images']} images, batch {r['batch']}, {r['tensors']} tensors, median of "
        f"{r['repeats']} interleaved repeats (seconds; other processes used "
        f"{min(others, default=0):.1f}-{max(others, default=0):.1f} CPU s per repeat); every "
        f"threshold and histogram bit-identical before/after: "
        f"{'yes' if r['thresholds_identical'] else 'NO'}; source `{path.relative_to(ROOT)}`",
        "",
        "| path | total | × FP32 run | read | session | ONNX Runtime | histograms | "
        "thresholds | other |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| plain FP32 pass (default session) | {fp32['total']:.2f} | "
        f"{fp32['total'] / fp32['run']:.1f}x | {fp32['read']:.2f} | {fp32['session']:.2f} | "
        f"{fp32['run']:.2f} | — | — | — |",
        _speed_row("calibrate() before (a742ee9)", r["before"]["median"], fp32["run"]),
        _speed_row("calibrate() after", r["after"]["median"], fp32["run"]),
        "",
    ]


STEP_NAMES = {"ort": "ONNX Runtime's search, restated (reproduces its thresholds)",
              "exact_q": "+ Q built as TensorRT's method builds it",
              "zero_spike": "+ zero spike replaced by its neighbour",
              "abs": "+ folded to \\|x\\|, medtrt's C++ search = TensorRT's method on ORT's histogram"}


def _decomposition(r: dict) -> list[str]:
    d = r.get("decomposition")
    if not d:
        return []
    tol = f"{d['tolerance_bins']:g}"
    lines = [f"| step, on ONNX Runtime's own histograms | within {tol} bins of medtrt | "
             "median \\|rel. diff\\| | median signed rel. diff, ReLU outputs / others |",
             "|---|---:|---:|---:|"]
    for name, st in d["steps"].items():
        extra = (f" ({100 * st['fraction_reproducing_onnxruntime']:.0f} % exact)"
                 if "fraction_reproducing_onnxruntime" in st else "")
        lines.append(f"| {STEP_NAMES.get(name, name)}{extra} | {100 * st['fraction_within_tolerance']:.1f} % | "
                     f"{100 * st['median_abs_rel_diff']:.2f} % | "
                     f"{100 * st['median_signed_rel_diff_relu']:+.1f} % / {100 * st['median_signed_rel_diff_other']:+.1f} % |")
    sa = r.get("self_agreement_reversed_batches")
    if sa:
        lines.append(f"| yardstick: medtrt vs medtrt, same images, batches reversed | "
                     f"{100 * sa['fraction_within_tolerance_bins']:.1f} % | {100 * sa['median_abs_rel_diff']:.2f} % | — |")
    return lines + [""]


def _files_note(config: dict) -> str:
    """Files mode: which files (runs before file_format existed generated PNGs)."""
    if "files" not in config["mode"]:
        return ""
    if config.get("data"):
        return ", files from --data"
    return f", generated {config.get('file_format', 'png').upper()} files"


def bench(path: Path) -> list[str]:
    """One `medtrt bench` report: images/s per backend and batch, ratio to the baseline."""
    r = json.loads(path.read_text())
    m = r["machine"]
    where = m["gpu"] or f"{m['cpu']} ({m['cores']} cores)"
    batches = sorted({x["batch"] for x in r["results"]})
    multi = len({x["mode"] for x in r["results"]}) > 1

    def name(x: dict) -> str:
        return f"{x['backend']} ({x['mode']})" if multi else x["backend"]

    names = list(dict.fromkeys(name(x) for x in r["results"]))
    cell = {(name(x), x["batch"]): x for x in r["results"]}
    lines = [
        f"**medtrt bench, {r['config']['mode']} mode, {r['preset']}: {where}** — "
        f"{m['date'][:10]}, commit `{m['commit'][:10]}`{' (dirty tree)' if m.get('dirty') else ''}"
        f", {r['config']['repeats']} interleaved repeats x {r['config']['duration']:g} s, "
        f"{r['config']['threads']} threads{_files_note(r['config'])}; images/s "
        f"(× {r['baseline']}); source "
        f"`{path.relative_to(ROOT)}`",
        "",
        "| backend | " + " | ".join(f"batch {b}" for b in batches) + " |",
        "|---|" + "---:|" * len(batches),
    ]
    for n in names:
        row = []
        for b in batches:
            x = cell.get((n, b))
            if x is None:
                row.append("—")
            else:
                ratio = f" ({x['ratio_to_baseline']:.2f}×)" if x["ratio_to_baseline"] else ""
                row.append(f"{x['images_per_s']:.1f}{ratio}")
        lines.append(f"| {n} | " + " | ".join(row) + " |")
    if r.get("mode_ratios"):
        lines += ["", "Ratios between modes: " + "; ".join(
            f"{x['backend']} batch {x['batch']} {x['ratio']} {x['value']:.3f}" for x in r["mode_ratios"])]
    if r["skipped"]:
        lines += ["", "Skipped: " + "; ".join(f"{k}: {v}" for k, v in r["skipped"].items())]
    return lines + [""]


def main() -> int:
    body: list[str] = []
    for path in sorted((ROOT / "benchmarks" / "results").glob("bench_ops_*.json")):
        body += table(path)
    cal = ROOT / "benchmarks" / "results" / "bench_calibration.json"
    if cal.is_file():
        body += calibration(cal)
    speed = ROOT / "benchmarks" / "results" / "bench_calibration_speed.json"
    if speed.is_file():
        body += calibration_speed(speed)
    for path in sorted((ROOT / "benchmarks" / "results").glob("bench-*/bench.json")):
        body += bench(path)
    readme = ROOT / "docs" / "benchmarks.md"
    text = readme.read_text()
    block = "\n".join([BEGIN, "", *body, END])
    pattern = re.compile(re.escape(BEGIN) + r".*?(" + re.escape(END) + r"|$)", re.S)
    if BEGIN not in text:
        print(f"{readme} has no perf-table marker", file=sys.stderr)
        return 1
    readme.write_text(pattern.sub(lambda _: block, text, count=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
