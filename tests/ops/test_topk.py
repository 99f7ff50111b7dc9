"""topk: CPU kernel vs float64 NumPy softmax/sigmoid and stable sort; ties, NaN, float16;
errors; CUDA kernel vs the CPU twin (marked gpu)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from helpers.reference import check_same_order, check_topk
from medtrt.ops import topk
from medtrt.testing import assert_close

has_torch = importlib.util.find_spec("torch") is not None
ACTIVATIONS = ["softmax", "sigmoid", "none"]


def make_logits(rng, batch, classes, magnitude, dtype=np.float32):
    return (rng.uniform(-magnitude, magnitude, size=(batch, classes))).astype(dtype)


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("batch,classes,k", [(1, 1, 1), (1, 6, 1), (7, 6, 6), (64, 14, 5),
                                             (5, 1000, 10), (3, 1000, 1000), (33, 37, 3)])
@pytest.mark.parametrize("magnitude", [4.0, 80.0], ids=["small", "large"])
def test_matches_reference(rng, activation, batch, classes, k, magnitude):
    logits = make_logits(rng, batch, classes, magnitude)
    scores, indices = topk(logits, k, activation=activation)
    # sigmoid(80) rounds to 1.0f and softmax of +-80 underflows: float32 ties the reference
    # separates, which check_topk allows only where float32 cannot tell the values apart.
    check_topk(scores, indices, logits, k, activation)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_float16_logits(rng, activation):
    logits = make_logits(rng, 50, 14, 12.0, np.float16)
    scores, indices = topk(logits, 5, activation=activation)
    check_topk(scores, indices, logits.astype(np.float32), 5, activation)


def test_every_float16_value_converts_exactly():
    bits = np.arange(65536, dtype=np.uint16)
    logits = bits.view(np.float16)[:, None]
    scores, indices = topk(logits, 1, activation="none")
    np.testing.assert_array_equal(scores[:, 0], logits[:, 0].astype(np.float32))
    assert (indices == 0).all()


def test_ties_are_broken_by_lower_index():
    logits = np.array([[1, 3, 3, 2, 3, 0]], np.float32)
    for activation in ACTIVATIONS:
        scores, indices = topk(logits, 6, activation=activation)
        assert indices.tolist() == [[1, 2, 4, 3, 0, 5]], activation
        assert scores[0, 0] == scores[0, 1] == scores[0, 2]


def test_ties_are_decided_on_scores_not_logits():
    # sigmoid(30), sigmoid(40), sigmoid(35) are all 1.0f: equal scores, so index order.
    logits = np.array([[30.0, 40.0, 35.0, -5.0]], np.float32)
    scores, indices = topk(logits, 4, activation="sigmoid")
    assert indices.tolist() == [[0, 1, 2, 3]]
    assert scores[0, :3].tolist() == [1.0, 1.0, 1.0]
    # Softmax: e^-200 underflows to 0 for both small logits, so they tie and keep index order.
    scores, indices = topk(np.array([[0.0, -300.0, -200.0]], np.float32), 3)
    assert indices.tolist() == [[0, 1, 2]] and scores[0].tolist() == [1.0, 0.0, 0.0]


def test_softmax_is_max_subtracted():
    logits = np.array([[1000.0, 999.0, 998.0], [-1000.0, -1001.0, -1002.0]], np.float32)
    scores, indices = topk(logits, 3)
    expected = np.exp([0.0, -1.0, -2.0]) / np.exp([0.0, -1.0, -2.0]).sum()
    assert_close(scores, np.stack([expected, expected]), atol=1e-6)
    assert indices.tolist() == [[0, 1, 2], [0, 1, 2]]


def test_nan_scores_rank_last():
    logits = np.array([[1.0, np.nan, 2.0, -np.inf]], np.float32)
    scores, indices = topk(logits, 4, activation="none")
    assert indices.tolist() == [[2, 0, 3, 1]]
    assert np.isnan(scores[0, 3])


@pytest.mark.skipif(not has_torch, reason="torch is not installed")
def test_torch_cpu_tensor_in_and_out(rng):
    import torch

    logits = torch.from_numpy(make_logits(rng, 4, 6, 3.0))
    scores, indices = topk(logits, 2)
    assert isinstance(scores, torch.Tensor) and scores.dtype == torch.float32
    assert indices.dtype == torch.int32
    ref_scores, ref_idx = topk(logits.numpy(), 2)
    np.testing.assert_array_equal(scores.numpy(), ref_scores)
    np.testing.assert_array_equal(indices.numpy(), ref_idx)


@pytest.mark.parametrize("logits,k,activation,match", [
    (np.zeros((2, 3), np.float32), 4, "softmax", r"k must be in \[1, classes=3\]; got 4"),
    (np.zeros((2, 3), np.float32), 0, "softmax", r"k must be in \[1, classes=3\]; got 0"),
    (np.zeros((2, 3), np.float32), -1, "softmax", r"got -1"),
    (np.zeros(3, np.float32), 1, "softmax", r"expected logits of rank 2 \[batch, classes\]; got rank 1"),
    (np.zeros((2, 3, 4), np.float32), 1, "softmax", r"got rank 3 with shape \(2, 3, 4\)"),
    (np.zeros((2, 3), np.float64), 1, "softmax", r"expected float32 or float16 logits; got float64"),
    (np.zeros((2, 3), np.int32), 1, "softmax", r"got int32"),
    (np.zeros((0, 3), np.float32), 1, "softmax", r"expected at least one row; got an empty batch"),
    (np.zeros((2, 0), np.float32), 1, "softmax", r"expected at least one class"),
    (np.zeros((2, 3), np.float32), 1, "relu", r"activation must be 'softmax', 'sigmoid' or 'none'; got 'relu'"),
])
def test_errors_state_expected_and_actual(logits, k, activation, match):
    with pytest.raises(ValueError, match=match):
        topk(logits, k, activation=activation)


def test_same_order_check_allows_only_near_ties():
    """The check the CUDA comparisons use (GPU vs CPU twin): indices may differ only where
    their logits agree within 1e-6 / 1e-5."""
    logits = np.array([[0.5, 2.0, 2.0 + 5e-7, -1.0], [1.0, 3.0, 2.0, 0.0]], np.float32)
    cpu = np.array([[2, 1, 0, 3], [1, 2, 0, 3]], np.int32)
    check_same_order(cpu.copy(), cpu, logits)
    check_same_order(np.array([[1, 2, 0, 3], [1, 2, 0, 3]], np.int32), cpu, logits)
    with pytest.raises(AssertionError, match=r"orders disagree.*worst .*"):
        check_same_order(np.array([[2, 0, 1, 3], [1, 2, 0, 3]], np.int32), cpu, logits)
    with pytest.raises(AssertionError, match="orders disagree"):
        check_same_order(np.array([[2, 1, 0, 3], [2, 1, 0, 3]], np.int32), cpu, logits)
    with pytest.raises(AssertionError, match=r"shape \(2, 3\)"):
        check_same_order(cpu[:, :3], cpu, logits)


# ---- CUDA kernel vs CPU twin ---------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("batch,classes,k,dtype", [
    (1, 6, 1, np.float32), (256, 6, 3, np.float32), (256, 14, 14, np.float16),
    (1000, 1000, 5, np.float32), (37, 1000, 1000, np.float32), (5, 33, 33, np.float16),
])
def test_cuda_matches_cpu_twin(rng, activation, batch, classes, k, dtype, record_property):
    import torch

    logits = make_logits(rng, batch, classes, 20.0, dtype)
    cpu_scores, cpu_indices = topk(logits, k, activation=activation)
    scores, indices = topk(torch.from_numpy(logits).cuda(), k, activation=activation)
    scores, indices = scores.cpu().numpy(), indices.cpu().numpy()
    check_topk(scores, indices, logits.astype(np.float32), k, activation)
    assert_close(scores, cpu_scores, atol=1e-7, rtol=1e-5, name="cuda vs cpu scores")
    same = indices == cpu_indices
    record_property("max_score_diff_vs_cpu", float(np.abs(scores - cpu_scores).max()))
    record_property("indices_differing", int((~same).sum()))
    # Where the twins differ, it must be a float32 near-tie: the two indices' logits agree.
    check_same_order(indices, cpu_indices, logits, name="cuda vs cpu indices")


@pytest.mark.gpu
def test_cuda_ties_and_nan_match_contract():
    import torch

    logits = torch.tensor([[1, 3, 3, 2, 3, 0], [30, 40, 35, -5, 0, 1],
                           [1, float("nan"), 2, -float("inf"), 0, 0]], device="cuda")
    _, idx = topk(logits, 6, activation="none")
    assert idx[0].tolist() == [1, 2, 4, 3, 0, 5]
    _, idx = topk(logits[1:2], 3, activation="sigmoid")
    assert idx.tolist() == [[0, 1, 2]]
    _, idx = topk(logits[2:3], 6, activation="none")
    assert idx.tolist() == [[2, 0, 4, 5, 3, 1]]
    with pytest.raises(ValueError, match=r"k must be in \[1, classes=6\]; got 7"):
        topk(logits, 7)


@pytest.mark.gpu
def test_a_failed_cuda_call_is_not_reported_again_by_the_next_launch():
    """MEDTRT_CUDA_CHECK clears the runtime's last error when it throws: the next kernel's
    launch check (cudaGetLastError) must not report the earlier, already raised failure."""
    import torch

    from medtrt._native import native
    from medtrt.errors import CudaError

    c = native()
    with pytest.raises(CudaError, match="cudaSetDevice"):
        c.cuda_set_device(c.cuda_device_count())  # an ordinal past the last device
    _, indices = topk(torch.randn(4, 6, device="cuda"), 2)
    assert tuple(indices.shape) == (4, 2)


def test_misaligned_logits_are_read_correctly(rng):
    logits = rng.standard_normal((5, 7)).astype(np.float32)
    raw = np.zeros(logits.nbytes + 1, np.uint8)
    raw[1:] = logits.view(np.uint8).ravel()
    shifted = np.frombuffer(raw, np.float32, offset=1).reshape(logits.shape)
    assert not shifted.flags.aligned
    for got, want in zip(topk(shifted, 3), topk(logits, 3)):
        np.testing.assert_array_equal(got, want)
