"""Knowledge distillation: a large teacher's softened predictions become part of a student's targets.

    python -m train --config train/configs/edgenet-distill.yaml --data PATH --teacher runs/<run>/best.keras

Offline distillation (Hinton et al., "Distilling the knowledge in a neural network", 2015): the
teacher scores every training image once, un-augmented, at its own input size and normalization,
and each student target is ``(1 - weight) * one_hot + weight * softmax(log(p_teacher) / T)``. The
augmentations are label-preserving, so the un-augmented soft label stands for every view; the
teacher never runs inside the training loop, which keeps that loop plain ``model.fit`` on any
backend. The student is trained on the teacher's split: it must not see the teacher's val or test
images through the targets.
"""
from __future__ import annotations

import logging
from pathlib import Path

import keras
import numpy as np

from train import data as ds
from train import qat
from train.dataset import predict_probs
from train.run import TrainingRun

_log = logging.getLogger(__name__)


def soften(probs: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log(probs) / T)``: T > 1 spreads the teacher's mass over the classes it confuses."""
    if temperature <= 0:
        raise ValueError(f"distill_temperature must be > 0, got {temperature}")
    z = np.log(np.clip(probs, 1e-12, 1.0)) / temperature
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def teacher_run(checkpoint: Path) -> TrainingRun:
    """The training run a teacher checkpoint belongs to (its split, input size, normalization)."""
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"teacher: {checkpoint} not found")
    return TrainingRun.load(checkpoint.parent)


def teacher_targets(checkpoint: Path, records: list[ds.Record], *, temperature: float, cache_dir: Path | None,
                    out: Path) -> np.ndarray:
    """Softened teacher probabilities for ``records`` (N x classes), computed once and kept in ``out``
    so a resumed student trains on the same targets."""
    if out.is_file():
        targets = np.load(out)
        if len(targets) == len(records):
            return targets
    run = teacher_run(checkpoint)
    h, w = run.input_hw
    model = qat.strip(keras.models.load_model(checkpoint, compile=False))
    _log.info("teacher %s: scoring %d training images at %dx%d", checkpoint, len(records), h, w)
    probs = predict_probs(model, ds.load_pixels(records, h, w, cache_dir), *run.normalization)
    labels = np.array([r.label for r in records])
    _log.info("teacher: %.1f%% of them right; soft targets at T=%g", 100 * float((probs.argmax(1) == labels).mean()),
              temperature)
    targets = soften(probs, temperature)
    np.save(out, targets)
    return targets
