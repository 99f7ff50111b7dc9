"""resize_normalize: CPU kernel vs a float64 NumPy reference and torch interpolate; errors;
CUDA kernel vs the CPU twin (marked gpu)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from medtrt.reference import preprocess
from medtrt.ops import resize_normalize
from medtrt.testing import assert_close

SIZES = [(1, 1), (3, 517), (64, 64), (1023, 767)]
ATOL32 = 1e-5
ATOL16 = 1e-3
has_torch = importlib.util.find_spec("torch") is not None


def make_image(rng, h, w, c, dtype, high=None):
    shape = (h, w) if c == 0 else (h, w, c)
    if dtype == np.float32:
        return rng.random(shape, dtype=np.float32)
    if dtype == np.int16:  # CT-like stored values
        return rng.integers(-1024, high or 3071, size=shape, dtype=dtype)
    high = high or (256 if dtype == np.uint8 else 65536)
    return rng.integers(0, high, size=shape, dtype=dtype)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16], ids=["u8", "u16"])
@pytest.mark.parametrize("in_c,out_c", [(0, 1), (1, 1), (0, 3), (3, 3), (3, 1)],
                         ids=["HW->1", "HW1->1", "HW->3", "HW3->3", "HW3->1"])
def test_scale_path_matches_reference(rng, size, dtype, in_c, out_c):
    img = make_image(rng, *size, in_c, dtype)
    out_size = (64, 64) if size != (64, 64) else (224, 224)
    got = resize_normalize([img], out_size, channels=out_c)
    assert got.shape == (1, out_c, *out_size) and got.dtype == np.float32
    ref = preprocess([img], out_size, channels=out_c)
    assert 0.0 <= ref.min() and ref.max() <= 1.0
    assert_close(got, ref, atol=ATOL32, name=f"{size} {dtype.__name__} {in_c}->{out_c}")


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16], ids=["u8", "u16"])
def test_window_and_rescale_match_reference(rng, dtype):
    # CT-like stored values; rescale to HU, then a soft-tissue window that clips most pixels.
    high = 256 if dtype == np.uint8 else 4096
    img = make_image(rng, 517, 301, 0, dtype, high=high)
    kwargs = dict(rescale=(1.0, -1024.0), window=(40.0, 400.0)) if dtype == np.uint16 else dict(
        rescale=(2.0, -100.0), window=(128.0, 90.0))
    got = resize_normalize([img], (224, 192), **kwargs)
    ref = preprocess([img], (224, 192), **kwargs)
    assert (ref == 0).any() and (ref == 1).any() and ((ref > 0) & (ref < 1)).any()
    assert_close(got, ref, atol=ATOL32, name="window")


def test_signed_and_float_pixels(rng):
    # DICOM CT: signed stored values, or float HU after the modality rescale; default scale 1.
    hu = rng.integers(-1024, 3071, size=(300, 257), dtype=np.int16)
    got = resize_normalize([hu], 64, window=(40.0, 400.0))
    assert_close(got, preprocess([hu], (64, 64), window=(40.0, 400.0)), atol=ATOL32, name="int16")
    raw = resize_normalize([hu], 64, mean=-1024.0, std=4095.0)
    assert_close(raw, preprocess([hu], (64, 64), mean=-1024.0, std=4095.0), atol=ATOL32)
    f = (rng.random((3, 70, 3)) * 2 - 0.5).astype(np.float32)  # outside [0, 1] on purpose
    assert_close(resize_normalize(f, (32, 16), channels=3), preprocess(list(f), (32, 16), channels=3),
                 atol=ATOL32 * 2, name="float32 RGB")


def test_explicit_scale_mean_std_per_channel(rng):
    img = make_image(rng, 300, 200, 3, np.uint8)
    kwargs = dict(channels=3, scale=1 / 255, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    got = resize_normalize([img], 224, **kwargs)
    ref = preprocess([img], (224, 224), **kwargs)
    # Data in [0, 1] before normalisation: the 1e-5 budget scales with 1/std.
    assert_close(got, ref, atol=ATOL32 / 0.224, name="imagenet normalisation")
    assert ref.min() < -1.5 and ref.max() > 2.0


def test_ragged_batch_equals_one_by_one(rng):
    images = [make_image(rng, h, w, c, np.uint16) for h, w, c in
              [(1, 1, 0), (3, 517, 3), (64, 64, 1), (1023, 767, 0), (17, 9, 3)]]
    got = resize_normalize(images, (48, 40), channels=3, mean=0.25, std=0.5)
    ref = preprocess(images, (48, 40), channels=3, mean=0.25, std=0.5)
    assert_close(got, ref, atol=ATOL32 / 0.5, name="ragged batch")
    for i, img in enumerate(images):
        single = resize_normalize([img], (48, 40), channels=3, mean=0.25, std=0.5)
        np.testing.assert_array_equal(single[0], got[i])


@pytest.mark.parametrize("layout", ["BHW", "BHWC"])
def test_stacked_batch_array(rng, layout):
    shape = (5, 33, 47) if layout == "BHW" else (5, 33, 47, 3)
    batch = rng.integers(0, 256, size=shape, dtype=np.uint8)
    got = resize_normalize(batch, (16, 20), channels=3)
    ref = preprocess(list(batch), (16, 20), channels=3)
    assert_close(got, ref, atol=ATOL32, name=layout)


def test_non_contiguous_input_is_read_correctly(rng):
    base = make_image(rng, 80, 120, 3, np.uint8)
    view = base[::2, 10:100:3]  # strided view
    assert not view.flags.c_contiguous
    got = resize_normalize([view], (32, 32), channels=3)
    ref = preprocess([np.ascontiguousarray(view)], (32, 32), channels=3)
    assert_close(got, ref, atol=ATOL32)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_float16_output(rng, size):
    img = make_image(rng, *size, 3, np.uint16)
    got16 = resize_normalize([img], (64, 64), channels=3, dtype="float16")
    got32 = resize_normalize([img], (64, 64), channels=3)
    assert got16.dtype == np.float16
    ref = preprocess([img], (64, 64), channels=3)
    assert_close(got16, ref, atol=ATOL16, name="float16 vs float64 reference")
    # The float16 store is exactly round-to-nearest-even of the float32 result.
    np.testing.assert_array_equal(got16.view(np.uint16), got32.astype(np.float16).view(np.uint16))


@pytest.mark.parametrize("scale,mean", [(2.0**-30, 0.0), (1.0, 0.0), (1.0, 65535.0),
                                        (2.0**-20, 2.0**-15)],
                         ids=["subnormal", "overflow", "negative", "around-zero"])
def test_float16_rounding_every_uint16_value(scale, mean):
    # An identity resize of a 1 x 65536 image maps every stored value v to (v*scale - mean):
    # covers float16 subnormals, the 65504/65520 overflow boundary and both signs.
    img = np.arange(65536, dtype=np.uint16)[None, :]
    got16 = resize_normalize([img], (1, 65536), scale=scale, mean=mean, dtype="float16")
    got32 = resize_normalize([img], (1, 65536), scale=scale, mean=mean)
    expected32 = (img.astype(np.float64) * np.float32(scale) - mean).astype(np.float32)
    np.testing.assert_array_equal(got32[0, 0], expected32)
    with np.errstate(over="ignore"):  # float32 beyond 65504 rounds to inf, on purpose
        expected16 = got32.astype(np.float16)
    np.testing.assert_array_equal(got16.view(np.uint16), expected16.view(np.uint16))


@pytest.mark.skipif(not has_torch, reason="torch is not installed")
@pytest.mark.parametrize("size,out_size", [((1, 1), (64, 64)), ((3, 517), (64, 64)),
                                           ((64, 64), (224, 224)), ((1023, 767), (224, 224)),
                                           ((64, 64), (64, 64)), ((100, 50), (37, 211))])
def test_resize_matches_torch_interpolate(rng, size, out_size):
    import torch

    img = make_image(rng, *size, 3, np.uint8)
    got = resize_normalize([img], out_size, channels=3)
    x = torch.from_numpy(img.astype(np.float32) / np.float32(255)).permute(2, 0, 1)[None]
    expected = torch.nn.functional.interpolate(x, size=out_size, mode="bilinear",
                                               align_corners=False, antialias=False).numpy()
    # ATen computes source coordinates in float32: off by up to ~(in_size * 2^-23) pixel, which a
    # full-range pixel step turns into that much output error. medtrt's coordinates are exact,
    # so it must be at least as close to the float64 truth as torch, and agree with torch
    # within torch's own error.
    ref = preprocess([img], out_size, channels=3)
    torch_err = float(np.abs(expected - ref).max())
    assert torch_err <= max(size) * 2.0**-22 + 1e-6, f"torch error {torch_err:.3g} off its bound"
    ours = assert_close(got, ref, atol=ATOL32, name="vs float64").max_abs_error
    assert ours <= torch_err + 1e-6, f"medtrt error {ours:.3g} > torch error {torch_err:.3g}"
    assert_close(got, expected, atol=torch_err + ATOL32, name="vs torch interpolate")


@pytest.mark.skipif(not has_torch, reason="torch is not installed")
def test_torch_cpu_tensors_in_and_out(rng):
    import torch

    imgs = [torch.from_numpy(make_image(rng, 20, 30, 0, np.uint8)) for _ in range(3)]
    got = resize_normalize(imgs, 8)
    assert isinstance(got, torch.Tensor) and got.shape == (3, 1, 8, 8)
    np.testing.assert_array_equal(got.numpy(), resize_normalize([t.numpy() for t in imgs], 8))


# ---- errors ------------------------------------------------------------------------------------

U8 = np.ones((4, 5), np.uint8)


@pytest.mark.parametrize("images,kwargs,match", [
    ([], {}, r"expected at least one image; got an empty batch"),
    (np.zeros((0, 4, 4), np.uint8), {}, r"empty batch"),
    ([np.ones((2, 3, 3, 1), np.uint8)], {}, r"image 0 has 4 dimensions.*expected 2 \(H, W\) or 3"),
    ([U8, np.ones(7, np.uint8)], {}, r"image 1 has 1 dimensions, shape \(7,\)"),
    ([np.ones((4, 5), np.float64)], {}, r"image 0 has dtype float64; expected uint8, uint16, "
                                         r"int16 or float32"),
    ([np.ones((4, 5), np.int32)], {}, r"dtype int32; expected uint8, uint16, int16 or float32"),
    ([U8, np.ones((4, 5), np.uint16)], {}, r"image 1 is uint16 but image 0 is uint8"),
    ([np.ones((4, 5, 4), np.uint8)], {}, r"image 0 has 4 channels.*expected 1 or 3"),
    ([np.ones((4, 5, 2), np.uint8)], {"channels": 3}, r"has 2 channels"),
    ([np.ones((0, 5), np.uint8)], {}, r"image 0 has shape \(0, 5\); expected height and width >= 1"),
    ([U8, np.ones((3, 0, 3), np.uint8)], {}, r"image 1 has shape \(3, 0, 3\)"),
    ([U8], {"channels": 2}, r"channels must be 1 or 3; got 2"),
    ([U8], {"channels": 0}, r"channels must be 1 or 3; got 0"),
    ([U8], {"std": 0.0}, r"std\[0\] is 0; expected a nonzero standard deviation"),
    ([U8], {"channels": 3, "std": [1.0, 0.0, 1.0]}, r"std\[1\] is 0"),
    ([U8], {"channels": 3, "mean": [0.1, 0.2]}, r"mean has 2 values; expected 1 or channels \(3\)"),
    ([U8], {"window": (40.0, 0.0)}, r"window width must be > 0; got 0"),
    ([U8], {"window": (40.0, -5.0)}, r"window width must be > 0; got -5"),
    ([U8], {"window": (40.0, 400.0), "scale": 0.5}, r"either window=\(center, width\) or scale"),
    ([U8], {"window": (40.0,)}, r"window must be \(center, width\); got \(40.0,\)"),
    ([U8], {"rescale": (float("nan"), 0.0)}, r"rescale=\(slope, intercept\) must be finite"),
    # finite as doubles, not as the float32 the kernels compute in
    ([U8], {"scale": 1e300}, r"scale = 1e\+300 is outside float32's range"),
    ([U8], {"std": 1e-300}, r"1 / std\[0\] = 1e\+300 is outside float32's range"),
    ([U8], {"mean": 1e39}, r"mean\[0\] = 1e\+39 is outside float32's range"),
    ([U8], {"window": (0.0, 1e-300)}, r"1 / window width = 1e\+300 is outside float32's range"),
    ([U8], {"rescale": (1e39, 0.0)}, r"rescale slope = 1e\+39 is outside float32's range"),
    ([U8], {"dtype": "int8"}, r"dtype must be 'float32' or 'float16'; got 'int8'"),
    ([U8], {"out_size": (0, 64)}, r"out_size must be positive \(height, width\); got \(0, 64\)"),
    ([U8], {"out_size": (64, 64, 3)}, r"out_size must be an int or \(height, width\)"),
    ([U8], {"out_size": (2**24 + 1, 1)}, r"out_size \(16777217, 1\) exceeds the limit of 2\^24"),
    (U8, {}, r"got a 2-D array of shape \(4, 5\) \(wrap a single image in a list\)"),
])
def test_errors_state_expected_and_actual(images, kwargs, match):
    kwargs = dict(kwargs)
    out_size = kwargs.pop("out_size", (8, 8))
    with pytest.raises(ValueError, match=match):
        resize_normalize(images, out_size, **kwargs)


def test_non_array_container_is_a_type_error():
    with pytest.raises(TypeError, match=r"expected a list of images .*; got int"):
        resize_normalize(5, 8)


def test_out_is_refused_for_numpy_input():
    with pytest.raises(ValueError, match=r"out= is accepted for CUDA tensors only; got numpy"):
        resize_normalize([U8], 8, out=np.empty((1, 1, 8, 8), np.float32))


# ---- CUDA kernel vs CPU twin ---------------------------------------------------------------------

CUDA_CASES = [
    # (sizes, dtype, in_c, out_c, kwargs)
    ([(1, 1), (3, 517), (64, 64), (1023, 767)], np.uint8, 0, 1, {}),
    ([(1, 1), (3, 517), (64, 64), (1023, 767)], np.uint16, 3, 3,
     dict(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])),
    ([(512, 512)] * 4, np.uint16, 0, 3, dict(rescale=(1.0, -1024.0), window=(40.0, 400.0))),
    ([(300, 200), (17, 9)], np.uint8, 3, 1, dict(dtype="float16")),
    ([(64, 64)] * 256, np.uint8, 0, 1, {}),
    ([(300, 257), (512, 512)], np.int16, 0, 1, dict(window=(40.0, 400.0))),
    ([(70, 3), (129, 65)], np.float32, 3, 3, {}),
]


@pytest.mark.gpu
@pytest.mark.parametrize("case", range(len(CUDA_CASES)))
@pytest.mark.parametrize("out_size", [(64, 64), (224, 224)])
def test_cuda_matches_cpu_twin(rng, case, out_size, record_property):
    import torch

    sizes, dtype, in_c, out_c, kwargs = CUDA_CASES[case]
    images = [make_image(rng, h, w, in_c, dtype) for h, w in sizes]
    expected = resize_normalize(images, out_size, channels=out_c, **kwargs)
    out_dtype = torch.float16 if kwargs.get("dtype") == "float16" else torch.float32
    poisoned = torch.full(expected.shape, float("nan"), dtype=out_dtype, device="cuda")
    dev = [torch.from_numpy(i).cuda() for i in images]
    got = resize_normalize(dev, out_size, channels=out_c, out=poisoned, **kwargs)
    torch.cuda.synchronize()
    assert got.data_ptr() == poisoned.data_ptr() and not torch.isnan(got).any()
    diff = np.abs(got.float().cpu().numpy() - expected.astype(np.float32))
    record_property("max_abs_diff_vs_cpu", float(diff.max()))
    record_property("pixels_differing", int((diff != 0).sum()))
    # Same per-pixel function, no FMA contraction on either side (CMakeLists.txt): bit-exact.
    np.testing.assert_array_equal(got.cpu().numpy().view(np.uint8), expected.view(np.uint8))


@pytest.mark.gpu
def test_cuda_on_side_stream_and_large_batch(rng):
    import torch

    batch = torch.from_numpy(rng.integers(0, 256, size=(70000, 3, 5), dtype=np.uint8)).cuda()
    expected = resize_normalize(batch.cpu().numpy(), (2, 4))
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        got = resize_normalize(batch, (2, 4))
    stream.synchronize()
    assert_close(got, expected, atol=1e-6, name="batch beyond the 65535 grid limit")


@pytest.mark.gpu
def test_cuda_errors_match_cpu_errors():
    import torch

    with pytest.raises(ValueError, match=r"image 0 has dtype float64; expected uint8, uint16"):
        resize_normalize([torch.ones(4, 5, dtype=torch.float64, device="cuda")], 8)
    with pytest.raises(ValueError, match=r"std\[0\] is 0"):
        resize_normalize([torch.ones(4, 5, dtype=torch.uint8, device="cuda")], 8, std=0.0)
    with pytest.raises(ValueError, match=r"out must be a contiguous torch.float32 tensor"):
        resize_normalize([torch.ones(4, 5, dtype=torch.uint8, device="cuda")], 8,
                         out=torch.empty(1, 1, 8, 9, device="cuda"))
    with pytest.raises(ValueError, match=r"expected every item in one place"):
        resize_normalize([torch.ones(4, 5, dtype=torch.uint8, device="cuda"), U8], 8)


def test_mixed_dtype_batches_keep_order(rng):
    from medtrt.ops import resize_normalize_mixed

    images = [make_image(rng, 20, 30, 0, np.uint8), make_image(rng, 9, 7, 0, np.uint16),
              make_image(rng, 40, 10, 0, np.uint8), make_image(rng, 5, 5, 0, np.int16)]
    got = resize_normalize_mixed(images, (8, 8), chunk=1)
    assert got.shape == (4, 1, 8, 8) and got.dtype == np.float32
    for i, img in enumerate(images):
        np.testing.assert_array_equal(got[i], resize_normalize([img], (8, 8))[0])
    with pytest.raises(ValueError, match=r"empty batch"):
        resize_normalize_mixed([], 8)


@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_misaligned_pixels_are_read_correctly(rng, dtype):
    """A contiguous but misaligned array (a view at an odd byte offset) gives the aligned copy's
    result: the kernels read typed pixels, so the binding copies it to an aligned buffer."""
    image = make_image(rng, 33, 47, 0, dtype)
    raw = np.zeros(image.nbytes + 1, np.uint8)
    raw[1:] = image.view(np.uint8).ravel()
    shifted = np.frombuffer(raw, dtype, offset=1).reshape(image.shape)
    assert not shifted.flags.aligned and shifted.flags.c_contiguous
    np.testing.assert_array_equal(resize_normalize([shifted], 16), resize_normalize([image], 16))
