"""Float and int8 accuracy on the model's own lesion-grouped test split, through ``Engine.infer_pixels``.

The split is drawn again from the card's ``split`` (method and seed) with ``train.data``, and its
per-class counts must equal the card's: a data folder that does not reproduce the split the
model was trained on is refused rather than scored on images the model may have seen.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from tqdm import tqdm

from benchmarks import Skipped
from benchmarks.latency import variants
from device.card import ModelCard
from device.decode import load_image
from device.engine import Engine
from device.preprocess import centre_share
from train.data import load_pixels, redraw_split, select
from train.dataset import engine_probs
from train.metrics import classification_report, json_safe

_log = logging.getLogger(__name__)

MELANOMA = "mel"
# Cameras frame a lesion differently from the dataset: a centred square of the short side, and a
# 75% zoom, each then fitted by the device's own preprocessing (centre crop to aspect, resize).
FRAMINGS = {"square": None, "zoom75": 0.75}


def evaluation_records(card: ModelCard, data_root: Path, subset: str = "test"):
    """The ``subset`` records of ``card``'s split, re-drawn from ``data_root`` and checked against the card."""
    split = card.split
    if "method" not in split or "seed" not in split:
        raise Skipped(f"card of {card.name} records no split method and seed")
    return select(redraw_split(split, Path(data_root), owner=card.name), subset)


def true_labels(card: ModelCard, records) -> np.ndarray:
    return np.array([card.codes.index(r.dx) for r in records], dtype=np.int64)


def summarize(report: dict, codes: tuple[str, ...]) -> dict:
    """The headline figures of a ``train.metrics.classification_report``; NaN (a class absent
    from a small split) becomes None so the JSON stays strict."""
    return json_safe({
        "n": report["n"],
        "accuracy": report["accuracy"],
        "balanced_accuracy": report["balanced_accuracy"],
        "macro_f1": report["macro_f1"],
        "macro_auc": report["macro_auc"],
        "melanoma_recall": report["per_class"][MELANOMA]["recall"] if MELANOMA in codes else None,
    })


def model_accuracy(model_dir: Path, card: ModelCard, data_root: Path, *, cache_dir: Path | None,
                   threads: int) -> dict:
    """``{variant: headline figures}`` plus top-1 agreement of int8 with float."""
    records = evaluation_records(card, data_root)
    pixels = load_pixels(records, card.input.height, card.input.width, cache_dir)
    y_true = true_labels(card, records)
    out: dict = {"split": {"method": card.split["method"], "seed": card.split["seed"], "subset": "test"}}
    predictions = {}
    for variant in variants(card):
        engine = Engine.from_model_dir(model_dir, variant=variant, num_threads=threads)
        probs = engine_probs(engine, pixels, desc=f"{card.name} {variant} test")
        predictions[variant] = probs.argmax(axis=1)
        out[variant] = summarize(classification_report(probs, y_true, card.codes), card.codes)
        _log.info("%s %s: accuracy %.4f, balanced %.4f", card.name, variant, out[variant]["accuracy"],
                  out[variant]["balanced_accuracy"])
    if "float" in predictions:
        out["int8_float_agreement"] = float((predictions["int8"] == predictions["float"]).mean())
    engine = Engine.from_model_dir(model_dir, variant="int8", num_threads=threads)
    for name, zoom in FRAMINGS.items():
        probs = np.stack([engine.infer(reframe(load_image(r.path), zoom)).probabilities
                          for r in tqdm(records, desc=f"{card.name} int8 {name}", unit="img", leave=False)])
        out[f"framing_{name}"] = summarize(classification_report(probs, y_true, card.codes), card.codes)
        _log.info("%s int8 %s framing: accuracy %.4f, balanced %.4f", card.name, name,
                  out[f"framing_{name}"]["accuracy"], out[f"framing_{name}"]["balanced_accuracy"])
    return out


def reframe(rgb: np.ndarray, zoom: float | None) -> np.ndarray:
    """A centred square of the short side (``zoom`` None), or the centred ``zoom`` share of each side."""
    if zoom is not None:
        return centre_share(rgb, zoom)
    h, w = rgb.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return rgb[top : top + side, left : left + side]
