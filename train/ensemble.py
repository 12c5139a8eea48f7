"""Shipped models averaged into one graph: a run directory that ``quantize`` gates like any other.

    python -m train.ensemble experiments/dermnet-mnv2 experiments/dermnet-mnv2-seed2 --data ../shared/data/ham10000
    python -m quantize runs/<stamp>-ensemble --checkpoint calibrated --name dermnet-mnv2-ensemble

Members must share their cards' ``preprocessing.zoom``; quantize the run with that ``--zoom``.

Each member is rebuilt as a float Keras model from its own int8 file (``train.backbones.import_tflite``:
quantization-aware training left its kernels on the int8 grid, so the float model is the one the
gate compared it with). The ensemble averages the members' logits (the log of the geometric mean
of their probabilities), so the whole ensemble stays one int8 graph the device runs like any model.

Two choices are then made on the validation split, never on test, and folded into every member's
``head`` conv: a bias on one class's logit (``--favour``, melanoma by default), walking up the
grid while val accuracy (of the members' int8 outputs) stays within ``--max-accuracy-cost`` points
of no bias, because a missed melanoma costs far more than a nevus sent for a second look; then one
temperature fitted to the val negative log-likelihood, so ``confidence`` still means what it says.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
from keras import layers

from device.card import ModelCard, verify_model_file
from device.engine import Engine
from device.preprocess import centre_zoom
from train import data as ds
from train.backbones import BACKBONES, classifier_from_int8, pretraining
from train.calibrate import fit_temperature, fold_into_head, nll, operating_point, softmax
from train.config import TrainConfig
from train.dataset import engine_probs, predict_probs
from train.metrics import json_safe
from train.models import describe
from train.run import RunRecord
from train.train import new_run_dir

_log = logging.getLogger(__name__)
BIASES = tuple(np.round(np.arange(0.0, 2.01, 0.25), 2))


@dataclass(frozen=True)
class Member:
    card: ModelCard
    model: keras.Model  # image -> logits (the member's calibration already in its head)


def load_member(model_dir: Path, index: int) -> Member:
    """A shipped model folder rebuilt as a float Keras model that outputs its logits."""
    model_dir = Path(model_dir)
    card = ModelCard.load(model_dir / "card.json")
    arch = card.architecture.get("arch", "")
    if arch not in BACKBONES:
        raise ValueError(f"{model_dir / 'card.json'}: field 'architecture.arch' is {arch!r}; only "
                         f"{sorted(BACKBONES)} members can be rebuilt from their int8 file")
    model = classifier_from_int8(card, verify_model_file(card, model_dir))
    return Member(card, keras.Model(model.input, model.get_layer("logits").output, name=f"member{index}"))


def member_record(card: ModelCard) -> dict:
    """A member as the ensemble's card names it: its file, its run and what its backbone was
    pretrained on (cards from before the provenance fields get that by the backbone's name)."""
    record = {"name": card.name, "sha256": card.model_file.sha256, "run": card.training.get("run", ""),
              "seed": card.training.get("seed")}
    backbone = card.training.get("backbone")
    if backbone:
        record["backbone"] = {**pretraining(backbone["name"], backbone.get("kind", "")),
                              "weights": backbone.get("weights", ""), "weights_sha256": backbone.get("sha256", "")}
    return record


def int8_probs(model_dir: Path, pixels: np.ndarray) -> np.ndarray:
    """A shipped model's int8 probabilities, through the device engine, for fitted images."""
    engine = Engine.from_model_dir(model_dir, num_threads=2)
    return engine_probs(engine, pixels, desc=f"{engine.card.name} int8")


def check_compatible(members: list[Member]) -> None:
    """One graph needs one input: same labels, split, input size and normalization."""
    first = members[0].card
    for member in members[1:]:
        card = member.card
        for what, mine, theirs in (("labels", card.codes, first.codes), ("split", card.split, first.split),
                                   ("input", (card.input.height, card.input.width),
                                    (first.input.height, first.input.width)),
                                   ("normalization", card.normalization, first.normalization),
                                   ("preprocessing.zoom", card.preprocessing.zoom, first.preprocessing.zoom)):
            if mine != theirs:
                raise ValueError(f"{card.name} and {first.name} differ in their cards' field '{what}'; "
                                 "they cannot share one input")


def ensemble_model(members: list[Member]) -> keras.Model:
    card = members[0].card
    return average_logits([member.model for member in members], (card.input.height, card.input.width, 3),
                          name=f"{card.architecture['arch']}_x{len(members)}")


def average_logits(logit_models: list[keras.Model], input_shape, *, name: str) -> keras.Model:
    """One graph: the image through every network, their logits averaged, then the softmax."""
    inputs = keras.Input(tuple(input_shape), name="image")
    logits = layers.Average(name="mean_logits")([model(inputs) for model in logit_models])
    outputs = layers.Softmax(name="probs")(logits)
    return keras.Model(inputs, outputs, name=name)


def choose_bias(probs: np.ndarray, labels: np.ndarray, codes: tuple[str, ...], favour: str,
                max_accuracy_cost: float, biases=BIASES) -> tuple[float, list[dict]]:
    """The largest bias on ``favour``'s logit, walking up the grid, before val accuracy falls more
    than ``max_accuracy_cost`` points below no bias; and every bias's val scores."""
    table = [dataclasses.asdict(operating_point(probs, labels, codes, favour, b)) for b in biases]
    chosen = 0.0
    for row in table:
        if row["accuracy"] < table[0]["accuracy"] - max_accuracy_cost / 100:
            break
        chosen = row["bias"]
    return chosen, table


def build(model_dirs: list[Path], *, data: Path, name: str = "ensemble", favour: str = "mel",
          max_accuracy_cost: float = 1.0, given_bias: float | None = None, given_temperature: float | None = None,
          runs_dir: Path = Path("runs"), cache_dir: Path = Path("cache")) -> Path:
    """Write the ensemble's run directory (config, meta, split, calibrated.keras, calibration.json).
    ``given_bias`` / ``given_temperature`` are used as they are instead of being picked on val: how
    refitted members (``train --refit``, whose val split was training data) take the values the
    validated ensemble picked."""
    if len(model_dirs) < 2:
        raise ValueError("an ensemble needs at least two model folders")
    members = [load_member(folder, i) for i, folder in enumerate(model_dirs)]
    check_compatible(members)
    card = members[0].card
    if favour not in card.codes:
        raise ValueError(f"--favour {favour!r} is not one of the cards' labels {list(card.codes)}")
    records = ds.redraw_split(card.split, Path(data), owner=card.name)
    if given_bias is None or given_temperature is None:
        ds.refuse_val_fit(card.split, card.name, "pick the bias or fit the temperature", "--bias and --temperature")
    favoured = np.array([c == favour for c in card.codes], dtype=np.float64)
    bias, temperature, fits = given_bias, given_temperature, {}
    if bias is None or temperature is None:
        val = ds.select(records, "val")
        pixels = ds.load_pixels(val, card.input.height, card.input.width, cache_dir)
        labels = np.array([card.codes.index(r.dx) for r in val], dtype=np.int64)
    if bias is None:
        # The bias decides arg-maxes, so it is picked on what the device computes: the members' int8
        # outputs, combined as the graph combines them (its own int8 file does not exist yet).
        int8_log_probs = np.mean([np.log(np.clip(int8_probs(folder, pixels), 1e-12, 1.0)) for folder in model_dirs],
                                 axis=0)
        bias, fits["bias"] = choose_bias(softmax(int8_log_probs), labels, card.codes, favour, max_accuracy_cost)
        chosen, none = next(row for row in fits["bias"] if row["bias"] == bias), fits["bias"][0]
        _log.info("%s bias %.2f (val accuracy %.4f -> %.4f, %s recall %.4f -> %.4f)", favour, bias,
                  none["accuracy"], chosen["accuracy"], favour, none["recall"], chosen["recall"])
    if temperature is None:
        # The temperature is a smooth fit: on the float graph's mean logits (up to a per-image constant),
        # for the views the engine showed the members (quantize the run with the same --zoom).
        views = np.stack([centre_zoom(p, card.preprocessing.zoom) for p in pixels])
        norm = card.normalization
        logits = np.log(np.clip(predict_probs(ensemble_model(members), views, norm.mean, norm.std, norm.colour), 1e-12, 1.0))
        logits += bias * favoured
        temperature = fit_temperature(logits, labels)
        fits["temperature"] = {"nll_before": nll(logits, labels), "nll_after": nll(logits / temperature, labels)}
    _log.info("%s bias %.2f, temperature %.3f (%s)", favour, bias, temperature,
              ", ".join(f"{k} fitted on val" for k in fits) or "both given")
    for member in members:
        fold_into_head(member.model, bias_shift=bias * favoured, temperature=temperature)
    model = ensemble_model(members)

    cfg = TrainConfig(data=str(data), arch=card.architecture["arch"], name=name, height=card.input.height,
                      width=card.input.width, width_mult=card.architecture.get("width_mult", 1.0), epochs=0,
                      split=card.split["method"], split_seed=int(card.split["seed"]), runs_dir=str(runs_dir),
                      cache_dir=str(cache_dir))
    run_dir = new_run_dir(cfg)
    ds.write_split(records, run_dir / "split.csv")
    ensemble = {
        "members": [member_record(m.card) for m in members],
        "combine": "mean of the members' logits",
        "favour": {"class": favour, "bias": bias, "max_val_accuracy_cost_points": max_accuracy_cost},
        "temperature": temperature,
        "fitted_on_val": sorted(fits),
        "zoom": card.preprocessing.zoom,
    }
    RunRecord(
        arch=model.name,  # e.g. mobilenet_v2_x2: not a member architecture, so never nested again
        input={"height": card.input.height, "width": card.input.width},
        labels=[{"code": label.code, "name": label.name} for label in card.labels],
        normalization={"mean": list(card.normalization.mean), "std": list(card.normalization.std),
                       "colour": card.normalization.colour},
        model=describe(model),
        split=dict(card.split),
        dataset=dict(card.dataset),
        backend=keras.backend.backend(),
        quantization_aware_training=all(m.card.quantization.get("quantization_aware_training") for m in members),
        ensemble=ensemble,
    ).write(run_dir)
    summary = {**ensemble, "val": fits}
    (run_dir / "calibration.json").write_text(json.dumps(json_safe(summary), indent=2))
    model.save(run_dir / "calibrated.keras")
    return run_dir


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(prog="python -m train.ensemble", description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dirs", type=Path, nargs="+", help="two or more shipped model folders")
    parser.add_argument("--data", type=Path, required=True, help="the dataset root the models' split was drawn from")
    parser.add_argument("--name", default="ensemble", help="run name (default: ensemble)")
    parser.add_argument("--favour", default="mel", help="the class whose logit gets the val-picked bias")
    parser.add_argument("--max-accuracy-cost", type=float, default=1.0,
                        help="val accuracy points the bias may cost (0 = no bias)")
    parser.add_argument("--bias", type=float, default=None,
                        help="use this bias instead of picking one on val (refitted members: the validated ensemble's)")
    parser.add_argument("--temperature", type=float, default=None,
                        help="use this T instead of fitting one on val (refitted members: the validated ensemble's)")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"))
    parser.add_argument("--cache-dir", type=Path, default=Path("cache"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        run_dir = build(args.model_dirs, data=args.data, name=args.name, favour=args.favour,
                        max_accuracy_cost=args.max_accuracy_cost, given_bias=args.bias,
                        given_temperature=args.temperature, runs_dir=args.runs_dir, cache_dir=args.cache_dir)
    except (ValueError, FileNotFoundError) as err:
        parser.error(str(err))
    print(f"wrote {run_dir}; next: python -m quantize {run_dir} --checkpoint calibrated --name <name>")
    return run_dir


if __name__ == "__main__":
    main()
