"""Evaluation of a trained run: metrics.json, plots and the Markdown report (train/evaluate.py)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from device.card import DISCLAIMER
from train import data as ds
from train import plots
from train.evaluate import eval_dir, evaluate_run, load_run, main, read_history

PNG = b"\x89PNG\r\n\x1a\n"
FIGURES = ("confusion_matrix.png", "roc.png", "training_curves.png")


def _is_png(path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == PNG and path.stat().st_size > 5000


def test_evaluate_run_writes_everything(trained_run, fixture_dir):
    report = evaluate_run(trained_run)
    out = trained_run / "eval"
    assert all(_is_png(out / name) for name in FIGURES)
    metrics = json.loads((out / "metrics.json").read_text())
    test_records = ds.select(ds.read_split(trained_run / "split.csv", fixture_dir), "test")
    assert (metrics["split"], metrics["checkpoint"], metrics["tta"]) == ("test", "best", False)
    assert metrics["n"] == len(test_records) == report["n"]
    cm = np.array(metrics["confusion_matrix"])
    assert cm.sum() == metrics["n"]
    assert cm.sum(axis=1).tolist() == [sum(r.dx == c for r in test_records) for c in ds.CLASS_CODES]
    assert metrics["accuracy"] == pytest.approx(np.trace(cm) / cm.sum())
    assert set(metrics["per_class"]) == set(ds.CLASS_CODES)
    assert metrics["model"]["params"] > 0 and metrics["arch"] == "seed_cnn"

    text = (out / "report.md").read_text()
    assert DISCLAIMER in text and ds.CITATION in text
    assert all(f"]({name})" in text for name in FIGURES)
    assert all(f"| {code} |" in text for code in ds.CLASS_CODES)
    assert f"| balanced accuracy (mean recall) | {metrics['balanced_accuracy']:.4f} |" in text
    assert f"| expected calibration error (15 bins) | {metrics['ece']:.4f} |" in text


def test_cli_tta_and_last_checkpoint_go_to_their_own_folder(trained_run):
    report = main([str(trained_run), "--tta", "--checkpoint", "last", "--split", "val"])
    out = eval_dir(trained_run, split="val", checkpoint="last", tta=True)
    assert out.name == "eval-val-last-tta"
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["split"], metrics["checkpoint"], metrics["tta"]) == ("val", "last", True)
    assert metrics["n"] == report["n"]
    assert all(_is_png(out / name) for name in FIGURES)


def test_load_run_errors(trained_run, tmp_path):
    with pytest.raises(FileNotFoundError, match="missing config.yaml"):
        load_run(tmp_path)
    with pytest.raises(ValueError, match="split: unknown 'holdout'"):
        load_run(trained_run, split="holdout")
    with pytest.raises(ValueError, match="checkpoint: unknown 'final'"):
        load_run(trained_run, checkpoint="final")


def test_load_run_gives_the_split_at_the_model_input(trained_run, fixture_dir):
    run = load_run(trained_run, split="val", checkpoint="last", data=fixture_dir)
    assert run.pixels.shape == (len(run.records), 56, 72, 3) and run.pixels.dtype == np.uint8
    assert all(r.split == "val" for r in run.records)
    assert run.labels.tolist() == [r.label for r in run.records]


def test_read_history(trained_run, tmp_path):
    history = read_history(trained_run / "history.csv")
    assert history["epoch"] == [0.0, 1.0, 2.0]
    assert {"loss", "accuracy", "lr", "val_balanced_accuracy"} <= set(history)
    (tmp_path / "h.csv").write_text("epoch,loss,val_loss\n0,2.5,NA\n1,2.0,1.9\n")
    partial = read_history(tmp_path / "h.csv")  # CSVLogger writes NA for a metric an epoch lacked
    assert partial["loss"] == [2.5, 2.0]
    assert np.isnan(partial["val_loss"][0]) and partial["val_loss"][1] == 1.9


def test_plots_write_files_for_edge_cases(tmp_path):
    # a class absent from y_true, and a history with missing columns
    y = np.array([0, 1, 1, 2])
    probs = np.random.default_rng(0).dirichlet(np.ones(4), size=4)
    assert _is_png(plots.plot_roc(y, probs, ("a", "b", "c", "d"), tmp_path / "roc.png"))
    assert _is_png(plots.plot_confusion_matrix(np.zeros((4, 4), int), "abcd", tmp_path / "sub" / "cm.png"))
    assert _is_png(plots.plot_training_curves({"epoch": [0, 1], "loss": [2.0, 1.5]}, tmp_path / "curves.png"))
