"""A training run directory read back: the one reader that evaluation, calibration,
Grad-CAM and quantization share.

``train.train`` writes config.yaml, meta.json (input size, labels, normalization,
model size, split counts, dataset), split.csv, state.json and the checkpoints.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras

from train import backbones, qat  # noqa: F401  (backbones registers AffineBatchNormalization for load_model)
from train import data as ds
from train.config import TrainConfig, load_config

CHECKPOINTS = ("best", "last", "calibrated", "gated")  # calibrated: train.calibrate; gated: train.lesion_gate


@dataclass(frozen=True)
class TrainingRun:
    path: Path
    meta: dict[str, Any]
    config: TrainConfig
    state: dict[str, Any]  # empty when the run never finished an epoch

    @classmethod
    def load(cls, run_dir: Path) -> TrainingRun:
        run_dir = Path(run_dir)
        for name in ("config.yaml", "meta.json", "split.csv"):
            if not (run_dir / name).is_file():
                raise FileNotFoundError(f"{run_dir}: missing {name}; is this a training run directory?")
        state_path = run_dir / "state.json"
        return cls(
            path=run_dir,
            meta=json.loads((run_dir / "meta.json").read_text()),
            config=load_config(run_dir),
            state=json.loads(state_path.read_text()) if state_path.is_file() else {},
        )

    @property
    def input_hw(self) -> tuple[int, int]:
        return int(self.meta["input"]["height"]), int(self.meta["input"]["width"])

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(label["code"] for label in self.meta["labels"])

    @property
    def normalization(self) -> tuple[list[float], list[float]]:
        return self.meta["normalization"]["mean"], self.meta["normalization"]["std"]

    def checkpoint(self, which: str) -> Path:
        if which not in CHECKPOINTS:
            raise ValueError(f"checkpoint: unknown {which!r}; choose from {CHECKPOINTS}")
        path = self.path / f"{which}.keras"
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint not found: {path}")
        return path

    def load_model(self, which: str = "best") -> keras.Model:
        """A checkpoint as the plain float model (a quantization-aware run's FakeQuant layers removed)."""
        return qat.strip(keras.models.load_model(self.checkpoint(which), compile=False))

    def records(self, split: str | None = None, data: Path | None = None) -> list[ds.Record]:
        """The run's split CSV with images under ``data`` (default: the config's root); one split's
        records when ``split`` is given, shortened like the training was for a ``limit`` smoke run."""
        records = ds.read_split(self.path / "split.csv", Path(data or self.config.data))
        if split is None:
            return records
        if split not in ds.SPLITS:
            raise ValueError(f"split: unknown {split!r}; choose from {ds.SPLITS}")
        selected = ds.select(records, split)
        return selected[: self.config.limit] if self.config.limit else selected
