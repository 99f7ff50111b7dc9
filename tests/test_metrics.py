"""medtrt.metrics: the measurements by hand, and inputs with NaN or infinity refused by name."""

from __future__ import annotations

import numpy as np
import pytest

from medtrt.errors import NonFiniteError
from medtrt.metrics import (agreement, auroc, classification_metrics, logit_errors,
                            multilabel_metrics, per_sample_errors, reliability, require_finite)


def test_agreement_refuses_non_finite_probabilities_naming_the_input():
    rng = np.random.default_rng(3)
    ref = rng.dirichlet(np.ones(4), size=10)
    cand = ref.copy()
    cand[[4, 7], 1] = np.nan
    cand[7, 2] = np.inf
    with pytest.raises(NonFiniteError, match=r"^agreement: the candidate probabilities hold "
                       r"non-finite values: 2 NaN and 1 infinite in 2 of 10 samples \(first: "
                       r"sample 4\)$"):
        agreement(cand, ref)
    with pytest.raises(ValueError, match=r"the reference probabilities hold .* 1 of 10 samples "
                                         r"\(first: sample 7\)"):
        agreement(ref, np.where(np.arange(10)[:, None] == 7, -np.inf, ref), activation="sigmoid")
    with pytest.raises(ValueError, match=r"expected two equal \[N, C\] probabilities arrays"):
        agreement(ref[:, :3], ref)


def test_require_finite_says_what_and_the_fix():
    x = np.random.default_rng(4).normal(size=(3, 2, 2))
    assert require_finite(x, "x").dtype == np.float64
    x[2, 1, 0] = np.nan
    with pytest.raises(NonFiniteError, match=r"^the logits hold non-finite values: 1 NaN and 0 "
                                             r"infinite in 1 of 3 samples \(first: sample 2\); "
                                             r"rebuild$"):
        require_finite(x, "the logits", fix="rebuild")
    with pytest.raises(NonFiniteError, match=r"1 of 1 samples"):
        require_finite(np.float64("inf"), "a scalar")


def test_other_measurements_refuse_non_finite_inputs():
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(6, 3))
    nan = logits.copy()
    nan[2, 0] = np.nan
    with pytest.raises(NonFiniteError, match=r"logit_errors: the candidate logits .*sample 2"):
        logit_errors(nan, logits)
    with pytest.raises(NonFiniteError, match=r"logit_errors: the baseline logits"):
        logit_errors(logits, logits, nan)
    with pytest.raises(NonFiniteError, match=r"per_sample_errors: the reference logit"):
        per_sample_errors(logits, nan)
    with pytest.raises(NonFiniteError, match=r"auroc: the scores"):
        auroc(rng.random((6, 3)) < 0.5, nan)
    with pytest.raises(NonFiniteError, match=r"classification_metrics: the probabilities"):
        classification_metrics(np.zeros(6, int), nan, ("a", "b", "c"))
    with pytest.raises(NonFiniteError, match=r"multilabel_metrics: the probabilities"):
        multilabel_metrics(np.ones((6, 3)), nan, ("a", "b", "c"))


def test_logit_errors_against_a_baseline_name_the_worst_sample():
    rng = np.random.default_rng(6)
    ref = rng.normal(size=(20, 3))
    baseline = ref + 0.01 * rng.normal(size=ref.shape)
    cand = ref + 0.02 * rng.normal(size=ref.shape)
    cand[11] = [-5.0, 5.0, 0.0]
    ref[11] = [5.0, -5.0, 0.0]
    rep = logit_errors(cand, ref, baseline, labels=("a", "b", "c"))
    assert rep.worst_index == 11 and rep.max_abs_error == pytest.approx(10.0)
    assert rep.worst_candidate.startswith("b (") and rep.worst_reference.startswith("a (")
    assert rep.ratio == pytest.approx(rep.rms_error / rep.baseline_rms_error)


def test_reliability_bins_and_ece():
    bins, ece = reliability(np.array([0.2, 0.4, 0.9, 0.6]), np.array([0.0, 1.0, 1.0, 0.0]), 2)
    assert [b["count"] for b in bins] == [2, 2]
    assert ece == pytest.approx(0.5 * abs(0.5 - 0.3) + 0.5 * abs(0.5 - 0.75))


def test_auroc_matches_pair_counting_with_ties():
    rng = np.random.default_rng(1)
    y = rng.random((40, 2)) < 0.5
    s = np.round(rng.random((40, 2)), 1)  # many ties
    got = auroc(y, s)
    for j in range(2):
        pos, neg = s[y[:, j], j], s[~y[:, j], j]
        pairs = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
        assert got[j] == pytest.approx(pairs / (len(pos) * len(neg)))
    assert np.isnan(auroc(np.ones((3, 1)), np.ones((3, 1))))[0]



def test_classification_metrics_by_hand():
    labels = np.array([0, 0, 1, 2, 2])
    probs = np.array([[0.9, 0.05, 0.05],   # 0 -> 0, conf 0.9
                      [0.3, 0.6, 0.1],     # 0 -> 1, conf 0.6
                      [0.2, 0.7, 0.1],     # 1 -> 1, conf 0.7
                      [0.1, 0.1, 0.8],     # 2 -> 2, conf 0.8
                      [0.5, 0.1, 0.4]])    # 2 -> 0, conf 0.5
    m = classification_metrics(labels, probs, ("a", "b", "c"), ece_bins=2)
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["confusion"] == [[1, 1, 0], [0, 1, 0], [1, 0, 1]]
    a, b = m["per_class"]["a"], m["per_class"]["b"]
    assert a == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2})
    assert b["precision"] == pytest.approx(0.5) and b["recall"] == 1.0
    assert m["per_class"]["c"]["f1"] == pytest.approx(2 * 1.0 * 0.5 / 1.5)
    # bins [0, 0.5], (0.5, 1]: {0.5: wrong} and {0.9 ok, 0.6 wrong, 0.7 ok, 0.8 ok}
    ece = 1 / 5 * abs(0 - 0.5) + 4 / 5 * abs(3 / 4 - (0.9 + 0.6 + 0.7 + 0.8) / 4)
    assert m["ece"] == pytest.approx(ece)
    assert [b["count"] for b in m["reliability"]] == [1, 4]


def test_multilabel_metrics_by_hand():
    targets = np.array([[1, 0], [0, np.nan], [1, 1], [0, 0]], np.float64)
    probs = np.array([[0.9, 0.2],    # label a: pos 0.9 -> TP;  b: neg 0.2 -> TN
                      [0.6, 0.9],    # a: neg 0.6 -> FP;        b: unknown, left out
                      [0.4, 0.7],    # a: pos 0.4 -> FN;        b: pos 0.7 -> TP
                      [0.1, 0.6]])   # a: neg 0.1 -> TN;        b: neg 0.6 -> FP
    m = multilabel_metrics(targets, probs, ("a", "b"), threshold=0.5, ece_bins=2)
    a, b = m["per_label"]["a"], m["per_label"]["b"]
    assert (a["tp"], a["fn"], a["fp"], a["tn"]) == (1, 1, 1, 1)
    assert (b["tp"], b["fn"], b["fp"], b["tn"]) == (1, 0, 1, 1)
    assert a["auroc"] == pytest.approx(3 / 4)   # pos {0.9, 0.4} vs neg {0.6, 0.1}: 3 of 4 pairs
    assert b["auroc"] == pytest.approx(1.0)     # pos {0.7} vs neg {0.2, 0.6}
    assert b["precision"] == pytest.approx(0.5) and b["recall"] == 1.0
    assert m["macro_auroc"] == pytest.approx(7 / 8)
    assert m["exact_match"] == pytest.approx(1 / 4)     # only image 0 has every known label right
    assert m["label_accuracy"] == pytest.approx(4 / 7)
    # pooled over the 7 known pairs; bins [0, 0.5]: {0.2 n, 0.4 p, 0.1 n},
    # (0.5, 1]: {0.9 p, 0.6 n, 0.7 p, 0.6 n}
    ece = 3 / 7 * abs(1 / 3 - 0.7 / 3) + 4 / 7 * abs(2 / 4 - 2.8 / 4)
    assert m["ece"] == pytest.approx(ece)
    one_class = multilabel_metrics(np.array([[1.0], [1.0]]), np.array([[0.9], [0.3]]), ("a",))
    assert one_class["per_label"]["a"]["auroc"] is None and one_class["macro_auroc"] is None
