"""medtrt.Engine on the CPU: ONNX Runtime, OpenVINO and torch backends vs the PyTorch reference,
input forms, per-item errors, split/pad, threads, bundle checks."""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import numpy as np
import pytest
import torch

from helpers.heldout import held_out
from medtrt import Engine
from medtrt.build import BuildOptions, build
from medtrt.precision import CalibrationConfig, calibrate, insert_qdq, plan_qdq, to_fp16
from medtrt.runtime import BundleError
from medtrt.testing import PARITY


@pytest.fixture(scope="module")
def data(demo_model):
    return held_out(demo_model)


@pytest.fixture(scope="module")
def graphs(demo_model, data, tmp_path_factory):
    import onnx

    root = tmp_path_factory.mktemp("graphs")
    to_fp16(demo_model.onnx, root / "m.fp16.onnx")
    model = onnx.load(str(demo_model.onnx))
    plan = plan_qdq(model)
    cal = calibrate(demo_model.onnx, data.train_paths, plan.tensors, CalibrationConfig(num_images=128))
    insert_qdq(model, cal.amax, plan=plan, out=root / "m.int8.onnx")
    shutil.copy(demo_model.onnx, root / "m.fp32.onnx")
    return root


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_cpu_backends_vs_pytorch_reference(graphs, data, precision, backend):
    """The parity suite's thresholds (PARITY), here on the engine's own inputs and outputs, for
    each CPU runtime over the same graphs (OpenVINO runs the Q/DQ graph with its int8 kernels)."""
    if backend == "openvino":
        pytest.importorskip("openvino")
    t = PARITY[precision]
    with Engine(graphs / f"m.{precision}.onnx", backend=backend) as engine:
        assert engine.backend == backend and engine.precision == precision
        r = engine.infer(data.images, k=2, return_probs=True)
    assert np.mean(r.top1 == data.reference_probs.argmax(1)) >= t["min_top1"]
    assert r.indices.shape == (len(data.images), 2) and r.indices.dtype == np.int32
    np.testing.assert_allclose(r.probs.sum(axis=1), 1.0, atol=1e-5)
    assert np.abs(r.probs - data.reference_probs).max() <= t["max_prob_diff"]


def test_torch_backend_matches_reference(demo_model, data):
    engine = Engine(demo_model.checkpoint, device="cpu")
    r = engine.infer(data.images[:20], return_probs=True)
    assert engine.backend == "torch"
    np.testing.assert_allclose(r.probs, data.reference_probs[:20], atol=1e-5)


def test_every_input_form_gives_the_same_answer(demo_model, data):
    engine = Engine(demo_model.onnx)
    folder_paths = data.train_paths[:6]
    from medtrt.data import read_image

    arrays = [read_image(p) for p in folder_paths]
    expected = engine.infer(folder_paths).indices
    for form in (arrays, np.stack(arrays), torch.from_numpy(np.stack(arrays)),
                 [torch.from_numpy(a.copy()) for a in arrays], [a.astype(np.float32) / 255 for a in arrays]):
        np.testing.assert_array_equal(engine.infer(form).indices, expected)
    assert engine.infer(folder_paths)[0].source == str(folder_paths[0])


def test_ragged_batch_and_split_pad_equivalence(demo_model, data, rng):
    engine = Engine(demo_model.onnx)
    ragged = [data.images[0], np.asarray(rng.integers(0, 256, (100, 37)), np.uint8),
              np.repeat(data.images[1][..., None], 3, 2), data.images[2][:40, :50]]
    whole = engine.infer(ragged, return_probs=True)
    one_by_one = np.concatenate([engine.infer([x], return_probs=True).probs for x in ragged])
    np.testing.assert_allclose(whole.probs, one_by_one, atol=1e-6)
    split = Engine(demo_model.onnx, max_batch=3)
    np.testing.assert_allclose(split.infer(data.images[:10], return_probs=True).probs,
                               engine.infer(data.images[:10], return_probs=True).probs, atol=1e-6)
    split.min_batch = 4  # as a bundle whose profile starts at 4: a batch of 1 is padded
    np.testing.assert_allclose(split.infer(data.images[:1], return_probs=True).probs,
                               engine.infer(data.images[:1], return_probs=True).probs, atol=1e-6)


def test_unreadable_item_does_not_sink_the_batch(demo_model, data, tmp_path):
    (tmp_path / "broken.jpeg").write_bytes(b"\xff\xd8\xff garbage")
    paths = [data.train_paths[0], tmp_path / "broken.jpeg", data.train_paths[1]]
    r = Engine(demo_model.onnx).infer(paths)
    assert list(r.ok) == [True, False, True] and len(r.errors) == 1
    assert "broken.jpeg" in str(r[1].error) and r[1].labels == ()
    assert (r.indices[1] == -1).all() and np.isnan(r.scores[1]).all()
    assert r[0].label and r[2].label


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_threads_share_one_engine(demo_model, data, backend):
    if backend == "openvino":
        pytest.importorskip("openvino")
    engine = Engine(demo_model.onnx, backend=backend)
    batches = [data.images[i:i + 9] for i in range(0, 72, 9)]
    serial = [engine.infer(b).indices for b in batches]
    with ThreadPoolExecutor(8) as pool:
        parallel = list(pool.map(lambda b: engine.infer(b).indices, batches))
    for a, b in zip(serial, parallel):
        np.testing.assert_array_equal(a, b)


def test_more_chunks_than_slots_from_many_threads_never_deadlock(demo_model, data):
    reference = Engine(demo_model.onnx).infer(data.images[:40]).indices
    engine = Engine(demo_model.onnx, slots=1, max_batch=3)  # 10 images: 4 chunks, 1 slot
    batches = [data.images[i:i + 10] for i in range(0, 40, 10)]
    with ThreadPoolExecutor(4) as pool:
        out = list(pool.map(lambda b: engine.infer(b).indices, batches * 3))
    for i, got in enumerate(out):
        np.testing.assert_array_equal(got, reference[(i % 4) * 10:(i % 4) * 10 + 10])
    many = list(Engine(demo_model.onnx, slots=2, max_batch=3).infer_many(batches))
    np.testing.assert_array_equal(np.concatenate([r.indices for r in many]), reference)


def test_mixed_dtypes_in_one_batch(demo_model, data):
    engine = Engine(demo_model.onnx)
    img = data.images[0]
    forms = [img, img.astype(np.uint16) * 257, img.astype(np.float32) / 255, data.images[1]]
    whole = engine.infer(forms, return_probs=True)
    one_by_one = np.concatenate([engine.infer([x], return_probs=True).probs for x in forms])
    np.testing.assert_array_equal(whole.probs, one_by_one)
    np.testing.assert_allclose(whole.probs[:3], np.repeat(whole.probs[:1], 3, 0), atol=1e-5)


def test_pipeline_memory_is_flat_for_repeated_batches(demo_model, data):
    engine = Engine(demo_model.onnx, slots=2)
    engine.infer(data.images[:16])
    engine.infer(data.images[16:32])
    settled = engine.memory()
    for i in range(6):
        engine.infer(data.images[i * 16:(i + 1) * 16])
    assert engine.memory() == settled
    assert engine.last_stage_times and engine.last_stage_times[0]["compute"] > 0


def test_construction_reserves_every_slot_for_max_batch_images(demo_model, rng):
    """Buffers for max_batch stored images of the input size exist before the first batch (a
    pinned allocation mid-run synchronizes the device), so such batches allocate nothing."""
    engine = Engine(demo_model.onnx, slots=3, max_batch=24)
    reserved = engine.memory()
    c, (h, w) = engine.preset.in_channels, engine.preset.image_size
    assert reserved["grows"] > 0
    assert reserved["pinned"] >= 3 * 24 * c * h * w  # the packed staging alone
    images = [rng.integers(0, 256, (h, w), dtype=np.uint8) for _ in range(24)]
    for _ in engine.infer_many([images] * 4, k=2):  # every slot in turn
        pass
    engine.infer(images[:5])
    assert engine.memory() == reserved


def test_torch_only_options_are_refused_elsewhere(demo_model):
    with pytest.raises(ValueError, match=r"apply to the torch backend"):
        Engine(demo_model.onnx, precision="fp16")
    with pytest.raises(ValueError, match=r"FP16 on a CUDA GPU only"):
        Engine(demo_model.checkpoint, device="cpu", precision="fp16")
    with pytest.raises(ValueError, match=r"precision must be 'fp32' or 'fp16'"):
        Engine(demo_model.checkpoint, device="cpu", precision="int8")


def test_decode_option(demo_model):
    """nvJPEG decode is a GPU option: refused on a CPU engine, 'auto' falls back to the CPU
    readers, and where it cannot run the error says why (the GPU half is in
    test_pipeline_gpu.py)."""
    from medtrt.data.gpu_decode import DeviceImage, NvjpegDecoder, nvjpeg_status
    from medtrt.errors import MissingDependencyError

    with pytest.raises(ValueError, match=r"decode must be one of \('cpu', 'nvjpeg', 'auto'\)"):
        Engine(demo_model.onnx, decode="gpu")
    with pytest.raises(ValueError, match=r"decode='nvjpeg' decodes on the GPU; this engine runs "
                                         r"on the CPU"):
        Engine(demo_model.onnx, decode="nvjpeg")
    auto = Engine(demo_model.onnx, decode="auto")
    assert auto.decode == "cpu" and "decode=cpu" in repr(auto)
    ok, why = nvjpeg_status()
    if not ok:  # this machine: no GPU (or no torchvision) -> the reason, and a clear error
        assert why
        with pytest.raises(MissingDependencyError, match=r"nvJPEG decode is not available: .*"
                                                         r"use decode='cpu'"):
            NvjpegDecoder(0)
    with pytest.raises(ValueError, match="expected a contiguous CUDA tensor"):
        DeviceImage(torch.zeros((4, 4), dtype=torch.uint8), "uint8")
    with pytest.raises(ValueError, match="dtype must be one of"):
        DeviceImage(torch.zeros((4, 4), dtype=torch.uint8), "int64")


def test_infer_many_keeps_order(demo_model, data):
    engine = Engine(demo_model.onnx)
    out = list(engine.infer_many(data.images[:25], batch_size=10))
    assert [len(r) for r in out] == [10, 10, 5]
    np.testing.assert_array_equal(np.concatenate([r.indices for r in out]),
                                  engine.infer(data.images[:25]).indices)


def test_input_errors(demo_model, data):
    engine = Engine(demo_model.onnx)
    with pytest.raises(ValueError, match=r"empty batch"):
        engine.infer([])
    with pytest.raises(ValueError, match=r"item 0 contains NaN or Inf"):
        engine.infer([np.full((8, 8), np.nan, np.float32)])
    with pytest.raises(ValueError, match=r"item 1 has shape \(8, 8, 4\).*C in \(1, 3\)"):
        engine.infer([data.images[0], np.zeros((8, 8, 4), np.uint8)])
    with pytest.raises(ValueError, match=r"k must be in \[1, 6\]"):
        engine.infer(data.images[:1], k=9)
    with pytest.raises(TypeError, match=r"single path"):
        engine.infer(str(data.train_paths[0]))
    engine.close()
    with pytest.raises(RuntimeError, match=r"closed"):
        engine.infer(data.images[:1])
    with pytest.raises(ValueError, match=r"backend must be one of"):
        Engine(demo_model.onnx, backend="cuda")


@pytest.mark.trt
def test_bundle_checks(demo_model, data, tmp_path):
    result = build(demo_model.onnx, tmp_path, BuildOptions(precision="fp32", batch=(1, 8, 32)))
    auto = Engine(result.engine)  # no GPU here: the bundle's precision ONNX in ONNX Runtime
    assert auto.backend == "onnxruntime" and auto.max_batch == 32
    assert auto.infer(data.images[:5]).indices.shape == (5, 5)
    assert "Engine('model.fp32.engine', backend=onnxruntime, precision=fp32" in repr(auto)
    assert auto.fallback.startswith("TensorRT cannot run it on 0 here (") and "fallback=" in repr(
        auto)  # the reason is kept (and logged), not swallowed
    with pytest.raises(BundleError, match=r"needs a CUDA GPU: .*use backend='onnxruntime'"):
        Engine(result.engine, backend="tensorrt")
    with pytest.raises(ValueError, match=r"backend='tensorrt' runs on a GPU; with device='cpu'"):
        Engine(result.engine, backend="tensorrt", device="cpu")
    assert Engine(result.engine, device="cpu").backend == "onnxruntime"
    assert Engine(result.engine, device="cpu").fallback is None  # what was asked for
    b = result.bundle
    replace(b, tensorrt=replace(b.tensorrt, version="0.0.1")).write(result.bundle_json)
    with pytest.raises(BundleError,
                       match=r"built with tensorrt_rtx 0.0.1 but .* is installed; rebuild"):
        Engine(result.engine, backend="tensorrt")
    with open(result.engine, "r+b") as f:
        f.truncate(1000)
    with pytest.raises(BundleError, match=r"is 1000 bytes but its bundle says .* \(truncated"):
        Engine(result.engine)
    result.bundle_json.unlink()
    with pytest.raises(BundleError, match=r"engine.json is missing"):
        Engine(result.engine)


def test_infer_inside_an_infer_many_loop_does_not_deadlock(demo_model, data):
    import threading

    engine = Engine(demo_model.onnx, slots=1, max_batch=4)
    seen = []

    def consume():
        for r in engine.infer_many([data.images[:8], data.images[8:16], data.images[16:20]]):
            seen.append((r.indices, engine.infer(data.images[:2]).indices))

    t = threading.Thread(target=consume, daemon=True)
    t.start()
    t.join(timeout=60)
    assert not t.is_alive(), "infer() inside an infer_many loop blocked on a slot"
    assert len(seen) == 3
    np.testing.assert_array_equal(np.concatenate([a for a, _ in seen]),
                                  engine.infer(data.images[:20]).indices)


def test_every_fallback_is_logged_and_kept(demo_model, caplog, tmp_path):
    """One rule for every backend: a GPU asked for and not used is a logged fallback (logged by
    medtrt.runtime.loader), kept in Engine.fallback and its repr; the CPU asked for is no
    fallback."""
    import logging

    from helpers.bundles import unrunnable_bundle
    from medtrt._native import cuda_ready

    bundle = unrunnable_bundle(demo_model.onnx, tmp_path)  # no machine's TensorRT runs it
    with caplog.at_level(logging.INFO, logger="medtrt.runtime"):
        ckpt = Engine(demo_model.checkpoint, device=0)
        onnx = Engine(demo_model.onnx, device="cuda:0")  # ONNX Runtime runs on the CPU here
        engine = Engine(bundle.engine_path, device=0)
    assert "ONNX Runtime on the CPU, not on 'cuda:0'" in onnx.fallback
    logged = [r.getMessage() for r in caplog.records]
    assert any(onnx.fallback in m for m in logged)
    assert engine.backend == "onnxruntime" and engine.bundle == bundle
    assert engine.fallback.startswith("TensorRT cannot run it on 0 here (the engine was built "
                                      "with tensorrt 0.0-not-here")
    assert f"{bundle.engine_path}: {engine.fallback}" in logged
    assert f"fallback={engine.fallback!r}" in repr(engine)
    assert (engine.min_batch, engine.max_batch, engine.precision) == (2, 8, "fp16")
    if cuda_ready()[0]:  # a GPU machine: the checkpoint runs where it was asked to
        assert ckpt.device == "cuda:0" and ckpt.fallback is None
    else:
        assert ckpt.device == "cpu" and "torch sees no CUDA device for 0" in ckpt.fallback
        assert any(ckpt.fallback in m for m in logged)
    assert Engine(demo_model.checkpoint, device="cpu").fallback is None
    assert Engine(demo_model.onnx, device="cpu").fallback is None
