"""Evaluate a training run on its own split and write a report.

    python -m train.evaluate runs/<run>                      # test split, best checkpoint
    python -m train.evaluate runs/<run> --tta --checkpoint last

Reads the run directory written by ``train.train`` (config.yaml, meta.json, split.csv,
best.keras/last.keras, history.csv) and writes ``<run>/eval/``: metrics.json,
confusion_matrix.png, roc.png, training_curves.png and report.md. Another split,
checkpoint or TTA goes to ``eval-<split>-<checkpoint>[-tta]/`` so the default report
that quantization and benchmarks read is never overwritten.
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from device.card import DISCLAIMER
from train import data as ds
from train import plots
from train.config import TrainConfig
from train.dataset import predict_probs
from train.metrics import classification_report, json_safe
from train.run import CHECKPOINTS, RunRecord, TrainingRun

_log = logging.getLogger(__name__)


@dataclass
class RunData:
    """A trained run's model with one split's decoded images, ready to predict."""

    run_dir: Path
    config: TrainConfig
    meta: RunRecord
    model: keras.Model
    records: list[ds.Record]
    pixels: np.ndarray  # uint8 (N, H, W, 3) at the model's input size
    labels: np.ndarray  # int64 (N,) indices into ds.CLASS_CODES
    mean: list[float]
    std: list[float]
    colour: str  # device.preprocess.colour_constancy's mode

    @property
    def norm(self) -> tuple[list[float], list[float], str]:
        """The arguments of ``device.preprocess.normalize`` (and ``predict_probs``) after the pixels."""
        return self.mean, self.std, self.colour


def load_run(run_dir: Path, *, split: str = "test", checkpoint: str = "best",
             data: Path | None = None) -> RunData:
    """Model, normalization and ``split``'s images of a run (``data`` overrides the config's root)."""
    run = TrainingRun.load(run_dir)
    records = run.records(split, data)
    if not records:
        raise ValueError(f"{run.path}/split.csv has no {split!r} images")
    mean, std, colour = run.normalization
    return RunData(
        run_dir=run.path,
        config=run.config,
        meta=run.meta,
        model=run.load_model(checkpoint),
        records=records,
        pixels=ds.load_pixels(records, *run.input_hw, Path(run.config.cache_dir)),
        labels=np.array([r.label for r in records], dtype=np.int64),
        mean=mean,
        std=std,
        colour=colour,
    )


def eval_dir(run_dir: Path, *, split: str = "test", checkpoint: str = "best", tta: bool = False) -> Path:
    """Where an evaluation is written: ``eval/`` for the default, a named sibling otherwise."""
    if (split, checkpoint, tta) == ("test", "best", False):
        return Path(run_dir) / "eval"
    return Path(run_dir) / f"eval-{split}-{checkpoint}{'-tta' if tta else ''}"


def read_history(path: Path) -> dict[str, list[float]]:
    """history.csv (Keras CSVLogger) as column -> per-epoch floats."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    columns = rows[0].keys() if rows else []
    return {c: [_float(r[c]) for r in rows] for c in columns}


def _float(text: str | None) -> float:
    """A history cell; CSVLogger writes "NA" for a metric an epoch did not log."""
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def evaluate_run(run_dir: Path, *, split: str = "test", checkpoint: str = "best", tta: bool = False,
                 data: Path | None = None) -> dict:
    """Score a run's checkpoint on a split; write metrics.json, plots and report.md; return the metrics."""
    run = load_run(run_dir, split=split, checkpoint=checkpoint, data=data)
    probs = predict_probs(run.model, run.pixels, *run.norm, tta=tta)
    report = classification_report(probs, run.labels, ds.CLASS_CODES)
    report.update(
        run=run.run_dir.name, arch=run.meta.arch, model=run.meta.model, split=split,
        split_method=run.config.split, checkpoint=checkpoint, tta=tta,
    )
    out = eval_dir(run.run_dir, split=split, checkpoint=checkpoint, tta=tta)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(json_safe(report), indent=2))
    plots.plot_confusion_matrix(report["confusion_matrix"], ds.CLASS_CODES, out / "confusion_matrix.png")
    plots.plot_roc(run.labels, probs, ds.CLASS_CODES, out / "roc.png")
    figures = ["confusion_matrix.png", "roc.png"]
    history = run.run_dir / "history.csv"
    if history.is_file():
        plots.plot_training_curves(read_history(history), out / "training_curves.png")
        figures.append("training_curves.png")
    else:
        _log.warning("%s not found; no training curves", history)
    (out / "report.md").write_text(render_report(report, figures))
    _log.info("%s %s/%s%s: accuracy %.4f, balanced accuracy %.4f, macro-F1 %.4f, macro AUC %.4f -> %s",
              run.run_dir.name, split, checkpoint, " +TTA" if tta else "", report["accuracy"],
              report["balanced_accuracy"], report["macro_f1"], report["macro_auc"], out)
    return report


EXTRA_CLASSES = ("mel", "bkl", "nv")  # ISIC 2017's three


def evaluate_extra(run_dir: Path, *, split: str = "test", checkpoint: str = "best", data: Path | None = None,
                   unsquash: float | None = None) -> dict:
    """Score a run's checkpoint on the extra set's own ``split`` (ISIC 2017: images from other clinics),
    the second test beside HAM10000's: per-class recall of mel, bkl and nv under the 7-class argmax,
    and each one's one-vs-rest AUC (melanoma-vs-rest first). ``data`` and ``unsquash`` default to the
    run's ``extra_data`` and ``extra_unsquash``, so a run trained without it can be scored too.
    Writes ``eval-extra-<split>-<checkpoint>/`` (metrics.json, report.md); returns the metrics."""
    run = TrainingRun.load(run_dir)
    root = data or run.config.extra_data
    if not root:
        raise ValueError(f"{run.path}: no extra_data in its config; pass the extra set's folder")
    records = ds.select(ds.load_extra_records(Path(root)), split)
    if not records:
        raise ValueError(f"{root}/labels.csv has no {split!r} images")
    unsquash = run.config.extra_unsquash if unsquash is None else unsquash
    pixels = ds.load_pixels(records, *run.input_hw, Path(run.config.cache_dir), unsquash=unsquash)
    labels = np.array([r.label for r in records], dtype=np.int64)
    probs = predict_probs(run.load_model(checkpoint), pixels, *run.normalization)
    report = extra_report(probs, labels)
    report.update(run=run.path.name, split=split, checkpoint=checkpoint, data=Path(root).name, unsquash=unsquash)
    out = Path(run_dir) / f"eval-extra-{split}-{checkpoint}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(json_safe(report), indent=2))
    lines = [f"# Second test: {report['data']} {split} ({report['n']} images), {run.path.name}/{checkpoint}", "",
             f"> **{DISCLAIMER}**", "", "| class | support | recall (7-class argmax) | AUC (one vs rest) |",
             "| --- | --- | --- | --- |"]
    lines += [f"| {c} | {report['support'][c]} | {_fmt(report['recall'][c])} | {_fmt(report['auc'][c])} |"
              for c in EXTRA_CLASSES]
    lines += ["", (f"Accuracy {_fmt(report['accuracy'])}. Data: {ds.ISIC2017['name']} "
                   f"({ds.ISIC2017['license']}). {ds.ISIC2017['citation']}"), ""]
    (out / "report.md").write_text("\n".join(lines))
    _log.info("%s extra %s/%s: melanoma recall %s, melanoma-vs-rest AUC %s, bkl AUC %s -> %s", run.path.name,
              split, checkpoint, _fmt(report["recall"]["mel"]), _fmt(report["auc"]["mel"]),
              _fmt(report["auc"]["bkl"]), out)
    return report


def extra_report(probs: np.ndarray, labels: np.ndarray) -> dict:
    """The second test's figures for 7-class ``probs`` on images labelled only mel, bkl or nv."""
    full = classification_report(probs, labels, ds.CLASS_CODES)
    per = {c: full["per_class"][c] for c in EXTRA_CLASSES}
    return {"n": full["n"], "accuracy": full["accuracy"], "support": {c: per[c]["support"] for c in per},
            "recall": {c: per[c]["recall"] if per[c]["support"] else math.nan for c in per},
            "auc": {c: per[c]["auc"] for c in per}, "confusion_matrix": full["confusion_matrix"],
            "labels": full["labels"]}


def _fmt(value: float) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.4f}"


def render_report(report: dict, figures: list[str]) -> str:
    """The Markdown report of one evaluation (``report`` as returned by :func:`evaluate_run`)."""
    names = dict(ds.CLASSES)
    labels = report["labels"]
    model = report["model"]
    lines = [
        f"# Evaluation: {report['run']}",
        "",
        f"> **{DISCLAIMER}**",
        "",
        (f"Model `{report['arch']}`: {model['params']:,} parameters, "
        f"{model['macs'] / 1e6:.1f} M MACs per frame, "
        f"input {model['input_shape'][0]}x{model['input_shape'][1]}. Checkpoint `{report['checkpoint']}`, "
        f"{report['split']} split ({report['n']} images, {report['split_method']}-level split)"
        f"{', flip test-time augmentation' if report['tta'] else ''}."),
        "",
    ]
    if report["split_method"] == "random":
        lines += [("Image-level random split: images of one lesion can sit in train and test, so these "
                  "figures are optimistic and only comparable with the seeds' published numbers."), ""]
    lines += [
        "| metric | value |",
        "| --- | --- |",
        f"| accuracy | {_fmt(report['accuracy'])} |",
        f"| balanced accuracy (mean recall) | {_fmt(report['balanced_accuracy'])} |",
        f"| macro F1 | {_fmt(report['macro_f1'])} |",
        f"| macro ROC AUC (one-vs-rest) | {_fmt(report['macro_auc'])} |",
        f"| expected calibration error (15 bins) | {_fmt(report['ece'])} |",
        "",
        "## Per class",
        "",
        "| class | name | precision | recall | F1 | support | AUC |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for code in labels:
        pc = report["per_class"][code]
        lines.append(f"| {code} | {names.get(code, code)} | {_fmt(pc['precision'])} | {_fmt(pc['recall'])} | "
                     f"{_fmt(pc['f1'])} | {pc['support']} | {_fmt(pc['auc'])} |")
    lines += ["", "## Confusion matrix", "", "Rows are true classes, columns predicted classes.", "",
              "| true \\ predicted | " + " | ".join(labels) + " |",
              "| --- |" + " --- |" * len(labels)]
    for code, row in zip(labels, report["confusion_matrix"]):
        lines.append(f"| **{code}** | " + " | ".join(str(v) for v in row) + " |")
    lines += ["", "## Figures", ""]
    for name in figures:
        lines += [f"![{name.removesuffix('.png').replace('_', ' ')}]({name})", ""]
    lines += ["## Data", "", f"HAM10000 ({ds.LICENSE}). {ds.CITATION}", ""]
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m train.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="training run directory")
    parser.add_argument("--split", choices=ds.SPLITS, default="test")
    parser.add_argument("--checkpoint", choices=CHECKPOINTS, default="best")
    parser.add_argument("--tta", action="store_true", help="average over the four flips")
    parser.add_argument("--data", type=Path, help="HAM10000 root, if not where the run was trained")
    parser.add_argument("--extra", nargs="?", const="", default=None, metavar="ROOT",
                        help="score the extra set's split instead (ISIC 2017: labels.csv + images; default the "
                             "run's extra_data)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.extra is not None:
        report = evaluate_extra(args.run_dir, split=args.split, checkpoint=args.checkpoint,
                                data=Path(args.extra) if args.extra else None)
        print(f"{args.run_dir}/eval-extra-{args.split}-{args.checkpoint}/report.md: melanoma recall "
              f"{_fmt(report['recall']['mel'])}, melanoma-vs-rest AUC {_fmt(report['auc']['mel'])}")
        return report
    report = evaluate_run(args.run_dir, split=args.split, checkpoint=args.checkpoint, tta=args.tta,
                          data=args.data)
    out = eval_dir(args.run_dir, split=args.split, checkpoint=args.checkpoint, tta=args.tta)
    print(f"{out / 'report.md'}: balanced accuracy {report['balanced_accuracy']:.4f}, "
          f"macro-F1 {report['macro_f1']:.4f}, macro AUC {_fmt(report['macro_auc'])}")
    return report


if __name__ == "__main__":
    main()
