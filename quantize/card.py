"""Build ``card.json`` (``device.card.ModelCard``) from a training run and its converted models.

Everything the device relies on comes from the artefacts themselves: labels and
normalization from the run's ``meta.json``, tensor shapes, dtypes, scales and zero
points from the converted ``.tflite`` as the interpreter reads it, sha256 and size
from the file on disk.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from device.card import (
    CardError,
    InputSpec,
    Label,
    ModelCard,
    ModelFile,
    Normalization,
    Preprocessing,
    TensorSpec,
    sha256_file,
)
from device.engine import model_io, open_interpreter
from train import backbones
from train.run import TrainingRun

# Config keys that describe the workstation, not the model; left out of the card.
_LOCAL_KEYS = ("data", "split_file", "runs_dir", "cache_dir", "workers", "backbone_weights", "self_check_images",
               "imagenet_labels", "extra_data")


def model_file(path: Path) -> ModelFile:
    """The card's record of a model file in the same folder as the card."""
    path = Path(path)
    return ModelFile(path=path.name, sha256=sha256_file(path), size_bytes=path.stat().st_size)


def build_card(run: TrainingRun, *, name: str, int8_path: Path, float_path: Path | None = None,
               checkpoint: str = "best", preprocessing: Preprocessing | None = None) -> ModelCard:
    """The card for ``int8_path`` (and optionally ``float_path``), all in one folder; the
    gate adds ``metrics`` and ``quantization`` once it has scored the models."""
    interpreter, _ = open_interpreter(int8_path, num_threads=1)
    inp, out = model_io(interpreter)
    height, width = run.input_hw
    if inp.shape[1:] != (height, width, 3):
        raise CardError(f"{int8_path}: input shape {inp.shape[1:]} differs from the run's "
                        f"meta.json input {height}x{width}x3")
    mean, std, colour = run.normalization
    cfg = run.config
    return ModelCard(
        name=name,
        description=(f"{run.meta.arch} (width {cfg.width_mult}) at {height}x{width}, trained on "
                     f"{_datasets(run.meta.dataset)}, full-integer {inp.dtype} TFLite"),
        labels=tuple(Label(label["code"], label["name"]) for label in run.meta.labels),
        input=InputSpec(dtype=inp.dtype, scale=inp.scale, zero_point=inp.zero_point,
                        height=height, width=width, channels=3),
        output=TensorSpec(dtype=out.dtype, scale=out.scale, zero_point=out.zero_point),
        normalization=Normalization(tuple(mean), tuple(std), colour),
        preprocessing=preprocessing or Preprocessing(),
        model_file=model_file(int8_path),
        float_file=model_file(float_path) if float_path else None,
        architecture={"arch": run.meta.arch, "width_mult": cfg.width_mult, **_backbone_cut(run), **run.meta.model},
        split=dict(run.meta.split),
        training=training_summary(run, checkpoint),
        dataset=dict(run.meta.dataset),
    )


def _datasets(dataset: dict) -> str:
    """HAM10000, plus the extra set's name and resize policy when the run added one (train.data)."""
    extra = dataset.get("extra")
    return f"{dataset['name']} + {extra['name']} ({extra['resize']})" if extra else dataset["name"]


def _backbone_cut(run: TrainingRun) -> dict[str, str]:
    """The layer a cut backbone ends at, from the weights' provenance (a warm restart inherits it)."""
    cut = (run.meta.backbone or {}).get("cut", "")
    return {"backbone_cut": cut} if cut else {}


def training_summary(run: TrainingRun, checkpoint: str) -> dict[str, Any]:
    where = {"run": run.path.name, "checkpoint": checkpoint, "keras_backend": run.meta.backend}
    if run.meta.ensemble:  # built by train.ensemble: its members' cards hold their training
        return {"ensemble": run.meta.ensemble, **where}
    summary = {k: v for k, v in dataclasses.asdict(run.config).items() if k not in _LOCAL_KEYS}
    summary.update(where)
    if run.config.init_from:  # the starting run and checkpoint, without this workstation's folders
        start = Path(run.config.init_from)
        summary["init_from"] = f"{start.parent.name}/{start.name}"
    backbone = run.meta.backbone
    if backbone:  # the weights file by name and hash, not this workstation's path
        # Runs from before the provenance fields get them by architecture.
        pretrained = backbones.pretraining(backbone["name"], backbone.get("kind", ""))
        summary["backbone"] = {**pretrained, **backbone, "weights": Path(backbone["weights"]).name}
    if run.state:
        summary.update(epochs_trained=int(run.state["epoch"]) + 1,
                       best_val_balanced_accuracy=run.state.get("best_val_balanced_accuracy"))
    return summary
