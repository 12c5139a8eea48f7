"""Learning-rate policies: the cyclic policy of the design (Smith, 2017) and cosine decay.

Both are callbacks that set the optimizer's learning rate from its own iteration
counter, so a resumed run continues the cycle exactly where it stopped.
"""
from __future__ import annotations

import math

import keras
import numpy as np

CYCLIC_MODES = ("triangular", "triangular2", "exp_range")


def cyclic_lr(step: int, *, base_lr: float, max_lr: float, step_size: int, mode: str = "triangular",
              gamma: float = 0.99994) -> float:
    """Learning rate at ``step`` of a cyclic schedule with half-cycle ``step_size`` iterations."""
    if mode not in CYCLIC_MODES:
        raise ValueError(f"unknown cyclic mode {mode!r}; choose from {CYCLIC_MODES}")
    cycle = math.floor(1 + step / (2 * step_size))
    x = abs(step / step_size - 2 * cycle + 1)
    amplitude = (max_lr - base_lr) * max(0.0, 1 - x)
    if mode == "triangular2":
        amplitude /= 2 ** (cycle - 1)
    elif mode == "exp_range":
        amplitude *= gamma**step
    return base_lr + amplitude


def cosine_lr(step: int, *, max_lr: float, total_steps: int, warmup_steps: int = 0, min_lr: float = 0.0) -> float:
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    t = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr + 0.5 * (max_lr - min_lr) * (1 + math.cos(math.pi * t))


class LRPolicy(keras.callbacks.Callback):
    """Sets the learning rate before every batch from ``fn(iteration)`` and logs it per epoch."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def on_train_batch_begin(self, batch, logs=None):
        step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        self.model.optimizer.learning_rate.assign(np.float32(self.fn(step)))

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["lr"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
