#!/usr/bin/env python3
"""summary.json for tools/gpu_check.sh: what ran, how it ended, and the figures it produced.

Called from the script's EXIT trap, so it runs whatever happened before: every input is
optional, and a missing one is recorded as missing. Also merges the steps' JUnit files into
one junit.xml, tars everything else, and keeps the output folder to the 8 files the lent
machine sends back. Prints a short table last (the call's reply shows the end of the output).

    python tools/gpu_summary.py --work DIR --out DIR --budget 540 --elapsed 431 --dry-run 0
                                --commit SHA
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import shutil
import sys
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

SCHEMA = 1
MAX_FILES = 8  # the lent machine sends back at most 8 files from $OUT
KEEP = ("summary.json", "junit.xml", "bench_ops_gpu.json", "bench_pipeline_gpu.json",
        "bench.json", "gpu_check.log", "rest.tar.gz")
LOG_TAIL_BYTES = 4 << 20  # each file back is limited to 16 MiB; logs keep their end
TAR_FILE_BYTES = 2 << 20
STEP_KEYS = ("name", "status", "rc", "seconds", "timeout_s", "note")
STATUSES = ("pass", "fail", "timeout", "out_of_time", "unsupported", "skip")


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_steps(work: Path) -> list[dict[str, Any]]:
    steps = []
    path = work / "steps.jsonl"
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            steps.append(json.loads(line))
        except ValueError:
            steps.append({"name": "?", "status": "fail", "note": f"unreadable record: {line!r}"})
    return steps


def junit_cases(path: Path) -> tuple[dict[str, int], list[dict[str, Any]]]:
    """Counts (passed/failed/skipped/errors) and each case with its outcome and properties."""
    counts = {"passed": 0, "failed": 0, "skipped": 0, "errors": 0}
    cases = []
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return counts, cases
    for case in root.iter("testcase"):
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = {"failure": "failed", "error": "errors", "skipped": "skipped"}[child.tag]
                message = (child.get("message") or "")[:300]
                break
        counts[outcome] += 1
        props = {p.get("name"): _number(p.get("value")) for p in case.iter("property")}
        cases.append({"test": f"{case.get('classname')}::{case.get('name')}", "outcome": outcome,
                      "message": message, "properties": props})
    return counts, cases


def _number(value: str | None) -> Any:
    try:
        return json.loads(value) if value is not None else None
    except ValueError:
        return value


def merge_junit(files: list[Path], out: Path) -> None:
    root = ET.Element("testsuites")
    for f in files:
        try:
            r = ET.parse(f).getroot()
        except (OSError, ET.ParseError):
            continue
        for suite in [r] if r.tag == "testsuite" else list(r):
            suite.set("name", f.stem.removeprefix("junit-"))
            root.append(suite)
    ET.ElementTree(root).write(out, encoding="utf-8", xml_declaration=True)


def sanitizer_errors(work: Path) -> dict[str, Any]:
    found = {}
    for f in sorted(work.glob("sanitizer-*.txt")):
        text = f.read_text(errors="replace")
        m = re.search(r"ERROR SUMMARY: (\d+) error", text)
        found[f.stem.removeprefix("sanitizer-")] = int(m.group(1)) if m else None
    return found


def figures(out: Path, work: Path, cases: list[dict[str, Any]]) -> dict[str, Any]:
    fig: dict[str, Any] = {}
    ops = read_json(out / "bench_ops_gpu.json")
    g = (ops or {}).get("gpu") or {}
    if "copy_bandwidth_Bps" in g:  # (a skipped GPU section holds only the reason)
        fig["kernels"] = {"copy_bandwidth_GBps": round(g["copy_bandwidth_Bps"] / 1e9, 1),
                          "rows": [{"op": r.get("op"), "case": r.get("case"),
                                    "bandwidth_GBps": round(r.get("bandwidth_Bps", 0) / 1e9, 1),
                                    "fraction_of_copy": round(r.get("fraction_of_copy", 0), 3)}
                                   for r in g.get("results", [])]}
    elif g:
        fig["kernels"] = {"skipped": g.get("skipped", g)}
    pipe = read_json(out / "bench_pipeline_gpu.json")
    if pipe:
        fig["pipeline_end_to_end_over_compute"] = [
            {"slots": r.get("slots"), "cuda_graphs": r.get("cuda_graphs"),
             "batch": pipe.get("batch"), "ratio": r.get("ratio_end_to_end_to_compute"),
             "end_to_end_images_per_s": r.get("end_to_end_images_per_s")}
            for r in pipe.get("results", [])]
    bench = read_json(out / "bench.json")
    if bench:
        fig["bench"] = {"mode_ratios": bench.get("mode_ratios"),
                        "images_per_s": [{k: r.get(k) for k in ("backend", "mode", "batch",
                                                               "images_per_s", "ratio_to_baseline")}
                                         for r in bench.get("results", [])],
                        "skipped": bench.get("skipped")}
    recorded = {c["test"]: c["properties"] for c in cases if c["properties"]}
    if recorded:
        fig["tests"] = recorded  # record_property figures: overlap, memory growth, differences
    errors = sanitizer_errors(work)
    if errors:
        fig["sanitizer_errors"] = errors
    return fig


def gpu_info(work: Path) -> dict[str, Any] | None:
    path = work / "nvidia-smi.csv"
    line = path.read_text().strip().splitlines()[0] if path.is_file() and path.stat().st_size else ""
    parts = [p.strip() for p in line.split(",")]
    if len(parts) < 4:
        return None
    return {"name": parts[0], "driver": parts[1], "memory": parts[2], "compute_capability": parts[3]}


def build_info() -> dict[str, Any] | str:
    try:
        import medtrt

        return medtrt.build_info()
    except Exception as e:  # noqa: BLE001 - recorded, the summary must still be written
        return f"medtrt does not import: {type(e).__name__}: {e}"


def pack(out: Path, work: Path) -> list[str]:
    """Everything but KEEP (and the model cache) into rest.tar.gz; returns the files in OUT."""
    log = out / "gpu_check.log"
    if log.is_file() and log.stat().st_size > LOG_TAIL_BYTES:
        data = log.read_bytes()[-LOG_TAIL_BYTES:]
        log.write_bytes(b"[... earlier output cut ...]\n" + data)
    extra = [p for p in out.iterdir() if p.name not in KEEP]
    with tarfile.open(out / "rest.tar.gz", "w:gz") as tar:
        for p in sorted(work.rglob("*")):
            if p.is_file() and "cache" not in p.relative_to(work).parts[:1]:
                if p.stat().st_size <= TAR_FILE_BYTES:
                    tar.add(p, arcname=str(p.relative_to(work)))
        for p in extra:
            tar.add(p, arcname=f"out/{p.name}")
    for p in extra:
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    return sorted(p.name for p in out.iterdir())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--budget", type=int, required=True)
    ap.add_argument("--elapsed", type=int, required=True)
    ap.add_argument("--dry-run", type=int, default=0)
    ap.add_argument("--commit", default="unknown")
    args = ap.parse_args(argv)
    work, out = args.work, args.out

    steps = read_steps(work)
    all_cases = []
    junits = sorted(work.glob("junit-*.xml"))
    for s in steps:
        j = work / f"junit-{s['name']}.xml"
        if j.is_file():
            s["tests"], cases = junit_cases(j)
            all_cases += cases
    merge_junit(junits, out / "junit.xml")
    allowed = [{"test": c["test"], "reason": c["message"]} for c in all_cases
               if c["outcome"] == "skipped"]
    summary = {
        "schema": SCHEMA,
        "tool": "tools/gpu_check.sh",
        "mode": "dry-run" if args.dry_run else "gpu",
        "commit": args.commit,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "budget_s": args.budget,
        "elapsed_s": args.elapsed,
        "gpu": gpu_info(work),
        "nvcc": (work / "nvcc.txt").read_text().strip() if (work / "nvcc.txt").is_file() else None,
        "versions": read_json(work / "versions.json"),
        "build_info": build_info(),
        "steps": steps,
        "ok": all(s["status"] in ("pass", "skip") for s in steps) and bool(steps),
        "skipped_tests": allowed,  # only conftest's GPU_MACHINE_MAY_SKIP reasons get here
        "figures": figures(out, work, all_cases),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    files = pack(out, work)
    if len(files) > MAX_FILES:  # cannot happen with KEEP's 7 names; checked all the same
        print(f"gpu_summary: {len(files)} files in {out}, over {MAX_FILES}", file=sys.stderr)
        return 1

    print(f"==== gpu_check {summary['mode']} commit {args.commit}: {args.elapsed}s of "
          f"{args.budget}s; gpu {summary['gpu'] and summary['gpu']['name']}")
    for s in steps:
        t = s.get("tests")
        counts = f" {t['passed']}p/{t['failed']}f/{t['skipped']}s/{t['errors']}e" if t else ""
        print(f"{s['name']:<22}{s['status']:<12}{s['seconds']:>5}s{counts}  {s.get('note') or ''}")
    print(f"files back: {', '.join(files)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
