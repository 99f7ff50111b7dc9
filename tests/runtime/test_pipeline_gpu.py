"""The CUDA pipeline (marked gpu): every batch checked against the host twin, slot reuse, stage
overlap, flat memory, the torch GPU stage (eager and CUDA graphs) vs the PyTorch reference, and
TensorRT engines where full TensorRT and a GPU exist (marked trt)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from helpers.reference import check_same_order
from medtrt._native import native
from medtrt.ops.resize_normalize import make_options

pytestmark = pytest.mark.gpu

C = native()
OUT = (64, 64)
CLASSES = 16
REUSE_BATCHES = 1000  # (the sanitizer runs drive tools/gpu_sanitize.py, not these tests)


def make(device, slots=2, dtype="float32"):
    opts = make_options(OUT, mean=0.5, std=0.25, dtype=dtype)
    return C.Pipeline(slots=slots, classes=CLASSES, preprocess=opts, logits_dtype=dtype,
                      activation="softmax", device=device)


class Probe:
    """Compute stage whose logits are CLASSES chosen input values: a pure copy, so the CUDA
    pipeline must equal the host twin bit for bit (resize_normalize is exact between them)."""

    def __init__(self, pipe, rng, cuda):
        self.pipe, self.cuda = pipe, cuda
        self.where = rng.choice(OUT[0] * OUT[1], CLASSES, replace=False)
        if cuda:
            import torch

            self.torch = torch
            self.index = torch.as_tensor(self.where, device="cuda")

    def __call__(self, view):
        if not self.cuda:
            x = self.pipe.host_input(view).reshape(view.batch, -1)
            self.pipe.host_logits(view)[...] = x[:, self.where]
            return
        from medtrt.runtime.stages import cuda_alias

        torch = self.torch
        x = cuda_alias(view.input, (view.batch, OUT[0] * OUT[1]), "float32", "cuda:0")
        out = cuda_alias(view.logits, (view.batch, CLASSES), "float32", "cuda:0")
        with torch.cuda.stream(torch.cuda.ExternalStream(view.stream)):
            torch.index_select(x, 1, self.index, out=out)


def batch_of(rng, n):
    out = []
    for _ in range(n):
        h, w = rng.integers(8, 160, 2)
        if rng.random() < 0.5:
            out.append(rng.integers(0, 256, (h, w), dtype=np.uint8))
        else:
            out.append(rng.integers(0, 65536, (h, w), dtype=np.uint16))
    return out


@pytest.mark.parametrize("slots", [2, 3])
def test_slot_reuse_over_1000_batches_matches_the_host_twin(rng, slots):
    gpu, host = make(0, slots), make("cpu", 1)
    probe = Probe(gpu, rng, cuda=True)
    twin = Probe(host, rng, cuda=False)
    twin.where = probe.where
    in_flight = []
    for i in range(REUSE_BATCHES):
        images = batch_of(rng, int(rng.integers(1, 33)))
        in_flight.append((gpu.submit(images, probe, True), images, i))
        if len(in_flight) == slots:
            slot, imgs, j = in_flight.pop(0)
            got = gpu.wait(slot)
            want = host.wait(host.submit(imgs, twin, True))
            # Logits are copied input values (resize_normalize is exact between devices);
            # softmax scores may differ in the last bits (row sums run in another order on the
            # GPU, CUDA expf is not glibc's), so near-tied logits (within 1e-6) may swap places.
            assert np.array_equal(got[2], want[2]), f"batch {j} (slot {slot}): logits differ"
            check_same_order(got[1], want[1], got[2], name=f"batch {j} (slot {slot}): indices")
            np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-7,
                                       err_msg=f"batch {j} (slot {slot}): scores")
    for slot, _, _ in in_flight:
        gpu.wait(slot)


def test_resident_batch_waits_for_its_producer_and_matches_the_host_twin(rng):
    """CUDA tensors read in place (no staging, no pixel upload) after the stream that wrote them:
    the images are filled on a side stream behind a long sleep, so a slot that did not wait for
    that stream would read them unwritten."""
    import torch

    gpu, host = make(0, 2), make("cpu", 1)
    probe = Probe(gpu, rng, cuda=True)
    twin = Probe(host, rng, cuda=False)
    twin.where = probe.where
    side = torch.cuda.Stream()
    for i in range(20):
        images = [rng.integers(0, 256, rng.integers(8, 160, 2), dtype=np.uint8)
                  for _ in range(int(rng.integers(1, 17)))]
        src = [torch.from_numpy(im).cuda() for im in images]  # uploaded (and synced) first
        torch.cuda.synchronize()
        with torch.cuda.stream(side):  # then, asynchronously: a sleep, and device copies
            dev = [torch.zeros(im.shape, dtype=torch.uint8, device="cuda") for im in images]
            torch.cuda._sleep(20_000_000)  # ~10 ms of GPU time before the pixels land
            for d, s in zip(dev, src):
                d.copy_(s, non_blocking=True)
        got = gpu.wait(gpu.submit(dev, probe, True, resident=True, producer=side.cuda_stream))
        want = host.wait(host.submit(images, twin, True))
        assert np.array_equal(got[2], want[2]), f"batch {i}: logits differ"
        assert np.array_equal(got[1], want[1]), f"batch {i}: indices differ"
        assert got[3]["staging"] == 0.0  # nothing packed on the host
    # Non-contiguous, host memory and the wrong element type are refused with the fix.
    x = torch.zeros((40, 30), dtype=torch.uint8, device="cuda")
    with pytest.raises(ValueError, match=r"not contiguous .*\.contiguous\(\)"):
        gpu.submit([x.t()], probe, resident=True)
    with pytest.raises(ValueError, match="element type"):
        gpu.submit([x.to(torch.int32)], probe, resident=True)
    with pytest.raises(TypeError, match="__cuda_array_interface__"):
        gpu.submit([np.zeros((4, 4), np.uint8)], probe, resident=True)
    pinned = torch.zeros((8, 8), dtype=torch.uint8).pin_memory()

    class HostPretendingToBeDevice:
        __cuda_array_interface__ = {"shape": (8, 8), "typestr": "|u1", "strides": None,
                                    "data": (pinned.data_ptr(), False), "version": 2}

    with pytest.raises(ValueError, match="image 0 is not in cuda:0 .* memory \\(it is pinned host"):
        gpu.submit([HostPretendingToBeDevice()], probe, resident=True)
    assert gpu.try_acquire() >= 0  # every failure gave its slot back


def test_memory_is_flat_over_10000_batches(rng, record_property):
    import torch

    gpu = make(0, 2)
    probe = Probe(gpu, rng, cuda=True)
    gpu.reserve(32, 32 * 160 * 160 * 2)  # the largest batch batch_of() can make

    def run(n):
        pending = []
        for _ in range(n):
            images = batch_of(rng, int(rng.integers(1, 33)))  # sizes vary batch to batch
            pending.append(gpu.submit(images, probe))
            if len(pending) == 2:
                gpu.wait(pending.pop(0))
        for s in pending:
            gpu.wait(s)

    def rss():
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS"))

    run(200)
    torch.cuda.synchronize()
    before = (gpu.memory(), torch.cuda.memory_allocated(), torch.cuda.mem_get_info()[0], rss())
    run(10_000)
    torch.cuda.synchronize()
    after = (gpu.memory(), torch.cuda.memory_allocated(), torch.cuda.mem_get_info()[0], rss())
    record_property("pipeline_pinned_growth_bytes", after[0]["pinned"] - before[0]["pinned"])
    record_property("pipeline_device_growth_bytes", after[0]["device"] - before[0]["device"])
    record_property("device_free_change_bytes", after[2] - before[2])
    record_property("rss_growth_bytes", after[3] - before[3])
    assert after[0] == before[0], "the pipeline allocated after warm-up"
    assert after[1] == before[1], "torch allocations grew"
    assert abs(after[2] - before[2]) <= 16 << 20, f"device free memory moved {before[2] - after[2]} B"
    assert after[3] - before[3] <= 32 << 20, f"host RSS grew {(after[3] - before[3]) >> 20} MiB"


def test_wait_sleeps_instead_of_spinning(rng, record_property):
    """wait() blocks on a blocking-sync event: while the GPU works for ~200 ms the waiting
    thread uses little CPU time (a spinning wait would use all of it)."""
    import torch

    gpu = make(0, 1)
    probe = Probe(gpu, rng, cuda=True)

    def slow(view):
        with torch.cuda.stream(torch.cuda.ExternalStream(view.stream)):
            torch.cuda._sleep(400_000_000)  # a few hundred ms of GPU time
        probe(view)

    gpu.wait(gpu.submit(batch_of(rng, 4), probe))  # warm-up
    slot = gpu.submit(batch_of(rng, 4), slow)
    wall, cpu = time.perf_counter(), time.process_time()
    gpu.wait(slot)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    record_property("wait_wall_ms", 1e3 * wall)
    record_property("wait_cpu_ms", 1e3 * cpu)
    assert wall > 0.05, f"the GPU work was too short to tell ({wall:.3f} s)"
    assert cpu < 0.5 * wall, f"wait() used {cpu:.3f} s of CPU in {wall:.3f} s: it spins"


def test_stages_overlap_in_steady_state(rng, record_property):
    """Time per batch <= 1.15 x the slowest stage: host submission, H2D, GPU work, D2H."""
    import torch

    from medtrt.runtime.stages import TorchStage

    # GPU-bound on purpose (about 0.6 TFLOP per batch), so overlap of the copies and the host
    # work with the GPU stage is what the timing shows.
    layers = [torch.nn.Conv2d(1, 128, 3, padding=1), torch.nn.ReLU()]
    for _ in range(10):
        layers += [torch.nn.Conv2d(128, 128, 3, padding=1), torch.nn.ReLU()]
    model = torch.nn.Sequential(*layers, torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                torch.nn.Linear(128, CLASSES))
    gpu = make(0, 2, dtype="float16")
    stage = TorchStage(model, "cuda:0", half=True)
    stage.bind(gpu)
    images = [rng.integers(0, 256, (512, 512), dtype=np.uint8) for _ in range(64)]

    def run(n):
        pending, submit_s, stages = [], [], []
        t0 = time.perf_counter()
        for _ in range(n):
            s = time.perf_counter()
            pending.append(gpu.submit(images, stage))
            submit_s.append(time.perf_counter() - s)
            if len(pending) == 2:
                stages.append(gpu.wait(pending.pop(0))[3])
        for slot in pending:
            stages.append(gpu.wait(slot)[3])
        return (time.perf_counter() - t0) / n, submit_s, stages

    run(20)
    per_batch, submit_s, stages = run(100)
    means = {
        "host submit": 1e3 * float(np.mean(submit_s)),
        "h2d": float(np.mean([t["h2d"] for t in stages])),
        "gpu": float(np.mean([t["preprocess"] + t["compute"] + t["postprocess"] for t in stages])),
        "d2h": float(np.mean([t["d2h"] for t in stages])),
    }
    ms = 1e3 * per_batch
    record_property("ms_per_batch", ms)
    for stage_name, mean in means.items():
        record_property(f"{stage_name.replace(' ', '_')}_ms", mean)
    record_property("overlap_ratio", ms / max(means.values()))  # goal <= 1.15
    assert ms <= 1.15 * max(means.values()), (ms, means)
    assert ms < 0.8 * sum(means.values()), ("stages did not overlap", ms, means)


@pytest.fixture(scope="module")
def data(demo_model):
    from helpers.heldout import held_out

    return held_out(demo_model)


@pytest.mark.parametrize("precision,graphs", [("fp32", False), ("fp16", False), ("fp16", True)])
def test_torch_gpu_engine_vs_pytorch_reference(demo_model, data, precision, graphs):
    from medtrt import Engine

    with Engine(demo_model.checkpoint, device=0, precision=precision, cuda_graphs=graphs) as e:
        assert e.device == "cuda:0" and e.backend == "torch"
        r = e.infer(data.images, return_probs=True)
        again = e.infer(data.images, return_probs=True)  # graph replay on reused slots
    agreement = np.mean(r.top1 == data.reference_probs.argmax(1))
    assert agreement >= (0.999 if precision == "fp32" else 0.995)
    assert np.abs(r.probs - data.reference_probs).max() <= (1e-4 if precision == "fp32" else 1e-2)
    np.testing.assert_array_equal(again.indices, r.indices)


@pytest.mark.trt
def test_tensorrt_engine_vs_pytorch_reference(demo_model, data, tmp_path):
    pytest.importorskip("tensorrt", reason="full TensorRT is not installed (TensorRT-RTX has no "
                                           "target for data-centre GPUs)")
    from medtrt import Engine
    from medtrt.build import BuildOptions, build

    for precision, agreement, tol in (("fp16", 0.995, 1e-2), ("fp32", 0.999, 1e-3)):
        result = build(demo_model.onnx, tmp_path / precision,
                       BuildOptions(precision=precision, batch=(1, 32, 256), flavour="tensorrt"))
        with Engine(result.engine, device=0) as e:
            assert e.backend == "tensorrt"
            r = e.infer(data.images, return_probs=True)
        assert np.mean(r.top1 == data.reference_probs.argmax(1)) >= agreement
        assert np.abs(r.probs - data.reference_probs).max() <= tol


def test_cuda_tensor_input_is_read_in_place_and_matches_host_input(demo_model, data):
    """A CUDA tensor batch goes to the pipeline without a host copy and gives the same results
    as the same pixels from the host; a float batch with NaN is refused as on the host path."""
    import torch

    from medtrt import Engine

    stack = np.stack(data.images[:64])
    with Engine(demo_model.checkpoint, device=0) as e:
        reserved = e.memory()  # staging for max_batch host images, reserved at construction
        side = torch.cuda.Stream()
        src = torch.from_numpy(stack).cuda()
        torch.cuda.synchronize()
        with torch.cuda.stream(side):  # the caller's current stream is the producer
            x = torch.empty_like(src)
            torch.cuda._sleep(20_000_000)  # the pixels land ~10 ms after infer() is called
            x.copy_(src, non_blocking=True)
            dev = e.infer(x, return_probs=True)
            ragged = e.infer([x[i, : 40 + i % 24] for i in range(8)], return_probs=True)
        assert e.memory() == reserved  # resident batches: no staging or buffers beyond it
        host = e.infer(stack, return_probs=True)
        bad = torch.from_numpy(stack[:2].astype(np.float32)).cuda()
        bad[1, 3, 3] = float("nan")
        with pytest.raises(ValueError, match="item 1 contains NaN"):
            e.infer(bad)
    np.testing.assert_array_equal(dev.indices, host.indices)
    np.testing.assert_allclose(dev.probs, host.probs, rtol=0, atol=1e-6)
    want = Engine(demo_model.checkpoint, device=0).infer(
        [stack[i, : 40 + i % 24] for i in range(8)], return_probs=True)
    np.testing.assert_allclose(ragged.probs, want.probs, rtol=0, atol=1e-6)


def test_an_engine_on_another_gpu_leaves_the_callers_device(demo_model, data):
    """CUDA's current device is per thread and torch relies on it: an Engine on GPU 1 makes
    GPU 1 current only inside its calls (the C++ pipeline's DeviceScope, submit around the
    compute stage) and gives the same results as one on GPU 0."""
    import torch

    from medtrt import Engine

    if torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs (an Engine on GPU 1 while the caller's device is GPU 0)")
    images = data.images[:16]
    torch.cuda.set_device(0)
    torch.zeros(1, device="cuda:0")  # GPU 0 in use (a device never used is not restored to)
    with Engine(demo_model.checkpoint, device=1) as e:
        assert torch.cuda.current_device() == 0
        on1 = e.infer(images, return_probs=True)
        assert torch.cuda.current_device() == 0
        x = torch.from_numpy(np.stack(images)).cuda(1)
        cuda_in = e.infer(x, return_probs=True)
        assert torch.cuda.current_device() == 0
    assert torch.cuda.current_device() == 0
    on0 = Engine(demo_model.checkpoint, device=0).infer(images, return_probs=True)
    np.testing.assert_array_equal(on1.indices, on0.indices)
    np.testing.assert_allclose(on1.probs, on0.probs, rtol=0, atol=1e-5)
    np.testing.assert_allclose(cuda_in.probs, on1.probs, rtol=0, atol=1e-6)


def test_nvjpeg_decode_matches_the_cpu_readers(demo_model, data, tmp_path):
    """Files decoded by nvJPEG on the GPU vs the CPU readers: pixels within nvJPEG's rounding,
    the same top-1; a broken JPEG and a PNG in the same batch are handled per item."""
    pytest.importorskip("torchvision", reason="nvJPEG decode goes through torchvision")
    from PIL import Image

    from medtrt import Engine
    from medtrt.data import read_image
    from medtrt.data.gpu_decode import NvjpegDecoder

    paths = []
    for i, im in enumerate(data.images[:96]):
        paths.append(tmp_path / f"{i:03d}.jpg")
        Image.fromarray(im).save(paths[-1], quality=95)
    rgb = tmp_path / "rgb.jpg"
    Image.fromarray(np.stack([data.images[0]] * 3, -1)).save(rgb, quality=95)
    png = tmp_path / "gray.png"
    Image.fromarray(data.images[1]).save(png)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(paths[0].read_bytes()[:200])

    decoder = NvjpegDecoder(0)
    got = decoder.decode([*paths[:8], rgb, png, broken])
    decoder.stream.synchronize()  # the images were written on the decoder's stream
    for p, d in zip([*paths[:8], png], [*got[:8], got[9]]):
        want = read_image(p)
        assert d.shape == want.shape and d.dtype == "uint8"
        diff = np.abs(d.tensor.cpu().numpy().astype(int) - want.astype(int))
        assert diff.max() <= 3 and diff.mean() < 0.5, (p, diff.max(), diff.mean())
    assert got[8].shape == (*data.images[0].shape, 3)
    assert "broken.jpg" in str(got[10])
    assert decoder.fallbacks >= 2  # the PNG and the broken file went to the CPU readers
    decoder.close()

    with Engine(demo_model.checkpoint, device=0, decode="nvjpeg") as gpu_decode, \
            Engine(demo_model.checkpoint, device=0) as cpu_decode:
        assert gpu_decode.decode == "nvjpeg" and "decode=nvjpeg" in repr(gpu_decode)
        a = gpu_decode.infer([*paths, broken], return_probs=True)
        b = cpu_decode.infer([*paths, broken], return_probs=True)
        many = list(gpu_decode.infer_many(paths, batch_size=32, return_probs=True))
    assert a[len(paths)].error is not None and b[len(paths)].error is not None
    assert np.mean(a.top1[:-1] == b.top1[:-1]) >= 0.99
    assert np.nanmax(np.abs(a.probs - b.probs)) < 0.05
    np.testing.assert_allclose(np.concatenate([r.probs for r in many]), a.probs[:-1], atol=1e-5)
