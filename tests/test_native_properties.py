"""Every entry point of the compiled core (medtrt._C) under random shapes, dtypes, memory
layouts (C order, Fortran order, strided, reversed, misaligned), k, bins, batch sequences and
thread counts: each call gives the NumPy reference's result, or a ValueError / TypeError that
says what is wrong; never a crash. Inputs that are valid by the documented contract must not
be refused. `make sanitize` runs this module in the AddressSanitizer + UndefinedBehaviorSanitizer
build with many more examples (MEDTRT_HYPOTHESIS=sanitize), where any memory error or undefined
behaviour also fails the run. Examples are derandomized: the same on every run."""

from __future__ import annotations

import os
import threading
from collections import deque

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")  # a test dependency: pip install 'medtrt[test]'
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from helpers.reference import check_topk  # noqa: E402
from medtrt._native import native  # noqa: E402
from medtrt.ops import resize_normalize, resize_normalize_mixed, topk  # noqa: E402
from medtrt.ops.resize_normalize import make_options  # noqa: E402
from medtrt.reference import preprocess  # noqa: E402
from medtrt.testing import assert_close  # noqa: E402

C = native()
EXAMPLES = {"ci": 40, "sanitize": 400}[os.environ.get("MEDTRT_HYPOTHESIS", "ci")]
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
PIXELS = ("uint8", "uint16", "int16", "float32")
LAYOUTS = ("c", "fortran", "strided", "reversed", "misaligned")
OUT = (6, 5)  # pipeline network input: 30 values, enough for up to 9 classes


def with_layout(a: np.ndarray, layout: str) -> np.ndarray:
    """The same values as ``a`` in another memory layout (a view or a copy)."""
    if a.ndim == 0 or a.size == 0 or layout == "c":
        return a
    if layout == "fortran":
        return np.asfortranarray(a)
    if layout == "strided":
        return np.repeat(a, 2, axis=0)[::2]
    if layout == "reversed":
        return np.ascontiguousarray(a[::-1])[::-1]
    raw = np.zeros(a.nbytes + 1, np.uint8)  # misaligned: starts one byte into a buffer
    raw[1:] = np.ascontiguousarray(a).view(np.uint8).ravel()
    return np.frombuffer(raw, a.dtype, offset=1).reshape(a.shape)


def values(rng: np.random.Generator, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    if dtype == "float32":
        return rng.uniform(-2, 2, shape).astype(np.float32)
    if dtype in ("float16", "float64"):
        return rng.uniform(-2, 2, shape).astype(dtype)
    if dtype == "bool":
        return rng.integers(0, 2, shape).astype(bool)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, shape, endpoint=True).astype(dtype)


@st.composite
def arrays(draw, dtypes, shapes) -> tuple[np.ndarray, np.ndarray]:
    """(the array in a random layout, the same values C-contiguous for the reference)."""
    dtype = draw(st.sampled_from(dtypes))
    shape = tuple(draw(shapes))
    base = values(np.random.default_rng(draw(st.integers(0, 2**32 - 1))), dtype, shape)
    return with_layout(base, draw(st.sampled_from(LAYOUTS))), base


def refused(call) -> bool:
    """True when ``call`` raised ValueError/TypeError with a message; anything else propagates.
    (Counted as a Hypothesis event: --hypothesis-show-statistics shows how many were valid.)"""
    try:
        call()
    except (ValueError, TypeError) as e:
        assert str(e), "an error must say what is wrong"
        hypothesis.event("refused")
        return True
    hypothesis.event("accepted")
    return False


# ---- resize_normalize -----------------------------------------------------------------------
# Each example is a valid call, or a valid call with one fault; a fault must be refused, and
# only a fault.

def valid_images(dtypes=PIXELS):
    shape = st.one_of(st.tuples(st.integers(1, 23), st.integers(1, 23)),
                      st.tuples(st.integers(1, 23), st.integers(1, 23), st.sampled_from([1, 3])))
    return arrays(dtypes, shape)


RESIZE_FAULTS = (None,) * 8 + ("dtype", "mixed", "rank", "empty", "zero_side",
                 "in_channels", "channels", "out_size", "mean", "std", "window", "scale")


@SETTINGS
@given(data=st.data(), fault=st.sampled_from(RESIZE_FAULTS), out_h=st.integers(1, 20),
       out_w=st.integers(1, 20), channels=st.sampled_from([1, 3]),
       out_dtype=st.sampled_from(["float32", "float16"]), mean=st.sampled_from([0.0, 0.5, -1.0]),
       std=st.sampled_from([1.0, 0.25, 2.0]),
       window=st.sampled_from([None, None, (0.5, 3.0), (40.0, 400.0)]))
def test_resize_normalize(data, fault, out_h, out_w, channels, out_dtype, mean, std, window):
    dtype = data.draw(st.sampled_from(PIXELS))
    batch = data.draw(st.lists(valid_images((dtype,)), min_size=1, max_size=4))
    arrays_in, bases = [a for a, _ in batch], [b for _, b in batch]
    kw = dict(channels=channels, mean=mean, std=std, window=window, dtype=out_dtype)
    odd = {"dtype": lambda: values(np.random.default_rng(0), "float64", (4, 5)),
           "mixed": lambda: values(np.random.default_rng(0),
                                   "uint8" if dtype != "uint8" else "uint16", (4, 5)),
           "rank": lambda: np.ones((2, 3, 3, 1), dtype), "zero_side": lambda: np.ones((0, 4), dtype),
           "in_channels": lambda: np.ones((4, 5, 2), dtype)}
    if fault in odd:
        arrays_in.insert(data.draw(st.integers(0, len(arrays_in))), odd[fault]())
    elif fault == "empty":
        arrays_in = []
    elif fault == "out_size":
        out_h = data.draw(st.sampled_from([0, -3, 2**24 + 1]))
    else:
        kw.update({None: {}, "channels": {"channels": data.draw(st.sampled_from([0, 2, 4]))},
                   "mean": {"mean": data.draw(st.sampled_from([float("nan"), 1e39]))},
                   "std": {"std": data.draw(st.sampled_from([0.0, 1e-300, float("inf")]))},
                   "window": {"window": data.draw(st.sampled_from([(0.0, 0.0), (1.0, -2.0)]))},
                   "scale": {"window": None, "scale": data.draw(st.sampled_from([1e300, np.nan]))},
                   }[fault])
    got = {}
    if refused(lambda: got.setdefault("x", resize_normalize(arrays_in, (out_h, out_w), **kw))):
        assert fault, f"a valid call was refused: {[(b.dtype, b.shape) for b in bases]} {kw}"
        return
    assert not fault, f"fault {fault!r} was accepted"
    want = preprocess(bases, (out_h, out_w), channels=channels, mean=mean, std=std,
                      window=window)
    got = got["x"].astype(np.float64)
    if out_dtype == "float16":  # beyond float16's range (rounding to nearest): +-inf
        over = np.abs(want) >= 65520
        assert np.array_equal(got[over], np.copysign(np.inf, want[over]))
        got, want = np.where(over, 0.0, got), np.where(over, 0.0, want)
    tol = (1e-3 if out_dtype == "float16" else 1e-5) * max(1.0, float(np.abs(want).max()))
    assert_close(got, want, atol=tol, rtol=0, name="resize_normalize")


# ---- topk -----------------------------------------------------------------------------------

TOPK_FAULTS = (None,) * 6 + ("dtype", "rank", "no_classes", "k_low", "k_high", "activation")


@SETTINGS
@given(data=st.data(), fault=st.sampled_from(TOPK_FAULTS), batch=st.integers(1, 9),
       classes=st.integers(1, 12), dtype=st.sampled_from(["float32", "float16"]),
       activation=st.sampled_from(["softmax", "sigmoid", "none"]))
def test_topk(data, fault, batch, classes, dtype, activation):
    k = data.draw(st.integers(1, classes))
    shape: tuple[int, ...] = (batch, classes)
    if fault == "dtype":
        dtype = data.draw(st.sampled_from(["float64", "int32", "bool"]))
    elif fault == "rank":
        shape = data.draw(st.sampled_from([(), (classes,), (batch, classes, 2)]))
    elif fault == "no_classes":
        shape = (batch, 0)
    elif fault in ("k_low", "k_high"):
        k = 0 if fault == "k_low" else classes + data.draw(st.integers(1, 3))
    elif fault == "activation":
        activation = "relu"
    x, base = data.draw(arrays((dtype,), st.just(shape)))
    out = {}
    if refused(lambda: out.setdefault("r", topk(x, k, activation=activation))):
        assert fault, f"valid logits refused: {dtype} {shape} k={k} {activation}"
        return
    assert not fault, f"fault {fault!r} was accepted"
    check_topk(*out["r"], base.astype(np.float32), k, activation)


# ---- entropy ------------------------------------------------------------------------------

SPECIAL = np.array([np.nan, 0.0, -0.0, 1e-40, 3e-45, 6e-36, 1e30, -2.5], np.float32)


@st.composite
def activations(draw, fault: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """float32 activations (zeros, NaN, denormals, huge values among them); with ``fault``,
    one infinite value or a non-contiguous view, which must be refused."""
    n = draw(st.integers(2 if fault else 0, 300))  # (one value is contiguous in any layout)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scale = draw(st.sampled_from([1e-40, 1e-20, 1.0, 1e20]))
    x = (rng.standard_normal(n) * scale).astype(np.float32)
    if n and draw(st.booleans()):
        x[rng.integers(0, n, max(1, n // 10))] = rng.choice(SPECIAL, max(1, n // 10))
    if fault and draw(st.booleans()):
        x[rng.integers(0, n)] = np.inf
        return with_layout(x, draw(st.sampled_from(["c", "misaligned"]))), x
    layouts = ["strided", "reversed"] if fault else ["c", "misaligned"]
    return with_layout(x, draw(st.sampled_from(layouts))), x


@SETTINGS
@given(data=st.data(), bins=st.sampled_from([2, 16, 256, 2048]),
       faults=st.lists(st.booleans(), max_size=3), layout=st.sampled_from(LAYOUTS))
def test_histogram(data, bins, faults, layout):
    for bad in (0, 3, 2**25):
        assert refused(lambda bad=bad: C.AbsHistogram(bad))
    h, former = C.AbsHistogram(bins), C.AbsHistogram(bins)
    counted = nans = 0
    top = 0.0
    for fault in faults:
        x, base = data.draw(activations(fault))
        if refused(lambda x=x: h.add(x)):  # refused before anything is counted
            assert fault, f"a valid batch was refused ({base.size} values)"
            assert refused(lambda x=x: former.add_reference(x))
            continue
        assert not fault, "an infinite or non-contiguous batch was accepted"
        former.add_reference(x)  # the former two-pass fill: the same state, bit for bit
        assert (h.counts.tobytes(), h.range, h.max_abs, h.total, h.nan_count, h.merges) == (
            former.counts.tobytes(), former.range, former.max_abs, former.total,
            former.nan_count, former.merges)
        counted += int((~np.isnan(base)).sum())
        nans += int(np.isnan(base).sum())
        top = max(top, float(np.nanmax(np.abs(base), initial=0.0)))
    assert h.total == counted and h.nan_count == nans and h.max_abs == top
    assert int(h.counts.sum()) == (counted if h.range else 0)  # zeros wait for a range
    assert h.range >= h.max_abs
    again = C.AbsHistogram.from_parts(with_layout(h.counts, layout), h.range, h.max_abs,
                                      h.nan_count, h.merges)
    np.testing.assert_array_equal(again.counts, h.counts)
    quant = data.draw(st.sampled_from([2, max(2, bins // 2), bins]))
    start = data.draw(st.integers(quant, bins))
    amax = [C.entropy_amax(hist, start, quant)[0] for hist in (h, again)]
    assert amax[0] == amax[1] <= h.max_abs
    fast = C.entropy_amax_many([h, again], start, quant)[0]  # the fast search, bit for bit
    assert np.float64(fast[0]).tobytes() == np.float64(amax[0]).tobytes() == fast[1].tobytes()
    for s, q in ((start, 1), (quant - 1, quant), (bins + 1, quant), (start, bins + 1)):
        assert refused(lambda s=s, q=q: C.entropy_amax(h, s, q))


ADD_MANY_FAULTS = (None, None, "none", "duplicate", "values")


@SETTINGS
@given(data=st.data(), fault=st.sampled_from(ADD_MANY_FAULTS), n=st.integers(1, 3))
def test_histogram_add_many(data, fault, n):
    hists = [C.AbsHistogram(64) for _ in range(n)]
    work = [data.draw(activations()) for _ in range(n)]
    pairs = [(h, x) for h, (x, _) in zip(hists, work)]
    at = data.draw(st.integers(0, n - 1))
    if fault == "none":
        pairs[at] = (None, pairs[at][1])
    elif fault == "duplicate":
        pairs.insert(at, pairs[-1])
    elif fault == "values":
        pairs[at] = (pairs[at][0], data.draw(activations(fault=True))[0])
    if refused(lambda: C.histogram_add_many(pairs)):
        assert fault, "a valid call was refused"
        return
    assert not fault, f"fault {fault!r} was accepted"
    for h, (_, base) in zip(hists, work):
        serial = C.AbsHistogram(64)
        serial.add(base)
        np.testing.assert_array_equal(h.counts, serial.counts)


# ---- pipeline -------------------------------------------------------------------------------

class CopyStage:
    """logits = the first `classes` network-input values of each image (exact on any device)."""

    def __init__(self, pipe) -> None:
        self.pipe, self.views = pipe, []

    def __call__(self, view) -> None:
        self.views.append(view)
        x = self.pipe.host_input(view).reshape(view.batch, -1)
        self.pipe.host_logits(view)[...] = x[:, : self.pipe.classes]


def expected(pipe, bases, activation):
    x = resize_normalize_mixed(bases, OUT, mean=0.5, std=0.25, dtype=pipe.input_dtype)
    logits = np.ascontiguousarray(x.reshape(len(bases), -1)[:, : pipe.classes])
    logits = logits.astype(pipe.logits_dtype)
    return topk(logits, pipe.classes, activation=activation), logits.astype(np.float32)


OPS = ("submit", "submit", "collect", "manual", "reserve", "bad_slot", "stale_view", "bad_wait")


@SETTINGS
@given(data=st.data(), slots=st.integers(1, 3), classes=st.integers(1, 9),
       dtype=st.sampled_from(["float32", "float16"]),
       activation=st.sampled_from(["softmax", "sigmoid", "none"]),
       ops=st.lists(st.sampled_from(OPS), max_size=10))
def test_pipeline_operations(data, slots, classes, dtype, activation, ops):
    pipe = C.Pipeline(slots=slots, classes=classes, device="cpu", logits_dtype=dtype,
                      activation=activation,
                      preprocess=make_options(OUT, mean=0.5, std=0.25, dtype=dtype))
    stage = CopyStage(pipe)
    pending: deque = deque()

    def collect():
        slot, bases, want_logits = pending.popleft()
        scores, indices, logits, _ = pipe.wait(slot)
        (want_s, want_i), want_l = expected(pipe, bases, activation)
        np.testing.assert_array_equal(scores, want_s)
        np.testing.assert_array_equal(indices, want_i)
        if want_logits:
            np.testing.assert_array_equal(logits, want_l)
        else:
            assert logits is None

    for op in ops:
        if op == "submit":
            batch = data.draw(st.lists(valid_images(), min_size=1, max_size=5))
            if len(pending) == slots:
                collect()
            want_logits = data.draw(st.booleans())
            slot = pipe.submit([a for a, _ in batch], stage, want_logits)
            pending.append((slot, [b for _, b in batch], want_logits))
        elif op == "collect" and pending:
            collect()
        elif op == "manual" and len(pending) < slots:  # no compute step: NaN, never stale data
            slot = pipe.acquire()
            pipe.stage_in(slot, [np.ones((3, 4), np.uint8)])
            pipe.stage_out(slot, True)
            scores, _, logits, _ = pipe.wait(slot)
            assert np.isnan(logits).all() and np.isnan(scores).all()
        elif op == "reserve" and not pending:  # (it takes every slot: waits for in-flight ones)
            n, raw = data.draw(st.integers(-1, 40)), data.draw(st.integers(0, 20000))
            assert refused(lambda: pipe.reserve(n, raw)) == (n < 1)
        elif op == "bad_slot":  # a slot this caller does not hold, or none at all
            slot = pending[0][0] if pending else data.draw(st.sampled_from([slots, 99]))
            assert refused(lambda: pipe.submit([np.ones((2, 2), np.uint8)], stage, False, slot))
        elif op == "stale_view" and stage.views:
            assert refused(lambda: pipe.host_input(stage.views[0]))
        elif op == "bad_wait":
            busy = {s for s, _, _ in pending}
            free = [s for s in range(slots) if s not in busy] + [slots, -1]
            assert refused(lambda: pipe.wait(data.draw(st.sampled_from(free))))
    while pending:
        collect()


@settings(max_examples=max(4, EXAMPLES // 10), deadline=None, derandomize=True, database=None)
@given(threads=st.integers(1, 8), slots=st.integers(1, 3), seed=st.integers(0, 2**32 - 1))
def test_pipeline_from_many_threads(threads, slots, seed):
    """Submissions and waits from several threads on one pipeline: every thread gets its own
    batches' results."""
    pipe = C.Pipeline(slots=slots, classes=4, device="cpu",
                      preprocess=make_options(OUT, mean=0.5, std=0.25))
    stage = CopyStage(pipe)
    errors = []

    def work(t):
        rng = np.random.default_rng([seed, t])
        try:
            for _ in range(6):
                bases = [values(rng, "uint8", tuple(rng.integers(1, 20, 2))) for _ in range(3)]
                scores, indices, _, _ = pipe.wait(pipe.submit(bases, stage))
                (want_s, want_i), _ = expected(pipe, bases, "softmax")
                np.testing.assert_array_equal(indices, want_i)
                np.testing.assert_array_equal(scores, want_s)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    pool = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert not errors, errors[0]
