"""`medtrt export-triton` / ``export_triton``: the repository layout, what each config says
(from the bundle), the README, and the refusals. Triton's own schema parses these configs in
tests/serving/test_live.py (tritonclient lives in the Triton environment)."""

from __future__ import annotations

import dataclasses
import re

import pytest

from helpers.bundles import unrunnable_bundle
from medtrt.cli import main
from medtrt.triton import ExportOptions, export_triton
from medtrt.triton.pbtxt import Enum, to_pbtxt
from medtrt.triton.releases import triton_releases_for


def field(text: str, name: str) -> list[str]:
    return re.findall(rf"^\s*{name}: (.+)$", text, re.M)


def test_python_platform_layout_files_and_configs(triton_bundle, tmp_path):
    b = triton_bundle
    r = export_triton(b, tmp_path / "repo", {"platform": "python", "instances": 2,
                                             "max_queue_delay_us": 500, "k": 3})
    repo = r.repository
    assert r.models == ("mednist", "mednist_preprocess", "mednist_postprocess",
                        "mednist_pipeline", "mednist_engine")
    assert (r.kind, r.pipeline, r.warnings) == ("cpu", "mednist_pipeline", ())
    assert (repo / "mednist" / "labels.txt").read_text().split() == list(b.preset.labels)
    for model in ("mednist", "mednist_engine"):  # the bundle beside model.py, unchanged
        for name in (b.engine.file, b.path.name, b.precision_onnx.file):
            assert (repo / model / "1" / name).read_bytes() == (b.path.parent / name).read_bytes()
    for model, cls in (("mednist", "Compute"), ("mednist_preprocess", "Preprocess"),
                       ("mednist_postprocess", "Postprocess"), ("mednist_engine", "Engine")):
        code = (repo / model / "1" / "model.py").read_text()
        assert f"from medtrt.triton.backend import {cls}Model as TritonPythonModel" in code
        assert (repo / model / "1" / "preset.json").read_text().strip() == b.preset.to_json()
    assert list((repo / "mednist_pipeline" / "1").iterdir()) == []
    net = (repo / "mednist" / "config.pbtxt").read_text()
    assert field(net, "backend") == ['"python"'] and not field(net, "platform")
    profile = b.input.profile
    assert field(net, "max_batch_size") == [str(profile.max[0])]  # 256
    assert field(net, "dims") == [f"[ {', '.join(map(str, profile.opt[1:]))} ]", "[ 6 ]"]
    assert field(net, "preferred_batch_size") == [f"[ {profile.opt[0]}, {profile.max[0]} ]"]
    assert field(net, "max_queue_delay_microseconds") == ["500"]
    assert field(net, "kind") == ["KIND_CPU"] and field(net, "count") == ["2"]
    assert field(net, "label_filename") == ['"labels.txt"']
    post = (repo / "mednist_postprocess" / "config.pbtxt").read_text()
    assert field(post, "dims") == ["[ 6 ]", "[ 3 ]", "[ 3 ]", "[ 3 ]", "[ 6 ]"]
    pipe = (repo / "mednist_pipeline" / "config.pbtxt").read_text()
    assert field(pipe, "model_name") == ['"mednist_preprocess"', '"mednist"',
                                         '"mednist_postprocess"']
    readme = r.readme.read_text()
    assert "TensorRT-RTX 1.7" in readme and "serves the network with python" in readme
    assert "mednist_pipeline" in readme and "tritonclient" in readme


def test_tensorrt_platform_refuses_a_tensorrt_rtx_bundle_unless_allowed(triton_bundle, tmp_path):
    with pytest.raises(ValueError, match=r"built with TensorRT-RTX .* will not load in any Triton "
                                         r"release; rebuild it with full TensorRT"):
        export_triton(triton_bundle.path, tmp_path / "repo")
    assert not (tmp_path / "repo").exists()
    r = export_triton(triton_bundle.path, tmp_path / "repo", {"allow_tensorrt_rtx": True})
    plan = r.repository / "mednist" / "1" / "model.plan"
    assert plan.read_bytes() == triton_bundle.engine_path.read_bytes()
    net = (r.repository / "mednist" / "config.pbtxt").read_text()
    assert field(net, "platform") == ['"tensorrt_plan"'] and field(net, "kind") == ["KIND_GPU"]
    assert field(net, "data_type") == ["TYPE_FP32", "TYPE_FP32"]  # the engine's I/O dtypes
    assert len(r.warnings) == 1 and "**Warning:**" in r.readme.read_text()
    assert "will not load in any Triton release" in r.readme.read_text()


def test_onnxruntime_platform_serves_the_precision_onnx(triton_bundle, tmp_path):
    r = export_triton(triton_bundle, tmp_path / "repo",
                      {"platform": "onnxruntime", "name": "cpu-model", "engine_model": False})
    assert r.models == ("cpu-model", "cpu-model_preprocess", "cpu-model_postprocess",
                        "cpu-model_pipeline")
    onnx = r.repository / "cpu-model" / "1" / "model.onnx"
    assert onnx.read_bytes() == triton_bundle.precision_onnx_path.read_bytes()
    net = (r.repository / "cpu-model" / "config.pbtxt").read_text()
    assert field(net, "platform") == ['"onnxruntime_onnx"'] and field(net, "kind") == ["KIND_CPU"]


def test_readme_names_the_triton_release_of_a_full_tensorrt_plan(triton_bundle, tmp_path):
    def full(version):
        trt = dataclasses.replace(triton_bundle.tensorrt, flavour="tensorrt", version=version)
        return dataclasses.replace(triton_bundle, tensorrt=trt)

    r = export_triton(full("10.8.0.43"), tmp_path / "a")
    text = r.readme.read_text()
    assert "TensorRT 10.8.0.43" in text and r.warnings == ()
    assert "Triton 25.01 (`10.8.0.43`), 25.02 (`10.8.0.43`)" in text
    assert "nvcr.io/nvidia/tritonserver:25.02-trtllm-python-py3" in text
    assert "libnvinfer.so.10.8.0" in text and "/opt/tritonserver/backends" in text
    assert "Frameworks Support Matrix" in text  # the plain -py3 images are not claimed
    r = export_triton(full("9.9.9.9"), tmp_path / "b")
    assert "lists no Triton release with exactly this TensorRT" in r.readme.read_text()


def test_release_table_matches_exact_versions_only():
    assert triton_releases_for("10.13.3.9") == ("25.11", "25.12", "26.01", "26.02")
    assert triton_releases_for("10.8.0") == ("25.01", "25.02")
    # NVIDIA's matrix prints some rows without a build number: they match on what they have
    assert triton_releases_for("10.7.0.23") == ("24.12",)
    assert triton_releases_for("10.0.1.6") == ("24.05", "24.06")
    assert triton_releases_for("10.8.0.44") == () and triton_releases_for("10.5.0.18") == ()
    assert triton_releases_for("10") == () and triton_releases_for("1.7.1.116") == ()


def test_a_profile_above_batch_one_is_refused_where_triton_would_send_batch_one(demo_model,
                                                                               tmp_path):
    b = unrunnable_bundle(demo_model.onnx, tmp_path, batch=(2, 4, 8))  # full TensorRT "0.0"
    with pytest.raises(ValueError, match=r"profile starts at batch 2 .* rebuild with `--batch "
                                         r"1,4,8`"):
        export_triton(b, tmp_path / "repo")
    r = export_triton(b, tmp_path / "repo", {"platform": "python"})  # pads, as Engine does
    net = (r.repository / "mednist" / "config.pbtxt").read_text()
    assert field(net, "max_batch_size") == ["8"]
    assert field(net, "preferred_batch_size") == ["[ 4, 8 ]"]


def test_existing_model_folders_are_kept_unless_overwrite(triton_bundle, tmp_path):
    export_triton(triton_bundle, tmp_path, {"platform": "python"})
    with pytest.raises(ValueError, match=r"already has model folder\(s\) \['mednist', "
                                         r".*pass overwrite=True"):
        export_triton(triton_bundle, tmp_path, {"platform": "python"})
    (tmp_path / "mednist" / "stale.txt").write_text("x")
    export_triton(triton_bundle, tmp_path, {"platform": "onnxruntime", "overwrite": True})
    assert not (tmp_path / "mednist" / "stale.txt").exists()
    assert not (tmp_path / "mednist" / "1" / "model.py").exists()  # replaced, not merged


@pytest.mark.parametrize("options,message", [
    ({"platform": "trt"}, "platform must be one of"),
    ({"kind": "tpu"}, "kind must be one of"),
    ({"platform": "tensorrt", "kind": "cpu"}, "a TensorRT plan runs on GPU instances"),
    ({"name": "my model"}, "name must be letters, digits"),
    ({"instances": 0}, "instances must be >= 1"),
    ({"max_queue_delay_us": -1}, "max_queue_delay_us must be >= 0"),
])
def test_bad_options_are_refused_with_the_fix(options, message):
    with pytest.raises(ValueError, match=message):
        ExportOptions(**options)


def test_k_beyond_the_labels_is_refused(triton_bundle, tmp_path):
    with pytest.raises(ValueError, match=r"k must be in \[1, 6\]"):
        export_triton(triton_bundle, tmp_path, {"platform": "python", "k": 7})


def test_pbtxt_writer_quotes_escapes_and_nests():
    text = to_pbtxt({"name": 'a "b"\\', "n": 3, "f": 0.5, "on": True, "kind": Enum("KIND_CPU"),
                     "dims": [1, 2], "skip": None, "none": [],
                     "sub": {"x": 1}, "rep": [{"key": "k", "value": {"string_value": "v"}}] * 2})
    assert text == ('name: "a \\"b\\"\\\\"\nn: 3\nf: 0.5\non: true\nkind: KIND_CPU\n'
                    'dims: [ 1, 2 ]\nsub {\n  x: 1\n}\n'
                    + 'rep {\n  key: "k"\n  value {\n    string_value: "v"\n  }\n}\n' * 2)
    with pytest.raises(ValueError, match="an enum value is an identifier"):
        Enum("TYPE FP32")


def test_cli_writes_the_repository_and_errors_are_one_line(triton_bundle, tmp_path, capsys):
    out = tmp_path / "repo"
    assert main(["export-triton", str(triton_bundle.path), "--out", str(out), "--platform",
                 "python", "--instances", "2", "--max-queue-delay-us", "250", "--name", "demo",
                 "--no-engine-model"]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}: demo, demo_preprocess, demo_postprocess, demo_pipeline" in printed
    assert "clients call demo_pipeline" in printed
    assert field((out / "demo" / "config.pbtxt").read_text(), "count") == ["2"]
    assert main(["export-triton", str(triton_bundle.path), "--out", str(tmp_path / "x")]) == 1
    assert main(["export-triton", str(triton_bundle.path), "--out", str(tmp_path / "y"),
                 "--instances", "none", "--platform", "python"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and err[0].startswith("medtrt: error: ") and "TensorRT-RTX" in err[0]
    assert err[1] == "medtrt: error: --instances must be an integer >= 1; got 'none'"
