"""Operating points of a shipped model (or the mean of several): what favouring one class buys in
its recall and costs in accuracy, on the card's validation and test splits (int8, through
``Engine.infer_pixels``).

    python -m benchmarks.operating --model-dir models/dermnet-mnv2-trio --data ../shared/data/ham10000 \
        [--model-dir ANOTHER ...] [--class mel] [--biases 0,0.25,0.5,0.75,1,1.25,1.5] [--extra ../shared/data/isic2017]

With several ``--model-dir`` the models' probabilities are averaged first: what an ensemble of
them would decide (each at its own input size; their cards must share labels and split).

Adding ``b`` to one class's log-probability before the arg-max moves decisions towards it
(the same as multiplying its probability by ``exp(b)``). A bias would be picked on val; the
test columns show what it would cost there. This answers "can a threshold alone reach a recall
target at an accuracy floor?" without retraining. The class's one-vs-rest ROC AUC, printed under
the table, says how well the model ranks it: what no bias changes. Under it, the test figures at the
first bias with 95% intervals from a bootstrap over lesions (``--resamples``, 0 leaves them out): how
far a target may sit from a figure before one split of ~1,500 images can tell them apart. With
``--extra`` the ISIC 2017 val and test splits are scored too (per-class recall and one-vs-rest AUC of
its three classes): the cross-clinic figures of issue 39.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

DEFAULT_BIASES = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0)


def _biases(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from err


def _share(value: float) -> str:
    return "n/a" if np.isnan(value) else f"{value:.1%}"  # a class the split does not hold


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    parser = argparse.ArgumentParser(prog="python -m benchmarks.operating", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, action="append", required=True,
                        help="a model folder; repeat it to score the mean of several models' probabilities")
    parser.add_argument("--data", type=Path, required=True, help="the dataset root the model's split was drawn from")
    parser.add_argument("--cache-dir", type=Path, default=Path("cache"))
    parser.add_argument("--class", dest="code", default="mel", help="the class to favour (a card label code)")
    parser.add_argument("--biases", type=_biases, default=DEFAULT_BIASES)
    parser.add_argument("--resamples", type=int, default=2000,
                        help="bootstrap resamples of the test lesions for the intervals (0: none)")
    parser.add_argument("--extra", type=Path, default=None,
                        help="ISIC 2017 root: also score its val and test splits (the second test: images from "
                             "other clinics) at the first bias")
    parser.add_argument("--extra-unsquash", type=float, default=0.0,
                        help="stretch the extra set's square images back to this width/height first (0: as given)")
    args = parser.parse_args(argv)
    # train imports Keras: only after the TF log level is set above
    from benchmarks.accuracy import evaluation_records, true_labels
    from device.engine import Engine
    from train.calibrate import adjust, operating_point
    from train.data import learned_from_val, load_pixels
    from train.dataset import engine_probs
    from train.metrics import (
        accuracy_of,
        balanced_accuracy_of,
        bootstrap_confusions,
        percentile_interval,
        recall_of,
        roc_auc,
    )

    engines = [Engine.from_model_dir(folder, variant="int8", num_threads=2) for folder in args.model_dir]
    card = engines[0].card
    if any(e.card.codes != card.codes or e.card.split != card.split for e in engines[1:]):
        parser.error("the models' cards differ in labels or split: their probabilities cannot be averaged")
    if args.code not in card.codes:
        parser.error(f"--class {args.code!r} is not one of the card's labels {list(card.codes)}")
    if args.resamples < 0:
        parser.error(f"--resamples must be >= 0, got {args.resamples}")
    table, auc = {}, {}
    k = card.codes.index(args.code)
    for subset in ("val", "test"):
        records = evaluation_records(card, args.data, subset)
        probs = np.mean([engine_probs(engine, load_pixels(records, engine.card.input.height, engine.card.input.width,
                                                       args.cache_dir), desc=f"{engine.card.name} int8 {subset}")
                         for engine in engines], axis=0)
        labels = true_labels(card, records)
        table[subset] = [operating_point(probs, labels, card.codes, args.code, b) for b in args.biases]
        auc[subset] = roc_auc(labels == k, probs[:, k])
    print(f"| {args.code} bias | val accuracy | val balanced | val {args.code} recall "
          f"| test accuracy | test balanced | test {args.code} recall |")
    print("|---|---|---|---|---|---|---|")
    for val, test in zip(table["val"], table["test"]):
        print(f"| {val.bias:.2f} | {val.accuracy:.1%} | {val.balanced_accuracy:.1%} | {val.recall:.1%} "
              f"| {test.accuracy:.1%} | {test.balanced_accuracy:.1%} | {test.recall:.1%} |")
    print(f"\n{args.code} one-vs-rest ROC AUC: val {auc['val']:.3f}, test {auc['test']:.3f}")
    if args.resamples:
        # the loop leaves the test split's records, labels and probabilities behind
        predicted = adjust(probs, np.eye(len(card.codes))[k], args.biases[0]).argmax(axis=1)
        cms = bootstrap_confusions(labels, predicted, [r.lesion_id for r in records], len(card.codes),
                                   resamples=args.resamples)
        point = table["test"][0]
        figures = [(name, value, percentile_interval([fn(cm) for cm in cms])) for name, value, fn in (
            ("accuracy", point.accuracy, accuracy_of),
            ("balanced accuracy", point.balanced_accuracy, balanced_accuracy_of),
            (f"{args.code} recall", point.recall, lambda cm: recall_of(cm, k)))]
        print(f"\ntest at {args.code} bias {args.biases[0]:.2f}, 95% intervals over {args.resamples} resamples "
              "of its lesions: " + ", ".join(f"{name} {value:.1%} [{lo:.1%}, {hi:.1%}]"
                                             for name, value, (lo, hi) in figures))
    if args.extra:
        from train.data import load_extra_records, select
        from train.evaluate import extra_report

        extra = load_extra_records(args.extra)
        for subset in ("val", "test"):
            records = select(extra, subset)
            probs = np.mean([engine_probs(engine, load_pixels(records, engine.card.input.height,
                                                              engine.card.input.width, args.cache_dir,
                                                              unsquash=args.extra_unsquash),
                                          desc=f"{engine.card.name} int8 extra {subset}") for engine in engines], axis=0)
            labels = np.array([r.label for r in records], dtype=np.int64)
            rep = extra_report(adjust(probs, np.eye(len(card.codes))[k], args.biases[0]), labels)
            print(f"\n{args.extra.name} {subset} ({rep['n']} images, other clinics) at {args.code} bias "
                  f"{args.biases[0]:.2f}: accuracy {rep['accuracy']:.1%}; "
                  + "; ".join(f"{c} recall {_share(rep['recall'][c])}, AUC {rep['auc'][c]:.3f}" for c in rep["recall"]))
    if learned_from_val(card.split):
        print("\nThis model was refitted on train + val: its val figures are in-sample, not evidence.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
