"""End-to-end training on the fixture through ``train.train.main``: run directory, loss, resume."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import keras
import numpy as np
import pytest
import yaml

from train import data as ds
from train.train import load_config, main

RUN_FILES = ("config.yaml", "split.csv", "meta.json", "best.keras", "last.keras", "state.json", "history.csv",
             "train.log")


def _history(run_dir: Path) -> list[dict]:
    with open(run_dir / "history.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _iterations(checkpoint: Path) -> int:
    model = keras.models.load_model(checkpoint)
    return int(keras.ops.convert_to_numpy(model.optimizer.iterations))


def test_run_directory_layout(trained_run, fixture_dir):
    assert all((trained_run / name).is_file() for name in RUN_FILES)
    cfg = load_config(trained_run)
    assert (cfg.arch, cfg.height, cfg.width, cfg.epochs, cfg.augment) == ("seed_cnn", 56, 72, 3, False)
    assert yaml.safe_load((trained_run / "config.yaml").read_text())["data"] == str(fixture_dir)
    assert json.loads((trained_run / "state.json").read_text())["epoch"] == 2
    records = ds.read_split(trained_run / "split.csv", fixture_dir)
    lesion_splits = {}
    for r in records:
        lesion_splits.setdefault(r.lesion_id, set()).add(r.split)
    assert all(len(s) == 1 for s in lesion_splits.values())


def test_normalization_comes_from_the_training_split(trained_run, fixture_dir, tmp_path):
    meta = json.loads((trained_run / "meta.json").read_text())
    train_records = ds.select(ds.read_split(trained_run / "split.csv", fixture_dir), "train")
    mean, std = ds.channel_stats(ds.load_pixels(train_records, 56, 72, tmp_path))
    assert meta["normalization"] == {"mean": mean, "std": std, "colour": "none"}
    assert meta["input"] == {"height": 56, "width": 72}
    assert meta["model"]["params"] == keras.models.load_model(trained_run / "best.keras").count_params()


def test_short_training_lowers_the_loss(trained_run):
    history = _history(trained_run)
    assert [int(row["epoch"]) for row in history] == [0, 1, 2]
    losses = [float(row["loss"]) for row in history]
    assert losses[-1] < losses[0] - 0.1, losses
    assert all(np.isfinite(float(row["val_balanced_accuracy"])) for row in history)


def test_resume_continues_where_it_stopped(tiny_argv, fixture_dir, tmp_path):
    run_dir = main(tiny_argv(tmp_path, "--epochs", "1", "--no-evaluate"))
    assert json.loads((run_dir / "state.json").read_text())["epoch"] == 0
    n_train = len(ds.select(ds.read_split(run_dir / "split.csv", fixture_dir), "train"))
    steps = math.ceil(n_train / 16)  # batch size 16
    assert _iterations(run_dir / "last.keras") == steps
    split_before = (run_dir / "split.csv").read_text()

    assert main(["--resume", str(run_dir), "--epochs", "2", "--no-evaluate"]) == run_dir
    assert [int(row["epoch"]) for row in _history(run_dir)] == [0, 1]
    assert json.loads((run_dir / "state.json").read_text())["epoch"] == 1
    assert _iterations(run_dir / "last.keras") == 2 * steps  # the optimizer continued, not restarted
    assert (run_dir / "split.csv").read_text() == split_before
    assert len(list((tmp_path / "runs").iterdir())) == 1  # no second run directory


def _kernels(model: keras.Model) -> list[np.ndarray]:
    return [keras.ops.convert_to_numpy(w) for w in model.weights if "kernel" in w.path]


def test_warm_start_keeps_weights_split_and_normalization(trained_run, tiny_argv, tmp_path):
    source = trained_run / "best.keras"
    # Learning rate 0: training leaves the kernels alone, so they must be the checkpoint's.
    run_dir = main(tiny_argv(tmp_path, "--init-from", str(source), "--epochs", "1", "--max-lr", "0",
                             "--no-evaluate"))
    assert run_dir.parent == tmp_path / "runs" and run_dir != trained_run
    assert (run_dir / "split.csv").read_text() == (trained_run / "split.csv").read_text()
    meta, source_meta = (json.loads((d / "meta.json").read_text()) for d in (run_dir, trained_run))
    assert meta["normalization"] == source_meta["normalization"]
    assert meta["init_from"] == str(source)
    warm = keras.models.load_model(run_dir / "last.keras")
    for got, want in zip(_kernels(warm), _kernels(keras.models.load_model(source)), strict=True):
        np.testing.assert_array_equal(got, want)
    assert _iterations(run_dir / "last.keras") > 0  # a fresh optimizer took this run's steps


def test_a_colour_constancy_run_normalizes_after_it_and_runs_started_from_it_keep_it(tiny_argv, fixture_dir, tmp_path):
    from device.preprocess import colour_constancy

    run_dir = main(tiny_argv(tmp_path, "--epochs", "1", "--colour", "shades_of_grey", "--no-evaluate"))
    train_records = ds.select(ds.read_split(run_dir / "split.csv", fixture_dir), "train")
    mean, std = ds.channel_stats(colour_constancy(ds.load_pixels(train_records, 56, 72, tmp_path), "shades_of_grey"))
    assert json.loads((run_dir / "meta.json").read_text())["normalization"] == {
        "mean": mean, "std": std, "colour": "shades_of_grey"}
    child = main(tiny_argv(tmp_path, "--init-from", str(run_dir / "best.keras"), "--epochs", "1", "--no-evaluate"))
    assert json.loads((child / "meta.json").read_text())["normalization"]["colour"] == "shades_of_grey"


def test_a_warm_start_refuses_a_colour_its_source_was_not_trained_with(trained_run, tiny_argv, tmp_path):
    argv = tiny_argv(tmp_path, "--init-from", str(trained_run / "best.keras"), "--colour", "shades_of_grey",
                     "--no-evaluate")
    with pytest.raises(ValueError, match="colour: 'shades_of_grey', but init_from's run was trained with 'none'"):
        main(argv)


def test_warm_start_refuses_another_architecture(trained_run, tiny_argv, tmp_path):
    argv = tiny_argv(tmp_path, "--init-from", str(trained_run / "best.keras"), "--arch", "edgenet", "--no-evaluate")
    with pytest.raises(ValueError, match=r"init_from: .*best.keras is seed_cnn at 56x72, not edgenet at 56x72"):
        main(argv)


def test_warm_start_names_a_missing_checkpoint(tiny_argv, tmp_path):
    with pytest.raises(FileNotFoundError, match="init_from: .*nowhere.keras not found"):
        main(tiny_argv(tmp_path, "--init-from", str(tmp_path / "nowhere.keras"), "--no-evaluate"))


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[2] / "train" / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_recipe_is_a_valid_config(path):
    from train.config import TrainConfig

    cfg = TrainConfig(**yaml.safe_load(path.read_text()))
    assert cfg.epochs > 0 and cfg.name


def test_an_unknown_colour_is_refused_naming_the_field():
    from train.config import TrainConfig

    with pytest.raises(ValueError, match="colour: unknown 'grey_world'"):
        TrainConfig(colour="grey_world")


def test_an_unknown_bn_mode_is_refused_naming_the_field():
    from train.config import TrainConfig

    with pytest.raises(ValueError, match="bn_mode: unknown 'afine'"):
        TrainConfig(bn_mode="afine")


def test_the_weight_average_is_scored_and_kept_as_best_while_training_goes_on_raw(tiny_argv, tmp_path):
    run_dir = main(tiny_argv(tmp_path, "--epochs", "1", "--ema-momentum", "0.5", "--no-evaluate"))
    last, best = (keras.models.load_model(run_dir / name) for name in ("last.keras", "best.keras"))
    averages = {v.path.split("/", 1)[1].removesuffix("_average"): keras.ops.convert_to_numpy(v)
                for v in last.optimizer.variables if v.path.endswith("_average")}
    assert len(averages) == len(best.trainable_weights) > 0
    moved = 0
    for raw, kept in zip(last.trainable_weights, best.trainable_weights, strict=True):
        average = averages[raw.path.replace("/", "_")]
        np.testing.assert_allclose(keras.ops.convert_to_numpy(kept), average, atol=1e-6)
        moved += not np.allclose(keras.ops.convert_to_numpy(raw), average)
    assert moved > len(averages) // 2  # last.keras keeps the raw weights to resume from

    assert main(["--resume", str(run_dir), "--epochs", "2", "--no-evaluate"]) == run_dir
    assert keras.models.load_model(run_dir / "last.keras").optimizer.use_ema


def test_an_ema_momentum_outside_the_unit_interval_is_refused_naming_the_field():
    from train.config import TrainConfig

    with pytest.raises(ValueError, match=r"ema_momentum: 1.0 is outside \[0, 1\)"):
        TrainConfig(ema_momentum=1.0)


def test_a_refit_learns_from_train_and_val_and_stops_inside_its_schedule(tiny_argv, fixture_dir, tmp_path):
    from train.schedules import cosine_lr

    run_dir = main(tiny_argv(tmp_path, "--refit", "true", "--epochs", "3", "--stop-epoch", "2",
                             "--lr-policy", "cosine", "--base-lr", "0", "--no-evaluate"))
    records = ds.read_split(run_dir / "split.csv", fixture_dir)
    steps = math.ceil((len(ds.select(records, "train")) + len(ds.select(records, "val"))) / 16)
    assert _iterations(run_dir / "last.keras") == 2 * steps  # val images were trained on, and only 2 epochs ran
    assert ds.learned_from_val(json.loads((run_dir / "meta.json").read_text())["split"])
    history = _history(run_dir)
    assert [int(row["epoch"]) for row in history] == [0, 1]
    # The rate of the last step is the 3-epoch schedule's, not a 2-epoch one's (which would end at 0).
    want = cosine_lr(2 * steps - 1, max_lr=3e-3, total_steps=3 * steps, warmup_steps=steps)
    assert float(history[-1]["lr"]) == pytest.approx(want, rel=1e-5) and want > 1e-4
    # Nothing was left to pick an epoch on: best.keras is the model the run stopped at.
    for got, want in zip(_kernels(keras.models.load_model(run_dir / "best.keras")),
                         _kernels(keras.models.load_model(run_dir / "last.keras")), strict=True):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("kwargs, message", [
    ({"epochs": 3, "stop_epoch": 4}, r"stop_epoch: 4 is outside \[0, epochs=3\]"),
    ({"refit": True}, "stop_epoch: a refit has no validation split"),
])
def test_a_stop_epoch_outside_the_schedule_or_missing_from_a_refit_is_refused(kwargs, message):
    from train.config import TrainConfig

    with pytest.raises(ValueError, match=message):
        TrainConfig(**kwargs)
