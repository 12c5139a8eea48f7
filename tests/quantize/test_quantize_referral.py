"""The referral rule on hand-made probabilities: threshold picked on one split, measured on another,
and parsed back by the device's card reader."""
from __future__ import annotations

import numpy as np
import pytest

from quantize.referral import build, measure, pick_threshold, scores, threshold_on

LABELS = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")


def _probs(malignant_mass: list[float]) -> np.ndarray:
    """One row per value: that much probability spread over akiec/bcc/mel, the rest on nv."""
    rows = []
    for m in malignant_mass:
        row = np.zeros(len(LABELS))
        row[[0, 1, 4]] = m / 3
        row[5] = 1 - m
        rows.append(row)
    return np.array(rows)


def test_score_sums_the_three_malignant_classes():
    probs = np.array([[0.1, 0.2, 0.0, 0.0, 0.3, 0.4, 0.0]])
    assert scores(probs, LABELS)[0] == pytest.approx(0.6)
    with pytest.raises(ValueError, match="scc"):
        scores(probs, LABELS, classes=("scc",))


def test_threshold_is_the_highest_that_reaches_the_sensitivity():
    score = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05, 0.6, 0.3])
    positive = np.array([1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0], bool)
    op = pick_threshold(score, positive, 0.9)
    assert op.threshold == pytest.approx(0.1)  # the 9th of 10 positives
    assert op.sensitivity == pytest.approx(0.9)
    assert op.specificity == 0.0  # both negatives score above 0.1
    strict = pick_threshold(score, positive, 0.5)
    assert strict.threshold == pytest.approx(0.5) and strict.specificity == pytest.approx(0.5)
    with pytest.raises(ValueError, match="no malignant"):
        pick_threshold(score, np.zeros_like(positive), 0.9)


def test_measure_counts_referrals_on_each_side():
    op = measure(np.array([0.9, 0.1, 0.8, 0.2]), np.array([1, 1, 0, 0]), 0.5)
    assert (op.sensitivity, op.specificity) == (0.5, 0.5)


def test_card_rule_is_picked_on_val_and_measured_on_test():
    rng = np.random.default_rng(0)
    val_true = np.array([4] * 50 + [5] * 150)
    val_mass = np.concatenate([rng.uniform(0.3, 1.0, 50), rng.uniform(0.0, 0.5, 150)])
    test_true = np.array([1] * 40 + [5] * 160)
    test_mass = np.concatenate([rng.uniform(0.3, 1.0, 40), rng.uniform(0.0, 0.5, 160)])
    threshold = threshold_on(_probs(val_mass), val_true, LABELS)
    assert threshold == int(threshold * 1e6) / 1e6
    rule = build(_probs(test_mass), test_true, LABELS, threshold=threshold)
    val_op = measure(val_mass, val_true == 4, rule.threshold)
    assert val_op.sensitivity >= 0.9
    want = measure(test_mass, test_true == 1, rule.threshold)
    assert (rule.sensitivity, rule.specificity) == (round(want.sensitivity, 4), round(want.specificity, 4))
    assert rule.classes == ("akiec", "bcc", "mel") and rule.picked_on == "val"
    assert "dermatologist" in rule.advice.lower()


def test_a_given_threshold_is_kept_and_says_where_it_came_from():
    test_true = np.array([4, 4, 5, 5])
    rule = build(_probs(np.array([0.6, 0.2, 0.5, 0.1])), test_true, LABELS, threshold=0.4,
                 picked_on="val, dermnet-mnv2-trio")
    assert (rule.threshold, rule.sensitivity, rule.specificity) == (0.4, 0.5, 0.5)
    assert rule.picked_on == "val, dermnet-mnv2-trio"
