import json
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest

from device.preprocess import centre_zoom
from train.calibrate import (
    adjust,
    calibrate_run,
    choose_tau,
    fit_temperature,
    fold_into_head,
    main,
    nll,
    operating_point,
)
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
    counts = np.array(list(run.meta.split["counts"]["train"].values()), dtype=np.float64)
    log_prior = np.log(np.maximum(counts, 1) / counts.sum())
    calibrated = keras.models.load_model(trained_run / "calibrated.keras", compile=False)
    expected = adjust(predict_probs(run.model, run.pixels, run.mean, run.std), log_prior, summary["tau"],
                      summary["temperature"])
    np.testing.assert_allclose(predict_probs(calibrated, run.pixels, run.mean, run.std), expected, atol=1e-4)


def test_calibration_fits_on_the_zoomed_views_the_card_will_ask_for(trained_run, tmp_path):
    trained_run = shutil.copytree(trained_run, tmp_path / "run")
    summary = calibrate_run(trained_run, zoom=0.5)
    run = load_run(trained_run, split="val", checkpoint="best")
    counts = np.array(list(run.meta.split["counts"]["train"].values()), dtype=np.float64)
    log_prior = np.log(np.maximum(counts, 1) / counts.sum())
    tau = summary["tau"]

    def val_nll(pixels):  # what the temperature fit starts from, on these views
        probs = predict_probs(run.model, pixels, run.mean, run.std)
        return nll(np.log(np.clip(probs, 1e-12, 1.0)) + tau * log_prior, run.labels)

    zoomed, plain = val_nll(np.stack([centre_zoom(p, 0.5) for p in run.pixels])), val_nll(run.pixels)
    assert summary["zoom"] == 0.5 and abs(zoomed - plain) > 1e-4
    assert summary["val"]["temperature"]["nll_before"] == pytest.approx(zoomed, abs=1e-6)


def test_a_zoom_outside_the_unit_share_is_refused_before_any_model_loads(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([str(tmp_path / "no-such-run"), "--zoom", "1.5"])
    assert exit_.value.code == 2 and "expected a share in (0, 1], got 1.5" in capsys.readouterr().err


def test_temperature_undoes_overconfidence():
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 1.5, (4000, 5))
    probs = np.exp(true_logits) / np.exp(true_logits).sum(axis=1, keepdims=True)
    labels = np.array([rng.choice(5, p=p) for p in probs])
    t = fit_temperature(true_logits * 3.0, labels)  # a model three times too sure of itself
    assert t == pytest.approx(3.0, rel=0.1)
    assert nll(true_logits * 3.0 / t, labels) < nll(true_logits * 3.0, labels)
    with pytest.raises(ValueError, match="no validation"):
        fit_temperature(np.zeros((0, 5)), np.zeros(0, int))


def test_folding_into_the_head_divides_the_logits():
    inputs = keras.Input((4, 4, 3))
    x = keras.layers.GlobalAveragePooling2D(keepdims=True)(inputs)
    x = keras.layers.Flatten()(keras.layers.Conv2D(3, 1, name="head")(x))
    logits_model = keras.Model(inputs, x)
    model = keras.Model(inputs, keras.layers.Softmax()(x))
    images = np.random.default_rng(1).normal(size=(8, 4, 4, 3)).astype(np.float32)
    logits = logits_model.predict(images, verbose=0)
    shift = np.array([0.5, -1.0, 0.0])
    fold_into_head(model, bias_shift=shift, temperature=2.0)
    z = (logits + shift) / 2.0
    want = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(model.predict(images, verbose=0), want, atol=1e-5)


# Three images of class 0, one of class 1; the class-1 image and one class-0 image are close calls.
PROBS = np.array([[0.9, 0.1], [0.55, 0.45], [0.8, 0.2], [0.6, 0.4]])
LABELS = np.array([0, 0, 0, 1])
CODES = ("nv", "mel")


def test_no_bias_is_the_plain_arg_max():
    point = operating_point(PROBS, LABELS, CODES, "mel", bias=0.0)
    assert point.accuracy == pytest.approx(0.75)
    assert point.recall == 0.0
    assert point.balanced_accuracy == pytest.approx(0.5)


def test_a_bias_moves_close_calls_to_the_favoured_class():
    # log(0.4) + 0.5 > log(0.6) flips image 3 (right); log(0.45) + 0.5 > log(0.55) flips image 1 (wrong).
    point = operating_point(PROBS, LABELS, CODES, "mel", bias=0.5)
    assert point.recall == 1.0
    assert point.accuracy == pytest.approx(0.75)
    assert point.balanced_accuracy == pytest.approx((2 / 3 + 1.0) / 2)


def test_a_class_absent_from_the_split_is_an_error():
    with pytest.raises(ValueError, match="class 'mel' has no images"):
        operating_point(PROBS[:3], LABELS[:3], CODES, "mel", bias=0.0)


def _as_refit(run_dir: Path) -> Path:
    """The run as ``train --refit`` would have recorded it: val learned from, no val rows left to score."""
    meta = json.loads((run_dir / "meta.json").read_text())
    meta["split"]["fit_on"] = ["train", "val"]
    (run_dir / "meta.json").write_text(json.dumps(meta))
    rows = (run_dir / "split.csv").read_text().splitlines()
    (run_dir / "split.csv").write_text("\n".join(r for r in rows if not r.endswith(",val")) + "\n")
    return run_dir


def test_a_refit_takes_the_given_values_and_never_reads_val(trained_run, tmp_path):
    run_dir = _as_refit(shutil.copytree(trained_run, tmp_path / "run"))
    summary = calibrate_run(run_dir, given_tau=0.3, given_temperature=2.0)
    assert (summary["tau"], summary["temperature"], summary["val"]) == (0.3, 2.0, {})
    run = load_run(run_dir, split="test", checkpoint="best")
    counts = np.array(list(run.meta.split["counts"]["train"].values()), dtype=np.float64)
    expected = adjust(predict_probs(run.model, run.pixels, run.mean, run.std), np.log(counts / counts.sum()), 0.3, 2.0)
    calibrated = keras.models.load_model(run_dir / "calibrated.keras", compile=False)
    np.testing.assert_allclose(predict_probs(calibrated, run.pixels, run.mean, run.std), expected, atol=1e-4)


@pytest.mark.parametrize("given", [{}, {"given_tau": 0.3}])
def test_a_refit_refuses_to_fit_anything_on_val(trained_run, tmp_path, given):
    run_dir = _as_refit(shutil.copytree(trained_run, tmp_path / "run"))
    with pytest.raises(ValueError, match="refitted on train \\+ val.*give --tau and --temperature"):
        calibrate_run(run_dir, **given)
    assert not (run_dir / "calibrated.keras").exists()
