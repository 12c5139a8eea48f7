"""The malignancy referral rule written into the card: refer when P(akiec) + P(bcc) + P(mel)
reaches a threshold picked on the validation split for a target sensitivity.

The device applies it (``device.postprocess``); here it is chosen and measured, on the int8
model's outputs through the device engine, so the figures in the card are what the device does.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from device.card import Referral

MALIGNANT = ("akiec", "bcc", "mel")
ADVICE = "See a dermatologist: this lesion shows features of a skin cancer (akiec, bcc or melanoma)."


@dataclass(frozen=True)
class Operating:
    threshold: float
    sensitivity: float  # share of malignant lesions referred
    specificity: float  # share of benign lesions not referred


def scores(probs: np.ndarray, labels: tuple[str, ...], classes=MALIGNANT) -> np.ndarray:
    """The rule's score per image: the summed probability of ``classes``."""
    missing = [c for c in classes if c not in labels]
    if missing:
        raise ValueError(f"referral classes {missing} are not among the model's labels {labels}")
    return probs[:, [labels.index(c) for c in classes]].sum(axis=1)


def measure(score: np.ndarray, positive: np.ndarray, threshold: float) -> Operating:
    refer = score >= threshold
    positive = positive.astype(bool)
    sens = float(refer[positive].mean()) if positive.any() else float("nan")
    spec = float((~refer[~positive]).mean()) if (~positive).any() else float("nan")
    return Operating(float(threshold), sens, spec)


def pick_threshold(score: np.ndarray, positive: np.ndarray, target_sensitivity: float = 0.9) -> Operating:
    """The highest threshold (so the best specificity) whose sensitivity reaches the target."""
    positive = positive.astype(bool)
    if not positive.any():
        raise ValueError("referral: the split has no malignant images to pick a threshold on")
    pos = np.sort(score[positive])[::-1]
    # Referring the k highest-scoring positives needs threshold <= the k-th score.
    k = int(np.ceil(target_sensitivity * len(pos)))
    return measure(score, positive, float(pos[k - 1]))


def threshold_on(val_probs: np.ndarray, val_true: np.ndarray, labels: tuple[str, ...], *,
                 target_sensitivity: float = 0.9, classes=MALIGNANT) -> float:
    """The rule's threshold picked on ``val`` for ``target_sensitivity``, rounded down to 6 decimals
    so that what was picked to refer still is."""
    positive_codes = [labels.index(c) for c in classes]
    picked = pick_threshold(scores(val_probs, labels, classes), np.isin(val_true, positive_codes), target_sensitivity)
    return math.floor(picked.threshold * 1e6) / 1e6


def build(test_probs: np.ndarray, test_true: np.ndarray, labels: tuple[str, ...], *, threshold: float,
          target_sensitivity: float = 0.9, picked_on: str = "val", classes=MALIGNANT) -> Referral:
    """The card's rule at ``threshold`` (picked on ``picked_on``), its sensitivity and specificity
    measured on ``test``."""
    positive_codes = [labels.index(c) for c in classes]
    on_test = measure(scores(test_probs, labels, classes), np.isin(test_true, positive_codes), threshold)
    return Referral(classes=tuple(classes), threshold=threshold,
                    sensitivity=round(on_test.sensitivity, 4), specificity=round(on_test.specificity, 4),
                    advice=ADVICE, target_sensitivity=target_sensitivity, picked_on=picked_on)
