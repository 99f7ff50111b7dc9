"""medtrt.runtime.loader: which stage a file and a backend give, on which device, with what
batch limits, and every fallback logged with its reason (one rule for all backends)."""

from __future__ import annotations

import logging
import sys

import pytest

from helpers.bundles import NOT_HERE, unrunnable_bundle
from medtrt.errors import BundleError, MissingDependencyError
from medtrt.runtime.cpu_choice import ENV
from medtrt.runtime.loader import cuda_index, describe, load_stage
from medtrt.runtime.stages import OnnxRuntimeStage, OpenVinoStage, Stage, TorchStage

LOGGER = "medtrt.runtime.loader"


@pytest.fixture(scope="module")
def bundle(demo_model, tmp_path_factory):
    return unrunnable_bundle(demo_model.onnx, tmp_path_factory.mktemp("bundle"))


def fallbacks_logged(caplog):
    return [r.getMessage() for r in caplog.records
            if r.name == LOGGER and r.levelno == logging.INFO]


def test_a_bundle_tensorrt_cannot_run_falls_back_to_its_onnx_and_says_why(bundle, caplog):
    with caplog.at_level(logging.INFO, logger=LOGGER):
        loaded = load_stage(bundle.engine_path, "auto", 0)
    assert isinstance(loaded.stage, OnnxRuntimeStage) and isinstance(loaded.stage, Stage)
    assert loaded.fallback.startswith(f"TensorRT cannot run it on 0 here (the engine was built "
                                      f"with tensorrt {NOT_HERE}, which is not installed here")
    assert loaded.fallback.endswith("running its precision ONNX in ONNX Runtime on the CPU")
    assert fallbacks_logged(caplog) == [f"{bundle.engine_path}: {loaded.fallback}"]
    # What the bundle says travels with the stage: its record, preset, precision, profile.
    assert loaded.bundle == bundle and loaded.preset == bundle.preset
    assert (loaded.precision, loaded.min_batch, loaded.profile_max) == ("fp16", 2, 8)
    loaded.stage.close()

    caplog.clear()
    with caplog.at_level(logging.INFO, logger=LOGGER):
        for asked in ({"device": "cpu"}, {"backend": "onnxruntime"}):  # no fallback: as asked
            got = load_stage(bundle.path, **asked)
            assert isinstance(got.stage, OnnxRuntimeStage) and got.fallback is None
        with pytest.raises(BundleError, match=rf"TensorRT cannot run it here: .*{NOT_HERE}"):
            load_stage(bundle.engine_path, "tensorrt", "cuda:0")
    assert fallbacks_logged(caplog) == []


def test_an_onnx_file_asked_for_on_a_gpu_runs_on_the_cpu_and_says_why(demo_model, caplog):
    with caplog.at_level(logging.INFO, logger=LOGGER):
        loaded = load_stage(demo_model.onnx, "auto", "cuda:0", threads=2)
        plain = load_stage(demo_model.onnx, "onnxruntime", "cpu")
    assert loaded.fallback == ("an ONNX file runs in ONNX Runtime on the CPU, not on 'cuda:0'; "
                               "build an engine bundle (`medtrt build`) to run on a GPU")
    assert fallbacks_logged(caplog) == [f"{demo_model.onnx}: {loaded.fallback}"]
    assert plain.fallback is None and plain.bundle is None
    assert (loaded.precision, loaded.min_batch, loaded.profile_max) == ("fp32", 1, None)
    assert loaded.stage.session.get_session_options().intra_op_num_threads == 2


def test_a_checkpoint_asked_for_on_a_gpu_torch_cannot_see_runs_on_the_cpu(demo_model, caplog,
                                                                           monkeypatch):
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # every machine: no GPU
    with caplog.at_level(logging.INFO, logger=LOGGER):
        loaded = load_stage(demo_model.checkpoint, "torch", 0)
        on_cpu = load_stage(demo_model.checkpoint, device="cpu")
    assert isinstance(loaded.stage, TorchStage) and loaded.stage.device == "cpu"
    assert loaded.fallback == "torch sees no CUDA device for 0; running the model on the CPU"
    assert fallbacks_logged(caplog) == [f"{demo_model.checkpoint}: {loaded.fallback}"]
    assert on_cpu.fallback is None and on_cpu.precision == "fp32"


def test_arguments_that_cannot_apply_are_refused(demo_model, bundle):
    ckpt, onnx = demo_model.checkpoint, demo_model.onnx
    with pytest.raises(ValueError, match=r"backend must be one of \('auto', 'tensorrt'"):
        load_stage(onnx, "cuda")
    with pytest.raises(ValueError, match=r"slots must be in \[1, 16\]; got 17"):
        load_stage(onnx, slots=17)
    with pytest.raises(FileNotFoundError, match="nope.onnx does not exist"):
        load_stage(onnx.with_name("nope.onnx"))
    with pytest.raises(ValueError, match="precision must be 'fp32' or 'fp16'; got 'int8'"):
        load_stage(ckpt, precision="int8")
    with pytest.raises(ValueError, match="precision= and cuda_graphs= apply to the torch"):
        load_stage(bundle.path, cuda_graphs=True)
    with pytest.raises(ValueError, match="compile= and channels_last= apply to the torch backend"):
        load_stage(onnx, compile=True)
    with pytest.raises(ValueError, match="threads= sets ONNX Runtime's intra-op threads"):
        load_stage(ckpt, device="cpu", threads=2)
    with pytest.raises(ValueError, match="threads must be >= 0"):
        load_stage(onnx, threads=-1)
    with pytest.raises(ValueError, match="a bundle runs with backend 'tensorrt', 'onnxruntime' "
                                         "or 'openvino'; got 'torch'"):
        load_stage(bundle.path, "torch")
    with pytest.raises(ValueError, match="an ONNX file runs with backend 'onnxruntime' or "
                                         "'openvino'; got 'tensorrt'"):
        load_stage(onnx, "tensorrt")
    for backend in ("onnxruntime", "openvino"):
        with pytest.raises(ValueError, match="a checkpoint runs with backend 'torch'"):
            load_stage(ckpt, backend)
    with pytest.raises(ValueError, match=r"backend='tensorrt' runs on a GPU; with device='cpu'"):
        load_stage(bundle.path, "tensorrt", "cpu")


@pytest.mark.parametrize("device,index", [(0, 0), (3, 3), ("2", 2), ("cuda", 0), ("cuda:1", 1)])
def test_cuda_index(device, index):
    assert cuda_index(device) == index


@pytest.mark.parametrize("device", ["gpu:0", "cuda:x", "cuda:"])
def test_cuda_index_refuses_what_is_not_a_gpu(device):
    with pytest.raises(ValueError, match=rf"device must be a GPU index, .*got '{device}'"):
        cuda_index(device)


def test_describe_reads_what_load_stage_would_load_without_loading_it(demo_model, bundle):
    """What a planning process (a Ray driver) learns of a model: the preset and precision its
    Engine would report and its batch limits, with no stage made."""
    for path, batches in ((bundle.engine_path, (2, 4, 8)), (demo_model.onnx, (1, None, None)),
                          (demo_model.checkpoint, (1, None, None))):
        d = describe(path)
        loaded = load_stage(path, "auto", "cpu")
        try:
            assert (d.preset, d.precision) == (loaded.preset, loaded.precision), path
            assert (d.min_batch, d.opt_batch, d.max_batch) == batches, path
        finally:
            loaded.stage.close()
    with pytest.raises(ValueError, match=r"preset= applies to an ONNX file"):
        describe(bundle.engine_path, preset="mednist")
    with pytest.raises(FileNotFoundError):
        describe(demo_model.onnx.with_name("gone.onnx"))


def test_openvino_runs_an_onnx_file_or_a_bundles_onnx_where_asked(demo_model, bundle, caplog):
    """backend="openvino": the graph as it is, in OpenVINO on the CPU, with the threads asked for
    and f32 inference precision (OpenVINO's default on a CPU with AMX or AVX512_BF16 is bf16);
    asked for by name, it is no fallback and no choice."""
    ov = pytest.importorskip("openvino")
    with caplog.at_level(logging.INFO, logger=LOGGER):
        onnx = load_stage(demo_model.onnx, "openvino", "cpu", threads=2)
        from_bundle = load_stage(bundle.engine_path, "openvino", 0)
    for loaded in (onnx, from_bundle):
        assert isinstance(loaded.stage, OpenVinoStage) and isinstance(loaded.stage, Stage)
        assert loaded.fallback is None and loaded.backend_choice is None
        assert loaded.stage.compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.f32
    assert fallbacks_logged(caplog) == []
    assert onnx.stage.compiled.get_property("INFERENCE_NUM_THREADS") == 2
    assert str(onnx.stage.compiled.get_property("PERFORMANCE_HINT")) == "LATENCY"
    assert (from_bundle.precision, from_bundle.min_batch, from_bundle.profile_max) == ("fp16", 2, 8)
    for loaded in (onnx, from_bundle):
        loaded.stage.close()


def test_openvino_not_installed_names_the_extra(demo_model, bundle, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` raises ImportError
    for path in (demo_model.onnx, bundle.path):
        with pytest.raises(MissingDependencyError, match=r"pip install 'medtrt\[openvino\]'"):
            load_stage(path, "openvino", "cpu")
    monkeypatch.setenv(ENV, "openvino")
    with pytest.raises(MissingDependencyError, match=r"pip install 'medtrt\[openvino\]'"):
        load_stage(demo_model.onnx, "auto", "cpu")


def test_a_fallback_names_the_cpu_runtime_auto_chose(demo_model, bundle, monkeypatch):
    pytest.importorskip("openvino")
    monkeypatch.setenv(ENV, "openvino")
    loaded = load_stage(bundle.engine_path, "auto", 0)
    assert isinstance(loaded.stage, OpenVinoStage) and loaded.backend_choice.source == "env"
    assert loaded.fallback.endswith("running its precision ONNX in OpenVINO on the CPU")
    onnx = load_stage(demo_model.onnx, "auto", "cuda:0")
    assert onnx.fallback.startswith("an ONNX file runs in OpenVINO on the CPU, not on 'cuda:0'")
    for s in (loaded, onnx):
        s.stage.close()
