"""medtrt.testing.assert_close must fail when it should, and say where."""

from __future__ import annotations

import numpy as np
import pytest

from medtrt.testing import assert_close


def test_passes_within_tolerance_and_reports_errors():
    report = assert_close(np.array([1.0, 2.0 + 1e-7]), np.array([1.0, 2.0]), atol=1e-6)
    assert report.mismatched == 0 and report.total == 2
    assert report.max_abs_error == pytest.approx(1e-7, rel=1e-3)
    assert report.worst_index == (1,)


def test_failure_names_worst_element_index_and_errors():
    actual = np.zeros((3, 4))
    expected = np.zeros((3, 4))
    actual[2, 1] = 0.5
    actual[0, 0] = 0.1
    with pytest.raises(AssertionError, match=r"2 of 12 elements.*worst at index \(2, 1\): "
                                             r"actual np.float64\(0.5\), expected np.float64\(0.0\)"):
        assert_close(actual, expected, atol=1e-3)


def test_relative_tolerance_and_shape_mismatch():
    assert_close([100.0], [100.05], rtol=1e-3)
    with pytest.raises(AssertionError, match="exceed"):
        assert_close([100.0], [100.5], rtol=1e-3)
    with pytest.raises(AssertionError, match=r"shape \(2,\) differs from expected shape \(3,\)"):
        assert_close([1.0, 2.0], [1.0, 2.0, 3.0])


def test_nan_and_inf_handling():
    assert_close([np.nan, np.inf], [np.nan, np.inf])
    with pytest.raises(AssertionError):
        assert_close([np.nan], [np.nan], equal_nan=False)
    with pytest.raises(AssertionError):
        assert_close([1.0], [np.nan], atol=10.0)
    with pytest.raises(AssertionError):
        assert_close([np.inf], [-np.inf], atol=10.0)


# --------------------------------------------------------------------------- parity helpers

from medtrt.testing import (agreement, assert_agreement, assert_auroc_change,  # noqa: E402
                            assert_logit_parity)

LABELS = ("a", "b", "c")


def test_agreement_names_the_worst_sample_and_both_predictions():
    ref = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.1, 0.8]])
    cand = ref.copy()
    cand[1] = [0.6, 0.3, 0.1]  # flips to "a"
    cand[2] = [0.1, 0.15, 0.75]  # same class, small change
    rep = agreement(cand, ref, labels=LABELS)
    assert rep.top1_agreement == pytest.approx(2 / 3) and rep.disagreements == (1,)
    assert rep.worst_index == 1 and rep.max_abs_prob_diff == pytest.approx(0.4)
    with pytest.raises(AssertionError, match=r"agreement 0.6667 < 0.99 \(1 of 3 samples differ, "
                       r"e.g. \[1\]\).*Worst sample 1: model predicts a \(0.6000\), reference "
                       r"predicts b \(0.7000\)"):
        assert_agreement(cand, ref, min_top1=0.99, max_prob_diff=1.0, labels=LABELS, name="model")
    assert_agreement(cand, ref, min_top1=0.6, max_prob_diff=0.5)


def test_multilabel_agreement_counts_label_decisions():
    ref = np.array([[0.9, 0.2], [0.4, 0.6]])
    cand = np.array([[0.9, 0.55], [0.4, 0.6]])
    rep = agreement(cand, ref, activation="sigmoid", labels=("x", "y"))
    assert rep.decision_agreement == 0.75 and rep.top1_agreement == 0.5
    assert rep.worst_candidate.startswith("{x (0.900), y (0.550)}")


def test_logit_parity_against_the_baseline_error():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(50, 3))
    baseline = ref + 0.01 * rng.normal(size=ref.shape)
    ok = ref + 0.015 * rng.normal(size=ref.shape)
    rep = assert_logit_parity(ok, ref, baseline, k=2.0, ceiling=1.0)
    assert 1.0 < rep.ratio < 2.0
    bad = ok.copy()
    bad[7] += 3.0
    with pytest.raises(AssertionError, match=r"ratio .*max \|dlogit\| 3.0\d* > ceiling 1.*Worst "
                                             r"sample 7"):
        assert_logit_parity(bad, ref, baseline, k=2.0, ceiling=1.0)


def test_auroc_change_fails_with_the_label_named():
    y = np.array([[1], [0], [1], [0]], bool)
    ref = np.array([[0.9], [0.1], [0.8], [0.2]])
    worse = np.array([[0.9], [0.85], [0.8], [0.2]])
    with pytest.raises(AssertionError, match=r"AUROC of Edema changed by 0.2500 > 0.005 "
                                             r"\(1.0000 -> 0.7500\)"):
        assert_auroc_change(y, worse, ref, max_change=0.005, names=("Edema",))
