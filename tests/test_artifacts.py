"""medtrt.artifacts: the engine bundle and the ONNX metadata as typed records. A round trip gives
back the same record; every damaged, tampered, old or newer file is refused with a BundleError
(ArtifactError for ONNX metadata) that names the file, what is wrong and the fix."""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import replace

import onnx
import pytest

from medtrt import Engine
from medtrt.artifacts import Bundle, OnnxMetadata, sha256_file
from medtrt.build import BuildOptions, build
from medtrt.errors import ArtifactError, BundleError
from medtrt.export import read_metadata

REBUILD = r"rebuild it with `medtrt build model\.onnx --batch 1,8,32`"  # the bundle's own command
REBUILD_ANY = r"rebuild it with `medtrt build model\.onnx"  # from a bundle too damaged to read
GENERIC = r"rebuild it with `medtrt build MODEL\.onnx` \(the model's exported ONNX\)"  # unreadable


@pytest.fixture(scope="module")
def built(demo_model, tmp_path_factory):
    """One real FP32 bundle (TensorRT-RTX builds it without a GPU), never modified: tests tamper
    with copies."""
    return build(demo_model.onnx, tmp_path_factory.mktemp("bundle"),
                 BuildOptions(precision="fp32", batch=(1, 8, 32), check_images=8))


def copy_bundle(built, dst, *, copy=("json",)):
    """The bundle in ``dst``: the files named in ``copy`` ("json", "engine", "onnx") copied, so
    a test can change them; the others linked to the pristine build."""
    files = {"json": built.bundle_json, "engine": built.engine, "onnx": built.precision_onnx}
    for kind, src in files.items():
        (shutil.copyfile(src, dst / src.name) if kind in copy else (dst / src.name).symlink_to(src))
    return dst / built.bundle_json.name


def edit_json(path, change):
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def overwrite_middle(path):
    """Same size, different bytes (a sha256 mismatch the size check cannot see)."""
    with open(path, "r+b") as f:
        f.seek(path.stat().st_size // 2)
        chunk = f.read(64)
        f.seek(-len(chunk), 1)
        f.write(bytes(b ^ 0xFF for b in chunk))


@pytest.mark.trt
def test_bundle_round_trip(built):
    b = built.bundle
    assert Bundle.read(built.bundle_json) == b == Bundle.read(built.engine)
    assert Bundle.from_dict(json.loads(json.dumps(b.to_dict()))) == b
    assert json.loads(built.bundle_json.read_text()) == b.to_dict()
    assert b.path == built.bundle_json and b.engine_path == built.engine
    assert b.engine.sha256 == sha256_file(built.engine)
    assert b.precision_onnx.sha256 == sha256_file(built.precision_onnx)
    assert b.output.classes == len(b.preset.labels) == 6
    assert b.rebuild_command() == "medtrt build model.onnx --batch 1,8,32"


def test_onnx_metadata_round_trip(demo_model):
    meta = OnnxMetadata.read(demo_model.onnx)
    assert OnnxMetadata.from_props(meta.to_props()) == meta
    assert meta.preset == read_metadata(demo_model.onnx)[0]
    assert meta.export.batch == "dynamic" and [c.batch for c in meta.export_check] == [1, 7, 64]
    model = onnx.load(str(demo_model.onnx), load_external_data=False)
    assert meta.to_props() == {p.key: p.value for p in model.metadata_props
                               if p.key.startswith("medtrt.")}


# -- the tampered bundles, end to end through Engine: each was a raw error before


@pytest.mark.trt
def test_corrupt_json_is_refused(built, tmp_path):
    path = copy_bundle(built, tmp_path)
    path.write_text(path.read_text()[:200])
    with pytest.raises(BundleError, match=r"model\.fp32\.engine\.json is not valid JSON \(.*\): "
                                          rf"the file was damaged; {GENERIC}"):
        Engine(path, device="cpu")


@pytest.mark.trt
def test_labels_that_do_not_match_the_output_are_refused(built, tmp_path, demo_model):
    path = copy_bundle(built, tmp_path)
    edit_json(path, lambda d: d["preset"].update(labels=d["preset"]["labels"][:5]))
    with pytest.raises(BundleError, match=r"engine\.json: bundle: the model outputs 6 classes but "
                                          r"the bundle's preset lists 5 labels; the file was "
                                          rf"damaged or edited: {REBUILD_ANY}`"):
        Engine(path, device="cpu")


@pytest.mark.trt
def test_corrupt_precision_onnx_is_refused(built, tmp_path):
    path = copy_bundle(built, tmp_path, copy=("json", "onnx"))
    overwrite_middle(tmp_path / "model.fp32.onnx")
    with pytest.raises(BundleError, match=r"precision ONNX .*model\.fp32\.onnx has sha256 "
                                          r"\w+\.\.\. but its bundle .* records \w+\.\.\. \(changed or "
                                          rf"replaced after the build\); {REBUILD}"):
        Engine(path, device="cpu")


@pytest.mark.trt
def test_engine_overwritten_at_the_same_size_is_refused(built, tmp_path):
    path = copy_bundle(built, tmp_path, copy=("json", "engine"))
    overwrite_middle(tmp_path / "model.fp32.engine")
    assert (tmp_path / "model.fp32.engine").stat().st_size == built.bundle.engine.bytes
    with pytest.raises(BundleError, match=r"engine file .*model\.fp32\.engine has sha256 .* "
                                          rf"\(changed or replaced after the build\); {REBUILD}"):
        Engine(path, device="cpu")


# -- the other ways a bundle can be missing, damaged, old or new


@pytest.mark.trt
def test_missing_and_truncated_files_are_refused(built, tmp_path):
    path = copy_bundle(built, tmp_path, copy=("json", "engine"))
    with open(tmp_path / "model.fp32.engine", "r+b") as f:
        f.truncate(1000)
    with pytest.raises(BundleError, match=r"engine file .* is 1000 bytes but its bundle says \d+ "
                                          rf"\(truncated or replaced\); {REBUILD}"):
        Bundle.read(path)
    (tmp_path / "model.fp32.engine").unlink()
    with pytest.raises(BundleError, match=rf"engine file .*model\.fp32\.engine is missing "
                                          rf"\(listed by .*\); {REBUILD}"):
        Engine(tmp_path / "model.fp32.engine", device="cpu")
    path.unlink()
    with pytest.raises(BundleError, match=r"model\.fp32\.engine\.json is missing: an engine bundle "
                                          rf"is NAME\.engine plus NAME\.engine\.json; {GENERIC}"):
        Bundle.read(tmp_path / "model.fp32.engine")


@pytest.mark.trt
def test_missing_precision_onnx_is_refused_where_it_is_needed(built, tmp_path):
    path = copy_bundle(built, tmp_path)
    (tmp_path / "model.fp32.onnx").unlink()
    bundle = Bundle.read(path)  # TensorRT needs only the engine
    assert bundle.engine_path.is_file()
    with pytest.raises(BundleError, match=r"model\.fp32\.onnx is missing: the bundle .* runs it "
                                          r"in ONNX Runtime where TensorRT cannot run the engine "
                                          rf"\(device='cpu' was asked for\); copy it beside the "
                                          rf"engine, or {REBUILD}"):
        Engine(path, device="cpu")


@pytest.mark.trt
@pytest.mark.parametrize("change,message", [
    (lambda d: d.update(schema_version=4),
     r"written by a newer medtrt \(bundle schema 4; this medtrt reads 3\): upgrade medtrt, or "
     rf"{REBUILD_ANY}` with this one"),
    (lambda d: d.pop("schema_version"),
     r"written by an older medtrt \(format 'medtrt-engine-bundle', no schema version; this "
     rf"medtrt reads schema 2 to 3\); {REBUILD_ANY}`"),
    (lambda d: d.update(format="something-else"),
     rf"is not a medtrt engine bundle .*; {GENERIC}"),
    (lambda d: d["input"]["profile"]["min"].__setitem__(0, "1"),
     rf"bundle\.input\.profile\.min\[0\] must be an integer; got a string '1'.*{REBUILD_ANY}"),
    (lambda d: d["input"]["profile"].update(min=[64, 1, 64, 64]),
     rf"bundle\.input\.profile: profile batch must be 1 <= min <= opt <= max; got 64, 8, 32"),
    (lambda d: d["engine"].update(file="../elsewhere.engine"),
     r"bundle\.engine: file must be a bare file name beside the bundle; got '\.\./elsewhere"),
    (lambda d: d.pop("tensorrt"), r"bundle lacks field\(s\) \['tensorrt'\]"),
    (lambda d: d.update(executed=False), r"bundle has unknown field\(s\) \['executed'\]"),
    (lambda d: d.update(precision="int4"), r"precision must be one of \('fp32', 'fp16', 'int8'\)"),
])
def test_damaged_or_foreign_json_is_refused(built, tmp_path, change, message):
    path = copy_bundle(built, tmp_path)
    edit_json(path, change)
    with pytest.raises(BundleError, match=message) as info:
        Bundle.read(path)
    assert str(path) in str(info.value) and "medtrt build" in str(info.value)


@pytest.mark.trt
def test_a_bundle_from_the_previous_medtrt_is_refused(built, tmp_path):
    """The unversioned layout written before schema 2 ("format": "medtrt-engine-bundle/1")."""
    path = copy_bundle(built, tmp_path)
    path.write_text(json.dumps({
        "format": "medtrt-engine-bundle/1", "engine": "model.fp32.engine", "engine_bytes": 1,
        "precision": "fp16", "source_onnx": {"name": "model.onnx", "sha256": "0" * 64},
        "executed": False}))
    with pytest.raises(BundleError, match=r"written by an older medtrt \(format "
                                          r"'medtrt-engine-bundle/1', no schema version; this "
                                          r"medtrt reads schema 2 to 3\); rebuild it with `medtrt "
                                          r"build model\.onnx --fp16`"):
        Engine(path, device="cpu")


# -- where it runs: decided when it is loaded


@pytest.mark.trt
def test_why_not_runnable_is_decided_here(built, tmp_path, monkeypatch):
    from medtrt._native import cuda_ready

    b = built.bundle
    ok, why_no_gpu = cuda_ready()
    if not ok:
        assert b.why_not_runnable(0) == (
            f"running a TensorRT engine needs a CUDA GPU: {why_no_gpu}; use "
            "backend='onnxruntime' (runs the bundle's precision ONNX on the CPU)")
    other = replace(b, tensorrt=replace(b.tensorrt, version="0.0.1"))
    assert other.why_not_runnable(0).startswith(
        f"the engine was built with {b.tensorrt.flavour} 0.0.1 but {b.tensorrt.version} is "
        f"installed; rebuild it with `medtrt build model.onnx --batch 1,8,32` here")
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    full = replace(b, tensorrt=replace(b.tensorrt, flavour="tensorrt"))
    assert full.why_not_runnable(0).startswith(
        f"the engine was built with tensorrt {b.tensorrt.version}, which is not installed here")
    path = copy_bundle(built, tmp_path)
    full.write(path)
    with pytest.raises(BundleError, match=r"engine\.json: TensorRT cannot run it here: the engine "
                                          r"was built with tensorrt .* not installed here"):
        Engine(path, backend="tensorrt")
    engine = Engine(path)  # auto: the precision ONNX in ONNX Runtime, the reason logged
    assert engine.backend == "onnxruntime"


# -- ONNX metadata


def tiny_model(classes, props):
    """A one-node graph [N, 6] -> [N, classes] carrying ``props`` as metadata."""
    x = onnx.helper.make_tensor_value_info("image", onnx.TensorProto.FLOAT, ["N", 6])
    y = onnx.helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["N", classes])
    model = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["image"], ["logits"])], "g", [x], [y]))
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    return model


def test_onnx_metadata_errors_name_the_file_and_the_fix(demo_model):
    props = OnnxMetadata.read(demo_model.onnx).to_props()
    assert OnnxMetadata.from_model(tiny_model(6, props), "m.onnx").preset.num_classes == 6
    cases = [
        (tiny_model(5, props), r"m\.onnx: its preset lists 6 labels but the graph outputs 5 "
                               r"classes; re-export it with `medtrt export"),
        (tiny_model(6, {**props, "medtrt.format": "medtrt-onnx/3"}),
         r"m\.onnx was exported by a newer medtrt \(medtrt-onnx/3; this medtrt reads "
         r"medtrt-onnx/2\): upgrade medtrt, or re-export"),
        (tiny_model(6, {**props, "medtrt.preset": "{"}),
         r"m\.onnx: metadata medtrt\.preset is not valid JSON .*; re-export it with "
         r"`medtrt export"),
        (tiny_model(6, {**props, "medtrt.export": json.dumps({"opset": "18", "batch": 1,
                                                              "torch": "2"})}),
         r"m\.onnx: metadata\.export\.opset must be an integer; got a string '18'; the medtrt "
         r"metadata was damaged or edited: re-export"),
        (tiny_model(6, {}), r"m\.onnx was not exported by medtrt \(no medtrt\.preset metadata\): "
                            r"give its preset \(--preset FILE\|NAME, .*\), or export it with "
                            r"`medtrt export`"),
    ]
    for model, message in cases:
        with pytest.raises(ArtifactError, match=message):
            OnnxMetadata.from_model(model, "m.onnx")


@pytest.mark.trt
def test_an_onnx_whose_labels_do_not_match_is_refused_by_engine_and_build(demo_model, tmp_path):
    """Before: a NumPy broadcast error at infer time (ONNX Runtime), or a bundle with wrong
    labels."""
    model = onnx.load(str(demo_model.onnx))
    meta = OnnxMetadata.from_model(model)
    replace(meta, preset=meta.preset.with_labels(meta.preset.labels[:5])).write(model)
    onnx.save(model, str(tmp_path / "five.onnx"))
    fix = r"five\.onnx: its preset lists 5 labels but the graph outputs 6 classes; re-export"
    with pytest.raises(ArtifactError, match=fix):
        Engine(tmp_path / "five.onnx")
    with pytest.raises(ArtifactError, match=fix):
        build(tmp_path / "five.onnx", tmp_path, BuildOptions())
    assert [p.name for p in tmp_path.iterdir()] == ["five.onnx"]  # refused before any work
