"""Engine scores -> the one Result object: probabilities, top-3, smoothing and the gates.

Thresholds live here, in config and in the card, never in the engine. States, first match wins
(docs/results.md): a frame that is too dark, too bright or too blurry is ``poor_quality`` (no
referral: the frame says nothing about the lesion); a frame whose not-a-lesion score reaches the
card's ``gate.threshold`` is ``not_lesion`` (no class, confidence or referral); a prediction whose
confidence is below ``postprocess.min_confidence`` is ``uncertain`` (the referral still applies);
else ``ok``. Neither poor nor not-a-lesion frames enter the smoothing window.
"""
from __future__ import annotations

import time
from collections import deque
from datetime import UTC, datetime

import cv2
import numpy as np

from device.card import ModelCard
from device.config import PostprocessConfig
from device.preprocess import center_crop_to_aspect
from device.types import Inference, LesionGate, Quality, ReferralDecision, Result

# Quality is measured on a grey copy scaled down to fit this size, so the sharpness
# threshold means the same for a 640x480 USB frame and a 320x240 lores frame.
QUALITY_SIZE = (320, 240)
# Scores that are non-negative and sum to 1 within this are already probabilities
# (a softmax output, int8 rounding included); anything else gets a softmax.
_PROB_SUM_TOLERANCE = 0.05


def to_probabilities(scores: np.ndarray) -> np.ndarray:
    """Class probabilities (float32, sum 1) from an engine's probabilities or logits."""
    scores = np.asarray(scores, dtype=np.float32).reshape(-1)
    total = float(scores.sum())
    if scores.min() >= 0 and abs(total - 1.0) <= _PROB_SUM_TOLERANCE:
        return scores / total
    shifted = np.exp(scores - scores.max())
    return shifted / shifted.sum()


def measure_quality(rgb: np.ndarray, cfg: PostprocessConfig, *, aspect: tuple[int, int] = (1, 1)) -> Quality:
    """Brightness (mean luma) and sharpness (variance of the Laplacian) of the part the model sees.

    ``aspect`` is the model input's (height, width): the frame is centre-cropped to it first, so a
    dark vignette outside the model's view does not fail the gate.
    """
    crop = center_crop_to_aspect(rgb, *aspect)
    h, w = crop.shape[:2]
    scale = min(QUALITY_SIZE[0] / w, QUALITY_SIZE[1] / h, 1.0)
    if scale < 1.0:  # shrink first: every later step then touches a fraction of the pixels
        crop = cv2.resize(crop, (max(1, round(w * scale)), max(1, round(h * scale))),
                          interpolation=cv2.INTER_AREA)
    grey = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY)
    brightness = float(cv2.mean(grey)[0])
    _, std = cv2.meanStdDev(cv2.Laplacian(grey, cv2.CV_16S))  # int16 holds a uint8 Laplacian exactly
    sharpness = float(std[0, 0]) ** 2
    reason = ""
    if brightness < cfg.min_brightness:
        reason = "too dark"
    elif brightness > cfg.max_brightness:
        reason = "too bright"
    elif sharpness < cfg.min_sharpness:
        reason = "too blurry"
    return Quality(brightness=brightness, sharpness=sharpness, ok=not reason, reason=reason)


def refer_decision(card: ModelCard, probs: np.ndarray) -> ReferralDecision | None:
    """The card's referral rule on ``probs`` (card label order), or None when it has none."""
    rule = card.referral
    if rule is None:
        return None
    score = float(sum(probs[card.codes.index(code)] for code in rule.classes))
    return ReferralDecision(score=score, threshold=rule.threshold, sensitivity=rule.sensitivity,
                            specificity=rule.specificity, advice=rule.advice)


def iso_utc(timestamp: float) -> str:
    """Wall-clock seconds -> ISO 8601 UTC with milliseconds (``2024-05-01T12:00:00.123Z``)."""
    text = datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


class Postprocessor:
    """Builds Results for one model; keeps the smoothing window between frames."""

    def __init__(self, card: ModelCard, cfg: PostprocessConfig, *, smoothing: int | None = None):
        self.card = card
        self.cfg = cfg
        self.smoothing = cfg.smoothing if smoothing is None else smoothing
        self._history: deque[np.ndarray] = deque(maxlen=max(1, self.smoothing))

    def quality(self, rgb: np.ndarray) -> Quality:
        """:func:`measure_quality` of the part of ``rgb`` this model sees, on this config's thresholds."""
        return measure_quality(rgb, self.cfg, aspect=(self.card.input.height, self.card.input.width))

    def process(self, inference: Inference, *, rgb: np.ndarray, frame_id: int, timestamp: float,
                t_start: float, fps: float = 0.0, source: str = "", quality: Quality | None = None) -> Result:
        """One Result for ``inference`` on ``rgb``.

        ``timestamp`` is the wall-clock capture time; ``t_start`` the monotonic time the frame
        was captured or the upload arrived, so ``latency_ms.total`` covers the whole path.
        ``quality``: :meth:`quality` of ``rgb`` when the caller measured it already (the daemon
        times it as a stage of its own).
        """
        labels, card = self.card.labels, self.card
        probs = to_probabilities(inference.probabilities)
        if probs.shape[0] != len(labels):
            raise ValueError(f"engine returned {probs.shape[0]} scores for {len(labels)} labels")
        if quality is None:
            quality = self.quality(rgb)
        gate = None
        if card.gate is not None:
            if inference.not_lesion is None:
                raise ValueError("the card has a not-a-lesion gate but the engine returned no gate score")
            gate = LesionGate(score=float(inference.not_lesion), threshold=card.gate.threshold)
        if not quality.ok:
            state = "poor_quality"
        elif gate is not None and gate.score >= gate.threshold:
            state = "not_lesion"
        else:
            self._history.append(probs)
            if self.smoothing > 1:
                probs = np.mean(self._history, axis=0, dtype=np.float32)
            state = "uncertain" if float(probs.max()) < self.cfg.min_confidence else "ok"
        common = {
            "state": state,
            "model": card.name,
            "frame_id": frame_id,
            "timestamp": iso_utc(timestamp),
            "latency_ms": {
                "preprocess": inference.preprocess_ms,
                "inference": inference.inference_ms,
                "total": (time.monotonic() - t_start) * 1000.0,
            },
            "fps": fps,
            "quality": {"brightness": round(quality.brightness, 1), "sharpness": round(quality.sharpness, 1),
                     "reason": quality.reason},
            "disclaimer": card.disclaimer,
            "source": source,
            "lesion_gate": gate,
            "gate_advice": card.gate.advice if card.gate else "",
        }
        if state == "not_lesion":
            return Result(class_code=None, class_name=None, class_index=None, confidence=None,
                          all_probabilities={}, top3=(), **common)
        order = np.argsort(-probs, kind="stable")
        best = int(order[0])
        return Result(
            class_code=labels[best].code,
            class_name=labels[best].name,
            class_index=best,
            confidence=float(probs[best]),
            all_probabilities={label.code: float(p) for label, p in zip(labels, probs)},
            top3=tuple((labels[i].code, float(probs[i])) for i in order[:3]),
            referral=None if state == "poor_quality" else refer_decision(card, probs),
            **common,
        )
