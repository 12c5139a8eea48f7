"""The serving the design started from: a float32 Keras model, ``model.predict`` on one frame at a time.

The architecture is rebuilt from the card with random weights (latency does not depend on the
weights' values), the way train/ builds it: ``train.models.build_model`` for our own families,
``train.backbones.pretrained_classifier`` (with the card's backbone cut) for pretrained backbones,
and for an ensemble (``<family>_x<N>``) each member from its own card beside it, averaged in one
graph as ``train.ensemble`` does. Anything else is skipped with the reason. Keras runs with its
backend's default threading (all cores). Keras is imported only here and only when the section
runs, so a device-only install (a Pi without TensorFlow) skips it with a note.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks import Skipped
from benchmarks.latency import TimingOptions
from benchmarks.stats import time_calls
from device.card import ModelCard

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Architecture:
    arch: str  # a train.models.ARCHITECTURES key, a train.config.PRETRAINED_ARCHS one, or an ensemble's <family>_x<N>
    input_shape: tuple[int, int, int]
    width_mult: float = 1.0
    cut: str = ""  # pretrained backbones: the layer that feeds the head ("" = the backbone's last)
    members: tuple[Architecture, ...] = ()  # an ensemble's networks, averaged in one graph

    @classmethod
    def from_card(cls, card: ModelCard, models_dir: Path | None = None) -> Architecture:
        """The card's architecture; an ensemble's members are read from ``<models_dir>/<name>/card.json``."""
        if "arch" not in card.architecture:
            raise Skipped(f"card of {card.name} does not name its architecture ('architecture.arch')")
        arch = card.architecture
        names = [m["name"] for m in card.training.get("ensemble", {}).get("members", ())]
        members = ()
        if names:
            missing = [n for n in names if models_dir is None or not (Path(models_dir) / n / "card.json").is_file()]
            if missing:
                raise Skipped(f"ensemble {card.name}: member card(s) not found beside it: {', '.join(missing)}")
            members = tuple(cls.from_card(ModelCard.load(Path(models_dir) / n / "card.json"), models_dir)
                            for n in names)
        return cls(str(arch["arch"]), (card.input.height, card.input.width, 3), float(arch.get("width_mult", 1.0)),
                   cut=str(arch.get("backbone_cut", "")), members=members)

    @property
    def label(self) -> str:
        h, w, _ = self.input_shape
        if self.members:
            return f"{self.arch} {h}x{w} [{' + '.join(m.arch + (f'@{m.cut}' if m.cut else '') for m in self.members)}]"
        return f"{self.arch} {h}x{w} w{self.width_mult:g}" + (f" cut {self.cut}" if self.cut else "")


def build_keras(arch: Architecture, num_classes: int = 7):
    """A float Keras model of ``arch`` with random weights, built by the code that trains it."""
    import keras

    from train.backbones import pretrained_classifier
    from train.config import PRETRAINED_ARCHS
    from train.models import ARCHITECTURES, build_model

    if arch.members:
        from train.ensemble import average_logits

        nets = [build_keras(m, num_classes) for m in arch.members]
        return average_logits([keras.Model(n.input, n.get_layer("logits").output, name=f"member{i}")
                               for i, n in enumerate(nets)], arch.input_shape, name=arch.arch)
    if arch.arch in ARCHITECTURES:
        return build_model(arch.arch, arch.input_shape, width=arch.width_mult, num_classes=num_classes)
    if arch.arch in PRETRAINED_ARCHS:
        model, _ = pretrained_classifier(arch.arch, arch.input_shape, weights="none", num_classes=num_classes,
                                         alpha=arch.width_mult, cut=arch.cut)
        return model
    raise Skipped(f"architecture {arch.arch!r}: train/ builds none by that name "
                  f"({sorted(ARCHITECTURES)}, {sorted(PRETRAINED_ARCHS)} or an ensemble of them)")


# The design's seed CNN at its own input size (train.models.seed_cnn), used when no trained
# seed-CNN model is in models/: the reference for the default model's speed-up target.
SEED_DESIGN = Architecture("seed_cnn", (90, 120, 3), 1.0)


def keras_predict_latency(arch: Architecture, timing: TimingOptions) -> dict:
    """p50/p95 and frames/s of ``model.predict`` on single float32 frames."""
    try:
        import keras

        from train.models import describe
    except ImportError as err:
        raise Skipped(f"Keras/TensorFlow not installed ({err}); the Keras baseline needs the workstation "
                      "requirements") from err
    keras.backend.clear_session()
    model = build_keras(arch)
    frame = np.random.default_rng(0).standard_normal((1, *arch.input_shape)).astype(np.float32)
    result = time_calls(lambda i: model.predict(frame, verbose=0), warmup=timing.warmup, iters=timing.iters,
                        repeats=timing.repeats, desc=f"keras {arch.label}")
    _log.info("keras predict %s: p50 %.2f ms", arch.label, result.p50_ms)
    return {"arch": arch.arch, "width_mult": arch.width_mult, **describe(model), "keras": keras.__version__, "keras_backend": keras.backend.backend(),
            **result.to_dict()}
