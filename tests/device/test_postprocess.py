"""device.postprocess: probabilities, top-3, smoothing, the quality gate and the uncertain state."""
import json
import re
import time

import cv2
import numpy as np
import pytest

from device.card import ModelCard
from device.config import PostprocessConfig
from device.postprocess import Postprocessor, iso_utc, measure_quality, to_probabilities
from device.types import Inference

CODES = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")


def make_card(input_size=(64, 64)) -> ModelCard:
    return ModelCard.from_dict({
        "schema_version": 1,
        "name": "unit-card",
        "disclaimer": "Screening aid, not a diagnosis (test card).",
        "labels": [{"code": c, "name": f"Name of {c}"} for c in CODES],
        "input": {"dtype": "int8", "scale": 0.02, "zero_point": 0, "height": input_size[0],
                  "width": input_size[1], "channels": 3},
        "output": {"dtype": "int8", "scale": 1 / 256, "zero_point": -128},
        "normalization": {"mean": [128, 128, 128], "std": [64, 64, 64]},
        "preprocessing": {"policy": "center_crop_resize"},
        "model_file": {"path": "model_int8.tflite", "sha256": "0" * 64, "size_bytes": 1},
    })


def textured(mean: float, *, seed: int = 0, size=(240, 320)) -> np.ndarray:
    """A sharp random texture around ``mean`` brightness (RGB uint8)."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(0, 25, size=size)
    grey = np.clip(mean + noise, 0, 255).astype(np.uint8)
    return np.dstack([grey] * 3)


def probs(**values: float) -> np.ndarray:
    rest = (1.0 - sum(values.values())) / (len(CODES) - len(values))
    return np.array([values.get(c, rest) for c in CODES], np.float32)


def inference(p: np.ndarray) -> Inference:
    return Inference(probabilities=p, preprocess_ms=1.5, inference_ms=7.25)


def run(post: Postprocessor, p: np.ndarray, rgb=None, frame_id=1):
    rgb = textured(128) if rgb is None else rgb
    return post.process(inference(p), rgb=rgb, frame_id=frame_id, timestamp=time.time(),
                        t_start=time.monotonic() - 0.02, fps=9.5)


def test_to_probabilities_keeps_probabilities_and_softmaxes_logits():
    p = probs(mel=0.7)
    np.testing.assert_allclose(to_probabilities(p), p / p.sum(), rtol=1e-6)
    # int8 output rounding leaves the sum slightly off 1: still probabilities, renormalised.
    rounded = np.round(p * 256) / 256 + 1 / 512
    np.testing.assert_allclose(to_probabilities(rounded).sum(), 1.0, rtol=1e-6)
    assert to_probabilities(rounded).argmax() == CODES.index("mel")
    logits = np.array([2.0, -1.0, 0.5, 0.0, 3.0, 1.0, -2.0], np.float32)
    expected = np.exp(logits) / np.exp(logits).sum()
    np.testing.assert_allclose(to_probabilities(logits), expected, rtol=1e-5)


def test_result_fields_and_top3():
    post = Postprocessor(make_card(), PostprocessConfig())
    result = run(post, probs(mel=0.6, nv=0.25, bcc=0.1), frame_id=42)
    assert (result.class_code, result.class_index, result.class_name) == ("mel", 4, "Name of mel")
    assert result.confidence == pytest.approx(0.6, abs=1e-6)
    assert [c for c, _ in result.top3] == ["mel", "nv", "bcc"]
    assert [p for _, p in result.top3] == pytest.approx([0.6, 0.25, 0.1], abs=1e-6)
    assert list(result.all_probabilities) == list(CODES)
    assert sum(result.all_probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert result.state == "ok"
    assert (result.model, result.frame_id, result.fps) == ("unit-card", 42, 9.5)
    assert result.latency_ms["preprocess"] == 1.5 and result.latency_ms["inference"] == 7.25
    assert result.latency_ms["total"] >= 20.0  # measured from t_start, 20 ms before the call
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", result.timestamp)
    assert result.disclaimer == "Screening aid, not a diagnosis (test card)."
    data = json.loads(json.dumps(result.to_dict()))
    assert data["top3"][0] == {"class_code": "mel", "confidence": pytest.approx(0.6, abs=1e-5)}


def test_iso_utc():
    assert iso_utc(0.25) == "1970-01-01T00:00:00.250Z"


def test_wrong_number_of_scores_is_refused():
    post = Postprocessor(make_card(), PostprocessConfig())
    with pytest.raises(ValueError, match="6 scores for 7 labels"):
        run(post, np.full(6, 1 / 6, np.float32))


def test_uncertain_below_min_confidence():
    post = Postprocessor(make_card(), PostprocessConfig(min_confidence=0.5))
    low = run(post, probs(mel=0.4, nv=0.3))
    assert low.state == "uncertain" and low.class_code == "mel"
    assert run(post, probs(mel=0.55)).state == "ok"
    strict = Postprocessor(make_card(), PostprocessConfig(min_confidence=0.9))
    assert run(strict, probs(mel=0.55)).state == "uncertain"


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (textured(15), "too dark"),
        (textured(245, size=(240, 320)), "too bright"),
        (cv2.GaussianBlur(textured(128), (0, 0), 6), "too blurry"),
        (np.full((240, 320, 3), 128, np.uint8), "too blurry"),
    ],
    ids=["dark", "bright", "blurred", "flat"],
)
def test_quality_gate_marks_poor_quality(frame, reason):
    post = Postprocessor(referral_card(0.2), PostprocessConfig())
    result = run(post, probs(mel=0.9), rgb=frame)
    assert result.state == "poor_quality"
    assert result.quality["reason"] == reason
    assert result.class_code == "mel"  # probabilities are still reported
    # the frame says nothing about the lesion: retake advice, never a referral (docs/results.md)
    assert result.refer is None and result.referral is None
    assert result.headline == f"Poor image quality ({reason})"
    assert result.advice == f"Retake the photo: it is {reason}. A poor photo says nothing about the lesion."


def test_quality_gate_passes_a_good_frame_and_thresholds_come_from_config():
    frame = textured(128)
    quality = measure_quality(frame, PostprocessConfig())
    assert quality.ok and quality.reason == ""
    assert 110 < quality.brightness < 146 and quality.sharpness > 20
    assert measure_quality(frame, PostprocessConfig(min_brightness=140)).reason == "too dark"
    assert measure_quality(frame, PostprocessConfig(min_sharpness=quality.sharpness + 1)).reason == "too blurry"


def test_quality_looks_at_the_models_view_only():
    frame = textured(128, size=(240, 960))
    frame[:, :360] = 0  # dark borders outside a square model's centre crop
    frame[:, 600:] = 0
    assert measure_quality(frame, PostprocessConfig(), aspect=(1, 1)).ok
    assert measure_quality(frame, PostprocessConfig(), aspect=(240, 960)).reason == "too dark"


def test_smoothing_averages_the_last_n_good_frames():
    post = Postprocessor(make_card(), PostprocessConfig(smoothing=3))
    a, b, c, d = probs(mel=0.9), probs(nv=0.9), probs(nv=0.9), probs(bcc=0.9)
    assert run(post, a).class_code == "mel"
    second = run(post, b)
    np.testing.assert_allclose(list(second.all_probabilities.values()), (a + b) / 2, atol=1e-6)
    third = run(post, c)
    assert third.class_code == "nv"
    np.testing.assert_allclose(list(third.all_probabilities.values()), (a + b + c) / 3, atol=1e-6)
    fourth = run(post, d)  # the window holds 3: a falls out
    np.testing.assert_allclose(list(fourth.all_probabilities.values()), (b + c + d) / 3, atol=1e-6)
    # A dark frame is reported raw and stays out of the window.
    dark = run(post, probs(vasc=0.95), rgb=textured(10))
    assert dark.state == "poor_quality" and dark.class_code == "vasc"
    after = run(post, d)
    np.testing.assert_allclose(list(after.all_probabilities.values()), (c + d + d) / 3, atol=1e-6)


def test_smoothing_one_is_off():
    post = Postprocessor(make_card(), PostprocessConfig(smoothing=5), smoothing=1)
    run(post, probs(mel=0.9))
    assert run(post, probs(nv=0.9)).all_probabilities["nv"] == pytest.approx(0.9, abs=1e-6)


def referral_card(threshold: float) -> ModelCard:
    data = json.loads(json.dumps(make_card().to_dict()))
    data["referral"] = {"classes": ["akiec", "bcc", "mel"], "threshold": threshold, "sensitivity": 0.9,
                        "specificity": 0.7, "advice": "See a dermatologist."}
    return ModelCard.from_dict(data)


def test_referral_sums_the_card_classes_against_its_threshold():
    p = probs(akiec=0.05, bcc=0.1, mel=0.12, nv=0.6)  # referral score 0.27, top class nv
    above = run(Postprocessor(referral_card(0.25), PostprocessConfig()), p)
    assert above.class_code == "nv" and above.refer is True
    assert above.referral.score == pytest.approx(0.27, abs=1e-6)
    below = run(Postprocessor(referral_card(0.3), PostprocessConfig()), p)
    assert below.refer is False
    data = json.loads(json.dumps(above.to_dict()))
    assert data["refer"] is True
    assert data["referral"] == {"score": pytest.approx(0.27, abs=1e-5), "threshold": 0.25, "sensitivity": 0.9,
                                "specificity": 0.7, "advice": "See a dermatologist."}


def test_referral_at_exactly_the_threshold_refers():
    p = np.array([0.25, 0.25, 0.0, 0.0, 0.0, 0.5, 0.0], np.float32)
    assert run(Postprocessor(referral_card(0.5), PostprocessConfig()), p).refer is True


def test_without_a_referral_rule_refer_and_referral_are_null():
    data = run(Postprocessor(make_card(), PostprocessConfig()), probs(mel=0.9)).to_dict()
    assert data["refer"] is None and data["referral"] is None


def test_uncertain_keeps_the_referral_and_says_the_class_is_uncertain():
    p = probs(mel=0.3, bcc=0.2, nv=0.25)  # top class 0.3 < 0.5; referral score 0.5 + akiec's share
    result = run(Postprocessor(referral_card(0.25), PostprocessConfig()), p)
    assert result.state == "uncertain" and result.refer is True
    assert result.headline == "Uncertain: Name of mel?"
    assert result.advice == "The class is uncertain, but this lesion should be seen by a dermatologist."
    quiet = run(Postprocessor(referral_card(0.99), PostprocessConfig()), p)
    assert quiet.refer is False and quiet.advice.startswith("The class is uncertain: no class")
    confident = run(Postprocessor(referral_card(0.25), PostprocessConfig()), probs(mel=0.9))
    assert (confident.headline, confident.advice) == ("Name of mel", "See a dermatologist.")
    assert run(Postprocessor(make_card(), PostprocessConfig()), probs(nv=0.9)).advice == ""


GATE = {"output": {"dtype": "int8", "scale": 1 / 256, "zero_point": -128}, "threshold": 0.6,
        "method": "logistic head on pooled features", "advice": "Point the camera at a skin lesion.",
        "picked_on": "val", "rates": {"everyday_photos": 0.97}}


def gated_card(threshold: float = 0.6) -> ModelCard:
    data = json.loads(json.dumps(referral_card(0.2).to_dict()))
    data["gate"] = {**GATE, "threshold": threshold}
    return ModelCard.from_dict(data)


def gated(p: np.ndarray, score: float) -> Inference:
    return Inference(probabilities=p, preprocess_ms=1.0, inference_ms=2.0, not_lesion=score)


def test_not_lesion_at_the_gate_threshold_carries_no_class_confidence_or_referral():
    post = Postprocessor(gated_card(0.6), PostprocessConfig())
    result = post.process(gated(probs(mel=0.9), 0.6), rgb=textured(128), frame_id=3, timestamp=time.time(),
                          t_start=time.monotonic())
    assert result.state == "not_lesion"
    assert (result.class_code, result.class_name, result.class_index, result.confidence) == (None,) * 4
    assert result.top3 == () and result.all_probabilities == {}
    assert result.refer is None and result.referral is None  # mel 0.9 would refer: the rule never fires here
    assert (result.headline, result.advice) == ("Not a skin lesion", "Point the camera at a skin lesion.")
    data = json.loads(json.dumps(result.to_dict()))
    assert data["lesion_gate"] == {"score": 0.6, "threshold": 0.6}
    assert data["class_code"] is None and data["confidence"] is None and data["top3"] == []
    assert data["state"] == "not_lesion" and data["advice"] == "Point the camera at a skin lesion."


def test_below_the_gate_threshold_the_lesion_is_classified_and_the_score_reported():
    post = Postprocessor(gated_card(0.6), PostprocessConfig())
    result = post.process(gated(probs(mel=0.9), 0.59), rgb=textured(128), frame_id=3, timestamp=time.time(),
                          t_start=time.monotonic())
    assert result.state == "ok" and result.class_code == "mel" and result.refer is True
    assert result.to_dict()["lesion_gate"] == {"score": pytest.approx(0.59), "threshold": 0.6}


def test_poor_quality_comes_before_not_lesion_and_neither_enters_the_window():
    post = Postprocessor(gated_card(0.5), PostprocessConfig(smoothing=3))
    dark = post.process(gated(probs(vasc=0.9), 0.99), rgb=textured(10), frame_id=1, timestamp=time.time(),
                        t_start=time.monotonic())
    assert dark.state == "poor_quality" and dark.lesion_gate.score == pytest.approx(0.99)
    post.process(gated(probs(bcc=0.9), 0.9), rgb=textured(128), frame_id=2, timestamp=time.time(),
                 t_start=time.monotonic())
    first_lesion = post.process(gated(probs(nv=0.9), 0.1), rgb=textured(128), frame_id=3, timestamp=time.time(),
                                t_start=time.monotonic())
    assert first_lesion.all_probabilities["nv"] == pytest.approx(0.9, abs=1e-6)  # nothing else was averaged in


def test_a_card_without_a_gate_never_says_not_lesion_and_a_gated_card_needs_the_score():
    ungated = Postprocessor(referral_card(0.2), PostprocessConfig())
    result = ungated.process(gated(probs(mel=0.9), 1.0), rgb=textured(128), frame_id=1, timestamp=time.time(),
                             t_start=time.monotonic())
    assert result.state == "ok" and result.to_dict()["lesion_gate"] is None
    with pytest.raises(ValueError, match="no gate score"):
        run(Postprocessor(gated_card(), PostprocessConfig()), probs(mel=0.9))
