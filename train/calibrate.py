"""Post-hoc logit adjustment: trade accuracy against balanced accuracy on the validation split.

    python -m train.calibrate runs/<run>      # writes calibrated.keras + calibration.json

Class weighting during training moves decisions towards rare classes by a fixed amount. Adding
``tau * log(prior)`` to the logits (Menon et al., "Long-tail learning via logit adjustment",
ICLR 2021) moves them back by a tunable amount. ``tau`` is picked on the validation split
(never the test split) to maximise accuracy + balanced accuracy, then folded into the bias of
the ``head`` conv, so the exported and quantized model carries it with no extra op.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

from train.dataset import predict_probs
from train.evaluate import load_run
from train.metrics import classification_report

_log = logging.getLogger(__name__)
TAUS = tuple(np.round(np.arange(0.0, 1.51, 0.05), 2))


def adjust(probs: np.ndarray, log_prior: np.ndarray, tau: float) -> np.ndarray:
    """Softmax of ``log(probs) + tau * log_prior``."""
    logits = np.log(np.clip(probs, 1e-12, 1.0)) + tau * log_prior
    logits -= logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


def choose_tau(probs: np.ndarray, labels: np.ndarray, log_prior: np.ndarray, codes, taus=TAUS) -> tuple[float, list]:
    """The tau maximising accuracy + balanced accuracy (ties: the smallest tau), and every tau's scores."""
    table = []
    for tau in taus:
        rep = classification_report(adjust(probs, log_prior, tau), labels, codes)
        table.append({"tau": float(tau), "accuracy": rep["accuracy"], "balanced_accuracy": rep["balanced_accuracy"]})
    best = max(table, key=lambda row: (row["accuracy"] + row["balanced_accuracy"], -row["tau"]))
    return best["tau"], table


def calibrate_run(run_dir: Path, *, data: Path | None = None) -> dict:
    run = load_run(run_dir, split="val", checkpoint="best", data=data)
    counts = np.array(list(run.meta["split"]["counts"]["train"].values()), dtype=np.float64)
    log_prior = np.log(np.maximum(counts, 1) / counts.sum())
    codes = tuple(run.meta["split"]["counts"]["train"])
    probs = predict_probs(run.model, run.pixels, run.mean, run.std)
    tau, table = choose_tau(probs, run.labels, log_prior, codes)
    head = run.model.get_layer("head")
    kernel, bias = head.get_weights()
    head.set_weights([kernel, bias + (tau * log_prior).astype(bias.dtype)])
    run.model.save(Path(run_dir) / "calibrated.keras")
    summary = {"method": "logit adjustment tau*log(train prior), tau chosen on the val split",
               "tau": tau, "objective": "accuracy + balanced_accuracy", "val": table}
    (Path(run_dir) / "calibration.json").write_text(json.dumps(summary, indent=2))
    before = next(row for row in table if row["tau"] == 0.0)
    after = next(row for row in table if row["tau"] == tau)
    _log.info("tau %.2f: val accuracy %.4f -> %.4f, balanced accuracy %.4f -> %.4f", tau,
              before["accuracy"], after["accuracy"], before["balanced_accuracy"], after["balanced_accuracy"])
    return summary


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m train.calibrate", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--data", type=Path, default=None, help="dataset root (default: the run's)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    summary = calibrate_run(args.run_dir, data=args.data)
    print(f"tau {summary['tau']:.2f}; wrote {args.run_dir / 'calibrated.keras'}")


if __name__ == "__main__":
    main()
