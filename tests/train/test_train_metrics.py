"""Evaluation metrics against a small case worked out by hand (train/metrics.py)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from train.metrics import (
    accuracy_of,
    balanced_accuracy_of,
    bootstrap_confusions,
    classification_report,
    confusion_matrix,
    json_safe,
    percentile_interval,
    recall_of,
    roc_auc,
    roc_curve,
)

LABELS = ("a", "b", "c")
Y_TRUE = np.array([0, 0, 0, 1, 1, 2, 2])
# Predictions: a b c d e f g -> 0 0 1 1 2 2 1. No confidence sits on a 1/15 bin edge.
PROBS = np.array([
    [0.85, 0.10, 0.05],  # a: true 0, pred 0, conf .85
    [0.50, 0.45, 0.05],  # b: true 0, pred 0, conf .50
    [0.20, 0.75, 0.05],  # c: true 0, pred 1, conf .75
    [0.30, 0.65, 0.05],  # d: true 1, pred 1, conf .65
    [0.10, 0.35, 0.55],  # e: true 1, pred 2, conf .55
    [0.20, 0.25, 0.55],  # f: true 2, pred 2, conf .55 (same bin as e)
    [0.25, 0.45, 0.30],  # g: true 2, pred 1, conf .45
])


def pairwise_auc(positive: np.ndarray, scores: np.ndarray) -> float:
    """AUC as the share of (positive, negative) pairs ranked right, ties counting half."""
    pos, neg = scores[positive], scores[~positive]
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


@pytest.fixture(scope="module")
def report():
    return classification_report(PROBS, Y_TRUE, LABELS)


def test_confusion_matrix(report):
    assert report["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 1, 1]]
    assert report["n"] == 7 and report["labels"] == list(LABELS)


def test_accuracy_balanced_accuracy_macro_f1(report):
    assert report["accuracy"] == pytest.approx(4 / 7)
    # recalls 2/3, 1/2, 1/2
    assert report["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2 + 1 / 2) / 3)
    # precisions 2/2, 1/3, 1/2 -> F1 0.8, 0.4, 0.5
    assert report["macro_f1"] == pytest.approx((0.8 + 0.4 + 0.5) / 3)
    pc = report["per_class"]
    assert [pc[c]["precision"] for c in LABELS] == pytest.approx([1.0, 1 / 3, 1 / 2])
    assert [pc[c]["recall"] for c in LABELS] == pytest.approx([2 / 3, 1 / 2, 1 / 2])
    assert [pc[c]["f1"] for c in LABELS] == pytest.approx([0.8, 0.4, 0.5])
    assert [pc[c]["support"] for c in LABELS] == [3, 2, 2]


def test_auc_by_pairs(report):
    # class a: 12 pairs, 9.5 right (0.20 vs 0.20 is a tie); b: 6 of 10; c: 8.5 of 10 (0.55 tie)
    hand = [9.5 / 12, 6 / 10, 8.5 / 10]
    assert [pairwise_auc(Y_TRUE == i, PROBS[:, i]) for i in range(3)] == pytest.approx(hand)
    assert [report["per_class"][c]["auc"] for c in LABELS] == pytest.approx(hand)
    assert report["macro_auc"] == pytest.approx(sum(hand) / 3)


def test_expected_calibration_error(report):
    # 15 bins: {a} .85 right, {b} .50 right, {c} .75 wrong, {d} .65 right,
    # {e, f} .55 with half right, {g} .45 wrong
    gaps = [0.15, 0.50, 0.75, 0.35, 2 * 0.05, 0.45]
    assert report["ece"] == pytest.approx(sum(gaps) / 7)


def test_absent_class_has_no_auc_and_is_left_out_of_the_means():
    y = np.array([0, 0, 1, 1])
    probs = np.array([[0.9, 0.05, 0.05], [0.4, 0.5, 0.1], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1]])
    rep = classification_report(probs, y, LABELS)
    assert math.isnan(rep["per_class"]["c"]["auc"])
    assert rep["balanced_accuracy"] == pytest.approx(0.5)  # recalls 1/2, 1/2; class c absent
    assert rep["macro_auc"] == pytest.approx(np.mean([pairwise_auc(y == i, probs[:, i]) for i in (0, 1)]))
    assert math.isnan(roc_auc(np.zeros(3, bool), np.ones(3)))
    strict = json.loads(json.dumps(json_safe(rep), allow_nan=False))
    assert strict["per_class"]["c"]["auc"] is None and strict["per_class"]["a"] == rep["per_class"]["a"]


def test_roc_curve_end_points_and_monotone():
    fpr, tpr = roc_curve(Y_TRUE == 0, PROBS[:, 0])
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0, 0, 1, 1)
    assert (np.diff(fpr) >= 0).all() and (np.diff(tpr) >= 0).all()


def test_the_bootstrap_s_confusion_matrices_are_the_split_redrawn_by_whole_groups():
    y_true = np.array([0, 0, 1, 1, 2, 2])
    y_pred = np.array([0, 0, 1, 2, 2, 2])
    groups = ["a", "a", "b", "c", "d", "d"]  # two images each of lesions a and d
    cms = bootstrap_confusions(y_true, y_pred, groups, 3, resamples=500, seed=3)
    assert cms.shape == (500, 3, 3)
    # each resample draws four lesions: its image count is 4 + (draws of a) + (draws of d)
    assert cms.sum(axis=(1, 2)).min() >= 4 and cms.sum(axis=(1, 2)).max() <= 8
    # lesion a's two images are both (0 -> 0): a resample holds an even number of them
    assert (cms[:, 0, 0] % 2 == 0).all() and (cms[:, 0, 1:] == 0).all()
    assert np.array_equal(cms, bootstrap_confusions(y_true, y_pred, groups, 3, resamples=500, seed=3))
    with pytest.raises(ValueError, match="group ids"):
        bootstrap_confusions(y_true, y_pred, groups[:-1], 3)
    with pytest.raises(ValueError, match="resamples"):
        bootstrap_confusions(y_true, y_pred, groups, 3, resamples=0)


def test_near_duplicate_images_widen_the_interval_only_when_grouped():
    # 40 lesions of five identical images each, half of them misclassified: 50% accuracy
    y_true = np.zeros(200, dtype=int)
    y_pred = np.repeat(np.arange(40) % 2, 5)
    lesions = np.repeat(np.arange(40), 5)
    by_lesion = percentile_interval([accuracy_of(cm) for cm in
                                     bootstrap_confusions(y_true, y_pred, lesions, 2, resamples=1000)])
    by_image = percentile_interval([accuracy_of(cm) for cm in
                                    bootstrap_confusions(y_true, y_pred, np.arange(200), 2, resamples=1000)])
    assert by_lesion[0] < 0.5 < by_lesion[1] and by_image[0] < 0.5 < by_image[1]
    # five times the images are worth one lesion each: about sqrt(5) times wider
    assert (by_lesion[1] - by_lesion[0]) > 1.8 * (by_image[1] - by_image[0])


def test_figures_of_a_confusion_matrix():
    cm = confusion_matrix(Y_TRUE, PROBS.argmax(axis=1), 3)
    report = classification_report(PROBS, Y_TRUE, LABELS)
    assert accuracy_of(cm) == pytest.approx(report["accuracy"])
    assert balanced_accuracy_of(cm) == pytest.approx(report["balanced_accuracy"])
    assert recall_of(cm, 0) == pytest.approx(2 / 3)
    assert math.isnan(recall_of(np.zeros((3, 3), dtype=int), 1))
    # a resample without the class leaves its recall out of the interval instead of counting 0
    assert percentile_interval([0.5, float("nan"), 0.5]) == (0.5, 0.5)
