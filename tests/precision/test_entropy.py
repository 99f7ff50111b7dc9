"""The C++ entropy op: histogram growth by merging, the KL threshold search (vs a NumPy
restatement of TensorRT's method), percentile and max, and bounded memory."""

from __future__ import annotations

import numpy as np
import pytest

from helpers.calibration import histogram_state, real_histograms
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


# ---- the fast search and the single-pass fill against the reference ----------------------

def _same_bits(a: float, b: float) -> bool:
    return np.float64(a).tobytes() == np.float64(b).tobytes()


def adversarial_counts(rng: np.random.Generator, n: int, kind: str) -> np.ndarray:
    """Histogram counts meant to break a fast KL search: ties, holes, spikes, floods."""
    if kind == "random":
        c = rng.geometric(rng.uniform(0.001, 0.5), n) - 1
    elif kind == "flat":  # every candidate looks alike: ties everywhere
        c = np.full(n, rng.integers(1, 4))
    elif kind == "tiny":  # counts 0..2 over a few bins: exact ties between candidates
        c = rng.integers(0, 3, n)
    elif kind == "spiky":
        c = rng.integers(0, 3, n) * (rng.random(n) < 0.3)
        c[rng.integers(0, n, 3)] += rng.integers(10**6, 10**9, 3)
    elif kind == "sparse":  # holes: many candidates with an infinite divergence
        c = np.where(rng.random(n) < 0.05, rng.integers(1, 1000, n), 0)
    elif kind == "relu":  # a zero spike, a decaying body, the top half empty after merges
        c = (rng.exponential(1.0, 200000) * n / 12).astype(np.int64)
        c = np.bincount(np.minimum(c, n // 2 - 1), minlength=n)
        c[0] += 10**6
    elif kind == "huge":  # counts near the 2^52 bound of the exact sums
        c = rng.integers(0, 2**44, n)
    else:  # "one": a single non-empty bin
        c = np.zeros(n, np.int64)
        c[rng.integers(0, n)] = rng.integers(1, 100)
    return np.asarray(c, np.uint64)


KINDS = ("random", "flat", "tiny", "spiky", "sparse", "relu", "huge", "one")


@pytest.mark.parametrize("bins,start,quant,per_kind", [
    (2, 2, 2, 40), (4, 2, 2, 60), (8, 4, 2, 60), (16, 8, 4, 60), (64, 16, 8, 40),
    (256, 32, 32, 25), (256, 200, 64, 10), (512, 128, 128, 6), (2048, 128, 128, 2)])
def test_fast_entropy_search_picks_the_references_threshold_bit_for_bit(rng, bins, start, quant,
                                                                       per_kind):
    hists = []
    for kind in KINDS:
        for _ in range(per_kind):
            counts = adversarial_counts(rng, bins, kind)
            top = float(rng.uniform(0.5, 20.0))
            max_abs = top * float(rng.choice([1.0, rng.uniform(0.3, 1.0)]))
            hists.append(C.AbsHistogram.from_parts(counts, top, max_abs, 0, 0))
    amax, kept, rechecked = C.entropy_amax_many(hists, start, quant)
    for h, a, k, r in zip(hists, amax, kept, rechecked):
        want, want_kept, div = C.entropy_amax(h, start, quant)
        assert _same_bits(a, want) and k == want_kept, (h.counts, a, want, k, want_kept)
        assert 1 <= r <= len(div) or not np.isfinite(div).any()


def test_fast_entropy_search_without_the_group_table_and_past_exact_sums(rng):
    """Many bins and 2 levels: the per-group table would exceed 2^22 entries, so each term is
    computed when needed; counts summing past 2^52: the reference decides alone."""
    counts = adversarial_counts(rng, 4096, "random")
    h = C.AbsHistogram.from_parts(counts, 3.0, 3.0, 0, 0)
    (a,), (k,), _ = C.entropy_amax_many([h], 2, 2)
    want = C.entropy_amax(h, 2, 2)
    assert _same_bits(a, want[0]) and k == want[1]
    flood = C.AbsHistogram.from_parts(np.full(256, 2**50, np.uint64), 1.0, 1.0, 0, 0)
    (a,), (k,), (r,) = C.entropy_amax_many([flood], 128, 128)
    want = C.entropy_amax(flood, 128, 128)
    assert _same_bits(a, want[0]) and k == want[1] and r == 256 - 128 + 1


def test_fast_entropy_search_on_histograms_of_real_activations(demo_model):
    """The demo model's own activations (its ReLU, Concat, Conv, pool outputs; 32 images)."""
    _, _, hists = real_histograms(demo_model)
    pick = list(hists)[::10]  # the reference takes ~30 ms a tensor
    amax, kept, rechecked = C.entropy_amax_many([hists[t] for t in pick])
    for t, a, k in zip(pick, amax, kept):
        want = C.entropy_amax(hists[t])
        assert _same_bits(a, want[0]) and k == want[1], t
    assert rechecked.max() <= 8  # the error bound leaves a handful to recheck, not hundreds


def test_entropy_amax_many_refuses_what_entropy_amax_refuses():
    h = C.AbsHistogram(256)
    with pytest.raises(ValueError, match=r"item 1 is None"):
        C.entropy_amax_many([h, None])
    with pytest.raises(ValueError, match=r"start_bin must be in \[128, 256\]; got 64"):
        C.entropy_amax_many([h], 64, 128)
    with pytest.raises(ValueError, match=r"quantized_bins must be in \[2, 256\]; got 512"):
        C.entropy_amax_many([h], 128, 512)
    amax, kept, rechecked = C.entropy_amax_many([h, C.AbsHistogram(256)])
    assert amax.tolist() == [0.0, 0.0] and kept.tolist() == [0, 0] and rechecked.tolist() == [0, 0]


def test_single_pass_fill_equals_the_reference_fill(rng):
    """Batch after batch (zeros first, growth, NaN, denormals, the last bin's edge), the fill
    counts exactly as the former two-pass loop (add_reference) does, for 4-way and 1-way
    scratch (bins <= 4096 or more)."""
    for bins in (2, 64, 2048, 2**17):
        new, ref = C.AbsHistogram(bins), C.AbsHistogram(bins)
        batches = [np.zeros(100, np.float32), np.maximum(rng.normal(0, 1, 5000), 0)]
        batches += [rng.normal(0, s, int(rng.integers(0, 30000))) for s in (0.5, 1, 3, 1, 40, 2)]
        edge = np.float32(ref.range if ref.range else 1.0)
        batches += [np.array([np.nan, -0.0, 3e-45, 1e-38, np.nan]), np.array([edge, -edge])]
        for x in batches:
            x = np.asarray(x, np.float32)
            new.add(x)
            ref.add_reference(x)
            assert histogram_state(new) == histogram_state(ref), bins
        assert new.merges > 0


def test_a_batch_of_more_than_one_block_counts_as_the_reference(rng):
    """Past 2^24 values a batch is counted in blocks (uint32 scratch) summed in uint64."""
    x = np.maximum(rng.standard_normal(2**24 + 1000, np.float32), 0)
    x[[7, 2**24 + 5]] = np.nan
    new, ref = C.AbsHistogram(2048), C.AbsHistogram(2048)
    for batch in (x[:1000], x, x, x * 3):  # range set, grown, held, grown
        new.add(batch)
        ref.add_reference(batch)
        assert histogram_state(new) == histogram_state(ref)


def test_single_pass_fill_of_tiny_values_bins_in_double_as_the_reference():
    for first in (np.array([1e-40, 0.0, -7.5e-41], np.float32), np.array([3e-45], np.float32)):
        new, ref = C.AbsHistogram(2048), C.AbsHistogram(2048)
        for x in (first, first * 2, np.array([1e-39, np.nan], np.float32), first):
            new.add(x)
            ref.add_reference(x)
            assert histogram_state(new) == histogram_state(ref)


@pytest.mark.parametrize("where", [0, 1, 1023, 1024, 5000])
def test_an_infinite_value_is_refused_alike_and_changes_nothing(rng, where):
    x = rng.normal(size=6000).astype(np.float32)
    x[[3, 4000]] = np.nan
    x[where] = -np.inf if where % 2 else np.inf
    x[5500] = np.inf  # a later one is not the one reported
    for fresh in (False, True):
        new, ref = C.AbsHistogram(64), C.AbsHistogram(64)
        if not fresh:  # with a range already set, the single pass runs (and is thrown away)
            warm = np.array([5.0, -1.0], np.float32)
            new.add(warm)
            ref.add_reference(warm)
        messages = []
        for fill in (new.add, ref.add_reference):
            with pytest.raises(ValueError) as err:
                fill(x)
            messages.append(str(err.value))
        assert messages[0] == messages[1]
        assert f"value {'-inf' if where % 2 else 'inf'} at index {where} is infinite" in messages[0]
        assert histogram_state(new) == histogram_state(ref)


def test_histogram_add_many_reference_flag_fills_as_before(rng):
    arrays = [rng.normal(0, s, 4000).astype(np.float32) for s in (0.1, 1, 10)]
    new = [C.AbsHistogram(256) for _ in arrays]
    ref = [C.AbsHistogram(256) for _ in arrays]
    for scale in (1.0, 3.0, 0.5):
        C.histogram_add_many([(h, a * scale) for h, a in zip(new, arrays)])
        C.histogram_add_many([(h, a * scale) for h, a in zip(ref, arrays)], reference=True)
    assert [histogram_state(h) for h in new] == [histogram_state(h) for h in ref]
