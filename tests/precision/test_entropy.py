"""The C++ entropy op: histogram growth by merging, the KL threshold search (vs a NumPy
restatement of TensorRT's method), percentile and max, and bounded memory."""

from __future__ import annotations

import numpy as np
import pytest

from helpers.entropy_ref import entropy_amax as ref_entropy_amax
from medtrt._native import native

C = native()


def test_histogram_counts_and_merging(rng):
    h = C.AbsHistogram(2048)
    first = rng.normal(0, 1, 5000).astype(np.float32)
    h.add(first)
    assert h.range == pytest.approx(np.abs(first).max()) and h.merges == 0
    width = h.bin_width
    expected = np.minimum((np.abs(first) / width).astype(np.int64), 2047)
    np.testing.assert_array_equal(h.counts, np.bincount(expected, minlength=2048))
    before = h.counts.copy()
    big = np.array([h.range * 3.1], np.float32)  # needs two doublings
    h.add(big)
    assert h.merges == 2 and h.range == pytest.approx(4 * np.abs(first).max())
    merged = before.reshape(-1, 4).sum(axis=1)  # two pairwise merges = groups of four
    after = h.counts.astype(np.int64)
    after[min(int(big[0] / h.bin_width), 2047)] -= 1  # the new value's own count
    np.testing.assert_array_equal(after[:512], merged)
    assert not after[512:].any()
    assert h.total == 5001 == h.counts.sum()
    assert h.max_abs == pytest.approx(float(big[0]))


def test_zeros_before_range_nan_and_inf():
    h = C.AbsHistogram(16)
    h.add(np.zeros(10, np.float32))
    assert h.range == 0 and h.total == 10
    h.add(np.array([0.0, 1.0, np.nan, -0.5], np.float32))
    assert h.counts[0] == 11 and h.counts[8] == 1 and h.counts[15] == 1
    assert h.nan_count == 1 and h.total == 13
    with pytest.raises(ValueError, match=r"activation value inf at index 1 is infinite"):
        h.add(np.array([0.0, np.inf], np.float32))
    with pytest.raises(ValueError, match=r"activation must be float32; got float64"):
        h.add(np.zeros(3))
    with pytest.raises(ValueError, match=r"bins must be a power of two"):
        C.AbsHistogram(1000)


@pytest.mark.parametrize("shape", ["relu", "gaussian", "heavy-tail", "sparse"])
def test_entropy_matches_the_reference_algorithm(rng, shape):
    n = 256  # small histogram: the Python reference is O(n^2) in pure loops
    if shape == "relu":
        x = np.maximum(rng.normal(0, 1, 20000), 0)
    elif shape == "gaussian":
        x = rng.normal(0, 1, 20000)
    elif shape == "heavy-tail":
        x = rng.standard_t(2, 20000)
    else:
        x = np.where(rng.random(20000) < 0.97, 0.0, rng.exponential(1.0, 20000))
    h = C.AbsHistogram(n)
    h.add(x.astype(np.float32))
    amax, kept, div = C.entropy_amax(h, 32, 32)
    expected = min(ref_entropy_amax(h.counts, h.bin_width, 32, 32), h.max_abs)
    assert amax == pytest.approx(expected, rel=1e-12)
    assert len(div) == n - 32 + 1 and amax == pytest.approx(min(kept * h.bin_width, h.max_abs))
    assert 0 < amax <= h.max_abs


def test_entropy_clips_outliers_and_percentile_and_max(rng):
    x = np.concatenate([rng.normal(0, 1, 200000), [40.0, -55.0]]).astype(np.float32)
    h = C.AbsHistogram(2048)
    h.add(x)
    amax, _, _ = C.entropy_amax(h)
    assert 2.5 < amax < 10  # far below the two outliers, above the Gaussian bulk
    assert h.max_abs == pytest.approx(55.0)
    p = C.percentile_amax(h, 99.0)
    assert np.quantile(np.abs(x), 0.99) <= p <= np.quantile(np.abs(x), 0.99) + h.bin_width
    assert C.percentile_amax(h, 100.0) == pytest.approx(55.0)
    with pytest.raises(ValueError, match=r"percentile must be in \(0, 100\]"):
        C.percentile_amax(h, 0.0)
    empty = C.AbsHistogram(2048)
    assert C.entropy_amax(empty)[0] == 0.0 and C.percentile_amax(empty, 99.9) == 0.0


def test_parallel_fill_equals_serial_fill(rng):
    arrays = [rng.normal(0, s, 3000).astype(np.float32) for s in (0.5, 1, 2, 4, 8)]
    serial = [C.AbsHistogram(512) for _ in arrays]
    for h, a in zip(serial, arrays):
        for part in np.array_split(a, 3):
            h.add(part)
    parallel = [C.AbsHistogram(512) for _ in arrays]
    for part in range(3):
        C.histogram_add_many([(h, np.array_split(a, 3)[part]) for h, a in zip(parallel, arrays)])
    for a, b in zip(serial, parallel):
        np.testing.assert_array_equal(a.counts, b.counts)
        assert a.range == b.range and a.merges == b.merges


def test_threshold_never_exceeds_the_largest_value_after_merges(rng):
    h = C.AbsHistogram(2048)
    h.add(rng.normal(0, 1, 1000).astype(np.float32))
    h.add(np.array([h.range * 1.01], np.float32))  # doubles the range; top half now empty
    assert h.range > 1.9 * h.max_abs
    amax, kept, _ = C.entropy_amax(h)
    assert amax <= h.max_abs


def test_from_parts_reads_strided_and_reversed_counts_in_order(rng):
    counts = rng.integers(0, 100, 4096).astype(np.uint64)
    for view in (counts[::-1], counts[::2]):
        h = C.AbsHistogram.from_parts(view, 2.0, 1.5, 0, 0)
        assert h.bins == len(view)
        np.testing.assert_array_equal(h.counts, np.ascontiguousarray(view))
        assert h.total == int(view.sum())


def test_histogram_add_many_refuses_none_and_duplicates(rng):
    a = rng.normal(size=100).astype(np.float32)
    h = C.AbsHistogram(16)
    with pytest.raises(ValueError, match=r"item 1 has no histogram \(None\)"):
        C.histogram_add_many([(h, a), (None, a)])
    with pytest.raises(ValueError, match="items 0 and 2 are the same histogram"):
        C.histogram_add_many([(h, a), (C.AbsHistogram(16), a), (h, a)])
    assert h.total == 0  # refused before anything was added


def test_a_tiny_range_bins_values_where_float64_puts_them():
    """max |x| below ~6e-36: bins / range overflows float32, so the bins are found in double
    (casting an infinite position to an integer is undefined)."""
    x = np.array([1e-40, 5e-41, 2.5e-41, 0.0, -7.5e-41, 3e-42], np.float32)
    h = C.AbsHistogram(2048)
    h.add(x)
    assert h.range == pytest.approx(1e-40, rel=1e-3)
    pos = np.abs(x.astype(np.float64)) * (2048 / h.range)
    want = np.minimum(np.floor(pos).astype(np.int64), 2047)
    np.testing.assert_array_equal(h.counts, np.bincount(want, minlength=2048))
    with pytest.raises(ValueError, match="below float32's smallest value"):
        C.AbsHistogram.from_parts(np.zeros(16, np.uint64), 1e-310, 0.0, 0, 0)


def test_misaligned_activations_are_read_correctly(rng):
    x = rng.normal(size=1000).astype(np.float32)
    raw = np.zeros(x.nbytes + 1, np.uint8)
    raw[1:] = x.view(np.uint8)
    shifted = np.frombuffer(raw, np.float32, offset=1)
    assert not shifted.flags.aligned
    one, many, want = C.AbsHistogram(64), C.AbsHistogram(64), C.AbsHistogram(64)
    one.add(shifted)
    C.histogram_add_many([(many, shifted)])
    want.add(x)
    np.testing.assert_array_equal(one.counts, want.counts)
    np.testing.assert_array_equal(many.counts, want.counts)
