"""A tiny int8 model with the not-a-lesion gate, made in the test session, and negatives to show it.

The model follows the card's gate contract (docs/results.md): two outputs, the class
probabilities (1, 7) and the not-a-lesion probability (1, 1), told apart by shape. Its weights are
set by hand, not trained: both heads read the pooled colour of the frame, and the gate says "not a
lesion" when the frame is much bluer than it is red, which no dermoscopy image in the fixture is and
the negatives made here (blue paper, a green leaf) are. It tests the plumbing, not a real gate.

TensorFlow is imported inside the functions, so sessions that never ask for it do not pay for it.
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from device.card import sha256_file
from device.decode import load_image
from device.preprocess import fit_to_input, normalize

CODES = (("akiec", "Actinic keratosis"), ("bcc", "Basal cell carcinoma"), ("bkl", "Benign keratosis"),
         ("df", "Dermatofibroma"), ("mel", "Melanoma"), ("nv", "Melanocytic nevus"), ("vasc", "Vascular lesion"))
HEIGHT, WIDTH = 48, 64
MEAN, STD = (150.0, 120.0, 110.0), (50.0, 50.0, 50.0)
THRESHOLD = 0.5
ADVICE = "Point the camera at a skin lesion."
REFERRAL = {"classes": ["akiec", "bcc", "mel"], "threshold": 0.3, "sensitivity": 0.9, "specificity": 0.6,
            "advice": "See a dermatologist: this lesion has features of a skin cancer.", "picked_on": "val"}
# (name, RGB mean) of the negatives: flat colours with a sharp texture, so the quality gate passes them.
NEGATIVES = (("blue_paper.png", (70, 110, 200)), ("green_leaf.png", (60, 150, 170)), ("sky.jpg", (90, 140, 230)))


def textured(rgb_mean: tuple[int, int, int], *, seed: int, size=(480, 640)) -> np.ndarray:
    """HxWx3 uint8 RGB: ``rgb_mean`` with a sharp random texture."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(0, 22, size=(*size, 1))
    return np.clip(np.array(rgb_mean, np.float32) + noise, 0, 255).astype(np.uint8)


def write_negatives(folder: Path) -> list[Path]:
    """The negatives as image files in ``folder`` (PNG and JPEG); returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed, (name, mean) in enumerate(NEGATIVES):
        path = folder / name
        cv2.imwrite(str(path), cv2.cvtColor(textured(mean, seed=seed), cv2.COLOR_RGB2BGR))
        paths.append(path)
    return paths


def _keras_model():
    import keras

    inputs = keras.Input((HEIGHT, WIDTH, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(inputs)  # normalized (R, G, B) means
    classes = keras.layers.Dense(len(CODES), activation="softmax", name="classes")(pooled)
    not_lesion = keras.layers.Dense(1, activation="sigmoid", name="not_lesion")(pooled)
    model = keras.Model(inputs, [classes, not_lesion])
    rng = np.random.default_rng(7)
    model.get_layer("classes").set_weights([rng.normal(0, 2.0, (3, len(CODES))).astype(np.float32),
                                            np.zeros(len(CODES), np.float32)])
    # blue minus red, in normalized units: dermoscopy is redder than it is blue
    model.get_layer("not_lesion").set_weights([np.array([[-4.0], [0.0], [4.0]], np.float32),
                                               np.array([-1.0], np.float32)])
    return model


def make_gated_model_dir(out: Path, images: list[Path], negatives: list[Path]) -> Path:
    """``out`` as a model folder (model_int8.tflite, card.json with a gate section), calibrated on
    ``images`` and ``negatives``."""
    from device.engine import model_tensors, open_interpreter
    from quantize.convert import convert_int8

    out.mkdir(parents=True, exist_ok=True)
    pixels = np.stack([fit_to_input(load_image(p), HEIGHT, WIDTH) for p in [*images, *negatives]])
    tflite = out / "model_int8.tflite"
    tflite.write_bytes(convert_int8(_keras_model(), normalize(pixels, MEAN, STD)))
    inp, classes, gate = model_tensors(open_interpreter(tflite, num_threads=1)[0])

    def spec(info) -> dict:
        return {"dtype": info.dtype, "scale": info.scale, "zero_point": info.zero_point}

    card = {
        "schema_version": 1, "name": "tiny-gated", "description": "Hand-set weights for tests, not a classifier.",
        "labels": [{"code": c, "name": n} for c, n in CODES],
        "input": {**spec(inp), "height": HEIGHT, "width": WIDTH, "channels": 3},
        "output": spec(classes),
        "normalization": {"mean": list(MEAN), "std": list(STD)},
        "preprocessing": {"policy": "center_crop_resize"},
        "model_file": {"path": tflite.name, "sha256": sha256_file(tflite), "size_bytes": tflite.stat().st_size},
        "referral": REFERRAL,
        "gate": {"output": spec(gate), "threshold": THRESHOLD, "method": "hand-set blue-minus-red logistic (tests)",
                 "advice": ADVICE, "picked_on": "none (tests)", "rates": {"negatives_made_in_tests": 1.0}},
    }
    (out / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    return out
