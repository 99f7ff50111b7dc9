"""Load on a running Triton server serving a medtrt repository's image model, with answers
checked: CLIENTS threads x REQUESTS requests each, over HTTP and gRPC alternately, batch sizes
drawn from BATCH_SIZES (seeded), images drawn from FILES; one request carries a corrupt image
and one has wrong dims ([1, 2] instead of [B, 1]). Every good answer is compared with
REFERENCE (``Engine.infer`` probabilities of FILES, rows in FILES' order): same top-1 and every
probability within --tolerance. Writes a JSON summary: throughput, latency percentiles (all,
and per protocol), the checks, the bad requests' error messages, whether the server is still
live, and the change of Triton's own metrics (per model) over the run.

Runs in the Triton environment (tritonclient; `make .venv-triton/.installed`). The tests
(tests/serving/test_live.py) run it with small counts; tools/bench_triton.py with the full ones.

    python tools/triton_load.py --http H:P --grpc H:P --metrics H:P --model NAME_pipeline \
        --files files.json --reference reference.npz --out load.json
"""

from __future__ import annotations

import argparse
import json
import re
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from medtrt.triton.client import TritonClassifier, bytes_input

CORRUPT = b"\x89PNG\r\n\x1a\n" + bytes(range(64))  # a PNG signature, then garbage
_METRIC = re.compile(r'^(nv_[a-z_]+)\{model="([^"]+)",(?:reason="([^"]+)",)?version="[^"]*"\} '
                     r'([0-9.e+-]+)$')


def plan(clients: int, requests: int, batch_sizes: list[int], images: int,
         seed: int) -> list[list[dict[str, Any]]]:
    """Each client's requests: protocol, kind (good, corrupt, wrong_dims), image rows."""
    rng = np.random.default_rng(seed)
    out = []
    for c in range(clients):
        mine = []
        for j in range(requests):
            b = int(rng.choice(batch_sizes))
            mine.append({"protocol": "http" if (c + j) % 2 == 0 else "grpc", "kind": "good",
                         "rows": rng.integers(0, images, b).tolist()})
        out.append(mine)
    out[0][requests // 2]["kind"] = "corrupt"
    out[min(1, clients - 1)][requests // 2 + (clients == 1)]["kind"] = "wrong_dims"
    return out


def scrape(url: str) -> dict[str, float]:
    """Triton's per-model counters: 'metric|model[|reason]' -> value."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://{url}/metrics", timeout=10) as r:
        text = r.read().decode()
    values = {}
    for line in text.splitlines():
        m = _METRIC.match(line)
        if m:
            name, model, reason, value = m.groups()
            values["|".join(x for x in (name, model, reason) if x)] = float(value)
    return values


def settled_scrape(url: str, timeout: float = 10.0, interval: float = 0.5) -> dict[str, float]:
    """``scrape`` once the counters stop moving: Triton may count a request a moment after its
    response reached the client, so a scrape right after the last answer can miss it."""
    last = scrape(url)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(interval)
        now = scrape(url)
        if now == last:
            break
        last = now
    return last


def metrics_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    """Per model: what its counters grew by, and the averages Triton's docs derive from them."""
    models: dict[str, dict[str, float]] = {}
    for key, value in after.items():
        name, model, *reason = key.split("|")
        label = name.removeprefix("nv_inference_") + (f"_{reason[0].lower()}" if reason else "")
        models.setdefault(model, {})[label] = value - before.get(key, 0.0)
    for m in models.values():
        done = m.get("request_success", 0) + sum(v for k, v in m.items()
                                                   if k.startswith("request_failure"))
        if m.get("exec_count"):
            m["images_per_execution"] = m.get("count", 0) / m["exec_count"]
        if done:
            for part in ("request_duration_us", "queue_duration_us",
                         "compute_infer_duration_us"):
                if part in m:
                    m[f"avg_{part}"] = m[part] / done
    return {k: v for k, v in models.items() if any(v.values())}


def run_client(urls: dict[str, str], model: str, requests: list[dict[str, Any]],
               files: list[bytes], start: threading.Barrier,
               record: list[dict[str, Any]]) -> None:
    clients = {p: TritonClassifier(urls[p], model, protocol=p) for p in ("http", "grpc")}
    start.wait()
    for req in requests:
        client = clients[req["protocol"]]
        data = [files[i] for i in req["rows"]]
        t0 = time.perf_counter()
        try:
            if req["kind"] == "corrupt":
                answer = client.classify(data + [CORRUPT])
            elif req["kind"] == "wrong_dims":
                answer = client.infer([_wrong_dims(req["protocol"], data[:1] * 2)])
            else:
                answer = client.classify(data)
            error = None
        except Exception as exc:  # noqa: BLE001 - tritonclient's InferenceServerException
            answer, error = None, f"{type(exc).__name__}: {exc}"
        record.append({**req, "latency_s": time.perf_counter() - t0, "answer": answer,
                       "error": error})
    for c in clients.values():
        c.close()


def _wrong_dims(protocol: str, files: list[bytes]) -> Any:
    """IMAGE shaped [1, n] where the model takes [B, 1]: Triton refuses it before any model."""
    data = np.empty((1, len(files)), dtype=object)
    data[0, :] = files
    return bytes_input(protocol, data)


def check(records: list[dict[str, Any]], reference: np.ndarray,
          tolerance: float) -> dict[str, Any]:
    good = [r for r in records if r["kind"] == "good"]
    answered = [r for r in good if r["error"] is None]
    worst, agree, wrong = 0.0, 0, []
    for r in answered:
        want = reference[r["rows"]]
        got = r["answer"].probs
        diff = float(np.abs(got - want).max())
        top1 = bool((got.argmax(1) == want.argmax(1)).all()
                    and (r["answer"].indices[:, 0] == want.argmax(1)).all())
        worst = max(worst, diff)
        if top1 and diff <= tolerance:
            agree += 1
        elif len(wrong) < 10:
            wrong.append({"rows": r["rows"], "max_abs_prob_diff": diff, "top1": top1,
                          "labels": r["answer"].labels})
    bad = [{"kind": r["kind"], "protocol": r["protocol"], "error": r["error"]}
           for r in records if r["kind"] != "good"]
    return {"good_requests": len(good), "good_answered": len(answered),
            "good_correct": agree, "good_errors": [r["error"] for r in good if r["error"]][:5],
            "max_abs_prob_diff": worst, "tolerance": tolerance, "mismatches": wrong,
            "bad_requests": bad, "bad_all_refused": all(b["error"] for b in bad)}


def percentiles(latencies: list[float]) -> dict[str, float]:
    if not latencies:
        return {}
    ms = np.asarray(latencies) * 1e3
    return {"p50": float(np.percentile(ms, 50)), "p90": float(np.percentile(ms, 90)),
            "p99": float(np.percentile(ms, 99)), "max": float(ms.max()),
            "mean": float(ms.mean()), "count": int(len(ms))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--http", required=True)
    ap.add_argument("--grpc", required=True)
    ap.add_argument("--metrics", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--files", type=Path, required=True, help="JSON list of image files")
    ap.add_argument("--reference", type=Path, required=True, help="NPZ with probs [N, C]")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--batch-sizes", default="1,2,4,8")
    ap.add_argument("--tolerance", type=float, default=1e-4)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    paths = json.loads(args.files.read_text())
    files = [Path(p).read_bytes() for p in paths]
    reference = np.load(args.reference)["probs"]
    sizes = [int(x) for x in args.batch_sizes.split(",")]
    work = plan(args.clients, args.requests, sizes, len(files), args.seed)
    urls = {"http": args.http, "grpc": args.grpc}
    records: list[dict[str, Any]] = []
    start = threading.Barrier(args.clients + 1)
    threads = [threading.Thread(target=run_client, args=(urls, args.model, w, files, start,
                                                         records)) for w in work]
    before = scrape(args.metrics)
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    after = settled_scrape(args.metrics)
    with TritonClassifier(args.http, args.model) as probe:
        live = bool(probe.client.is_server_live())
    images = sum(len(r["rows"]) for r in records)
    summary = {
        "model": args.model, "clients": args.clients, "requests_per_client": args.requests,
        "batch_sizes": sizes, "requests": len(records), "images": images,
        "wall_s": wall, "requests_per_s": len(records) / wall, "images_per_s": images / wall,
        "latency_ms": percentiles([r["latency_s"] for r in records]),
        "latency_ms_by_protocol": {p: percentiles([r["latency_s"] for r in records
                                                   if r["protocol"] == p and r["error"] is None])
                                   for p in ("http", "grpc")},
        "checks": check(records, reference, args.tolerance),
        "server_live_after": live,
        "triton_metrics": metrics_delta(before, after),
    }
    args.out.write_text(json.dumps(summary, indent=1) + "\n")
    c = summary["checks"]
    print(f"{args.model}: {len(records)} requests ({images} images) in {wall:.1f} s: "
          f"{summary['requests_per_s']:.1f} req/s, p50 {summary['latency_ms']['p50']:.1f} ms, "
          f"p99 {summary['latency_ms']['p99']:.1f} ms; good {c['good_correct']}/"
          f"{c['good_requests']} correct, bad refused: {c['bad_all_refused']}, live: {live}")
    ok = (c["good_correct"] == c["good_requests"] and c["bad_all_refused"] and live)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
