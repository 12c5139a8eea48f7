"""What the rule "a poor-quality frame gives no referral" (docs/results.md) costs in sensitivity,
and, for a card with the not-a-lesion gate, what the gate costs the same way.

Every image of the model's lesion-grouped test split goes through the device's own path for a
single photo (``Engine.infer``, then ``Postprocessor`` with the default config, as ``python -m device
predict`` and ``/predict`` do). The card's referral rule is counted twice: as before the rule, where
a poor frame still referred when its score crossed the threshold, and as now, where it does not.

    python -m benchmarks.poor_referral [--model models/<name>] [--data ../shared/data/ham10000]

Prints one JSON object; nothing here is a test (tests never read ../shared).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from tqdm import tqdm

from benchmarks.accuracy import evaluation_records
from device.card import ModelCard
from device.config import PostprocessConfig, default_model_dir
from device.decode import load_image
from device.engine import Engine
from device.postprocess import Postprocessor, refer_decision, to_probabilities


def count(model_dir: Path, data_root: Path, *, threads: int = 2) -> dict:
    card = ModelCard.load(model_dir / "card.json")
    if card.referral is None:
        raise SystemExit(f"{model_dir}: the card has no referral rule")
    engine = Engine.from_model_dir(model_dir, num_threads=threads)
    post = Postprocessor(card, PostprocessConfig(), smoothing=1)
    records = evaluation_records(card, data_root, "test")
    rule = card.referral
    tally = {"positives": 0, "negatives": 0, "referred_before": 0, "referred_now": 0, "false_before": 0,
             "false_now": 0, "poor": 0, "poor_positives": 0, "poor_positives_referred_before": 0, "by_reason": {},
             "not_lesion": 0, "not_lesion_positives": 0, "not_lesion_positives_referred_before": 0}
    for record in tqdm(records, desc="test split", unit="img"):
        rgb = load_image(record.path)
        inference = engine.infer(rgb)
        result = post.process(inference, rgb=rgb, frame_id=0, timestamp=time.time(), t_start=time.monotonic())
        before = refer_decision(card, to_probabilities(inference.probabilities))
        referred_before = before.score >= before.threshold
        positive = record.dx in rule.classes
        tally["positives" if positive else "negatives"] += 1
        if positive:
            tally["referred_before"] += referred_before
            tally["referred_now"] += result.refer is True
        else:
            tally["false_before"] += referred_before
            tally["false_now"] += result.refer is True
        if result.state == "poor_quality":
            tally["poor"] += 1
            reason = str(result.quality["reason"])
            tally["by_reason"][reason] = tally["by_reason"].get(reason, 0) + 1
            tally["poor_positives"] += positive
            tally["poor_positives_referred_before"] += positive and referred_before
        elif result.state == "not_lesion":
            tally["not_lesion"] += 1
            tally["not_lesion_positives"] += positive
            tally["not_lesion_positives_referred_before"] += positive and referred_before
    pos, neg = tally["positives"], tally["negatives"]
    return {
        "model": card.name, "gate": card.gate is not None, "images": len(records), "referral_classes": list(rule.classes),
        "threshold": rule.threshold, "card_sensitivity": rule.sensitivity, **tally,
        "sensitivity_before": tally["referred_before"] / pos, "sensitivity_now": tally["referred_now"] / pos,
        "specificity_before": 1 - tally["false_before"] / neg, "specificity_now": 1 - tally["false_now"] / neg,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.poor_referral", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Path(default_model_dir()))
    parser.add_argument("--data", type=Path, default=Path("../shared/data/ham10000"))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    print(json.dumps(count(args.model, args.data, threads=args.threads), indent=1))


if __name__ == "__main__":
    main()
