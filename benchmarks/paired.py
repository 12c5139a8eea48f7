"""Two models on the same images: each one's figures and the difference, with a paired bootstrap.

    python -m benchmarks.paired --model-dir models/A --model-dir runs/B --data ../shared/data/ham10000 \
        [--subset val] [--class mel] [--bias 0] [--resamples 2000] [--extra ../shared/data/isic2017]

Both models score the same split (int8, through ``Engine.infer_pixels``, at the operating point
their cards carry; ``--bias`` adds to model B's log-probability of the class, as
``benchmarks.operating`` does, to compare the two at a matched recall). Each resample draws the
split's lesions again with replacement and scores both models on that same draw, so what the two share (the hard lesions, the easy ones) cancels out of the
difference: its interval is far narrower than either model's own, and it is the one to read when a
protocol asks whether B is worse than A or only unlucky. With ``--extra`` the extra set's split of
the same name (ISIC 2017: other clinics) is compared too, image by image, on accuracy and the class's
AUC.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Difference:
    figure: str
    a: float
    b: float
    se: float  # standard deviation of (b - a) over the resamples
    low: float  # 95% interval of (b - a)
    high: float

    @property
    def diff(self) -> float:
        return self.b - self.a


def _figures(probs: np.ndarray, labels: np.ndarray, k: int, num_classes: int) -> np.ndarray:
    """Accuracy, balanced accuracy and their sum (points), class ``k``'s recall (points) and AUC."""
    from train.metrics import accuracy_of, balanced_accuracy_of, confusion_matrix, recall_of, roc_auc

    cm = confusion_matrix(labels, probs.argmax(axis=1), num_classes)
    acc, bal = 100 * accuracy_of(cm), 100 * balanced_accuracy_of(cm)
    return np.array([acc, bal, acc + bal, 100 * recall_of(cm, k), roc_auc(labels == k, probs[:, k])])


FIGURES = ("accuracy", "balanced accuracy", "accuracy + balanced", "recall", "AUC")


def paired(probs_a: np.ndarray, probs_b: np.ndarray, labels: np.ndarray, groups, k: int, *,
           resamples: int = 2000, seed: int = 0) -> list[Difference]:
    """Both models' figures and B - A, the resamples drawing whole ``groups`` (lesions) at a time."""
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    labels = np.asarray(labels)
    num_classes = probs_a.shape[1]
    _, group_of = np.unique(np.asarray(groups), return_inverse=True)
    members = np.split(np.argsort(group_of, kind="stable"), np.cumsum(np.bincount(group_of))[:-1])
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(resamples):
        idx = np.concatenate([members[g] for g in rng.integers(0, len(members), len(members))])
        diffs.append(_figures(probs_b[idx], labels[idx], k, num_classes)
                     - _figures(probs_a[idx], labels[idx], k, num_classes))
    diffs = np.array(diffs)
    a, b = _figures(probs_a, labels, k, num_classes), _figures(probs_b, labels, k, num_classes)
    from train.metrics import percentile_interval

    intervals = [percentile_interval(column) for column in diffs.T]
    se = np.nanstd(diffs, axis=0)
    return [Difference(name, float(va), float(vb), float(s), lo, hi)
            for name, va, vb, s, (lo, hi) in zip(FIGURES, a, b, se, intervals, strict=True)]


def _table(title: str, rows: list[Difference], code: str) -> str:
    lines = [f"\n{title}\n", "| figure | A | B | B - A | SE | 95% interval |", "|---|---|---|---|---|---|"]
    for r in rows:
        name = f"{code} {r.figure}" if r.figure in ("recall", "AUC") else r.figure
        fmt = "{:.3f}" if r.figure == "AUC" else "{:.1f}"
        cells = [fmt.format(v) for v in (r.a, r.b, r.diff, r.se)]
        lines.append(f"| {name} | {' | '.join(cells)} | [{fmt.format(r.low)}, {fmt.format(r.high)}] |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    parser = argparse.ArgumentParser(prog="python -m benchmarks.paired", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, action="append", required=True,
                        help="model A, then model B (twice: B - A is reported)")
    parser.add_argument("--data", type=Path, required=True, help="the dataset root the models' split was drawn from")
    parser.add_argument("--subset", choices=("val", "test"), default="val")
    parser.add_argument("--cache-dir", type=Path, default=Path("cache"))
    parser.add_argument("--class", dest="code", default="mel", help="the class whose recall and AUC are compared")
    parser.add_argument("--bias", type=float, default=0.0,
                        help="added to model B's log-probability of the class (B at another operating point)")
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--extra", type=Path, default=None, help="ISIC 2017 root: compare its split too")
    args = parser.parse_args(argv)
    if len(args.model_dir) != 2:
        parser.error(f"--model-dir must be given twice (A, then B), got {len(args.model_dir)}")
    if args.resamples < 1:
        parser.error(f"--resamples must be >= 1, got {args.resamples}")
    # train imports Keras: only after the TF log level is set above
    from benchmarks.accuracy import evaluation_records, true_labels
    from device.engine import Engine
    from train.calibrate import adjust
    from train.data import learned_from_val, load_extra_records, load_pixels, select
    from train.dataset import engine_probs

    engines = [Engine.from_model_dir(folder, variant="int8", num_threads=2) for folder in args.model_dir]
    card = engines[0].card
    if engines[1].card.codes != card.codes or engines[1].card.split != card.split:
        parser.error("the models' cards differ in labels or split: they did not score the same images")
    if args.code not in card.codes:
        parser.error(f"--class {args.code!r} is not one of the card's labels {list(card.codes)}")
    k = card.codes.index(args.code)

    def scored(records) -> list[np.ndarray]:
        a, b = (engine_probs(e, load_pixels(records, e.card.input.height, e.card.input.width, args.cache_dir),
                             desc=f"{e.card.name} int8") for e in engines)
        one_hot = np.eye(len(card.codes))[k]
        return [adjust(a, one_hot, 0.0), adjust(b, one_hot, args.bias)]  # both renormalized alike

    print(f"A: {args.model_dir[0]}\nB: {args.model_dir[1]}" + (f", {args.code} bias {args.bias:g}" if args.bias else ""))
    records = evaluation_records(card, args.data, args.subset)
    rows = paired(*scored(records), true_labels(card, records), [r.lesion_id for r in records], k,
                  resamples=args.resamples)
    print(_table(f"{args.data.name} {args.subset} ({len(records)} images), {args.resamples} resamples of its lesions",
                 rows, args.code))
    if args.extra:
        extra = select(load_extra_records(args.extra), args.subset)
        # the card's seven classes scored as benchmarks.operating does; the extra set has no lesion ids
        rows = paired(*scored(extra), np.array([r.label for r in extra]), [r.image_id for r in extra], k,
                      resamples=args.resamples)
        print(_table(f"{args.extra.name} {args.subset} ({len(extra)} images, other clinics), resampled image by "
                     "image", [r for r in rows if r.figure in ("accuracy", "AUC")], args.code))
    if any(learned_from_val(e.card.split) for e in engines) and args.subset == "val":
        print("\nA model here was refitted on train + val: its val figures are in-sample, not evidence.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
