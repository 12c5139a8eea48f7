"""Gate a shipped model folder again after changing what its card asks the device to do to each
frame (``preprocessing.zoom``, ``preprocessing.tta``): the same int8 file, scored against its float
reference through the device engine as the new card asks, the referral threshold picked again on
val, and ``card.json`` + ``REPORT.md`` rewritten; nothing is written when the gate fails.

    python -m quantize.regate models/dermnet-mnv2-cut9 --zoom 0.86 --data ../shared/data/ham10000

The float reference is the folder's ``model_float.tflite`` when its card names one. A MobileNetV2
folder shipped without it can rebuild it from the int8 file (``--float-from-int8``): after
quantization-aware training every kernel sits on its int8 grid, so the dequantized file holds the
float weights. The rebuild is checked first: at the card's current preprocessing it must reproduce
the float metrics the card recorded, else it is refused.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import shutil
import tempfile
from pathlib import Path

_log = logging.getLogger(__name__)

# A rebuilt float reference must reproduce the card's recorded float accuracy this closely (points),
# unless the caller allows more: a change to device/preprocess.py since the card was written moves
# the figure by a few tenths of a point (one step in a few pixels changes some predictions).
REBUILD_TOLERANCE = 0.1


def rebuild_float(card, int8_path: Path, out: Path) -> Path:
    """``out`` (a float TFLite file): the card's MobileNetV2 classifier with the int8 file's weights."""
    from quantize.convert import convert_float
    from train.backbones import classifier_from_int8

    arch = card.architecture.get("arch")
    if arch != "mobilenet_v2":
        raise ValueError(f"--float-from-int8 rebuilds mobilenet_v2 models; the card's architecture.arch is {arch!r}")
    if not card.quantization.get("quantization_aware_training"):
        raise ValueError("--float-from-int8 needs a model trained quantization-aware (kernels on the int8 grid); "
                         "the card's quantization.quantization_aware_training is not true")
    model = classifier_from_int8(card, int8_path)
    out.write_bytes(convert_float(model))
    return out


def regate(model_dir: Path, *, data: Path, zoom: float | None = None, tta: str | None = None,
           float_from_int8: bool = False, rebuild_tolerance: float = REBUILD_TOLERANCE,
           cache_dir: Path | None = None, threads: int = 2) -> Path:
    from device.card import ModelCard, Preprocessing, verify_model_file
    from quantize.pipeline import FLOAT_NAME, QuantizeOptions, card_facts, gate_card
    from train.data import learned_from_val, redraw_split, select

    model_dir = Path(model_dir)
    if (model_dir / "card.sig").exists():  # a rewritten card would no longer match it
        raise ValueError(f"{model_dir / 'card.sig'}: the folder is signed; re-gate an unsigned copy, then sign it "
                         "again (python -m quantize.sign)")
    card = ModelCard.load(model_dir / "card.json")
    int8_path = verify_model_file(card, model_dir, card.model_file)
    records = redraw_split(card.split, Path(data), owner=card.name)
    gate = card.quantization.get("gate", {})
    options = QuantizeOptions(name=card.name, split=card.metrics.get("split", "test"), cache_dir=cache_dir,
                              num_threads=threads, referral_sensitivity=(card.referral.target_sensitivity or 0.9)
                              if card.referral else 0.0)
    if card.referral and learned_from_val(card.split):  # nothing left to pick it on again: keep the card's
        options = dataclasses.replace(options, referral_threshold=card.referral.threshold,
                                      referral_picked_on=card.referral.picked_on)
    if gate:
        options = dataclasses.replace(options, thresholds=dataclasses.replace(
            options.thresholds, max_drop=gate["max_drop"], min_agreement=gate["min_agreement"]))
    with tempfile.TemporaryDirectory(prefix="dermedge-regate-") as tmp:
        if card.float_file is not None:
            float_path = verify_model_file(card, model_dir, card.float_file)
        elif float_from_int8:
            float_path = rebuild_float(card, int8_path, Path(tmp) / FLOAT_NAME)
            rebuilt = _check_rebuild(card, float_path, select(records, options.split), options, rebuild_tolerance)
        else:
            raise ValueError(f"{model_dir / 'card.json'}: field 'float_file' is missing; the gate needs the float "
                             "reference (quantize --keep-float, or --float-from-int8 for a QAT MobileNetV2)")
        pre = card.preprocessing
        new = dataclasses.replace(card, preprocessing=dataclasses.replace(
            pre, zoom=pre.zoom if zoom is None else zoom, tta=pre.tta if tta is None else tta,
            description=Preprocessing.description))
        facts = {"run": f"`{card.training.get('run', '?')}` ({card.training.get('checkpoint', '?')} checkpoint)",
                 **card_facts(card, options.split),
                 "float reference": "the shipped model_float.tflite" if card.float_file is not None else
                 f"rebuilt from the int8 file (quantize.regate --float-from-int8): {rebuilt} at the card's "
                 "preprocessing before this re-gate"}
        new, result, report = gate_card(new, int8_path, float_path, records, options, facts=facts,
                                        rejected_dir=Path(tmp))
        quantization = {**card.quantization, "gate": result.summary()}
        new = dataclasses.replace(new, quantization=quantization)
        staged = Path(tmp) / "card.json"
        new.save(staged)
        (model_dir / "REPORT.md").write_text(report)
        shutil.move(staged, model_dir / "card.json")  # the card last: it never describes a half-written folder
    return model_dir


def _check_rebuild(card, float_path: Path, evaluated, options, tolerance: float = REBUILD_TOLERANCE) -> str:
    """Refuse a rebuilt float reference that does not score what the card recorded for its float model;
    returns what it scored, against the card, for the report."""
    import numpy as np

    from device.engine import Engine
    from train.data import load_pixels
    from train.dataset import engine_probs
    from train.metrics import classification_report

    recorded = card.metrics.get("float", {}).get("accuracy")
    if recorded is None:
        raise ValueError("the card records no float accuracy to check the rebuilt float reference against")
    pixels = load_pixels(evaluated, card.input.height, card.input.width, options.cache_dir)
    probs = engine_probs(Engine(float_path, card, variant="float", num_threads=options.num_threads), pixels,
                         desc="rebuilt float")
    got = classification_report(probs, np.array([r.label for r in evaluated]), card.codes)["accuracy"]
    if abs(got - recorded) * 100 > tolerance:
        raise ValueError(f"the float reference rebuilt from the int8 file scores {100 * got:.2f}% where the card "
                         f"records {100 * recorded:.2f}% (more than {tolerance:g} points apart): its kernels are "
                         "not on the int8 grid, or the preprocessing changed since (--rebuild-tolerance); not re-gated")
    measured = f"{100 * got:.2f}% accuracy (card: {100 * recorded:.2f}%)"
    _log.info("rebuilt float reference: %s", measured)
    return measured


def main(argv=None) -> int:
    from device.card import TTA_MODES, zoom_argument
    from quantize.__main__ import run_reporting_errors

    parser = argparse.ArgumentParser(prog="python -m quantize.regate", description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--data", type=Path, required=True, help="the dataset root the model's split was drawn from")
    parser.add_argument("--zoom", type=zoom_argument, default=None, help="new preprocessing.zoom (default: unchanged)")
    parser.add_argument("--tta", choices=TTA_MODES, default=None, help="new preprocessing.tta (default: unchanged)")
    parser.add_argument("--float-from-int8", action="store_true",
                        help="rebuild the float reference from the int8 file (QAT MobileNetV2 without model_float)")
    parser.add_argument("--rebuild-tolerance", type=float, default=REBUILD_TOLERANCE, metavar="POINTS",
                        help="how far the rebuilt float reference may score from the card's float accuracy; raise it "
                             "only after a change to device/preprocess.py since the card was written")
    parser.add_argument("--cache-dir", type=Path, default=Path("cache"))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run_reporting_errors(lambda: "re-gated " + str(regate(
        args.model_dir, data=args.data, zoom=args.zoom, tta=args.tta, float_from_int8=args.float_from_int8,
        rebuild_tolerance=args.rebuild_tolerance, cache_dir=args.cache_dir, threads=args.threads)))


if __name__ == "__main__":
    raise SystemExit(main())
