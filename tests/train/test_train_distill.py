"""Distillation (train.distill): softened teacher targets, their mix into the batches, and a student
trained from the shared fixture run through the real CLI."""
from __future__ import annotations

import json

import numpy as np
import pytest

from train import data as ds
from train.dataset import Batches, predict_probs
from train.distill import soften
from train.run import TrainingRun
from train.train import main


def test_soften_by_hand():
    probs = np.array([[0.7, 0.2, 0.1]])
    np.testing.assert_allclose(soften(probs, 1.0), probs, rtol=1e-6)
    # T = 2: softmax(log p / 2) is proportional to sqrt(p)
    root = np.sqrt(probs)
    np.testing.assert_allclose(soften(probs, 2.0), root / root.sum(), rtol=1e-6)
    with pytest.raises(ValueError, match="distill_temperature"):
        soften(probs, 0.0)


def test_batches_mix_soft_targets_and_weigh_by_the_true_label():
    pixels = np.zeros((2, 4, 4, 3), np.uint8)
    labels = np.array([0, 1])
    soft = np.array([[0.0, 1.0, 0.0], [0.0, 1.0, 0.0]], np.float32)  # the teacher says class 1 twice
    batches = Batches(pixels, labels, batch_size=2, mean=[0, 0, 0], std=[1, 1, 1], num_classes=3, shuffle=False,
                      class_weight={0: 3.0, 1: 0.5, 2: 1.0}, soft_targets=soft, soft_weight=0.75)
    _, y, w = batches[0]
    np.testing.assert_allclose(y, [[0.25, 0.75, 0.0], [0.0, 1.0, 0.0]])
    # image 0's target peaks at class 1, yet it keeps its own class's weight
    np.testing.assert_allclose(w, [3.0, 0.5])


def test_batches_refuse_targets_of_the_wrong_shape():
    with pytest.raises(ValueError, match=r"soft_targets: shape \(3, 3\), expected \(2, 3\)"):
        Batches(np.zeros((2, 4, 4, 3), np.uint8), np.array([0, 1]), batch_size=2, mean=[0] * 3, std=[1] * 3,
                num_classes=3, soft_targets=np.zeros((3, 3)))


def test_student_learns_from_the_teacher_on_its_split(trained_run, tiny_argv, fixture_dir, tmp_path):
    teacher = trained_run / "best.keras"
    student = main(tiny_argv(tmp_path, "--teacher", str(teacher), "--distill-weight", "0.6",
                             "--distill-temperature", "3", "--epochs", "1", "--no-evaluate"))
    assert (student / "split.csv").read_text() == (trained_run / "split.csv").read_text()
    meta = json.loads((student / "meta.json").read_text())
    assert meta["distillation"] == {"teacher": str(teacher), "weight": 0.6, "temperature": 3.0}

    run = TrainingRun.load(trained_run)
    records = ds.select(ds.read_split(trained_run / "split.csv", fixture_dir), "train")
    expected = soften(predict_probs(run.load_model("best"), ds.load_pixels(records, *run.input_hw),
                                    *run.normalization), 3.0)
    np.testing.assert_allclose(np.load(student / "teacher_targets.npy"), expected, atol=1e-5)
    assert (student / "best.keras").is_file()


def test_a_missing_teacher_is_named(tiny_argv, tmp_path):
    with pytest.raises(FileNotFoundError, match="teacher: .*nowhere.keras not found"):
        main(tiny_argv(tmp_path, "--teacher", str(tmp_path / "nowhere.keras"), "--no-evaluate"))
