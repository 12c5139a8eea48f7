"""Batches for ``model.fit``: cached uint8 pixels -> augmentation -> shared normalization."""
from __future__ import annotations

import math

import keras
import numpy as np
from tqdm import tqdm

from device.preprocess import normalize, tta_views
from train import distribute
from train.augment import AugmentConfig, MixConfig, augment_batch, mix_batch

SAMPLING = ("shuffle", "balanced")


class Batches(keras.utils.PyDataset):
    """One epoch of (normalized images, targets[, sample weights]).

    Targets are one-hot labels, or with ``soft_targets`` (N x classes, e.g. a teacher's, see
    train.distill) ``(1 - soft_weight) * one_hot + soft_weight * soft_targets``. ``class_weight``
    (class -> weight) adds per-image weights by the true label; Keras' own ``class_weight`` would
    go by the argmax of a soft target instead. ``mix`` then mixes images, targets and weights
    across the batch (train.augment.mix_batch). ``sampling="balanced"`` draws each epoch's indices
    with probability proportional to ``count(class) ** -power`` instead of a plain shuffle.

    Data-parallel training (train.distribute) splits every batch evenly across devices: there
    ``full_batches`` fills the last batch from the start of the epoch's order, and ``shard``
    ``(index, count)`` makes this process feed only its share of each global batch (several hosts).
    """

    def __init__(self, pixels: np.ndarray, labels: np.ndarray, *, batch_size: int, mean, std, colour: str = "none",
                 num_classes: int = 7, augment: AugmentConfig | None = None, mix: MixConfig | None = None,
                 shuffle: bool = True,
                 sampling: str = "shuffle", balance_power: float = 0.5, seed: int = 0, start_epoch: int = 0,
                 class_weight: dict[int, float] | None = None, soft_targets: np.ndarray | None = None,
                 soft_weight: float = 0.0, full_batches: bool = False, shard: tuple[int, int] = (0, 1),
                 **kwargs):
        super().__init__(**kwargs)
        if sampling not in SAMPLING:
            raise ValueError(f"unknown sampling {sampling!r}; choose from {SAMPLING}")
        if soft_targets is not None and np.shape(soft_targets) != (len(labels), num_classes):
            raise ValueError(f"soft_targets: shape {np.shape(soft_targets)}, expected {(len(labels), num_classes)}")
        if not 0.0 <= soft_weight <= 1.0:
            raise ValueError(f"soft_weight must be in [0, 1], got {soft_weight}")
        self.pixels, self.labels = pixels, np.asarray(labels)
        self.batch_size, self.norm = batch_size, (mean, std, colour)
        self.num_classes, self.augment, self.mix, self.shuffle = num_classes, augment, mix, shuffle
        self.sampling, self.balance_power, self.seed = sampling, balance_power, seed
        self.weights = (None if class_weight is None else
                        np.array([class_weight.get(c, 0.0) for c in range(num_classes)], np.float32))
        self.soft_targets, self.soft_weight = soft_targets, soft_weight
        self.full_batches, self.shard = full_batches, shard
        self.epoch = start_epoch  # a resumed run sees the same epoch order as an uninterrupted one
        self.order = self._order()

    def _order(self) -> np.ndarray:
        n = len(self.labels)
        if not self.shuffle:
            return np.arange(n)
        rng = np.random.default_rng([self.seed, self.epoch])
        if self.sampling == "balanced":
            counts = np.bincount(self.labels, minlength=self.num_classes).astype(np.float64)
            p = counts[self.labels] ** -self.balance_power
            return rng.choice(n, size=n, replace=True, p=p / p.sum())
        return rng.permutation(n)

    def __len__(self) -> int:
        return math.ceil(len(self.labels) / self.batch_size)

    def __getitem__(self, i: int):
        idx = self.order[i * self.batch_size : (i + 1) * self.batch_size]
        if self.full_batches and len(idx) < self.batch_size:
            idx = np.concatenate([idx, np.resize(self.order, self.batch_size - len(idx))])
        idx = np.sort(idx)
        index, count = self.shard
        if count > 1:
            idx = idx[index::count]
        x = np.asarray(self.pixels[idx])
        rng = np.random.default_rng([self.seed, self.epoch, i] + ([index] if count > 1 else []))
        if self.augment is not None:
            x = augment_batch(x, self.augment, rng)
        labels = self.labels[idx]
        y = np.eye(self.num_classes, dtype=np.float32)[labels]
        if self.soft_targets is not None:
            y = (1.0 - self.soft_weight) * y + self.soft_weight * self.soft_targets[idx]
        w = None if self.weights is None else self.weights[labels]
        if self.mix is not None:
            x, y, w = mix_batch(x, y, w, self.mix, rng)
        x = normalize(x, *self.norm)
        return (x, y) if w is None else (x, y, w)

    def on_epoch_end(self):
        self.epoch += 1
        self.order = self._order()


def predict_probs(model: keras.Model, pixels: np.ndarray, mean, std, colour: str = "none", *, batch_size: int = 64,
                  tta: bool = False) -> np.ndarray:
    """Softmax outputs for uint8 images; ``tta`` averages over the four flips.

    ``model.predict`` runs the compiled graph; calling the model eagerly is several times
    slower on the TensorFlow backend (minutes per validation pass for MobileNetV2). Under data-parallel
    training every batch must split evenly over the devices, so a short chunk is padded and trimmed."""
    out = []
    batch_size = distribute.round_up(batch_size)
    for start in range(0, len(pixels), 4 * batch_size):
        x = normalize(np.asarray(pixels[start : start + 4 * batch_size]), mean, std, colour)
        n = len(x)
        if distribute.round_up(n) > n:
            x = np.concatenate([x, np.repeat(x[-1:], distribute.round_up(n) - n, axis=0)])
        views = tta_views(x, "flips" if tta else "none")
        out.append(np.mean([model.predict(v, batch_size=batch_size, verbose=0)[:n] for v in views], axis=0))
    return np.concatenate(out) if out else np.zeros((0, model.output_shape[-1]), np.float32)


def engine_probs(engine, pixels: np.ndarray, *, desc: str) -> np.ndarray:
    """The same for a ``device.engine.Engine`` (int8 or float TFLite): probabilities (N, classes)
    for fitted uint8 images, one engine call per image, as the device scores them."""
    rows = [engine.infer_pixels(np.asarray(p)) for p in tqdm(pixels, desc=desc, unit="img", leave=False)]
    return np.stack(rows) if rows else np.zeros((0, len(engine.card.labels)), np.float32)
