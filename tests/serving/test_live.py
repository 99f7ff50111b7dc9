"""Generated repositories against Triton itself, on this CPU: every config.pbtxt parsed by Triton's
own schema (tritonclient's model_config_pb2) and checked for consistency; the Python-platform
repository served by the Triton binary of the nvidia-pytriton wheel (127.0.0.1, free ports,
explicit model control), clients over HTTP and gRPC under concurrent load with a corrupt and a
wrong-dims request, every good answer compared with Engine.infer on the same files; the TensorRT
plan refused by that server (it has no TensorRT backend).

The load here is 8 clients x 20 requests per image model (a correctness test, no timing
assertion); tools/bench_triton.py runs the same driver with 8 x 500 and records the figures.
Runs in the Triton environment (helpers/triton.py says which; `make test` makes it)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from helpers.triton import run_in, triton_python
from medtrt import Engine
from medtrt.triton import export_triton
from medtrt.triton.server import LocalTriton, TritonInstall, TritonServerError

pytestmark = pytest.mark.slow

LOAD = "tools/triton_load.py"


@pytest.fixture(scope="module")
def install():
    python, why = triton_python()
    if python is None:
        pytest.skip(why)
    return TritonInstall.find(python)  # a broken environment fails here, not skips


@pytest.fixture(scope="module")
def repos(triton_bundle, tmp_path_factory):
    root = tmp_path_factory.mktemp("repos")
    return {
        "python": export_triton(triton_bundle, root / "python", {"platform": "python"}),
        "tensorrt": export_triton(triton_bundle, root / "tensorrt",
                                  {"allow_tensorrt_rtx": True, "engine_model": False}),
        "onnxruntime": export_triton(triton_bundle, root / "onnxruntime",
                                     {"platform": "onnxruntime", "engine_model": False}),
    }


@pytest.fixture(scope="module")
def load_inputs(triton_bundle, triton_files, tmp_path_factory):
    """The files the clients send and Engine.infer's probabilities for them (the reference)."""
    folder = tmp_path_factory.mktemp("load")
    (folder / "files.json").write_text(json.dumps([str(p) for p in triton_files]))
    with Engine(triton_bundle.path, device="cpu") as engine:
        probs = engine.infer(triton_files, return_probs=True).probs
    np.savez(folder / "reference.npz", probs=probs)
    return folder


def validate(install, repo):
    proc = run_in(install.python, "-m", "medtrt.triton.validate", str(repo))
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    return json.loads(proc.stdout)


@pytest.mark.parametrize("platform", ["python", "tensorrt", "onnxruntime"])
def test_every_config_parses_with_tritons_schema_and_is_consistent(install, repos, platform,
                                                                   triton_bundle):
    export = repos[platform]
    report = validate(install, export.repository)
    assert report["problems"] == []
    models = report["models"]
    assert sorted(models) == sorted(export.models)
    net = models["mednist"]
    want = {"python": ("", "python"), "tensorrt": ("tensorrt_plan", ""),
            "onnxruntime": ("onnxruntime_onnx", "")}[platform]
    assert (net["platform"], net["backend"]) == want
    profile = triton_bundle.input.profile
    assert net["max_batch_size"] == profile.max[0]
    assert net["inputs"] == [{"name": triton_bundle.input.name, "data_type": "TYPE_FP32",
                              "dims": list(profile.opt[1:])}]
    assert net["outputs"] == [{"name": triton_bundle.output.name, "data_type": "TYPE_FP32",
                               "dims": [6], "label_filename": "labels.txt"}]
    assert net["dynamic_batching"]["preferred_batch_size"] == [profile.opt[0], profile.max[0]]
    kind = "KIND_GPU" if platform == "tensorrt" else "KIND_CPU"
    assert {g["kind"] for m in models.values() for g in m["instance_group"]} == {kind}
    steps = models["mednist_pipeline"]["steps"]
    assert [s["model_name"] for s in steps] == ["mednist_preprocess", "mednist",
                                               "mednist_postprocess"]
    assert steps[1]["input_map"] == {"image": "preprocessed"}
    assert [o["name"] for o in models["mednist_pipeline"]["outputs"]] == [
        "LABELS", "SCORES", "INDICES", "PROBS"]


def test_the_checker_reports_inconsistent_repositories(install, repos, tmp_path):
    """The consistency checks can fail: a copy of a repository with one fault per model."""
    repo = tmp_path / "repo"
    shutil.copytree(repos["tensorrt"].repository, repo, ignore=shutil.ignore_patterns("*.plan"))
    pipe = repo / "mednist_pipeline" / "config.pbtxt"
    pipe.write_text(pipe.read_text().replace('key: "logits"\n      value: "logits"',
                                             'key: "scores"\n      value: "logits"', 1))
    pre = repo / "mednist_preprocess" / "config.pbtxt"
    pre.write_text(pre.read_text().replace("dims: [ 1, 64, 64 ]", "dims: [ 1, 32, 32 ]"))
    labels = repo / "mednist" / "labels.txt"
    labels.write_text("".join(labels.read_text().splitlines(True)[:5]))
    post = repo / "mednist_postprocess" / "config.pbtxt"
    post.write_text(post.read_text().replace('name: "mednist_postprocess"', 'name: "post"'))
    (repo / "broken").mkdir()
    (repo / "broken" / "config.pbtxt").write_text("name: \"broken\"\nmax_batch_size: [\n")
    problems = "\n".join(validate(install, repo)["problems"])
    assert "broken/config.pbtxt: Triton's schema refuses it" in problems
    assert "mednist/1/model.plan is missing" in problems
    assert "labels.txt has 5 lines; output 'logits' has 6 classes" in problems
    assert "name 'post' is not its folder's ('mednist_postprocess')" in problems
    assert "step 1 maps 'scores', not an output of mednist" in problems
    assert "feeds 'preprocessed' TYPE_FP32 [1, 32, 32] to mednist.image TYPE_FP32 [1, 64, 64]" \
        in problems
    assert "step 2 reads 'logits', which no earlier step or ensemble input provides" in problems


def run_load(install, server, model, inputs, out, clients, requests):
    proc = run_in(install.python, LOAD, "--http", server.http_url, "--grpc", server.grpc_url,
                  "--metrics", server.metrics_url, "--model", model,
                  "--files", str(inputs / "files.json"),
                  "--reference", str(inputs / "reference.npz"), "--out", str(out),
                  "--clients", str(clients), "--requests", str(requests))
    assert out.is_file(), f"{proc.stdout}\n{proc.stderr[-3000:]}\n{server.log_tail()}"
    return proc, json.loads(out.read_text())


def test_served_over_http_and_grpc_under_load_answers_as_engine_infer(install, repos,
                                                                      load_inputs, tmp_path):
    repo = repos["python"]
    with LocalTriton(repo.repository, install, models=(repo.pipeline,),
                     log_path=tmp_path / "server.log") as server:
        states = {m["name"]: m.get("state") for m in server.repository_index()}
        assert states == {"mednist": "READY", "mednist_preprocess": "READY",
                          "mednist_postprocess": "READY", "mednist_pipeline": "READY",
                          "mednist_engine": None}  # explicit mode: only what was asked for
        server.load(repo.names.engine)
        assert server.ready(repo.names.engine)
        for model, requests in ((repo.pipeline, 20), (repo.names.engine, 12)):
            proc, summary = run_load(install, server, model, load_inputs,
                                     tmp_path / f"{model}.json", clients=8, requests=requests)
            checks = summary["checks"]
            assert checks["good_errors"] == [] and checks["mismatches"] == [], checks
            assert checks["good_correct"] == checks["good_requests"] == 8 * requests - 2
            assert checks["max_abs_prob_diff"] <= 1e-4
            bad = {b["kind"]: b["error"] for b in checks["bad_requests"]}
            assert "cannot read image IMAGE[" in bad["corrupt"]
            assert "unexpected shape for input 'IMAGE'" in bad["wrong_dims"]
            assert {p: v["count"] for p, v in summary["latency_ms_by_protocol"].items()} == {
                "http": 4 * requests - 1, "grpc": 4 * requests - 1}
            served = summary["triton_metrics"][model]
            failed = sum(v for k, v in served.items() if k.startswith("request_failure"))
            # What Triton's own counters make of the bad requests: the ensemble counts both as
            # failures; for a Python model the wrong dims are refused before it (not counted)
            # and its error response to the corrupt image counts as a success.
            expected = (8 * requests - 2, 2) if model == repo.pipeline else (8 * requests - 1, 0)
            assert (served["request_success"], failed) == expected
            assert summary["server_live_after"] and proc.returncode == 0, proc.stdout
        assert server.alive()
    assert "Traceback" not in server.log_path.read_text()  # no model raised past its handler


def test_the_tensorrt_plan_does_not_load_in_this_server(install, repos, tmp_path):
    """The nvidia-pytriton build has the Python backend only: the plan's config is valid (above)
    but no backend here runs it, and this machine has no GPU for the repository's GPU instances;
    the server says so and stays up."""
    repo = repos["tensorrt"]
    with LocalTriton(repo.repository, install, log_path=tmp_path / "server.log") as server:
        with pytest.raises(TritonServerError, match=r"could not load 'mednist'.*tensorrt"):
            server.load("mednist")
        with pytest.raises(TritonServerError, match="could not load 'mednist_pipeline'"):
            server.load(repo.pipeline)
        with pytest.raises(TritonServerError, match="has kind KIND_GPU but no GPUs are available"):
            server.load("mednist_postprocess")  # a GPU repository's Python models, here
        assert server.alive()
