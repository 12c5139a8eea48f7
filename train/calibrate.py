"""Post-hoc calibration on the validation split, folded into the model: logit adjustment, then
temperature scaling.

    python -m train.calibrate runs/<run>      # writes calibrated.keras + calibration.json
    python -m train.calibrate runs/<run> --no-logit-adjustment    # temperature only
    python -m train.calibrate runs/<run> --zoom 0.86              # for a card with preprocessing.zoom

Class weighting during training moves decisions towards rare classes by a fixed amount. Adding
``tau * log(prior)`` to the logits (Menon et al., "Long-tail learning via logit adjustment",
ICLR 2021) moves them back by a tunable amount. ``tau`` is picked on the validation split
(never the test split) to maximise accuracy + balanced accuracy, then folded into the bias of
the ``head`` conv, so the exported and quantized model carries it with no extra op.

Temperature scaling (Guo et al., "On calibration of modern neural networks", ICML 2017) then
divides the logits by one ``T`` fitted to minimise the validation negative log-likelihood, so
that ``confidence`` means what it says; it never changes the predicted class. ``T`` is folded
into the same conv (kernel and bias divided by ``T``).
"""
from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from device.card import zoom_argument
from device.preprocess import centre_zoom
from train import data as ds
from train.dataset import predict_probs
from train.evaluate import load_run
from train.metrics import classification_report
from train.run import TrainingRun

_log = logging.getLogger(__name__)
TAUS = tuple(np.round(np.arange(0.0, 1.51, 0.05), 2))
TEMPERATURES = tuple(np.exp(np.linspace(np.log(0.25), np.log(8.0), 161)))  # 2.2% apart


def adjust(probs: np.ndarray, log_prior: np.ndarray, tau: float, temperature: float = 1.0) -> np.ndarray:
    """Softmax of ``(log(probs) + tau * log_prior) / temperature``."""
    return softmax((np.log(np.clip(probs, 1e-12, 1.0)) + tau * log_prior) / temperature)


def choose_tau(probs: np.ndarray, labels: np.ndarray, log_prior: np.ndarray, codes, taus=TAUS) -> tuple[float, list]:
    """The tau maximising accuracy + balanced accuracy (ties: the smallest tau), and every tau's scores
    (with each class's recall, to see what a tau costs the rare classes)."""
    table = []
    for tau in taus:
        rep = classification_report(adjust(probs, log_prior, tau), labels, codes)
        table.append({"tau": float(tau), "accuracy": rep["accuracy"], "balanced_accuracy": rep["balanced_accuracy"],
                      "recall": {code: row["recall"] for code, row in rep["per_class"].items()}})
    best = max(table, key=lambda row: (row["accuracy"] + row["balanced_accuracy"], -row["tau"]))
    return best["tau"], table


@dataclass(frozen=True)
class OperatingPoint:
    bias: float
    accuracy: float
    balanced_accuracy: float
    recall: float  # of the favoured class


def operating_point(probs: np.ndarray, labels: np.ndarray, codes: tuple[str, ...], code: str,
                    bias: float) -> OperatingPoint:
    """Scores of the arg-max of ``log(probs)`` with ``bias`` added to class ``code`` (the same as
    multiplying its probability by ``exp(bias)``)."""
    favour = np.array([c == code for c in codes], dtype=np.float64)
    report = classification_report(adjust(probs, favour, bias), labels, codes)
    if report["per_class"][code]["support"] == 0:
        raise ValueError(f"class {code!r} has no images in this split")
    return OperatingPoint(bias=float(bias), accuracy=report["accuracy"],
                          balanced_accuracy=report["balanced_accuracy"], recall=report["per_class"][code]["recall"])


def nll(logits: np.ndarray, labels: np.ndarray) -> float:
    z = logits - logits.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-log_p[np.arange(len(labels)), labels].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray, temperatures=TEMPERATURES) -> float:
    """The ``T`` (from a log-spaced grid) minimising the NLL of ``softmax(logits / T)``."""
    if len(labels) == 0:
        raise ValueError("temperature scaling: no validation images")
    return float(min(temperatures, key=lambda t: nll(logits / t, labels)))


def fold_into_head(model, *, bias_shift: np.ndarray, temperature: float) -> None:
    """Make the ``head`` conv compute ``(logits + bias_shift) / temperature``."""
    if temperature <= 0:
        raise ValueError(f"temperature: {temperature} must be above 0")
    head = model.get_layer("head")
    kernel, bias = head.get_weights()
    bias = bias + bias_shift.astype(bias.dtype)
    head.set_weights([kernel / temperature, bias / temperature])


def calibrate_run(run_dir: Path, *, data: Path | None = None, logit_adjustment: bool = True,
                  temperature: bool = True, zoom: float = 1.0, given_tau: float | None = None,
                  given_temperature: float | None = None) -> dict:
    """``zoom``: the centre zoom the model card will ask for (``quantize --zoom``), so that tau and
    T are fitted on the views the device will show the model. ``given_tau`` / ``given_temperature``
    are folded in as they are instead of being fitted: how a refit (``train --refit``, whose val
    split was training data) takes the values its validated run picked."""
    run = TrainingRun.load(run_dir)
    tau_fitted = logit_adjustment and given_tau is None
    t_fitted = temperature and given_temperature is None
    if tau_fitted or t_fitted:
        ds.refuse_val_fit(run.meta.split, str(run.path), "fit a calibration", "--tau and --temperature")
    counts = np.array(list(run.meta.split["counts"]["train"].values()), dtype=np.float64)
    log_prior = np.log(np.maximum(counts, 1) / counts.sum())
    summary = {"method": [], "val": {}, "zoom": zoom}
    tau = given_tau if logit_adjustment and given_tau is not None else 0.0
    t = given_temperature if temperature and given_temperature is not None else 1.0
    if given_tau is not None or given_temperature is not None:
        summary["method"].append(f"given, not fitted on val: tau {tau}, T {t} (the validated run's values)")
    if not (tau_fitted or t_fitted):
        model = run.load_model("best")
    else:
        val = load_run(run_dir, split="val", checkpoint="best", data=data)
        model = val.model
        codes = tuple(run.meta.split["counts"]["train"])
        pixels = np.stack([centre_zoom(p, zoom) for p in val.pixels]) if zoom != 1.0 else val.pixels
        probs = predict_probs(model, pixels, *val.norm)
        if tau_fitted:
            tau, table = choose_tau(probs, val.labels, log_prior, codes)
            summary["method"].append("logit adjustment tau*log(train prior), tau chosen on the val split to "
                                     "maximise accuracy + balanced_accuracy")
            summary["val"]["tau"] = table
            before = next(row for row in table if row["tau"] == 0.0)
            after = next(row for row in table if row["tau"] == tau)
            _log.info("tau %.2f: val accuracy %.4f -> %.4f, balanced accuracy %.4f -> %.4f", tau,
                      before["accuracy"], after["accuracy"], before["balanced_accuracy"], after["balanced_accuracy"])
        if t_fitted:
            logits = np.log(np.clip(probs, 1e-12, 1.0)) + tau * log_prior
            t = fit_temperature(logits, val.labels)
            ece_before = classification_report(adjust(probs, log_prior, tau), val.labels, codes)["ece"]
            ece_after = classification_report(adjust(probs, log_prior, tau, t), val.labels, codes)["ece"]
            summary["method"].append("temperature scaling, T fitted on the val split (minimum NLL)")
            summary["val"]["temperature"] = {"nll_before": nll(logits, val.labels),
                                             "nll_after": nll(logits / t, val.labels),
                                             "ece_before": ece_before, "ece_after": ece_after}
            _log.info("temperature %.3f: val NLL %.4f -> %.4f, ECE %.4f -> %.4f", t, nll(logits, val.labels),
                      nll(logits / t, val.labels), ece_before, ece_after)
    fold_into_head(model, bias_shift=tau * log_prior, temperature=t)
    model.save(Path(run_dir) / "calibrated.keras")
    summary.update(tau=tau, temperature=t)
    (Path(run_dir) / "calibration.json").write_text(json.dumps(summary, indent=2))
    return summary


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m train.calibrate", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--data", type=Path, default=None, help="dataset root (default: the run's)")
    parser.add_argument("--no-logit-adjustment", action="store_true", help="temperature scaling only")
    parser.add_argument("--no-temperature", action="store_true", help="logit adjustment only")
    parser.add_argument("--zoom", type=zoom_argument, default=1.0,
                        help="fit on val images centre-zoomed as the card will ask (quantize --zoom)")
    parser.add_argument("--tau", type=float, default=None,
                        help="fold this tau in instead of fitting one on val (a refit: its validated run's tau)")
    parser.add_argument("--temperature", type=float, default=None,
                        help="fold this T in instead of fitting one on val (a refit: its validated run's T)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        summary = calibrate_run(args.run_dir, data=args.data, logit_adjustment=not args.no_logit_adjustment,
                                temperature=not args.no_temperature, zoom=args.zoom, given_tau=args.tau,
                                given_temperature=args.temperature)
    except ValueError as err:
        parser.error(str(err))
    print(f"tau {summary['tau']:.2f}, temperature {summary['temperature']:.3f}; "
          f"wrote {args.run_dir / 'calibrated.keras'}")


if __name__ == "__main__":
    main()
