"""Classification metrics in plain numpy, shared by training, evaluation, quantize and benchmarks."""
from __future__ import annotations

import itertools
import math

import numpy as np


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Rows are true classes, columns predicted classes."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true), np.asarray(y_pred)), 1)
    return cm


def per_class(cm: np.ndarray) -> dict[str, np.ndarray]:
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support}


def accuracy_of(cm: np.ndarray) -> float:
    total = cm.sum()
    return float(np.trace(cm) / total) if total else float("nan")


def balanced_accuracy_of(cm: np.ndarray) -> float:
    """Mean recall over the classes present: a class absent from the split is left out, not scored 0."""
    recall, support = per_class(cm)["recall"], cm.sum(axis=1)
    return float(recall[support > 0].mean())


def roc_auc(y_true_binary: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve via the Mann-Whitney U statistic (ties count half); NaN if one class is absent."""
    y = np.asarray(y_true_binary).astype(bool)
    n_pos, n_neg = y.sum(), (~y).sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = np.asarray(scores)[order]
    # average ranks over ties
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def roc_curve(y_true_binary: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate) at every distinct threshold, for plotting."""
    order = np.argsort(-np.asarray(scores), kind="mergesort")
    y = np.asarray(y_true_binary).astype(bool)[order]
    tps = np.concatenate([[0], np.cumsum(y)])
    fps = np.concatenate([[0], np.cumsum(~y)])
    return fps / max(fps[-1], 1), tps / max(tps[-1], 1)


def expected_calibration_error(probs: np.ndarray, y_true: np.ndarray, bins: int = 15) -> float:
    """Top-1 ECE: the confidence-weighted gap between confidence and accuracy over equal-width bins."""
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y_true
    edges = np.linspace(0.0, 1.0, bins + 1)
    ece = 0.0
    for lo, hi in itertools.pairwise(edges):
        mask = (conf > lo) & (conf <= hi)
        if mask.any():
            ece += mask.mean() * abs(conf[mask].mean() - correct[mask].mean())
    return float(ece)


def classification_report(probs: np.ndarray, y_true: np.ndarray, labels: tuple[str, ...]) -> dict:
    """Every metric the project reports, as plain JSON-ready values."""
    probs = np.asarray(probs, dtype=np.float64)
    y_true = np.asarray(y_true)
    y_pred = probs.argmax(axis=1)
    k = len(labels)
    cm = confusion_matrix(y_true, y_pred, k)
    pc = per_class(cm)
    aucs = [roc_auc(y_true == i, probs[:, i]) for i in range(k)]
    present = pc["support"] > 0
    return {
        "n": len(y_true),
        "accuracy": accuracy_of(cm),
        "balanced_accuracy": balanced_accuracy_of(cm),
        "macro_f1": float(pc["f1"][present].mean()),
        "macro_auc": float(np.nanmean(aucs)) if not np.all(np.isnan(aucs)) else float("nan"),
        "ece": expected_calibration_error(probs, y_true),
        "per_class": {
            code: {
                "precision": float(pc["precision"][i]),
                "recall": float(pc["recall"][i]),
                "f1": float(pc["f1"][i]),
                "support": int(pc["support"][i]),
                "auc": aucs[i],
            }
            for i, code in enumerate(labels)
        },
        "confusion_matrix": cm.tolist(),
        "labels": list(labels),
    }


def bootstrap_confusions(y_true: np.ndarray, y_pred: np.ndarray, groups, num_classes: int, *,
                         resamples: int = 2000, seed: int = 0) -> np.ndarray:
    """``resamples`` confusion matrices (R x k x k) of the split drawn again with replacement, whole
    ``groups`` at a time: images of one lesion are near-duplicates, so resampling them one by one
    would count a lesion's errors as independent and draw the interval too narrow."""
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    _, group_of = np.unique(np.asarray(groups), return_inverse=True)
    if len(group_of) != len(y_true):
        raise ValueError(f"{len(group_of)} group ids for {len(y_true)} predictions")
    n_groups = int(group_of.max()) + 1
    per_group = np.zeros((n_groups, num_classes, num_classes), dtype=np.int64)
    np.add.at(per_group, (group_of, np.asarray(y_true), np.asarray(y_pred)), 1)
    draws = np.random.default_rng(seed).integers(0, n_groups, size=(resamples, n_groups))
    counts = np.stack([np.bincount(row, minlength=n_groups) for row in draws])
    return np.tensordot(counts, per_group, axes=1)


def recall_of(cm: np.ndarray, k: int) -> float:
    """Class ``k``'s recall; NaN where a resample drew none of it."""
    support = cm[k].sum()
    return float(cm[k, k] / support) if support else float("nan")


def percentile_interval(values, level: float = 0.95) -> tuple[float, float]:
    tail = 100 * (1 - level) / 2
    return float(np.nanpercentile(values, tail)), float(np.nanpercentile(values, 100 - tail))


def json_safe(value):
    """NaN/inf (the AUC of a class absent from a split) -> None, recursively, so the JSON is strict."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value
