"""The small typed objects that flow one way through the device pipeline:

    capture -> Frame -> preprocess/engine -> Inference -> postprocess -> Result -> (overlay, publish, api)
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# In the order postprocess decides them: a poor frame says nothing, so it is checked first;
# a frame that shows no lesion says nothing about one; only then is a class confident or not.
STATES = ("poor_quality", "not_lesion", "uncertain", "ok")
# What a result says when its class is uncertain but the referral rule fires (docs/results.md).
UNCERTAIN_REFER = "The class is uncertain, but this lesion should be seen by a dermatologist."
UNCERTAIN = "The class is uncertain: no class is likely enough to show as an answer."
RETAKE = "Retake the photo: it is {reason}. A poor photo says nothing about the lesion."
NOT_LESION = "Not a skin lesion"


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
    not_lesion: float | None = None  # the card's gate output in [0, 1]; None for a model without one


@dataclass(frozen=True)
class Prepared:
    """A frame made ready for the interpreter (``Engine.prepare``): one input tensor per
    test-time view, and the time that took."""

    tensors: tuple[np.ndarray, ...]
    preprocess_ms: float


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
class LesionGate:
    """The card's not-a-lesion gate applied to one frame (``device.card.Gate``)."""

    score: float  # probability that the frame shows no lesion
    threshold: float

    def to_dict(self) -> dict:
        return {"score": round(self.score, 6), "threshold": self.threshold}


@dataclass(frozen=True)
class Result:
    """One classification, the same object everywhere (MQTT, HTTP, CLI, overlay, page, captures).

    What it may say follows one rule (docs/results.md): ``headline`` and ``advice`` are the only
    words a surface shows. A ``not_lesion`` result carries no class, confidence or referral (those
    fields are None and the probabilities empty); a ``poor_quality`` one carries no referral.
    """

    class_code: str | None
    class_name: str | None
    class_index: int | None
    confidence: float | None
    all_probabilities: dict[str, float]  # code -> probability, card label order; {} for not_lesion
    top3: tuple[tuple[str, float], ...]
    state: str  # one of STATES
    model: str
    frame_id: int
    timestamp: str  # ISO 8601 UTC
    latency_ms: dict[str, float]  # preprocess, inference, total
    fps: float
    quality: dict[str, float | str] = field(default_factory=dict)
    disclaimer: str = "Screening aid, not a diagnosis."
    # None when the card has no referral rule or the state says nothing about the lesion
    # (poor_quality, not_lesion); else refer is referral.score >= referral.threshold.
    referral: ReferralDecision | None = None
    source: str = ""  # what was classified: replayed file name, camera name or "upload"
    lesion_gate: LesionGate | None = None  # None when the card has no gate
    gate_advice: str = ""  # the card's gate advice, said by a not_lesion result

    @property
    def refer(self) -> bool | None:
        return None if self.referral is None else self.referral.score >= self.referral.threshold

    @property
    def shows_class(self) -> bool:
        """Whether a person is shown the class and its confidence: only when the frame showed a
        lesion well enough to say something about it (``ok`` and ``uncertain``)."""
        return self.state in ("ok", "uncertain")

    @property
    def headline(self) -> str:
        """The result in a few words: the class, or why there is none."""
        if self.state == "poor_quality":
            reason = str(self.quality.get("reason", "")) if self.quality else ""
            return f"Poor image quality{f' ({reason})' if reason else ''}"
        if self.state == "not_lesion":
            return NOT_LESION
        if self.state == "uncertain":
            return f"Uncertain: {self.class_name}?"
        return str(self.class_name)

    @property
    def advice(self) -> str:
        """What to do, or "" when there is nothing to do: the one message of the result."""
        if self.state == "poor_quality":
            reason = str(self.quality.get("reason", "")) if self.quality else ""
            return RETAKE.format(reason=reason or "of poor quality")
        if self.state == "not_lesion":
            return self.gate_advice
        if self.state == "uncertain":
            return UNCERTAIN_REFER if self.refer else UNCERTAIN
        return self.referral.advice if self.refer else ""

    def to_dict(self) -> dict:
        return {
            "class_code": self.class_code,
            "class_name": self.class_name,
            "class_index": self.class_index,
            "confidence": None if self.confidence is None else round(self.confidence, 6),
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
            "lesion_gate": None if self.lesion_gate is None else self.lesion_gate.to_dict(),
            "headline": self.headline,
            "advice": self.advice,
            "source": self.source,
            "disclaimer": self.disclaimer,
        }
