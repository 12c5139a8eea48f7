"""Data-parallel training (train.distribute) on two virtual CPU devices under JAX: one step over two
devices gives the weights one device gives on the same global batch, checkpoints resume, and
predictions on batches that do not split evenly come out whole. The batch plumbing and the
config's refusals are checked here in-process."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest

from tests.train.test_jax_backend import run_under_jax

TWO_CPUS = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}

# argv: fixture folder, work folder. Prints one JSON line last.
DP_SCRIPT = r"""
import json, shutil, sys
from pathlib import Path
import keras, numpy as np
from train import data as ds, distribute
from train.dataset import predict_probs
from train.run import TrainingRun
from train.train import TrainConfig, fit, main, new_run_dir

fixture, work = Path(sys.argv[1]), Path(sys.argv[2])
placements = []
plain_fit = keras.Model.fit

def fit_and_record(self, *args, **kwargs):  # where the variables live, and their values, as fit() starts
    placements.append(len(self.trainable_variables[0].value.sharding.device_set))
    np.savez(work / f"start-{len(placements)}.npz",
             **{w.path.replace("/", "|"): keras.ops.convert_to_numpy(w) for w in self.weights})
    return plain_fit(self, *args, **kwargs)

keras.Model.fit = fit_and_record

def one_step(devices):
    # 16 training images, global batch 16: exactly one step; concat_resnet has BatchNorm (its batch
    # statistics span both devices) and no dropout, so the step draws no random numbers.
    cfg = TrainConfig(data=str(fixture), arch="concat_resnet", name=f"dp{devices}", height=48, width=64,
                      width_mult=0.25, epochs=1, batch_size=16, limit=16, optimizer="adam",
                      lr_policy="constant", max_lr=3e-3, augment=False, runs_dir=str(work / "runs"),
                      cache_dir=str(work / "cache"), workers=1, devices=devices)
    return fit(cfg, new_run_dir(cfg))

one, two = one_step(1), one_step(2)
shutil.copy(two / "last.keras", work / "two-after-one-step.keras")
main(["--resume", str(two), "--epochs", "2", "--devices", "2", "--no-evaluate"])
run = TrainingRun.load(two)
pixels = ds.load_pixels(run.records("test")[:7], *run.input_hw, work / "cache")
model = run.load_model("last")
single = predict_probs(model, pixels, *run.normalization)
with distribute.data_parallel(2, 16):
    split = predict_probs(keras.models.load_model(two / "last.keras", compile=False), pixels, *run.normalization)
print(json.dumps({"one": str(one), "two": str(two), "placements": placements, "devices": keras.distribution.list_devices(),
                  "single": single.tolist(), "split": split.tolist()}))
"""


@pytest.fixture(scope="module")
def dp_runs(tmp_path_factory, fixture_dir) -> dict:
    pytest.importorskip("jax")
    return run_under_jax(DP_SCRIPT, str(fixture_dir), str(tmp_path_factory.mktemp("dp")), env=TWO_CPUS)


def _weights(path: Path) -> tuple[dict[str, np.ndarray], set[str], int]:
    """Values by path, the trainable paths, and the optimizer's step count of a checkpoint."""
    import keras

    model = keras.models.load_model(path)
    values = {w.path: keras.ops.convert_to_numpy(w) for w in model.weights}
    return values, {w.path for w in model.trainable_weights}, int(keras.ops.convert_to_numpy(model.optimizer.iterations))


def _first_loss(run_dir: Path) -> float:
    with open(run_dir / "history.csv", newline="") as fh:
        return float(next(csv.DictReader(fh))["loss"])


def test_one_step_on_two_devices_matches_one_device(dp_runs):
    assert dp_runs["devices"] == ["cpu:0", "cpu:1"]
    assert dp_runs["placements"][:2] == [1, 2]  # the second run's variables really were on both devices
    one, two = Path(dp_runs["one"]), Path(dp_runs["two"])
    work = two.parent.parent
    # The loss of the global batch (before the step) is the same number: no per-device sum or half batch.
    assert _first_loss(two) == pytest.approx(_first_loss(one), rel=1e-5)
    start = {k.replace("|", "/"): v for k, v in np.load(work / "start-1.npz").items()}
    start_two = {k.replace("|", "/"): v for k, v in np.load(work / "start-2.npz").items()}
    assert all(np.array_equal(start[k], start_two[k]) for k in start)  # same seed, same starting point
    after_one, trainable, steps = _weights(one / "last.keras")
    after_two, _, _ = _weights(work / "two-after-one-step.keras")  # kept before that run resumed
    assert steps == 1 and after_one.keys() == after_two.keys() == start.keys() and len(trainable) > 10
    lr, changed, steps_apart = 3e-3, 0, []
    for path in after_one:
        u1, u2 = after_one[path] - start[path], after_two[path] - start[path]
        if path not in trainable:  # BatchNorm's moving statistics: their batch statistics span both devices
            np.testing.assert_allclose(u2, u1, rtol=1e-4, atol=1e-6, err_msg=path)
            changed += int(np.abs(u1).max() > 0)
        else:
            steps_apart.append(np.abs(u2 - u1).ravel() / lr)
    assert changed > 0
    # Adam's first step is lr * g / (|g| + 1e-7): a whole lr step where the gradient is clearly non-zero,
    # a rounding-sensitive share of one where it is within a few 1e-7 of zero (there a reordered sum
    # moves it). A gradient from half the batch, or replicas left apart, moves a large share instead.
    apart = np.concatenate(steps_apart)
    assert apart.max() < 2.0 and apart.mean() < 1e-3, (apart.max(), apart.mean())
    assert (apart > 0.02).mean() < 1e-3, (apart > 0.02).mean()


def test_a_data_parallel_run_resumes_and_predicts_uneven_batches(dp_runs):
    import json

    two = Path(dp_runs["two"])
    assert dp_runs["placements"][2] == 2
    assert json.loads((two / "meta.json").read_text())["devices"] == 2
    assert json.loads((two / "state.json").read_text())["epoch"] == 1
    assert _weights(two / "last.keras")[2] == 2  # the optimizer continued: one step per epoch
    single, split = np.asarray(dp_runs["single"]), np.asarray(dp_runs["split"])
    assert single.shape == split.shape == (7, 7)  # 7 images over 2 devices: padded, then trimmed
    np.testing.assert_allclose(split, single, atol=1e-5)


def test_batches_fill_the_last_batch_and_shard_each_global_batch():
    from train.dataset import Batches

    pixels = np.arange(21 * 2 * 2 * 3, dtype=np.uint8).reshape(21, 2, 2, 3)
    labels = np.arange(21) % 7
    common = {"batch_size": 8, "mean": [0, 0, 0], "std": [1, 1, 1], "seed": 3}
    plain = Batches(pixels, labels, **common)
    full = Batches(pixels, labels, full_batches=True, **common)
    assert len(plain) == len(full) == math.ceil(21 / 8)
    assert len(plain[2][0]) == 5 and [len(full[i][0]) for i in range(3)] == [8, 8, 8]
    halves = [Batches(pixels, labels, full_batches=True, shard=(k, 2), **common) for k in range(2)]
    for i in range(3):
        x0, x1, whole = halves[0][i][0], halves[1][i][0], full[i][0]
        assert len(x0) == len(x1) == 4
        got = sorted(map(bytes, np.concatenate([x0, x1]).astype(np.float32)))
        assert got == sorted(map(bytes, whole.astype(np.float32)))  # the two shares make up the global batch


def test_devices_flag_refuses_what_it_cannot_do():
    from train.config import TrainConfig
    from train.distribute import pick_devices

    assert pick_devices(1, 15) == []  # one device: nothing changes, any backend
    with pytest.raises(ValueError, match="KERAS_BACKEND=jax"):
        pick_devices(2, 16)  # this process runs TensorFlow
    with pytest.raises(ValueError, match="devices"):
        TrainConfig(devices=-1)
    with pytest.raises(ValueError, match="time_budget"):
        TrainConfig(time_budget=-1)


def test_devices_flag_refuses_an_uneven_batch_or_too_many_devices(fixture_dir, tmp_path):
    pytest.importorskip("jax")
    script = r"""
import json
from train.distribute import pick_devices
errors = []
for devices, batch in ((2, 15), (3, 16)):
    try:
        pick_devices(devices, batch)
    except ValueError as err:
        errors.append(str(err))
print(json.dumps({"errors": errors, "all": pick_devices(0, 16)}))
"""
    result = run_under_jax(script, env=TWO_CPUS)
    assert result["all"] == ["cpu:0", "cpu:1"]
    assert len(result["errors"]) == 2
    assert result["errors"][0].startswith("batch_size: 15") and result["errors"][1].startswith("devices: 3")
