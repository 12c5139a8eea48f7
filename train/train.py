"""Train a DermEdge classifier on HAM10000.

    python -m train --data PATH/TO/ham10000 --arch edgenet --epochs 40
    python -m train --resume runs/<run>            # continue an interrupted run
    python -m train --init-from runs/<run>/best.keras --lr-policy cosine --epochs 30
                                                   # warm restart: new run, same split, new schedule
    KERAS_BACKEND=jax python -m train --data PATH/TO/ham10000 --devices 0
                                                   # data-parallel over every GPU (docs/training-on-gpus.md)

Every run gets ``runs/<timestamp>-<name>/``: the resolved config, the split CSV, the
normalization statistics (meta.json), ``best.keras`` (by validation balanced
accuracy), ``last.keras`` + ``state.json`` (every epoch, for ``--resume``),
``history.csv`` and ``train.log``. Works on any Keras 3 backend.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import time
from pathlib import Path

import keras
import numpy as np
import yaml

from device.preprocess import colour_constancy, normalize
from train import backbones, distill, distribute, qat
from train import data as ds
from train.augment import AugmentConfig, MixConfig
from train.config import LR_POLICIES, TrainConfig, field_help, load_config, write_config
from train.dataset import Batches, predict_probs
from train.evaluate import evaluate_extra, evaluate_run
from train.metrics import classification_report
from train.models import build_model, describe
from train.run import RunRecord
from train.schedules import CYCLIC_MODES, LRPolicy, cosine_lr, cyclic_lr

_log = logging.getLogger("train")

_RUN_HANDLER = "train-run"  # name of the log handlers main() installs
RESUMABLE_OVERRIDES = ("epochs", "data", "workers", "devices", "time_budget")  # flags --resume accepts


# --- building blocks --------------------------------------------------------------


def make_optimizer(cfg: TrainConfig, *, average: bool = False) -> keras.optimizers.Optimizer:
    """``average``: the optimizer also keeps the moving average of the weights (``ema_momentum``)."""
    ema = {"use_ema": True, "ema_momentum": cfg.ema_momentum} if average and cfg.ema_momentum else {}
    if cfg.optimizer == "adam":
        return keras.optimizers.Adam(cfg.base_lr, **ema)
    if cfg.optimizer == "adamw":
        return keras.optimizers.AdamW(cfg.base_lr, weight_decay=cfg.weight_decay, **ema)
    if cfg.optimizer == "rmsprop":
        return keras.optimizers.RMSprop(cfg.base_lr, **ema)
    raise ValueError(f"optimizer: unknown {cfg.optimizer!r}; use adam, adamw or rmsprop")


def make_loss(cfg: TrainConfig) -> keras.losses.Loss:
    if cfg.loss == "crossentropy":
        return keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing)
    if cfg.loss == "focal":
        return keras.losses.CategoricalFocalCrossentropy(gamma=cfg.focal_gamma, label_smoothing=cfg.label_smoothing)
    raise ValueError(f"loss: unknown {cfg.loss!r}; use crossentropy or focal")


def make_mix(cfg: TrainConfig) -> MixConfig | None:
    return None if cfg.mix == "none" else MixConfig(cfg.mix, cfg.mix_alpha, cfg.mix_prob)


def make_lr_fn(cfg: TrainConfig, steps_per_epoch: int, epochs: int):
    """Learning rate per optimizer iteration for a phase of ``epochs`` epochs."""
    if cfg.lr_policy in CYCLIC_MODES:
        step_size = max(1, int(cfg.cycle_epochs * steps_per_epoch))
        return lambda s: cyclic_lr(s, base_lr=cfg.base_lr, max_lr=cfg.max_lr, step_size=step_size,
                                   mode=cfg.lr_policy, gamma=cfg.gamma)
    if cfg.lr_policy == "cosine":
        total = epochs * steps_per_epoch
        return lambda s: cosine_lr(s, max_lr=cfg.max_lr, total_steps=total, warmup_steps=steps_per_epoch,
                                   min_lr=cfg.base_lr)
    if cfg.lr_policy == "constant":
        return lambda s: cfg.max_lr
    raise ValueError(f"lr_policy: unknown {cfg.lr_policy!r}; choose from {LR_POLICIES}")


class Checkpointer(keras.callbacks.Callback):
    """Scores the validation split each epoch, keeps best.keras by balanced accuracy and
    last.keras + state.json for resuming. Writes are atomic so an interrupt never corrupts them.

    When the optimizer keeps a moving average of the weights, that average is what is scored and
    kept as best.keras; last.keras holds the raw weights, its optimizer the average, so a resumed
    run continues both. A refit has no validation split (``val_pixels`` None): every epoch's model
    is kept as best.keras, so the one its ``stop_epoch`` ends on is what the next stage starts from."""

    def __init__(self, run_dir: Path, val_pixels, val_labels, norm: tuple, labels, best: float = -1.0):
        super().__init__()
        self.run_dir, self.val_pixels, self.val_labels = run_dir, val_pixels, val_labels
        self.norm, self.labels, self.best = norm, labels, best
        self._average = keras.callbacks.SwapEMAWeights()  # swaps the averaged weights in and out in place

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        _save_atomic(self.model, self.run_dir / "last.keras")
        averaged = getattr(self.model.optimizer, "use_ema", False)
        if averaged:
            self._average.set_model(self.model)
            self._average.on_test_begin()
        try:
            if self.val_pixels is None:
                _save_atomic(self.model, self.run_dir / "best.keras")
            else:
                self._score(logs)
        finally:
            if averaged:
                self._average.on_test_end()
        state = {"epoch": epoch, "best_val_balanced_accuracy": self.best, "time": time.time()}
        (self.run_dir / "state.json").write_text(json.dumps(state, indent=2))
        _log.info("epoch %d: %s", epoch + 1,
                  " ".join(f"{k}={v:.4f}" for k, v in logs.items() if isinstance(v, float)))

    def _score(self, logs: dict) -> None:
        probs = predict_probs(self.model, self.val_pixels, *self.norm)
        report = classification_report(probs, self.val_labels, self.labels)
        eps = 1e-7
        logs["val_loss"] = float(-np.mean(np.log(probs[np.arange(len(probs)), self.val_labels] + eps)))
        for key in ("accuracy", "balanced_accuracy", "macro_f1", "macro_auc"):
            logs[f"val_{key}"] = report[key]
        if report["balanced_accuracy"] > self.best:
            self.best = report["balanced_accuracy"]
            _save_atomic(self.model, self.run_dir / "best.keras")


def _save_atomic(model: keras.Model, path: Path) -> None:
    tmp = path.with_name(path.stem + ".tmp.keras")
    model.save(tmp)
    os.replace(tmp, path)


# --- the run ----------------------------------------------------------------------


def prepare_split(cfg: TrainConfig, run_dir: Path) -> list[ds.Record]:
    """The run's split: reused from ``split_file`` (or from the ``init_from`` or ``teacher`` checkpoint's
    run, whose test images that checkpoint never saw) or drawn now; always written to the run."""
    source = cfg.init_from or cfg.teacher
    split_file = cfg.split_file or (str(Path(source).parent / "split.csv") if source else "")
    if split_file:
        records = ds.read_split(Path(split_file), Path(cfg.data))
    else:
        records = ds.split_records(ds.load_records(Path(cfg.data)), method=cfg.split, seed=cfg.split_seed)
    ds.write_split(records, run_dir / "split.csv")
    return records


class TimeBudget(keras.callbacks.Callback):
    """Ends training after the epoch past which one more would overrun ``minutes`` from the run's start
    (decoding and compiling included); the checkpoints stay resumable. 0 minutes: no limit."""

    def __init__(self, minutes: float):
        super().__init__()
        self.deadline = time.monotonic() + 60.0 * minutes if minutes else float("inf")
        self.spent, self._epoch_start = False, time.monotonic()

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        now = time.monotonic()
        if now + (now - self._epoch_start) > self.deadline:
            self.spent = self.model.stop_training = True


def fit(cfg: TrainConfig, run_dir: Path, *, resume: bool = False) -> Path:
    """Train into ``run_dir`` (continuing from last.keras when ``resume``); returns run_dir.
    Data-parallel over ``cfg.devices`` when that is not 1 (train.distribute)."""
    with distribute.data_parallel(cfg.devices, cfg.batch_size):
        return _fit(cfg, run_dir, resume=resume)


def _fit(cfg: TrainConfig, run_dir: Path, *, resume: bool = False) -> Path:
    """A pretrained backbone trains in two phases: ``freeze_epochs`` of the head alone at ``head_lr``,
    then the whole network under the LR policy (a fresh optimizer, its schedule counted from there)."""
    budget = TimeBudget(cfg.time_budget)
    keras.utils.set_random_seed(cfg.seed)
    h, w = cfg.input_hw()
    if resume:
        records = ds.read_split(run_dir / "split.csv", Path(cfg.data))
    else:
        records = prepare_split(cfg, run_dir)
    by_split = {s: ds.select(records, s) for s in ds.SPLITS}
    if cfg.limit:
        by_split = {s: r[: cfg.limit] for s, r in by_split.items()}
    if cfg.refit:
        by_split = {"train": [r for s in ds.REFIT_SPLITS for r in by_split[s]], "val": [], "test": by_split["test"]}
    pixels = {s: ds.load_pixels(r, h, w, Path(cfg.cache_dir)) for s, r in by_split.items() if s != "test"}
    labels = {s: np.array([r.label for r in by_split[s]], dtype=np.int64) for s in ("train", "val")}
    n_ham = len(labels["train"])  # the extra set's images follow HAM10000's in train and val
    extra = ds.extra_fit_records(Path(cfg.extra_data), refit=cfg.refit, limit=cfg.limit) if cfg.extra_data else {}
    for s, recs in extra.items():
        pixels[s] = np.concatenate([pixels[s], ds.load_pixels(recs, h, w, Path(cfg.cache_dir),
                                                              unsquash=cfg.extra_unsquash)])
        labels[s] = np.concatenate([labels[s], np.array([r.label for r in recs], dtype=np.int64)])

    if resume:
        record = RunRecord.read(run_dir)
        norm = RunRecord.normalization_of(record.normalization)
        model = keras.models.load_model(run_dir / "last.keras")
        state = json.loads((run_dir / "state.json").read_text())
        initial_epoch, best = state["epoch"] + 1, state["best_val_balanced_accuracy"]
    else:
        model, norm, provenance = _initial_model(cfg, pixels["train"])
        record = RunRecord(
            arch=cfg.arch,
            input={"height": h, "width": w},
            labels=[{"code": c, "name": n} for c, n in ds.CLASSES],
            normalization=dict(zip(("mean", "std", "colour"), norm)),
            model=describe(qat.strip(model)),
            split={"method": cfg.split, "seed": cfg.split_seed, "counts": ds.split_counts(records),
                   **({"fit_on": list(ds.REFIT_SPLITS)} if cfg.refit else {})},
            dataset={"name": "HAM10000", "citation": ds.CITATION, "license": ds.LICENSE,
                     **({"extra": ds.extra_summary(extra, cfg.extra_unsquash)} if extra else {})},
            backend=keras.backend.backend(),
            devices=distribute.replicas(),
            init_from=cfg.init_from or None,
            backbone=provenance,
            quantization_aware_training=cfg.qat,
            distillation=({"teacher": cfg.teacher, "weight": cfg.distill_weight,
                           "temperature": cfg.distill_temperature} if cfg.teacher else None),
        )
        record.write(run_dir)
        initial_epoch, best = 0, -1.0
    mean, std, colour = norm
    _log.info("%s: %d params, %.1f M MACs, input %dx%d, train/val %d/%d, start epoch %d",
              cfg.arch, record.model["params"], record.model["macs"] / 1e6, h, w,
              len(labels["train"]), len(labels["val"]), initial_epoch + 1)
    if initial_epoch >= (cfg.stop_epoch or cfg.epochs):
        _log.info("run already has %d epochs; nothing to do", initial_epoch)
        return run_dir

    soft = None
    if cfg.teacher:
        soft = distill.teacher_targets(Path(cfg.teacher), by_split["train"], temperature=cfg.distill_temperature,
                                       cache_dir=Path(cfg.cache_dir), out=run_dir / "teacher_targets.npy")
    train_batches = Batches(
        pixels["train"], labels["train"], batch_size=cfg.batch_size, mean=mean, std=std, colour=colour,
        augment=AugmentConfig() if cfg.augment else None,
        mix=make_mix(cfg),
        sampling="balanced" if cfg.imbalance == "sampling" else "shuffle",
        balance_power=cfg.balance_power, seed=cfg.seed, start_epoch=initial_epoch, workers=cfg.workers,
        class_weight=class_weight(cfg, labels["train"], n_ham),
        soft_targets=soft, soft_weight=cfg.distill_weight if cfg.teacher else 0.0,
        full_batches=distribute.replicas() > 1, shard=distribute.process_shard(),
    )
    checkpointer = Checkpointer(run_dir, pixels["val"] if len(labels["val"]) else None, labels["val"], norm,
                                ds.CLASS_CODES, best)
    csv_log = keras.callbacks.CSVLogger(str(run_dir / "history.csv"), append=resume)

    stop = cfg.stop_epoch or cfg.epochs

    def run_phase(lr_fn, until: int) -> None:
        nonlocal initial_epoch
        until = min(until, stop)
        if initial_epoch >= until or budget.spent:
            return
        history = model.fit(train_batches, epochs=until, initial_epoch=initial_epoch,
                            callbacks=[LRPolicy(lr_fn), checkpointer, csv_log, budget], verbose=1)
        initial_epoch = history.epoch[-1] + 1 if history.epoch else initial_epoch
        csv_log.append = True  # the next phase's fit() must not overwrite this one's rows

    head_epochs = cfg.freeze_epochs if cfg.pretrained else 0
    if initial_epoch < head_epochs:
        _log.info("phase 1: head only, %d epoch(s) at lr %g", head_epochs, cfg.head_lr)
        if not resume or initial_epoch == 0:
            set_trainable(model, cfg, backbone=False)
            model.compile(optimizer=make_optimizer(cfg), loss=make_loss(cfg), metrics=["accuracy"])
        run_phase(lambda s: cfg.head_lr, head_epochs)
    if not resume or initial_epoch == head_epochs:  # the second phase starts with a fresh optimizer
        set_trainable(model, cfg, backbone=True)
        # Only this phase averages: fit() ends by writing the average into the weights, and a
        # one-epoch head phase would average in its random start.
        model.compile(optimizer=make_optimizer(cfg, average=True), loss=make_loss(cfg), metrics=["accuracy"])
    _log.info("%s: epochs %d-%d of a %d-epoch %s schedule, lr %g -> %g", "fine-tuning" if cfg.pretrained else "training",
              initial_epoch + 1, stop, cfg.epochs, cfg.lr_policy, cfg.max_lr, cfg.base_lr)
    run_phase(make_lr_fn(cfg, len(train_batches), cfg.epochs - head_epochs), cfg.epochs)
    if budget.spent:
        _log.info("time budget of %g min spent after epoch %d; continue with python -m train --resume %s",
                  cfg.time_budget, initial_epoch, run_dir)
    return run_dir


def class_weight(cfg: TrainConfig, labels: np.ndarray, n_ham: int) -> dict[int, float] | None:
    """Per-class loss weights for training ``labels`` whose first ``n_ham`` are HAM10000's: inverse
    frequency (``imbalance: weights``), and with an extra set HAM10000's class prior kept."""
    if cfg.extra_data:
        power = cfg.balance_power if cfg.imbalance == "weights" else 0.0
        return ds.prior_preserving_weights(labels[:n_ham], labels[n_ham:], power)
    return ds.class_weights(labels, cfg.balance_power) if cfg.imbalance == "weights" else None


def set_trainable(model: keras.Model, cfg: TrainConfig, *, backbone: bool) -> None:
    """Backbone layers on or off for a phase; with ``trainable_from`` only that layer and those after
    it train (the early, high-resolution layers cost most to back-propagate and transfer as they are).
    BatchNorm follows ``bn_mode`` (frozen BN runs in inference mode). The head always trains."""
    names = [layer.name for layer in model.layers]
    if cfg.trainable_from and cfg.trainable_from not in names:
        raise ValueError(f"trainable_from: no layer {cfg.trainable_from!r} in {model.name}")
    first = names.index(cfg.trainable_from) if cfg.trainable_from else 0
    head = names.index("pool") if "pool" in names else len(names)
    for i, layer in enumerate(model.layers):
        trains = i >= head or (backbone and i >= first)
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = trains and cfg.bn_mode != "frozen"
            layer.momentum = cfg.bn_momentum
        else:
            layer.trainable = trains


def _initial_model(cfg: TrainConfig, train_pixels: np.ndarray) -> tuple[keras.Model, tuple, dict | None]:
    """The model a new run starts from, its input normalization and where its weights came from."""
    h, w = cfg.input_hw()
    if cfg.init_from:
        source_meta = init_source_meta(cfg)
        model = keras.models.load_model(cfg.init_from, compile=False)  # compiled afresh: new optimizer, schedule
        norm = RunRecord.normalization_of(source_meta.normalization)
        if cfg.colour not in ("none", norm[2]):
            raise ValueError(f"colour: {cfg.colour!r}, but init_from's run was trained with {norm[2]!r} (kept)")
        provenance = source_meta.backbone
    elif cfg.pretrained:
        model, imported = backbones.pretrained_classifier(cfg.arch, (h, w, 3), weights=cfg.backbone_weights,
                                                          num_classes=len(ds.CLASSES), dropout=cfg.dropout,
                                                          alpha=cfg.width_mult, cut=cfg.backbone_cut)
        norm = (*backbones.normalization(cfg.arch), cfg.colour)
        provenance = {"name": cfg.arch, "weights": imported.source, "kind": imported.kind,
                      **backbones.pretraining(cfg.arch, imported.kind),
                      "conv_layers_set": imported.layers, "sha256": imported.sha256 or None,
                      "bn_mode": cfg.bn_mode, "cut": cfg.backbone_cut}
        _log.info("backbone %s: weights from %s (%s, %d conv layers)", cfg.arch, imported.source, imported.kind,
                  imported.layers)
        if imported.kind in ("tflite", "pytorch-legacy") and cfg.self_check_images:
            provenance["self_check"] = _self_check(cfg)
        if cfg.bn_mode == "reestimate":
            sample = np.random.default_rng(cfg.seed).permutation(len(train_pixels))[:512]
            n = backbones.reestimate_batchnorm(model, normalize(np.asarray(train_pixels[np.sort(sample)]), *norm))
            _log.info("BatchNorm: statistics of %d layers re-estimated on %d training images", n, len(sample))
    else:
        norm = (*ds.channel_stats(colour_constancy(train_pixels, cfg.colour)), cfg.colour)
        model = build_model(cfg.arch, (h, w, 3), width=cfg.width_mult)
        provenance = None
    if cfg.bn_mode == "affine":
        model = backbones.affine_batchnorm(model)
    return (qat.quantize_aware(model) if cfg.qat else model), norm, provenance


def _self_check(cfg: TrainConfig) -> list[dict]:
    images = [Path(p) for p in cfg.self_check_images.split(",") if p]
    labels = Path(cfg.imagenet_labels) if cfg.imagenet_labels else None
    if cfg.arch in backbones.efficientnet_lite.VARIANTS:  # no reference model in the file: log the top-1s
        rows = backbones.efficientnet_lite.imagenet_self_check(cfg.arch, images, labels_file=labels,
                                                               path=cfg.backbone_weights)
        for row in rows:
            _log.info("self-check %s: ImageNet top-1 %s (p %.2f)", row["image"], row["top1"], row["probability"])
        return rows
    rows = backbones.imagenet_self_check(Path(cfg.backbone_weights), images, labels_file=labels, name=cfg.arch)
    for row in rows:
        _log.info("self-check %s: ImageNet top-1 %s (the TFLite file: %s)%s", row["image"], row["keras"],
                  row["tflite"], "" if row["agree"] else "  MISMATCH")
    if not all(row["agree"] for row in rows):
        raise backbones.WeightImportError(f"{cfg.backbone_weights}: the imported backbone disagrees with the "
                                          "file on the self-check images; refusing to train on it")
    return rows


def init_source_meta(cfg: TrainConfig) -> RunRecord:
    """meta.json of the ``init_from`` checkpoint's run, after checking that the checkpoint exists
    and is the architecture and input size this config asks for."""
    checkpoint = Path(cfg.init_from)
    source_meta = checkpoint.parent / "meta.json"
    for path in (checkpoint, source_meta):
        if not path.is_file():
            raise FileNotFoundError(f"init_from: {path} not found")
    meta = RunRecord.read(checkpoint.parent)
    hw, source_hw = cfg.input_hw(), meta.input_hw
    if meta.arch != cfg.arch or source_hw != hw:
        raise ValueError(f"init_from: {checkpoint} is {meta.arch} at {source_hw[0]}x{source_hw[1]}, "
                         f"not {cfg.arch} at {hw[0]}x{hw[1]}")
    return meta


def new_run_dir(cfg: TrainConfig) -> Path:
    run_dir = Path(cfg.runs_dir) / f"{time.strftime('%Y%m%d-%H%M%S')}-{cfg.name or cfg.arch}"
    run_dir.mkdir(parents=True, exist_ok=False)
    write_config(cfg, run_dir)
    return run_dir


def _setup_logging(run_dir: Path) -> None:
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    # A second run in the same process (tests, notebooks) must not also log into the first run's file.
    for handler in [h for h in root.handlers if h.get_name() == _RUN_HANDLER]:
        root.removeHandler(handler)
        handler.close()
    for handler in (logging.StreamHandler(), logging.FileHandler(run_dir / "train.log")):
        handler.setFormatter(fmt)
        handler.set_name(_RUN_HANDLER)
        root.addHandler(handler)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m train", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resume", type=Path, help="run directory to continue from its last checkpoint")
    parser.add_argument("--config", type=Path, help="YAML file of TrainConfig keys (flags override it)")
    parser.add_argument("--no-evaluate", action="store_true", help="skip the test-split evaluation at the end")
    helps = field_help()
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.type == "bool":
            parser.add_argument(flag, type=lambda s: s.lower() in ("1", "true", "yes"), default=None,
                                metavar="BOOL", help=helps[f.name])
        else:
            parser.add_argument(flag, type={"int": int, "float": float}.get(f.type, str), default=None,
                                help=helps[f.name])
    return parser.parse_args(argv)


def main(argv=None) -> Path:
    args = parse_args(argv)
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
                 if getattr(args, f.name) is not None}
    if args.resume:
        run_dir = args.resume
        cfg = load_config(run_dir)
        # Only the epoch and time budgets, data location and the hardware may change on resume.
        cfg = dataclasses.replace(cfg, **{k: v for k, v in overrides.items() if k in RESUMABLE_OVERRIDES})
        write_config(cfg, run_dir)
    else:
        base = yaml.safe_load(args.config.read_text()) if args.config else {}
        cfg = TrainConfig(**{**base, **overrides})
        if cfg.init_from:
            init_source_meta(cfg)  # fail before an empty run directory is made
        if cfg.teacher:
            distill.teacher_run(Path(cfg.teacher))
        run_dir = new_run_dir(cfg)
    _setup_logging(run_dir)
    _log.info("run directory %s (backend %s)", run_dir, keras.backend.backend())
    fit(cfg, run_dir, resume=bool(args.resume))
    if not args.no_evaluate:
        evaluate_run(run_dir)
        if cfg.extra_data:
            evaluate_extra(run_dir)
    return run_dir
