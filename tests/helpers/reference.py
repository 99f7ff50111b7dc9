"""Checks built on medtrt.reference (the float64 NumPy restatement of the op contracts)."""

from __future__ import annotations

import numpy as np

from medtrt.reference import activate


def check_topk(
    scores: np.ndarray,
    indices: np.ndarray,
    logits: np.ndarray,
    k: int,
    activation: str,
    *,
    atol: float = 1e-6,
    rtol: float = 1e-5,
) -> None:
    """Asserts that (scores, indices) are a correct top-k of ``logits`` (finite values).

    Checks against float64 probabilities: the k scores equal the k best reference scores, each
    returned index really has its returned score, indices are distinct, and the returned order
    is by score descending with equal scores in ascending index order. Exact index equality is
    required wherever the reference separates neighbours by more than the tolerance, so only
    genuine float32 near-ties may be ordered either way.
    """
    from medtrt.testing import assert_close

    ref = activate(logits, activation)
    b = logits.shape[0]
    assert scores.shape == (b, k) and indices.shape == (b, k)
    assert scores.dtype == np.float32 and indices.dtype == np.int32
    order = np.lexsort((np.broadcast_to(np.arange(ref.shape[1]), ref.shape), -ref), axis=1)[:, :k]
    expected_scores = np.take_along_axis(ref, order, axis=1)
    assert_close(scores, expected_scores, atol=atol, rtol=rtol, name="top-k scores")
    assert_close(scores, np.take_along_axis(ref, indices.astype(np.int64), axis=1),
                 atol=atol, rtol=rtol, name="score of each returned index")
    for row in range(b):
        assert len(set(indices[row].tolist())) == k, f"row {row}: repeated index {indices[row]}"
        s, i = scores[row], indices[row]
        assert np.all(s[:-1] >= s[1:]), f"row {row}: scores not descending {s}"
        tied = s[:-1] == s[1:]
        assert np.all(i[:-1][tied] < i[1:][tied]), f"row {row}: tie not broken by index {s} {i}"
    tol = atol + rtol * np.abs(ref)
    sorted_ref = -np.sort(-ref, axis=1)
    gap_ok = np.ones((b, k), dtype=bool)  # position j is unambiguous if separated on both sides
    gaps = sorted_ref[:, :-1] - sorted_ref[:, 1:]
    near = gaps <= 2 * np.take_along_axis(tol, np.argsort(-ref, axis=1), axis=1)[:, :-1]
    gap_ok[:, : min(k, near.shape[1])] &= ~near[:, :k]
    gap_ok[:, 1:] &= ~near[:, : k - 1]
    mismatch = gap_ok & (indices != order)
    assert not mismatch.any(), (
        f"indices differ from the reference at unambiguous positions {np.argwhere(mismatch)[:5]}: "
        f"got {indices[mismatch][:5]}, expected {order[mismatch][:5]}"
    )


def check_same_order(
    indices: np.ndarray,
    expected: np.ndarray,
    logits: np.ndarray,
    *,
    atol: float = 1e-6,
    rtol: float = 1e-5,
    name: str = "indices",
) -> None:
    """Asserts that two top-k orders of the same ``logits`` [batch, classes] agree except at
    near-ties: wherever the indices differ, the logits they point at agree within atol + rtol
    (scores computed another way, e.g. on a GPU against the CPU twin, differ in the last bits
    and may swap such neighbours, never others)."""
    from medtrt.testing import assert_close

    assert indices.shape == expected.shape, f"{name}: shape {indices.shape} != {expected.shape}"
    same = indices == expected
    if same.all():
        return
    ref = np.asarray(logits, np.float64)
    a = np.take_along_axis(ref, indices.astype(np.int64), 1)[~same]
    b = np.take_along_axis(ref, expected.astype(np.int64), 1)[~same]
    assert_close(a, b, atol=atol, rtol=rtol, name=f"{name}: logits where the orders disagree")
