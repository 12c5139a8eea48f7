"""A training run directory read back: the one reader that evaluation, calibration,
Grad-CAM and quantization share, and the run record (``meta.json``) that ``train.train`` and
``train.ensemble`` write through :class:`RunRecord`.

``train.train`` writes config.yaml, meta.json (input size, labels, normalization,
model size, split counts, dataset), split.csv, state.json and the checkpoints.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras

from train import backbones, qat  # noqa: F401  (backbones registers AffineBatchNormalization for load_model)
from train import data as ds
from train.config import TrainConfig, load_config
from train.metrics import json_safe

CHECKPOINTS = ("best", "last", "calibrated", "gated")  # calibrated: train.calibrate; gated: train.lesion_gate
RECORD_FILE = "meta.json"


@dataclass(frozen=True)
class RunRecord:
    """What a run is, written once when it starts: the graph's input and output, where its data and
    weights came from. JSON sections stay plain dicts (they are copied into the card as they are)."""

    arch: str  # a train/ family, or <family>_x<N> for an ensemble
    input: dict[str, int]  # height, width
    labels: list[dict[str, str]]  # code, name, in output order
    normalization: dict[str, Any]  # mean, std per channel; colour (device.preprocess.colour_constancy)
    model: dict[str, Any]  # train.models.describe: family, params, macs, input_shape
    split: dict[str, Any]  # method, seed, counts, and fit_on for a refit
    dataset: dict[str, Any]
    backend: str = ""  # the Keras backend that trained it
    quantization_aware_training: bool = False
    devices: int = 1
    init_from: str | None = None
    backbone: dict[str, Any] | None = None  # pretrained backbones: where the weights came from, the cut
    distillation: dict[str, Any] | None = None
    ensemble: dict[str, Any] | None = None  # train.ensemble: members, bias, temperature

    @staticmethod
    def normalization_of(section: dict) -> tuple[list[float], list[float], str]:
        """(mean, std, colour) of a ``normalization`` section: the arguments of
        ``device.preprocess.normalize`` after the pixels (runs from before colour: "none")."""
        return section["mean"], section["std"], section.get("colour", "none")

    def write(self, run_dir: Path) -> None:
        (Path(run_dir) / RECORD_FILE).write_text(json.dumps(json_safe(dataclasses.asdict(self)), indent=2))

    @classmethod
    def read(cls, run_dir: Path) -> RunRecord:
        """The record of ``run_dir``; an unknown or missing key raises naming it and the file."""
        path = Path(run_dir) / RECORD_FILE
        data = json.loads(path.read_text())
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"{path}: unknown key(s) {', '.join(unknown)}")
        try:
            return cls(**data)
        except TypeError as err:
            raise ValueError(f"{path}: {err}") from err

    @property
    def input_hw(self) -> tuple[int, int]:
        return int(self.input["height"]), int(self.input["width"])


@dataclass(frozen=True)
class TrainingRun:
    path: Path
    meta: RunRecord
    config: TrainConfig
    state: dict[str, Any]  # empty when the run never finished an epoch

    @classmethod
    def load(cls, run_dir: Path) -> TrainingRun:
        run_dir = Path(run_dir)
        for name in ("config.yaml", RECORD_FILE, "split.csv"):
            if not (run_dir / name).is_file():
                raise FileNotFoundError(f"{run_dir}: missing {name}; is this a training run directory?")
        state_path = run_dir / "state.json"
        return cls(
            path=run_dir,
            meta=RunRecord.read(run_dir),
            config=load_config(run_dir),
            state=json.loads(state_path.read_text()) if state_path.is_file() else {},
        )

    @property
    def input_hw(self) -> tuple[int, int]:
        return self.meta.input_hw

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(label["code"] for label in self.meta.labels)

    @property
    def normalization(self) -> tuple[list[float], list[float], str]:
        """(mean, std, colour): the arguments of ``device.preprocess.normalize`` after the pixels."""
        return RunRecord.normalization_of(self.meta.normalization)

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
