"""Quantize a training run into a shipped model folder.

    python -m quantize runs/<run> --name edgenet --data PATH/TO/ham10000

Writes ``models/<name>/`` (model_int8.tflite, card.json, REPORT.md, optionally
model_float.tflite) only when the int8 model passes the accuracy gate; exits 1 when
it does not.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from device.card import TTA_MODES, Preprocessing, zoom_argument


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m quantize", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, help="training run directory (meta.json, split.csv, best.keras)")
    parser.add_argument("--name", type=str, required=True, help="model folder name and card name")
    parser.add_argument("--out", type=Path, default=Path("models"), help="parent folder of the model folder")
    parser.add_argument("--data", type=Path, default=None, help="HAM10000 root (default: the run's config)")
    parser.add_argument("--checkpoint", type=str, default="best", help="best, last or calibrated")
    parser.add_argument("--representative", type=int, default=300, help="calibration images from train split")
    parser.add_argument("--max-drop", type=float, default=1.0, help="allowed int8 accuracy drop, points")
    parser.add_argument("--min-agreement", type=float, default=0.97, help="required int8/float top-1 agreement")
    parser.add_argument("--input-dtype", type=str, choices=("int8", "uint8"), default="int8")
    parser.add_argument("--keep-float", action="store_true", help="also ship model_float.tflite")
    parser.add_argument("--split", type=str, choices=("train", "val", "test"), default="test",
                        help="split the gate evaluates on")
    parser.add_argument("--cache-dir", type=Path, default=None, help="decoded-pixel cache folder")
    parser.add_argument("--threads", type=int, default=2, help="interpreter threads for the gate")
    parser.add_argument("--tta", type=str, choices=TTA_MODES, default="none",
                        help="test-time augmentation the card asks the device for (flips: 4 inferences per frame)")
    parser.add_argument("--zoom", type=zoom_argument, default=1.0,
                        help="centred share of each side the card asks the device to show the model (1.0: all)")
    parser.add_argument("--sign-key", type=Path, default=None,
                        help="Ed25519 private key (python -m quantize.sign keygen): also write card.sig")
    parser.add_argument("--referral-sensitivity", type=float, default=0.9,
                        help="the card's referral rule (P(akiec)+P(bcc)+P(mel) >= threshold) is picked on the val "
                             "split for this sensitivity; 0 leaves the rule out")
    parser.add_argument("--referral-threshold", type=float, default=None,
                        help="use this threshold instead of picking one on val (a run refitted on train + val: its "
                             "validated model's)")
    parser.add_argument("--referral-from", type=str, default="",
                        help="where --referral-threshold was picked, for the card (e.g. 'val, dermnet-mnv2-trio')")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Imported here so --help answers without loading TensorFlow.
    from quantize.gate import GateThresholds
    from quantize.pipeline import QuantizeOptions, quantize_run
    from quantize.sign import load_private_key, sign

    options = QuantizeOptions(
        name=args.name, out=args.out, data=args.data, checkpoint=args.checkpoint,
        representative=args.representative, input_dtype=args.input_dtype, keep_float=args.keep_float,
        thresholds=GateThresholds(max_drop=args.max_drop, min_agreement=args.min_agreement),
        split=args.split, cache_dir=args.cache_dir, num_threads=args.threads,
        preprocessing=Preprocessing(tta=args.tta, zoom=args.zoom),
        referral_sensitivity=args.referral_sensitivity, referral_threshold=args.referral_threshold,
        referral_picked_on=args.referral_from or ("given" if args.referral_threshold is not None else "val"),
    )

    def quantize_and_sign():
        key = load_private_key(args.sign_key) if args.sign_key else None  # a bad key fails before the long run
        dest = quantize_run(args.run_dir, options)
        if key is not None:
            print(f"signed {sign(dest, key)}")
        return f"wrote {dest}"

    return run_reporting_errors(quantize_and_sign)


def run_reporting_errors(action) -> int:
    """Run ``action`` (returns the line to print); exit status 1 for a failed gate, 2 for bad input."""
    from quantize.gate import GateError

    try:
        done = action()
    except GateError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(done)
    return 0


if __name__ == "__main__":
    sys.exit(main())
