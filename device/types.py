"""The small typed objects that flow one way through the device pipeline:

    capture -> Frame -> preprocess/engine -> Inference -> postprocess -> Result -> (overlay, publish, api)
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

STATES = ("ok", "uncertain", "poor_quality")


@dataclass(frozen=True)
class Frame:
    frame_id: int  # increases by one per captured frame; gaps mean dropped frames
    timestamp: float  # wall clock (time.time()) at capture, for the ISO timestamp
    t_capture: float  # time.monotonic() at capture, for latency
    rgb: np.ndarray  # HxWx3 uint8, RGB by contract (capture converts)
    source: str = ""  # the replayed file's name, or the camera's name


@dataclass(frozen=True)
class Inference:
    """What the engine returns: dequantized class scores in card label order, and timings."""

    probabilities: np.ndarray  # float32 (num_classes,), sums to ~1
    preprocess_ms: float
    inference_ms: float


@dataclass(frozen=True)
class Quality:
    brightness: float  # mean luma 0..255
    sharpness: float  # variance of the Laplacian
    ok: bool
    reason: str = ""  # "too dark" | "too bright" | "too blurry" | ""


@dataclass(frozen=True)
class ReferralDecision:
    """The card's referral rule applied to one Result (``device.card.Referral``)."""

    score: float  # summed probability of the referral classes
    threshold: float
    sensitivity: float  # of the rule on the test split, from the card
    specificity: float
    advice: str

    def to_dict(self) -> dict:
        return {"score": round(self.score, 6), "threshold": self.threshold, "sensitivity": self.sensitivity,
                "specificity": self.specificity, "advice": self.advice}


@dataclass(frozen=True)
class Result:
    """One classification, the same object everywhere (MQTT, HTTP, CLI)."""

    class_code: str
    class_name: str
    class_index: int
    confidence: float
    all_probabilities: dict[str, float]  # code -> probability, card label order
    top3: tuple[tuple[str, float], ...]
    state: str  # one of STATES
    model: str
    frame_id: int
    timestamp: str  # ISO 8601 UTC
    latency_ms: dict[str, float]  # preprocess, inference, total
    fps: float
    quality: dict[str, float | str] = field(default_factory=dict)
    disclaimer: str = "Screening aid, not a diagnosis."
    # None when the card has no referral rule; else refer is referral.score >= referral.threshold.
    referral: ReferralDecision | None = None
    source: str = ""  # what was classified: replayed file name, camera name or "upload"

    @property
    def refer(self) -> bool | None:
        return None if self.referral is None else self.referral.score >= self.referral.threshold

    def to_dict(self) -> dict:
        return {
            "class_code": self.class_code,
            "class_name": self.class_name,
            "class_index": self.class_index,
            "confidence": round(self.confidence, 6),
            "all_probabilities": {k: round(v, 6) for k, v in self.all_probabilities.items()},
            "top3": [{"class_code": c, "confidence": round(p, 6)} for c, p in self.top3],
            "state": self.state,
            "model": self.model,
            "frame_id": self.frame_id,
            "timestamp": self.timestamp,
            "latency_ms": {k: round(v, 3) for k, v in self.latency_ms.items()},
            "fps": round(self.fps, 2),
            "quality": self.quality,
            "refer": self.refer,
            "referral": None if self.referral is None else self.referral.to_dict(),
            "source": self.source,
            "disclaimer": self.disclaimer,
        }
