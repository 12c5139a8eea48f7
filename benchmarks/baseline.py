"""The serving the design started from: a float32 Keras model, ``model.predict`` on one frame at a time.

The architecture is rebuilt with ``train.models.build_model`` from the card (family, input size,
width multiplier) with random weights: latency does not depend on the weights' values. Keras runs
with its backend's default threading (all cores). Keras is imported only here and only when the
section runs, so a device-only install (a Pi without TensorFlow) skips it with a note.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from benchmarks import Skipped
from benchmarks.latency import TimingOptions
from benchmarks.stats import time_calls
from device.card import ModelCard

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Architecture:
    arch: str  # a train.models.ARCHITECTURES key
    input_shape: tuple[int, int, int]
    width_mult: float = 1.0

    @classmethod
    def from_card(cls, card: ModelCard) -> Architecture:
        if "arch" not in card.architecture:
            raise Skipped(f"card of {card.name} does not name its architecture ('architecture.arch')")
        return cls(str(card.architecture["arch"]), (card.input.height, card.input.width, 3),
                   float(card.architecture.get("width_mult", 1.0)))

    @property
    def label(self) -> str:
        h, w, _ = self.input_shape
        return f"{self.arch} {h}x{w} w{self.width_mult:g}"


# The design's seed CNN at its own input size (train.models.seed_cnn), used when no trained
# seed-CNN model is in models/: the reference for the default model's speed-up target.
SEED_DESIGN = Architecture("seed_cnn", (90, 120, 3), 1.0)


def keras_predict_latency(arch: Architecture, timing: TimingOptions) -> dict:
    """p50/p95 and frames/s of ``model.predict`` on single float32 frames."""
    try:
        import keras

        from train.models import build_model, describe
    except ImportError as err:
        raise Skipped(f"Keras/TensorFlow not installed ({err}); the Keras baseline needs the workstation "
                      "requirements") from err
    keras.backend.clear_session()
    model = build_model(arch.arch, arch.input_shape, width=arch.width_mult)
    frame = np.random.default_rng(0).standard_normal((1, *arch.input_shape)).astype(np.float32)
    result = time_calls(lambda i: model.predict(frame, verbose=0), warmup=timing.warmup, iters=timing.iters,
                        repeats=timing.repeats, desc=f"keras {arch.label}")
    _log.info("keras predict %s: p50 %.2f ms", arch.label, result.p50_ms)
    return {"arch": arch.arch, "width_mult": arch.width_mult, **describe(model), "keras": keras.__version__, "keras_backend": keras.backend.backend(),
            **result.to_dict()}
