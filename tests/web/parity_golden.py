"""Golden values from the Python side that the web app's preprocessing must reproduce.

``web/test/parity.json`` is written here and read by the node tests in ``web/test/``; the
test in ``test_web_unit.py`` rebuilds it and fails when the committed copy is stale. Rebuild:

    .venv/bin/python -m tests.web.parity_golden

Input images are made by :func:`synthetic_image`, a formula that ``web/test/synthetic.js``
repeats exactly, so the file carries only sizes and expected outputs (and, for the colour
constancy cases, one real photo's fitted pixels).
"""
from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from device.card import ModelCard
from device.config import PostprocessConfig
from device.decode import MAX_DECODE_PIXELS, load_image
from device.engine import Engine
from device.postprocess import QUALITY_SIZE, Postprocessor, measure_quality, to_probabilities
from device.preprocess import (
    center_crop_to_aspect,
    centre_zoom,
    dequantize,
    fit_to_input,
    normalize,
    quantize,
    shades_of_grey_levels,
)
from device.types import Inference

GOLDEN = Path(__file__).resolve().parents[2] / "web" / "test" / "parity.json"
CARD = Path(__file__).resolve().parents[2] / "experiments" / "dermnet-edge" / "card.json"

# (kind, seed, source height, source width, target height, target width): every resize path
# of fit_to_input (non-integer and integer area, the 2x2 fast path, a crop, an upscale).
FIT_CASES = (
    ("noise", 1, 450, 600, 120, 160),  # the fixture images' size to the shipped model's
    ("gradient", 2, 90, 120, 24, 32),
    ("noise", 3, 96, 128, 24, 32),  # integer factor 4
    ("noise", 4, 48, 70, 24, 35),  # factor 2: the vectorised path and its scalar tail
    ("noise", 5, 140, 100, 24, 32),  # portrait: cropped first
    ("gradient", 6, 301, 403, 37, 23),
    ("noise", 7, 20, 30, 24, 32),  # smaller than the model: linear upscale
    ("gradient", 8, 13, 17, 24, 32),
)
# (kind, seed, height, width, zoom): the card's centre zoom on fitted images (a crop, a linear enlargement).
ZOOM_CASES = (
    ("noise", 21, 150, 200, 0.86),  # the shipped default's input and zoom
    ("gradient", 22, 120, 160, 0.75),
    ("noise", 23, 24, 35, 0.5),  # odd sizes: the crop's rounding
)
# (kind, seed, height, width): quality measured at the model's aspect, bright, dark and flat.
QUALITY_CASES = (
    ("noise", 11, 450, 600),
    ("gradient", 12, 450, 600),
    ("dark", 13, 480, 640),
    ("flat", 14, 300, 300),
    ("gradient", 15, 1000, 750),
)
# What a result says (device.types.Result.headline/advice) for every state: (probabilities, image
# kind for the quality gate, not-a-lesion score or None for a card without a gate).
REFERRAL = {"classes": ["akiec", "bcc", "mel"], "threshold": 0.3, "sensitivity": 0.9, "specificity": 0.6,
            "advice": "See a dermatologist: this lesion has features of a skin cancer."}
GATE = {"output": {"dtype": "int8", "scale": 0.00390625, "zero_point": -128}, "threshold": 0.5,
        "method": "parity cases", "advice": "Point the camera at a skin lesion."}
RESULT_CASES = (
    ((0.02, 0.03, 0.05, 0.02, 0.8, 0.05, 0.03), "noise", None),  # ok, refers
    ((0.02, 0.03, 0.05, 0.02, 0.03, 0.82, 0.03), "noise", None),  # ok, no referral
    ((0.1, 0.15, 0.2, 0.05, 0.2, 0.25, 0.05), "noise", None),  # uncertain, refers
    ((0.02, 0.03, 0.3, 0.15, 0.05, 0.4, 0.05), "noise", None),  # uncertain, no referral
    ((0.02, 0.03, 0.05, 0.02, 0.8, 0.05, 0.03), "dark", None),  # poor: no referral though mel 0.8
    ((0.02, 0.03, 0.05, 0.02, 0.8, 0.05, 0.03), "flat", 0.9),  # poor comes before not a lesion
    ((0.02, 0.03, 0.05, 0.02, 0.8, 0.05, 0.03), "noise", 0.5),  # not a lesion, at the threshold
    ((0.02, 0.03, 0.05, 0.02, 0.8, 0.05, 0.03), "noise", 0.49),  # a lesion, gate score reported
)
# Shades-of-grey colour constancy (normalization.colour). A real dermoscopy photo, fitted small so
# its bytes can travel in the file, and the synthetic patterns, each under a colour cast (per-channel
# gains in 256ths, :func:`cast`): (source, seed, height, width, gains); "real" has no seed or size.
REAL = Path(__file__).resolve().parents[1] / "fixtures" / "ham10000_mini" / "images" / "ISIC_0024475.jpg"
REAL_SIZE = (90, 120)
COLOUR_CASES = (
    ("real", 0, 0, 0, (256, 256, 256)),
    ("real", 0, 0, 0, (256, 170, 110)),  # warm, as under a tungsten lamp
    ("real", 0, 0, 0, (150, 210, 256)),  # cool
    ("real", 0, 0, 0, (256, 256, 0)),  # blue all black: keeps its levels
    ("noise", 41, 120, 160, (256, 256, 256)),
    ("noise", 42, 90, 120, (400, 256, 200)),  # red clipped at 255
    ("noise", 43, 120, 160, (0, 256, 256)),
    ("gradient", 44, 150, 200, (256, 170, 110)),
    ("dark", 45, 120, 160, (256, 128, 64)),  # levels below 20
    ("flat", 46, 40, 50, (256, 200, 100)),  # one colour, which becomes grey
    ("flat", 47, 40, 50, (0, 0, 0)),  # all black: unchanged
)
# Images for the input tensors of a card with colour shades_of_grey, flips and a zoom: ("colour",
# a COLOUR_CASES index) or ("fit", a FIT_CASES index: its full-size source, gains of a cast).
COLOUR_TENSOR_CASES = (("colour", 1, None), ("colour", 3, None), ("fit", 0, (256, 170, 110)))
CROP_SIZES = ((450, 600), (480, 640), (1000, 750), (121, 161), (119, 159), (3, 1000), (1000, 3), (1, 1))
SCORES = (
    (-128, -128, -128, -128, -128, 127, -128),  # one confident class
    (-125, -124, -105, -95, -127, 37, -101),  # the shipped model on an all-zero input
    (-60, -61, -60, -128, -128, -128, 30),  # ties broken by label order
)


def synthetic_image(kind: str, seed: int, height: int, width: int) -> np.ndarray:
    """HxWx3 uint8 test pattern; web/test/synthetic.js computes the same bytes."""
    y, x, c = np.indices((height, width, 3), dtype=np.uint32)
    if kind == "noise":
        v = (y * width + x) * 3 + c + 1
        v = v * np.uint32(0x9E3779B1) + np.uint32(seed)
        v ^= v >> np.uint32(15)
        v = v * np.uint32(0x85EBCA77)
        v ^= v >> np.uint32(13)
        return (v >> np.uint32(24)).astype(np.uint8)
    if kind == "gradient":
        return ((y * 3 + x * 5 + c * 40 + seed) % 256).astype(np.uint8)
    if kind == "dark":
        return ((x + y + seed) % 20).astype(np.uint8)
    if kind == "flat":
        return np.full((height, width, 3), 100 + seed, np.uint8)
    raise ValueError(f"unknown kind {kind!r}")


def cast(rgb: np.ndarray, gains) -> np.ndarray:
    """``rgb`` under a colour cast: each channel times its gain / 256, clipped; web/test/synthetic.js's cast."""
    return np.minimum((rgb.astype(np.uint32) * np.array(gains, np.uint32)) >> 8, 255).astype(np.uint8)


def real_image() -> np.ndarray:
    return fit_to_input(load_image(REAL), *REAL_SIZE)


def colour_source(case: tuple) -> np.ndarray:
    kind, seed, h, w, gains = case
    return cast(real_image() if kind == "real" else synthetic_image(kind, seed, h, w), gains)


def _b64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array).tobytes()).decode()


def build_golden() -> dict:
    card = ModelCard.load(CARD)
    inp, norm = card.input, card.normalization
    fits = []
    for kind, seed, h, w, th, tw in FIT_CASES:
        fitted = fit_to_input(synthetic_image(kind, seed, h, w), th, tw)
        fits.append({"kind": kind, "seed": seed, "height": h, "width": w, "target": [th, tw],
                     "pixels": _b64(fitted)})
    zooms = [{"kind": kind, "seed": seed, "height": h, "width": w, "zoom": zoom,
              "pixels": _b64(centre_zoom(synthetic_image(kind, seed, h, w), zoom))}
             for kind, seed, h, w, zoom in ZOOM_CASES]
    first = fit_to_input(synthetic_image(*FIT_CASES[0][:4]), inp.height, inp.width)
    q = quantize(normalize(first, norm.mean, norm.std), inp.scale, inp.zero_point, inp.dtype)
    crops = []
    for h, w in CROP_SIZES:
        index = np.indices((h, w)).transpose(1, 2, 0)
        crop = center_crop_to_aspect(index, inp.height, inp.width)
        crops.append({"size": [h, w], "box": [int(crop[0, 0, 0]), int(crop[0, 0, 1]), *crop.shape[:2]]})
    cfg = PostprocessConfig()
    quality = []
    for kind, seed, h, w in QUALITY_CASES:
        found = measure_quality(synthetic_image(kind, seed, h, w), cfg, aspect=(inp.height, inp.width))
        quality.append({"kind": kind, "seed": seed, "height": h, "width": w,
                        "brightness": found.brightness, "sharpness": found.sharpness, "reason": found.reason})
    scores = []
    for raw in SCORES:
        deq = dequantize(np.array(raw, np.int8), card.output.scale, card.output.zero_point)
        scores.append({"q": list(raw), "dequantized": deq.tolist(), "probabilities": to_probabilities(deq).tolist()})
    results = []
    for probs, kind, not_lesion in RESULT_CASES:
        variant = {**json.loads(json.dumps(card.to_dict())), "referral": REFERRAL,
                   "gate": GATE if not_lesion is not None else None}
        post = Postprocessor(ModelCard.from_dict(variant), cfg)
        inference = Inference(np.array(probs, np.float32), 0.0, 0.0, not_lesion=not_lesion)
        result = post.process(inference, rgb=synthetic_image(kind, 31, 240, 320), frame_id=0, timestamp=0.0,
                              t_start=0.0).to_dict()
        results.append({"probabilities": list(probs), "kind": kind, "seed": 31, "height": 240, "width": 320,
                        "not_lesion": not_lesion, "referral": REFERRAL, "gate": variant["gate"],
                        "expected": {k: result[k] for k in ("state", "class_code", "confidence", "refer", "headline",
                                                            "advice", "lesion_gate", "top3")}})
    levels = [{"kind": kind, "seed": seed, "height": h, "width": w, "gains": list(gains),
               "levels": _b64(shades_of_grey_levels(colour_source((kind, seed, h, w, gains))))}
              for kind, seed, h, w, gains in COLOUR_CASES]
    plain = json.loads(json.dumps(card.to_dict()))
    colour_card = ModelCard.from_dict({**plain, "normalization": {**plain["normalization"], "colour": "shades_of_grey"},
                                       "preprocessing": {**plain["preprocessing"], "tta": "flips", "zoom": 0.86}})
    # The device's own engine (the card's model, which prepare() never runs) makes the tensors.
    engine = Engine(CARD.parent / card.model_file.path, colour_card, num_threads=1)
    tensors = []
    for cases, index, gains in COLOUR_TENSOR_CASES:
        rgb = colour_source(COLOUR_CASES[index]) if cases == "colour" else cast(synthetic_image(*FIT_CASES[index][:4]), gains)
        zoomed = centre_zoom(fit_to_input(rgb, inp.height, inp.width), colour_card.preprocessing.zoom)
        tensors.append({"cases": cases, "index": index, "gains": gains and list(gains),
                        "levels": _b64(shades_of_grey_levels(zoomed)),
                        "sha256": [hashlib.sha256(t.tobytes()).hexdigest() for t in engine.prepare(rgb).tensors]})
    logits = np.array([2.0, -1.0, 0.5, 0.0, 3.0, -2.0, 1.0], np.float32)
    return {
        "card": str(CARD.relative_to(CARD.parents[2])),
        "max_decode_pixels": MAX_DECODE_PIXELS,
        "quality_size": list(QUALITY_SIZE),
        "postprocess_defaults": asdict(cfg),
        "fit": fits,
        "zoom": zooms,
        "quantize": {"case": 0, "dtype": inp.dtype, "values": _b64(q)},
        "crops": crops,
        "quality": quality,
        "scores": scores,
        "softmax": {"logits": logits.tolist(), "probabilities": to_probabilities(logits).tolist()},
        "results": results,
        "colour": {"real": {"file": str(REAL.relative_to(CARD.parents[2])), "size": list(REAL_SIZE),
                            "pixels": _b64(real_image())},
                   "levels": levels, "card": {"normalization": asdict(colour_card.normalization),
                                              "preprocessing": asdict(colour_card.preprocessing)},
                   "tensors": tensors},
    }


def main() -> None:
    GOLDEN.write_text(json.dumps(build_golden(), indent=1) + "\n")
    print(f"wrote {GOLDEN} ({GOLDEN.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
