"""Whether the input pipeline keeps up with the model: images/s of each stage of a training epoch.

    decode    JPEG -> crop -> resize (train.data.load_pixels does this once per image; the result is
              cached as one .npy per split under cache/ and memory-mapped by every later epoch and run)
    augment   cached pixels -> augmentation -> normalization: one Batches worker (``workers`` run in parallel)
    step      the compiled training step (forward, backward, update) on ready batches, over ``--devices``

    python -m train.throughput --config train/configs/edgenet.yaml --data ../shared/data/ham10000
    KERAS_BACKEND=jax XLA_FLAGS=--xla_force_host_platform_device_count=2 \\
        python -m train.throughput --config train/configs/edgenet.yaml --data ../shared/data/ham10000 --devices 2

An epoch is bound by the step when ``workers * augment`` exceeds ``step``; decoding only matters for the
first run on a data set, or for every epoch when nothing caches it.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import keras
import numpy as np
import yaml

from device.decode import load_image
from device.preprocess import fit_to_input
from train import data as ds
from train import distribute
from train.augment import AugmentConfig
from train.config import TrainConfig
from train.dataset import Batches

_log = logging.getLogger(__name__)


def decode_rate(records: list[ds.Record], height: int, width: int) -> float:
    """Images/s of decoding, cropping and resizing on one core (what an uncached epoch pays)."""
    start = time.perf_counter()
    for r in records:
        fit_to_input(load_image(r.path), height, width)
    return len(records) / (time.perf_counter() - start)


def augment_rate(pixels: np.ndarray, labels: np.ndarray, batch_size: int) -> float:
    """Images/s of one Batches worker: cached pixels -> augmentation -> normalized float batch."""
    batches = Batches(pixels, labels, batch_size=batch_size, mean=[128.0] * 3, std=[64.0] * 3,
                      augment=AugmentConfig(), seed=0)
    start = time.perf_counter()
    n = sum(len(batches[i][0]) for i in range(len(batches)))
    return n / (time.perf_counter() - start)


class _EpochTimer(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds = time.perf_counter() - self.start


def step_rate(cfg: TrainConfig, steps: int) -> float:
    """Images/s of the training step on ``steps`` ready global batches (the first, compiling epoch
    is not timed), data-parallel over ``cfg.devices``."""
    from train.train import _initial_model, make_loss, make_optimizer

    h, w = cfg.input_hw()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(steps * cfg.batch_size, h, w, 3)).astype(np.float32)
    y = np.eye(len(ds.CLASSES), dtype=np.float32)[rng.integers(0, len(ds.CLASSES), len(x))]
    with distribute.data_parallel(cfg.devices, cfg.batch_size):
        model, _, _ = _initial_model(cfg, np.zeros((1, h, w, 3), np.uint8))
        model.compile(optimizer=make_optimizer(cfg), loss=make_loss(cfg))
        timer = _EpochTimer()
        model.fit(x, y, batch_size=cfg.batch_size, epochs=2, shuffle=False, callbacks=[timer], verbose=0)
    return len(x) / timer.seconds


def measure(cfg: TrainConfig, *, images: int, steps: int) -> dict:
    h, w = cfg.input_hw()
    records = ds.load_records(Path(cfg.data))[:images]
    decode = decode_rate(records, h, w)
    pixels = ds.load_pixels(records, h, w, Path(cfg.cache_dir))
    labels = np.array([r.label for r in records], dtype=np.int64)
    augment = augment_rate(pixels, labels, cfg.batch_size)
    step = step_rate(cfg, steps)
    return {"arch": cfg.arch, "input": [h, w], "batch_size": cfg.batch_size, "backend": keras.backend.backend(),
            "devices": max(1, len(distribute.pick_devices(cfg.devices, cfg.batch_size))),
            "images": len(records), "decode_per_core": round(decode, 1),
            "augment_per_worker": round(augment, 1), "step": round(step, 1),
            "workers_to_keep_up": round(step / augment, 2)}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m train.throughput", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, help="YAML file of TrainConfig keys (the recipe to measure)")
    parser.add_argument("--data", required=True, help="HAM10000 root")
    parser.add_argument("--devices", type=int, default=1, help="as TrainConfig.devices (JAX backend for more than 1)")
    parser.add_argument("--batch-size", type=int, help="global batch (default: the config's)")
    parser.add_argument("--images", type=int, default=512, help="images decoded and augmented")
    parser.add_argument("--steps", type=int, default=8, help="training steps timed")
    parser.add_argument("--cache-dir", default="cache")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    base = yaml.safe_load(args.config.read_text()) if args.config else {}
    overrides = {"data": args.data, "devices": args.devices, "cache_dir": args.cache_dir,
                 **({"batch_size": args.batch_size} if args.batch_size else {})}
    if base.get("backbone_weights", "imagenet") == "imagenet":
        overrides["backbone_weights"] = "none"  # the step's speed does not depend on the weights
    cfg = TrainConfig(**{**base, **overrides})
    result = measure(cfg, images=args.images, steps=args.steps)
    print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main()
