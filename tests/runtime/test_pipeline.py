"""medtrt._C.Pipeline on the host device: the slot logic, packing, descriptors, growth and error
paths the CUDA pipeline shares, against the op-level kernels (resize_normalize, topk)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from medtrt._native import cuda_ready, native
from medtrt.ops import resize_normalize_mixed, topk
from medtrt.ops.resize_normalize import make_options

C = native()
OUT = (24, 20)


def make_pipeline(slots=2, classes=5, dtype="float32", logits_dtype="float32",
                  activation="softmax", channels=1):
    opts = make_options(OUT, channels=channels, mean=[0.25] * channels, std=[0.5] * channels,
                        dtype=dtype)
    return C.Pipeline(slots=slots, classes=classes, preprocess=opts, logits_dtype=logits_dtype,
                      activation=activation, device="cpu")


class LinearStage:
    """A deterministic compute stage: logits = flatten(input) @ W (+ a per-call record)."""

    def __init__(self, pipe, rng):
        c, h, w = pipe.input_shape
        self.pipe = pipe
        self.w = rng.standard_normal((c * h * w, pipe.classes)).astype(np.float32) * 0.05
        self.views = []

    def logits(self, x):
        return x.reshape(len(x), -1).astype(np.float32) @ self.w

    def __call__(self, view):
        self.views.append((view.slot, view.batch))
        x = self.pipe.host_input(view)
        self.pipe.host_logits(view)[...] = self.logits(x)


def random_images(rng, n, dtypes=("uint8",), channels=(1,)):
    out = []
    for _ in range(n):
        dtype = dtypes[rng.integers(len(dtypes))]
        h, w = rng.integers(1, 70, 2)
        shape = (h, w) if (c := channels[rng.integers(len(channels))]) == 1 else (h, w, c)
        if dtype == "float32":
            out.append(rng.uniform(0, 1, shape).astype(np.float32))
        else:
            info = np.iinfo(dtype)
            out.append(rng.integers(info.min, info.max, shape, endpoint=True).astype(dtype))
    return out


def expected(stage, images, **kw):
    x = resize_normalize_mixed(images, OUT, mean=0.25, std=0.5, **kw)
    logits = stage.logits(x)
    scores, indices = topk(logits, logits.shape[1], activation="softmax")
    return x, logits, scores, indices


@pytest.mark.parametrize("channels", [1, 3])
def test_mixed_ragged_batch_matches_the_ops(rng, channels):
    pipe = make_pipeline(channels=channels)
    stage = LinearStage(pipe, rng)
    images = random_images(rng, 37, ("uint8", "uint16", "int16", "float32"), (1, 3))
    slot = pipe.submit(images, stage, True)
    scores, indices, logits, times = pipe.wait(slot)
    _, ref_logits, ref_scores, ref_indices = expected(stage, images, channels=channels)
    # Same kernels, same inputs in the same batch positions: identical bits.
    np.testing.assert_array_equal(logits, ref_logits)
    np.testing.assert_array_equal(indices, ref_indices)
    np.testing.assert_array_equal(scores, ref_scores)
    assert set(times) == {"staging", "h2d", "preprocess", "compute", "postprocess", "d2h", "total"}
    assert all(v >= 0 for v in times.values()) and times["compute"] > 0


def test_float16_input_and_logits(rng):
    pipe = make_pipeline(dtype="float16", logits_dtype="float16", classes=3)
    seen = {}

    def stage(view):
        x = pipe.host_input(view)
        seen["dtype"], seen["shape"] = x.dtype, x.shape
        pipe.host_logits(view)[...] = x.reshape(len(x), -1)[:, :3]

    images = random_images(rng, 5, ("uint8",))
    scores, indices, logits, _ = pipe.wait(pipe.submit(images, stage, True))
    assert seen == {"dtype": np.float16, "shape": (5, 1, *OUT)}
    x = resize_normalize_mixed(images, OUT, mean=0.25, std=0.5, dtype="float16")
    np.testing.assert_array_equal(logits, x.reshape(5, -1)[:, :3].astype(np.float32))
    ref_scores, ref_indices = topk(x.reshape(5, -1)[:, :3].copy(), 3, activation="softmax")
    np.testing.assert_array_equal(indices, ref_indices)
    np.testing.assert_array_equal(scores, ref_scores)


def test_slots_rotate_and_every_batch_is_checked(rng):
    pipe = make_pipeline(slots=3)
    stage = LinearStage(pipe, rng)
    batches = [random_images(rng, int(rng.integers(1, 12)), ("uint8", "uint16")) for _ in range(40)]
    in_flight = []
    for images in batches:  # keep two batches in flight, collect the oldest
        in_flight.append((pipe.submit(images, stage, False), images))
        if len(in_flight) == 2:
            slot, imgs = in_flight.pop(0)
            scores, indices, logits, _ = pipe.wait(slot)
            assert logits is None
            _, _, ref_scores, ref_indices = expected(stage, imgs)
            np.testing.assert_array_equal(indices, ref_indices)
            np.testing.assert_array_equal(scores, ref_scores)
    for slot, _ in in_flight:
        pipe.wait(slot)
    assert {s for s, _ in stage.views} == {0, 1, 2}


def test_buffers_grow_only_for_a_larger_batch(rng):
    pipe = make_pipeline(slots=2)
    stage = LinearStage(pipe, rng)
    small = [rng.integers(0, 255, (64, 64), dtype=np.uint8) for _ in range(8)]
    for _ in range(4):
        pipe.wait(pipe.submit(small, stage))
    settled = pipe.memory()
    for _ in range(20):
        pipe.wait(pipe.submit(small, stage))
    assert pipe.memory() == settled  # same size again and again: nothing allocated
    pipe.wait(pipe.submit(small * 4, stage))
    grown = pipe.memory()
    assert grown["grows"] > settled["grows"] and grown["device"] > settled["device"]
    pipe.wait(pipe.submit(small[:2], stage))
    assert pipe.memory() == grown  # never shrinks


def test_reserve_preallocates_every_slot(rng):
    pipe = make_pipeline(slots=3)
    stage = LinearStage(pipe, rng)
    pipe.reserve(32, 32 * 64 * 64)
    reserved = pipe.memory()
    assert reserved["grows"] > 0 and reserved["pinned"] >= 3 * 32 * 64 * 64
    for n in (1, 32, 7):
        pipe.wait(pipe.submit([rng.integers(0, 255, (64, 64), dtype=np.uint8)] * n, stage))
    assert pipe.memory() == reserved


def test_exact_alloc_mode_sizes_every_buffer_to_the_batch(rng, monkeypatch):
    """MEDTRT_EXACT_ALLOC=1 (the sanitizer runs' mode): every batch gets buffers of exactly its
    size, freshly allocated, so an overrun cannot hide in spare capacity; results unchanged."""
    normal = make_pipeline(slots=1, classes=5)
    monkeypatch.setenv("MEDTRT_EXACT_ALLOC", "1")
    exact = make_pipeline(slots=1, classes=5)
    assert exact.exact_alloc and not normal.exact_alloc
    stage, twin = LinearStage(exact, rng), LinearStage(normal, rng)
    twin.w = stage.w
    c, h, w = exact.input_shape
    grows = 0
    for n in (8, 1, 8, 3):
        images = random_images(rng, n, ("uint8", "uint16"))
        got = exact.wait(exact.submit(images, stage, True))
        want = normal.wait(normal.submit(images, twin, True))
        for a, b in zip(got[:3], want[:3]):
            np.testing.assert_array_equal(a, b)
        m = exact.memory()
        # Host device: input, logits, scores and indices live in "device" memory.
        assert m["device"] == n * (c * h * w * 4 + 5 * (4 + 4 + 4)), (n, m)
        assert m["grows"] > grows  # reallocated for every batch, even a smaller one
        grows = m["grows"]
    assert normal.memory()["device"] > exact.memory()["device"]  # the normal one kept batch 8's


def test_host_views_are_checked_and_outlive_their_buffers(rng):
    """A host view is only handed out for the batch staged in its slot of this pipeline, and a
    view kept past its batch stays readable after the slot moves to a larger buffer (it owns a
    share of the memory; the sanitizer build would report a use-after-free otherwise)."""
    pipe, other = make_pipeline(slots=1), make_pipeline(slots=1)
    kept, refused = {}, []

    def stage(view):
        x = pipe.host_input(view)
        if not kept:
            kept.update(x=x, values=x.copy(), view=view)
        try:
            other.host_input(view)  # another pipeline's view
        except ValueError as e:
            refused.append(str(e))
        pipe.host_logits(view)[...] = 0

    pipe.wait(pipe.submit(random_images(rng, 2), stage))
    grows = pipe.memory()["grows"]
    pipe.wait(pipe.submit(random_images(rng, 40), stage))  # every buffer of the slot replaced
    assert pipe.memory()["grows"] > grows
    np.testing.assert_array_equal(kept["x"], kept["values"])
    assert len(refused) == 2 and "is not the batch now staged in slot 0" in refused[0]
    with pytest.raises(ValueError, match="not the batch now staged in slot 0 of this pipeline"):
        pipe.host_logits(kept["view"])  # a collected batch


def test_absurd_sizes_are_refused_not_wrapped():
    opts = make_options((2**24, 2**24), channels=3)  # 3 x 2^48 floats per image
    pipe = C.Pipeline(slots=1, classes=5, preprocess=opts, device="cpu")
    with pytest.raises(ValueError, match="does not fit in memory addresses; use a smaller batch"):
        pipe.reserve(2**31 - 1, 0)
    assert pipe.memory()["grows"] == 0  # refused before anything was allocated


def test_submit_into_another_callers_slot_keeps_their_batch(rng):
    pipe = make_pipeline(slots=2)
    stage = LinearStage(pipe, rng)
    images = random_images(rng, 3)
    slot = pipe.submit(images, stage)  # in flight
    with pytest.raises(ValueError, match=f"Pipeline.submit: slot {slot} is in flight"):
        pipe.submit(images, stage, False, slot)
    _, indices, _, _ = pipe.wait(slot)  # not released by the failed call: the batch is there
    np.testing.assert_array_equal(indices, expected(stage, images)[3])


def test_stage_out_without_a_compute_step_gives_nan_not_stale_memory(rng):
    pipe = make_pipeline(slots=1)
    stage = LinearStage(pipe, rng)
    pipe.wait(pipe.submit(random_images(rng, 4), stage))  # leaves real logits in the buffer
    slot = pipe.acquire()
    pipe.stage_in(slot, random_images(rng, 4))
    pipe.stage_out(slot, True)
    scores, _, logits, _ = pipe.wait(slot)
    assert np.isnan(logits).all() and np.isnan(scores).all()


def test_slot_state_errors_name_the_fix(rng):
    pipe = make_pipeline(slots=2)
    img = [rng.integers(0, 255, (8, 8), dtype=np.uint8)]
    with pytest.raises(ValueError, match=r"slot 0 is free \(acquire\(\) it first\)"):
        pipe.stage_in(0, img)
    with pytest.raises(ValueError, match=r"slot 0 is free"):
        pipe.wait(0)
    with pytest.raises(ValueError, match=r"slot 5 does not exist \(slots: 2\)"):
        pipe.wait(5)
    slot = pipe.acquire()
    with pytest.raises(ValueError, match=r"has no batch \(stage_in\(\) first\)"):
        pipe.stage_out(slot)
    with pytest.raises(ValueError, match=r"taken but not submitted"):
        pipe.wait(slot)
    pipe.stage_in(slot, img)
    with pytest.raises(ValueError, match=r"already holds a staged batch"):
        pipe.stage_in(slot, img)
    pipe.stage_out(slot)
    with pytest.raises(ValueError, match=r"in flight \(wait\(\) for it first\)"):
        pipe.stage_in(slot, img)
    pipe.wait(slot)


def test_a_failing_compute_stage_gives_its_slot_back(rng):
    pipe = make_pipeline(slots=1)
    img = [rng.integers(0, 255, (8, 8), dtype=np.uint8)]

    def broken(view):
        raise RuntimeError("compute stage exploded")

    with pytest.raises(RuntimeError, match="compute stage exploded"):
        pipe.submit(img, broken)
    slot = pipe.try_acquire()  # the only slot is free again
    assert slot == 0
    assert pipe.try_acquire() == -1
    pipe.release(slot)
    stage = LinearStage(pipe, rng)
    pipe.wait(pipe.submit(img, stage))


def test_bad_images_are_refused_with_their_batch_position(rng):
    pipe = make_pipeline()
    stage = LinearStage(pipe, rng)
    good = rng.integers(0, 255, (8, 8), dtype=np.uint8)
    with pytest.raises(ValueError, match=r"Pipeline.stage_in: resize_normalize: image 1 has 4 channels"):
        pipe.submit([good, rng.integers(0, 255, (8, 8, 4), dtype=np.uint8)], stage)
    with pytest.raises(ValueError, match=r"image 2 has dtype int64"):
        pipe.submit([good, good, np.ones((8, 8), np.int64)], stage)
    with pytest.raises(ValueError, match="empty batch"):
        pipe.submit([], stage)
    with pytest.raises(TypeError, match="image 1 is a <class 'str'>; expected a NumPy array"):
        pipe.submit([good, "not an image"], stage)
    assert pipe.try_acquire() >= 0  # every failure gave its slot back


def test_config_errors():
    opts = make_options(OUT)
    with pytest.raises(ValueError, match=r"slots must be in \[1, 16\]; got 0"):
        C.Pipeline(slots=0, classes=3, preprocess=opts)
    with pytest.raises(ValueError, match="classes must be >= 1"):
        C.Pipeline(slots=2, classes=0, preprocess=opts)
    with pytest.raises(ValueError, match="activation"):
        C.Pipeline(slots=2, classes=3, preprocess=opts, activation="relu")
    with pytest.raises(ValueError, match="channels must be 1 or 3"):
        C.Pipeline(slots=2, classes=3, preprocess=make_options(OUT, channels=2))
    with pytest.raises(ValueError, match="device must be 'cpu'"):
        C.Pipeline(slots=2, classes=3, preprocess=opts, device="tpu")


@pytest.mark.skipif(cuda_ready()[0], reason="checks the error on a machine without a usable GPU")
def test_cuda_device_without_a_gpu_says_why():
    from medtrt.errors import CudaError

    with pytest.raises((CudaError, RuntimeError), match="cuda|CUDA"):
        C.Pipeline(slots=2, classes=3, preprocess=make_options(OUT), device=0)


def test_acquire_blocks_until_a_slot_is_collected(rng):
    pipe = make_pipeline(slots=1)
    stage = LinearStage(pipe, rng)
    img = [rng.integers(0, 255, (8, 8), dtype=np.uint8)]
    first = pipe.submit(img, stage)
    got = []
    t = threading.Thread(target=lambda: got.append(pipe.acquire()))
    t.start()
    time.sleep(0.2)
    assert not got  # still blocked (and not holding the GIL: this thread runs)
    pipe.wait(first)
    t.join(timeout=10)
    assert got == [0]
    pipe.release(0)


def test_resident_batch_matches_a_staged_one(rng):
    """Images already in the device's memory (host memory on the cpu device) are read in place:
    same results as the staged path, and no staging or raw-pixel buffer is allocated."""
    staged, resident = make_pipeline(channels=3), make_pipeline(channels=3)
    stage = LinearStage(staged, rng)
    resident_stage = LinearStage(resident, rng)
    resident_stage.w = stage.w
    for _ in range(3):
        images = random_images(rng, 23, ("uint8", "uint16", "int16", "float32"), (1, 3))
        a = staged.wait(staged.submit(images, stage, True))
        b = resident.wait(resident.submit(images, resident_stage, True, resident=True))
        for x, y in zip(a[:3], b[:3]):
            np.testing.assert_array_equal(x, y)
        assert b[3]["staging"] < 1.0  # nothing packed
    # The staged pipeline packs the pixels (staging and raw buffers); the resident one holds only
    # descriptors, input, logits and results.
    assert resident.memory()["pinned"] < staged.memory()["pinned"]
    slot = resident.acquire()
    view = resident.stage_in_resident(slot, images[:4])
    assert view.batch == 4
    resident.stage_out(slot)
    resident.release(slot)


def test_resident_batch_errors(rng):
    pipe = make_pipeline()
    stage = LinearStage(pipe, rng)
    good = rng.integers(0, 255, (8, 8), dtype=np.uint8)
    with pytest.raises(ValueError, match=r"Pipeline.stage_in_resident: resize_normalize: image 1 "
                                         r"has 4 channels"):
        pipe.submit([good, np.zeros((8, 8, 4), np.uint8)], stage, resident=True)
    with pytest.raises(ValueError, match="empty batch"):
        pipe.submit([], stage, resident=True)
    assert pipe.try_acquire() >= 0  # every failure gave its slot back
