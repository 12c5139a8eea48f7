import json
import shutil

import keras
import numpy as np

from train.calibrate import adjust, calibrate_run, choose_tau
from train.dataset import predict_probs
from train.evaluate import load_run


def test_adjust_is_softmax_of_shifted_log_probs():
    probs = np.array([[0.7, 0.2, 0.1]])
    log_prior = np.log(np.array([0.8, 0.1, 0.1]))
    out = adjust(probs, log_prior, 1.0)
    expected = probs * np.exp(log_prior)
    np.testing.assert_allclose(out, expected / expected.sum(), rtol=1e-9)
    np.testing.assert_allclose(adjust(probs, log_prior, 0.0), probs, rtol=1e-9)


def test_choose_tau_prefers_the_prior_when_rare_classes_are_overcalled():
    # The model calls every sample of the common class 0 "class 1" by a small margin.
    labels = np.array([0] * 8 + [1, 2])
    probs = np.array([[0.45, 0.55, 0.0]] * 8 + [[0.1, 0.9, 0.0], [0.1, 0.0, 0.9]]) + 1e-3
    probs /= probs.sum(axis=1, keepdims=True)
    log_prior = np.log(np.array([0.8, 0.1, 0.1]))
    tau, table = choose_tau(probs, labels, log_prior, ("a", "b", "c"))
    assert tau > 0
    best = next(r for r in table if r["tau"] == tau)
    assert best["accuracy"] == 1.0 and table[0]["accuracy"] == 0.2


def test_calibrated_checkpoint_carries_the_adjustment(trained_run, tmp_path):
    trained_run = shutil.copytree(trained_run, tmp_path / "run")
    summary = calibrate_run(trained_run)
    assert (trained_run / "calibrated.keras").is_file()
    assert json.loads((trained_run / "calibration.json").read_text())["tau"] == summary["tau"]
    run = load_run(trained_run, split="val", checkpoint="best")
    counts = np.array(list(run.meta["split"]["counts"]["train"].values()), dtype=np.float64)
    log_prior = np.log(np.maximum(counts, 1) / counts.sum())
    calibrated = keras.models.load_model(trained_run / "calibrated.keras", compile=False)
    expected = adjust(predict_probs(run.model, run.pixels, run.mean, run.std), log_prior, summary["tau"])
    np.testing.assert_allclose(predict_probs(calibrated, run.pixels, run.mean, run.std), expected, atol=1e-4)
