"""The accuracy gate: thresholds, the report, and the CLI refusing a broken quantization."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

import quantize.pipeline
from quantize.__main__ import main
from quantize.gate import GateError, GateThresholds, check, compare, markdown_report

CODES = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")


def _confident(pred: np.ndarray) -> np.ndarray:
    probs = np.full((len(pred), len(CODES)), 0.02)
    probs[np.arange(len(pred)), pred] = 0.88
    return probs


@pytest.fixture
def labels() -> np.ndarray:
    return np.arange(100) % len(CODES)


def test_identical_models_pass(labels):
    probs = _confident(labels)
    result = compare(probs, probs.copy(), labels, CODES, GateThresholds())
    assert result.passed and result.agreement == 1.0 and result.accuracy_drop == 0.0
    check(result, name="same")


def test_disagreement_below_threshold_fails(labels):
    int8_pred = labels.copy()
    int8_pred[:2] = (labels[:2] + 1) % len(CODES)  # 98% agreement, 2 points less accurate
    result = compare(_confident(labels), _confident(int8_pred), labels, CODES,
                     GateThresholds(max_drop=5.0, min_agreement=0.99))
    assert result.agreement == pytest.approx(0.98)
    assert result.accuracy_drop == pytest.approx(2.0)
    assert len(result.failures) == 1 and "agreement" in result.failures[0]
    with pytest.raises(GateError, match="agreement 98.00% is below 99.00%"):
        check(result, name="m")


def test_accuracy_drop_above_threshold_fails(labels):
    int8_pred = labels.copy()
    int8_pred[:2] = (labels[:2] + 1) % len(CODES)
    result = compare(_confident(labels), _confident(int8_pred), labels, CODES,
                     GateThresholds(max_drop=1.0, min_agreement=0.9))
    assert [f for f in result.failures if "points below" in f]
    assert not [f for f in result.failures if "agreement" in f]


def test_int8_better_than_float_is_no_drop(labels):
    float_pred = labels.copy()
    float_pred[:1] = (labels[:1] + 1) % len(CODES)
    result = compare(_confident(float_pred), _confident(labels), labels, CODES, GateThresholds())
    assert result.accuracy_drop == pytest.approx(-1.0)
    assert result.passed  # 99% agreement, accuracy up


def test_empty_split_is_refused():
    with pytest.raises(GateError, match="empty"):
        compare(np.zeros((0, 7)), np.zeros((0, 7)), np.zeros(0, int), CODES, GateThresholds())


def test_report_lists_both_models_side_by_side(labels):
    int8_pred = labels.copy()
    int8_pred[:5] = (labels[:5] + 1) % len(CODES)
    result = compare(_confident(labels), _confident(int8_pred), labels, CODES, GateThresholds())
    text = markdown_report(result, name="m", facts={"size": "1 KiB"})
    assert "| metric | float | int8 |" in text
    assert "| accuracy | 100.00% | 95.00% |" in text
    assert "recall mel" in text and "- size: 1 KiB" in text
    assert "**FAILED**" in text and "not a diagnosis" in text


@pytest.mark.parametrize("breakage", ["scaled_x100", "constant"])
def test_cli_refuses_broken_representative_set(breakage, tiny_run_dir, fixture_dir, tmp_path, monkeypatch,
                                               capsys):
    run_dir = shutil.copytree(tiny_run_dir, tmp_path / "run")
    real = quantize.pipeline.representative_set

    def broken(*args, **kwargs):
        rep = real(*args, **kwargs)
        # x100: calibration sees a range 100 times too wide, so real inputs collapse onto a few
        # int8 levels. constant: calibration sees a single value and learns no range at all.
        return rep * 100.0 if breakage == "scaled_x100" else np.zeros_like(rep)

    monkeypatch.setattr(quantize.pipeline, "representative_set", broken)
    out = tmp_path / "models"
    code = main([str(run_dir), "--name", "broken", "--out", str(out), "--data", str(fixture_dir),
                 "--representative", "16", "--split", "train", "--threads", "1"])
    assert code == 1
    err = capsys.readouterr().err
    # Which threshold trips first depends on the tiny model; either names its reason.
    assert "int8 gate failed for broken" in err
    assert "agreement" in err or "points below float" in err
    assert not (out / "broken").exists()
    assert list(out.iterdir()) == []  # the staging folder is gone too
    assert "**FAILED**" in (run_dir / "quantize-broken-REJECTED.md").read_text()


def _refit_copy(run_dir, dest):
    """The run as ``train --refit`` records it: val was training data."""
    import json

    run_dir = shutil.copytree(run_dir, dest)
    meta = json.loads((run_dir / "meta.json").read_text())
    meta["split"]["fit_on"] = ["train", "val"]
    (run_dir / "meta.json").write_text(json.dumps(meta))
    return run_dir


def test_a_refit_keeps_a_given_referral_threshold_and_refuses_one_picked_on_val(tiny_run_dir, fixture_dir, tmp_path,
                                                                              capsys):
    from device.card import ModelCard

    run_dir, out = _refit_copy(tiny_run_dir, tmp_path / "run"), tmp_path / "models"
    argv = [str(run_dir), "--name", "refit", "--out", str(out), "--data", str(fixture_dir), "--representative", "16",
            "--threads", "1", "--max-drop", "100", "--min-agreement", "0"]
    assert main(argv) != 0
    assert "--referral-threshold" in capsys.readouterr().err and not (out / "refit").exists()

    assert main([*argv, "--referral-threshold", "0.3", "--referral-from", "val, its validated run"]) == 0
    referral = ModelCard.load(out / "refit" / "card.json").referral
    assert (referral.threshold, referral.picked_on) == (0.3, "val, its validated run")
