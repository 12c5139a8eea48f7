"""A training run -> ``models/<name>/``: convert, gate, card, report.

Everything is built in a staging folder next to the destination; the model files,
``card.json`` and ``REPORT.md`` are moved into ``models/<name>/`` only when the gate
passes. A failed gate leaves the destination untouched and writes its report to the
run directory instead.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from device.card import ModelCard, Preprocessing
from device.engine import Engine
from quantize import lesion_gate
from quantize.card import build_card
from quantize.convert import convert_float, convert_int8, representative_set
from quantize.gate import GateResult, GateThresholds, check, evaluate, markdown_report
from quantize.referral import build as build_referral
from quantize.referral import threshold_on
from train.data import load_pixels, refuse_val_fit, select
from train.dataset import engine_probs
from train.lesion_gate import Limits, with_negatives
from train.metrics import json_safe
from train.run import TrainingRun

_log = logging.getLogger(__name__)

INT8_NAME = "model_int8.tflite"
FLOAT_NAME = "model_float.tflite"


@dataclass(frozen=True)
class QuantizeOptions:
    name: str  # folder name under ``out`` and the card's name
    out: Path = Path("models")
    data: Path | None = None  # HAM10000 root; None = the run's config.data
    checkpoint: str = "best"  # best | last | calibrated
    representative: int = 300  # training images used for int8 calibration
    input_dtype: str = "int8"  # int8 | uint8
    keep_float: bool = False  # also ship model_float.tflite
    thresholds: GateThresholds = field(default_factory=GateThresholds)
    split: str = "test"  # split the gate evaluates on
    cache_dir: Path | None = None  # decoded-pixel cache; None = no cache
    num_threads: int = 2
    # what the card asks the device to do to each frame (centre zoom, test-time augmentation); the gate scores with it
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    referral_sensitivity: float = 0.9  # the referral rule's target on val; 0 = no rule in the card
    # a threshold to use as it is instead of picking one on val (a refit, whose val was training data:
    # its validated model's threshold); ``referral_picked_on`` says where it came from
    referral_threshold: float | None = None
    referral_picked_on: str = "val"
    gate_limits: Limits = field(default_factory=Limits)  # a gated checkpoint's not-a-lesion rates (train.lesion_gate)


def check_calibrated_view(run_dir: Path, zoom: float) -> None:
    """Refuse to gate a calibrated checkpoint at another zoom than its tau and T were fitted on."""
    summary = Path(run_dir) / "calibration.json"
    fitted = json.loads(summary.read_text()).get("zoom", 1.0) if summary.exists() else 1.0
    if fitted != zoom:
        raise ValueError(f"{summary} was fitted on views at zoom {fitted}, the card would ask for {zoom}: "
                         f"pass --zoom {fitted}, or calibrate again with --zoom {zoom}")


def quantize_run(run_dir: Path, options: QuantizeOptions) -> Path:
    """Quantize the run's checkpoint, gate it and write ``options.out / options.name``.

    Raises :class:`quantize.gate.GateError` when the int8 model fails the gate.
    """
    run = TrainingRun.load(run_dir)
    if options.referral_sensitivity and options.referral_threshold is None:
        refuse_val_fit(run.meta.split, str(run.path), "pick the referral threshold",
                       "--referral-threshold or --referral-sensitivity 0")
    if options.checkpoint == "calibrated":
        check_calibrated_view(run.path, options.preprocessing.zoom)
    height, width = run.input_hw
    mean, std, colour = run.normalization
    records = run.records(data=options.data)
    _log.info("loading %s", run.checkpoint(options.checkpoint))
    model = run.load_model(options.checkpoint)

    rep = representative_set(select(records, "train"), height, width, mean, std, colour,
                             count=options.representative, seed=run.config.seed, cache_dir=options.cache_dir)
    gate_images = None
    if len(model.outputs) == 2:  # a gated checkpoint (train.lesion_gate): calibrate on negatives too, as it did
        gate_images = lesion_gate.gated_images(run, records, data=Path(options.data or run.config.data),
                                               cache_dir=options.cache_dir)
        rep = with_negatives(rep, gate_images, mean=mean, std=std, colour=colour, seed=run.config.seed)

    dest = Path(options.out) / options.name
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{options.name}-", dir=dest.parent))
    try:
        int8_path, float_path = staging / INT8_NAME, staging / FLOAT_NAME
        int8_path.write_bytes(convert_int8(model, rep, input_dtype=options.input_dtype))
        float_path.write_bytes(convert_float(model))
        card = build_card(run, name=options.name, int8_path=int8_path,
                          float_path=float_path if options.keep_float else None, checkpoint=options.checkpoint,
                          preprocessing=options.preprocessing)
        if gate_images is not None:
            card = lesion_gate.gate_card(card, int8_path, run, gate_images, limits=options.gate_limits,
                                         num_threads=options.num_threads)
        facts = {"run": f"`{run.path.name}` ({options.checkpoint} checkpoint)", **card_facts(card, options.split)}
        card, result, report = gate_card(card, int8_path, float_path, records, options, facts=facts,
                                         rejected_dir=run.path)
        card = dataclasses.replace(
            card, quantization=json_safe(_quantization_summary(options, len(rep), run, result.summary())))
        card.save(staging / "card.json")
        (staging / "REPORT.md").write_text(report)
        if not options.keep_float:
            float_path.unlink()
        _publish(staging, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _log.info("wrote %s (int8 accuracy %.4f, agreement %.4f)", dest, result.int8_report["accuracy"],
              result.agreement)
    return dest


def card_facts(card: ModelCard, split: str) -> dict[str, str]:
    """The lines of a gate report that describe the model, read from its card."""
    arch = card.architecture
    return {
        "architecture": f"{arch['arch']}, {arch['params']:,} params, {arch['macs'] / 1e6:.1f} M MACs, "
                        f"input {card.input.height}x{card.input.width}",
        "int8 file": f"{card.model_file.size_bytes / 1024:.1f} KiB, sha256 `{card.model_file.sha256}`",
        "split": f"{card.split['method']} (seed {card.split['seed']}), evaluated on '{split}'",
    }


def gate_card(card: ModelCard, int8_path: Path, float_path: Path, records: list, options: QuantizeOptions, *,
              facts: dict[str, str], rejected_dir: Path) -> tuple[ModelCard, GateResult, str]:
    """Score ``int8_path`` against ``float_path`` on ``options.split`` through the device engine, as
    ``card`` asks (its zoom and test-time augmentation), pick the referral threshold on val, and
    return the card with those metrics, the gate result and its report. A failed gate writes the
    report to ``rejected_dir`` and raises :class:`quantize.gate.GateError`."""
    height, width = card.input.height, card.input.width
    evaluated = select(records, options.split)
    pixels = load_pixels(evaluated, height, width, options.cache_dir)
    y_true = np.array([r.label for r in evaluated], dtype=np.int64)
    int8_engine = Engine(int8_path, card, num_threads=options.num_threads)
    result = evaluate(Engine(float_path, card, variant="float", num_threads=options.num_threads), int8_engine,
                      pixels, y_true, options.thresholds)
    pre = card.preprocessing
    report = markdown_report(result, name=card.name, facts={
        **facts, "centre zoom": f"{pre.zoom:.2f}", "test-time augmentation": pre.tta,
        **({"colour constancy": card.normalization.colour} if card.normalization.colour != "none" else {})})
    if not result.passed:
        rejected = Path(rejected_dir) / f"quantize-{card.name}-REJECTED.md"
        rejected.write_text(report)
        _log.error("gate failed; report written to %s", rejected)
    check(result, name=card.name)
    referral = None
    if options.referral_sensitivity:
        threshold, picked_on = options.referral_threshold, options.referral_picked_on
        if threshold is None:
            val = select(records, "val")
            val_probs = engine_probs(int8_engine, load_pixels(val, height, width, options.cache_dir), desc="int8 val")
            threshold, picked_on = threshold_on(val_probs, np.array([r.label for r in val]), card.codes,
                                                target_sensitivity=options.referral_sensitivity), "val"
        referral = build_referral(result.int8_probs, y_true, card.codes, threshold=threshold,
                                  target_sensitivity=options.referral_sensitivity, picked_on=picked_on)
        _log.info("referral: threshold %.4f (picked on %s for sensitivity >= %.2f); test sensitivity %.4f, "
                  "specificity %.4f", referral.threshold, picked_on, options.referral_sensitivity,
                  referral.sensitivity, referral.specificity)
    metrics = json_safe({"split": options.split, "n": len(y_true), "float": result.float_report,
                         "int8": result.int8_report})
    return dataclasses.replace(card, metrics=metrics, referral=referral), result, report


def _quantization_summary(options: QuantizeOptions, count: int, run: TrainingRun, gate: dict) -> dict:
    qat = run.meta.quantization_aware_training
    return {
        "method": "full-integer quantization" + (" after quantization-aware fine-tuning" if qat else
                                                 " (post-training)"),
        "quantization_aware_training": qat,
        "supported_ops": "TFLITE_BUILTINS_INT8",
        "input_dtype": options.input_dtype,
        "representative": {"split": "train", "count": count, "seed": run.config.seed},
        "converter": f"tensorflow {tf.__version__}, keras {keras.__version__}",
        "gate": gate,
    }


def _publish(staging: Path, dest: Path) -> None:
    """Move the staged files into ``dest``; the card goes last so it never names a missing file."""
    dest.mkdir(parents=True, exist_ok=True)
    stale = dest / FLOAT_NAME
    if stale.exists() and not (staging / FLOAT_NAME).exists():
        stale.unlink()
    for path in sorted(staging.iterdir(), key=lambda p: p.name == "card.json"):
        os.replace(path, dest / path.name)
