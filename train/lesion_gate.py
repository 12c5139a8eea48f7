"""Not a lesion: a small head on a model's own features that says when a frame shows no skin lesion.

    python -m train.lesion_gate models/<name> --data ../shared/data/ham10000 \
        --extra ../shared/data/isic2017 --everyday ../shared/data/not-lesion/images
    python -m train.lesion_gate runs/<run> --checkpoint calibrated --data ... --extra ... --everyday ...
    python -m quantize runs/<run> --checkpoint gated --name <name> ...

A shipped ensemble's folder (the default) is rebuilt as a run from its members' int8 files with the
bias and temperature its card records (``train.ensemble``), gated and quantized back into the folder
with the card's own zoom and referral threshold: one command refits the gate on whatever the default is.
Any run works, a trained network or an ensemble: the features are the input of
each member's ``head`` conv (pooled where it is not already), concatenated. They are read from the int8
graph the device runs, built with the run's representative set, so the head learns what the device
will compute. Two heads are tried (``CANDIDATES``) and one is kept by the rule in
``experiments/GATE-PROTOCOL.md``; it becomes a second output, ``not_lesion`` (a probability), of
``gated.keras``. ``quantize`` then picks the threshold on the int8 output, measures the rates, refuses
a model that misses the limits and writes the card's ``gate`` section.

Images are parted (``train.negatives.PARTS``): the head is fitted on ``fit``, the threshold and the
head are chosen on ``pick``, and the card reports ``report``.
"""
from __future__ import annotations

import argparse
import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
from keras import layers
from tqdm import tqdm

from device.card import ModelCard, zoom_argument
from device.engine import open_interpreter
from device.preprocess import centre_zoom, dequantize, fit_to_input, normalize, quantize
from quantize.convert import convert_int8, representative_set
from train import data as ds
from train import negatives as ng
from train.metrics import json_safe
from train.run import TrainingRun

_log = logging.getLogger(__name__)

GATE_OUTPUT = "not_lesion"
GATE_FILE = "gate.json"
CANDIDATES = ("logistic", "mlp")
MEL_WEIGHT = 3.0  # a melanoma turned away costs more than any other lesion
# Negatives in the int8 calibration set, beside the usual lesions: the device sees them too, and with
# lesions alone the gate's logit range ends at 0 (int8 ranges always hold 0), so every negative read 0.5.
REP_NEGATIVES = 100
# The values a sigmoid output can take once quantized to int8 (scale 1/256, zero point -128), above 0.
OUTPUT_LEVELS = np.arange(1, 256) / 256
ADVICE = "Point the camera at a skin lesion."


@dataclass(frozen=True)
class Limits:
    """What a gate may cost and must catch. ``pick_*`` choose the threshold; the rest are the quantize
    step's refusal rule on the report part."""

    pick_lesions: float = 0.01  # most lesion images rejected on the pick part
    pick_melanomas: float = 0.005
    max_lesions: float = 0.02  # report part, HAM10000 test
    max_melanomas: float = 0.01
    min_everyday: float = 0.95
    min_bare_skin: float = 0.90


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class GateImages:
    """Fitted images with what each is (``group``: ``lesion:<source>:<dx>`` or a negative kind) and its part."""

    pixels: np.ndarray  # (N, H, W, 3) uint8, fitted to the model input
    groups: np.ndarray  # (N,) str
    parts: np.ndarray  # (N,) str, one of train.negatives.PARTS

    @property
    def is_lesion(self) -> np.ndarray:
        return np.char.startswith(self.groups.astype(str), "lesion:")

    def part(self, name: str) -> GateImages:
        keep = self.parts == name
        return GateImages(self.pixels[keep], self.groups[keep], self.parts[keep])


def gate_images(records: list[ds.Record], *, data: Path, extra: Path | None, everyday: Path | None,
                height: int, width: int, cache_dir: Path | None, seed: int = 0) -> GateImages:
    """Lesions (``records`` in their lesion split, plus ``extra``'s ISIC 2017 split) and every negative kind."""
    lesions = [("ham10000", r, ng.PART_OF_SPLIT[r.split]) for r in records]
    if extra:
        lesions += [("isic2017", r, ng.PART_OF_SPLIT[r.split]) for r in ds.load_extra_records(extra)]
    pixels = [ds.load_pixels([r for _, r, _ in lesions], height, width, cache_dir)]
    groups = [f"lesion:{source}:{r.dx}" for source, r, _ in lesions]
    parts = [part for _, _, part in lesions]
    negatives = ng.collect(everyday_dir=everyday, skin_records=records, skin_root=data, seed=seed)
    pixels.append(np.stack([fit_to_input(n.rgb, height, width) for n in negatives]) if negatives
                  else np.zeros((0, height, width, 3), np.uint8))
    groups += [n.kind for n in negatives]
    parts += [n.part for n in negatives]
    return GateImages(np.concatenate(pixels), np.array(groups), np.array(parts))


def with_negatives(representative: np.ndarray, images: GateImages, *, mean, std, colour: str = "none", seed: int = 0,
                   count: int = REP_NEGATIVES) -> np.ndarray:
    """The representative set plus ``count`` negatives of the fit part drawn at random (seeded)."""
    fit_negatives = np.flatnonzero((images.parts == "fit") & ~images.is_lesion)
    chosen = np.sort(np.random.default_rng(seed).choice(fit_negatives, min(count, fit_negatives.size), replace=False))
    return np.concatenate([representative, normalize(images.pixels[chosen], mean, std, colour)])


def images_for_run(run: TrainingRun, records: list[ds.Record], fitted: dict, *, data: Path,
                   cache_dir: Path | None) -> GateImages:
    """The images ``fit_gate`` used for a run, again, from the sources its ``gate.json`` names."""
    sources = fitted["sources"]
    height, width = run.input_hw
    return gate_images(records, data=Path(data), extra=Path(sources["extra"]) if sources["extra"] else None,
                       everyday=Path(sources["everyday"]) if sources["everyday"] else None,
                       height=height, width=width, cache_dir=cache_dir, seed=fitted["seed"])


# --- the graph ---------------------------------------------------------------------------


def members(model: keras.Model) -> list[keras.Model]:
    """The networks whose logits the model averages: its nested members (an ensemble), or itself."""
    nested = [layer for layer in model.layers if isinstance(layer, keras.Model) and _has(layer, "logits")]
    if nested:
        return nested
    if _has(model, "logits") and _has(model, "head"):
        return [model]
    raise ValueError(f"{model.name}: no 'head' and 'logits' layers (ours or an ensemble's members'); "
                     "cannot find the features a gate reads")


def _has(model: keras.Model, name: str) -> bool:
    return any(layer.name == name for layer in model.layers)


def with_features(model: keras.Model) -> keras.Model:
    """image -> (the model's probabilities, the features): each member's head input, pooled, concatenated.

    The probabilities are rebuilt as the softmax of the members' mean logits, which is what our models
    and train.ensemble's graphs compute."""
    inputs = keras.Input(model.input_shape[1:], name="image")
    logits, features = [], []
    for i, member in enumerate(members(model)):
        head_input = member.get_layer("head").input
        pooled = (layers.Flatten(name=f"features{i}")(head_input) if tuple(head_input.shape[1:3]) == (1, 1)
                  else layers.GlobalAveragePooling2D(name=f"features{i}")(head_input))
        both = keras.Model(member.input, [member.get_layer("logits").output, pooled], name=f"{member.name}_features")
        member_logits, member_features = both(inputs)
        logits.append(member_logits)
        features.append(member_features)
    mean = logits[0] if len(logits) == 1 else layers.Average(name="mean_logits")(logits)
    probs = layers.Softmax(name="probs")(mean)
    feats = features[0] if len(features) == 1 else layers.Concatenate(name="features")(features)
    return keras.Model(inputs, [probs, feats], name=model.name)


def head_layers(kind: str, dims: int, *, seed: int) -> list[layers.Layer]:
    init = keras.initializers.GlorotUniform(seed=seed)
    if kind == "logistic":
        return [layers.Dense(1, activation="sigmoid", kernel_initializer=init,
                             kernel_regularizer=keras.regularizers.L2(1e-4), name=GATE_OUTPUT)]
    if kind == "mlp":
        return [layers.Dense(64, activation="relu", kernel_initializer=init,
                             kernel_regularizer=keras.regularizers.L2(1e-4), name="gate_hidden"),
                layers.Dense(1, activation="sigmoid", kernel_initializer=init, name=GATE_OUTPUT)]
    raise ValueError(f"gate head: unknown {kind!r}; choose from {CANDIDATES}")


def gated(model: keras.Model, head: list[layers.Layer]) -> keras.Model:
    """image -> (probabilities, not-a-lesion probability): ``head`` applied to the model's features."""
    both = with_features(model)
    probs, feats = both.outputs
    x = feats
    for layer in head:
        x = layer(x)
    return keras.Model(both.inputs, [probs, x], name=model.name)


# --- features as the device computes them ---------------------------------------------------


def int8_features(model: keras.Model, representative: np.ndarray, images: GateImages, *, mean, std,
                  colour: str = "none", zoom: float) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, features) of every image through the int8 conversion of ``with_features(model)``."""
    with tempfile.TemporaryDirectory(prefix="dermedge-gate-") as tmp:
        path = Path(tmp) / "features_int8.tflite"
        path.write_bytes(convert_int8(with_features(model), representative))
        interpreter, _ = open_interpreter(path)
    inp = interpreter.get_input_details()[0]
    outs = sorted(interpreter.get_output_details(), key=lambda d: int(d["shape"][-1]))
    num_classes = int(model.output_shape[-1])
    probs_out, feats_out = (outs if int(outs[0]["shape"][-1]) == num_classes else outs[::-1])
    probs, feats = [], []
    for pixels in tqdm(images.pixels, desc="int8 features", unit="img", leave=False):
        x = normalize(centre_zoom(np.asarray(pixels), zoom), mean, std, colour)
        interpreter.set_tensor(inp["index"], quantize(x, *inp["quantization"], np.dtype(inp["dtype"]).name)[None])
        interpreter.invoke()
        probs.append(dequantize(interpreter.get_tensor(probs_out["index"])[0], *probs_out["quantization"]))
        feats.append(dequantize(interpreter.get_tensor(feats_out["index"])[0], *feats_out["quantization"]))
    return np.stack(probs), np.stack(feats)


# --- fitting and choosing ---------------------------------------------------------------


def sample_weights(images: GateImages) -> np.ndarray:
    """Lesions and negatives weigh the same in total, each negative kind an equal share, melanomas
    ``MEL_WEIGHT`` times other lesions."""
    w = np.zeros(len(images.groups), np.float64)
    lesion = images.is_lesion
    mel = np.char.endswith(images.groups.astype(str), ":mel")
    w[lesion] = np.where(mel[lesion], MEL_WEIGHT, 1.0)
    w[lesion] /= w[lesion].sum()
    kinds = sorted(set(images.groups[~lesion]))
    for kind in kinds:
        chosen = images.groups == kind
        w[chosen] = 1.0 / (chosen.sum() * len(kinds))
    return (w * len(w) / w.sum()).astype(np.float32)


def fit_head(kind: str, features: np.ndarray, images: GateImages, *, seed: int = 0, epochs: int = 40) -> list:
    """A head fitted on standardized features, the standardization folded into its first layer."""
    mu, sigma = features.mean(axis=0), features.std(axis=0) + 1e-6
    keras.utils.set_random_seed(seed)
    head = head_layers(kind, features.shape[1], seed=seed)
    model = keras.Sequential([keras.Input((features.shape[1],)), *head])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy")
    y = (~images.is_lesion).astype(np.float32)
    model.fit((features - mu) / sigma, y, sample_weight=sample_weights(images), batch_size=128, epochs=epochs,
              shuffle=True, verbose=0)
    first = head[0]
    kernel, bias = (keras.ops.convert_to_numpy(v) for v in (first.kernel, first.bias))
    first.kernel.assign(kernel / sigma[:, None])
    first.bias.assign(bias - (mu / sigma) @ kernel)
    return head


def head_scores(head: list, features: np.ndarray) -> np.ndarray:
    x = features
    for layer in head:
        x = layer(x)
    return keras.ops.convert_to_numpy(x)[:, 0]


def pick_threshold(scores: np.ndarray, images: GateImages, limits: Limits, *, levels: np.ndarray) -> float:
    """The lowest of ``levels`` at which at most ``limits.pick_lesions`` of the lesions and
    ``limits.pick_melanomas`` of the melanomas score at or above it."""
    lesion = images.is_lesion
    mel = lesion & np.char.endswith(images.groups.astype(str), ":mel")
    for level in np.sort(levels):
        rejected = scores >= level
        if rejected[lesion].mean() <= limits.pick_lesions and (not mel.any() or rejected[mel].mean()
                                                               <= limits.pick_melanomas):
            return float(level)
    return float(np.max(levels))


def rejection_rates(scores: np.ndarray, images: GateImages, threshold: float) -> dict:
    """Share rejected (score >= threshold) of all lesions, of each source's lesions and class, and of
    each negative kind, with counts."""
    rejected = scores >= threshold
    groups = images.groups.astype(str)
    rates: dict[str, dict] = {}

    def add(key: str, chosen: np.ndarray) -> None:
        if chosen.any():
            rates[key] = {"rejected": float(rejected[chosen].mean()), "n": int(chosen.sum())}

    add("lesions", images.is_lesion)
    add("melanomas", np.char.endswith(groups, ":mel"))
    for group in sorted(set(groups)):
        add(group, groups == group)
    for source in sorted({g.split(":")[1] for g in groups if g.startswith("lesion:")}):
        add(f"lesion:{source}", np.char.startswith(groups, f"lesion:{source}:"))
    return rates


def negatives_score(rates: dict) -> float:
    """Mean rejected share of the negative kinds present."""
    kinds = [rates[k]["rejected"] for k in ng.KINDS if k in rates]
    return float(np.mean(kinds)) if kinds else 0.0


# --- the command ----------------------------------------------------------------------------


def fit_gate(run_dir: Path, *, checkpoint: str, data: Path, extra: Path | None, everyday: Path | None,
             zoom: float, limits: Limits = DEFAULT_LIMITS, cache_dir: Path | None = Path("cache"), seed: int = 0) -> Path:
    """Write ``gated.keras`` and ``gate.json`` into the run; returns the checkpoint's path."""
    run = TrainingRun.load(run_dir)
    height, width = run.input_hw
    mean, std, colour = run.normalization
    records = run.records(data=data)
    model = run.load_model(checkpoint)
    images = gate_images(records, data=Path(data), extra=extra, everyday=everyday, height=height, width=width,
                         cache_dir=cache_dir, seed=seed)
    rep = with_negatives(representative_set(ds.select(records, "train"), height, width, mean, std,
                                            colour, seed=run.config.seed, cache_dir=cache_dir),
                         images, mean=mean, std=std, colour=colour, seed=run.config.seed)
    _log.info("gate images: %s", {p: int((images.parts == p).sum()) for p in ng.PARTS})
    _, features = int8_features(model, rep, images, mean=mean, std=std, colour=colour, zoom=zoom)
    fit, pick = images.parts == "fit", images.parts == "pick"
    fit_images, pick_images = images.part("fit"), images.part("pick")
    candidates, heads = {}, {}
    for kind in CANDIDATES:
        heads[kind] = fit_head(kind, features[fit], fit_images, seed=seed)
        scores = head_scores(heads[kind], features[pick])
        threshold = pick_threshold(scores, pick_images, limits, levels=OUTPUT_LEVELS)
        rates = rejection_rates(scores, pick_images, threshold)
        candidates[kind] = {"threshold": threshold, "negatives_mean": negatives_score(rates), "pick": rates}
        _log.info("%s: threshold %.4f on pick; lesions rejected %.4f, negatives %.4f", kind, threshold,
                  rates["lesions"]["rejected"], candidates[kind]["negatives_mean"])
    chosen = max(CANDIDATES, key=lambda k: (candidates[k]["negatives_mean"], k == "logistic"))
    path = run.path / "gated.keras"
    gated(model, heads[chosen]).save(path)
    record = {
        "method": chosen,
        "description": (f"{'one sigmoid unit' if chosen == 'logistic' else 'a 64-unit ReLU layer and a sigmoid unit'} "
                        "on the members' pooled head inputs (int8 features), fitted with lesions against "
                        "everyday photos, bare skin and made frames"),
        "checkpoint": checkpoint,
        "features": int(features.shape[1]),
        "zoom": zoom,
        "seed": seed,
        "sources": {"data": str(data), "extra": str(extra or ""), "everyday": str(everyday or "")},
        "counts": {p: {g: int(((images.parts == p) & (images.groups == g)).sum()) for g in sorted(set(images.groups))}
                   for p in ng.PARTS},
        "limits": limits.__dict__,
        "candidates": candidates,
        "advice": ADVICE,
    }
    (run.path / GATE_FILE).write_text(json.dumps(json_safe(record), indent=2))
    _log.info("kept %s; wrote %s and %s", chosen, path, run.path / GATE_FILE)
    return path


def run_from_model_dir(model_dir: Path, *, data: Path, cache_dir: Path) -> Path:
    """A shipped ensemble's run rebuilt from its members (found beside it by name) with its card's bias
    and temperature; a single network's folder has no such recipe (give its training run instead)."""
    from train.ensemble import build

    card = ModelCard.load(Path(model_dir) / "card.json")
    ensemble = card.training.get("ensemble")
    if not ensemble:
        raise ValueError(f"{model_dir}: not an ensemble; fit the gate on its training run (runs/<run>) instead")
    members = [Path(model_dir).parent / member["name"] for member in ensemble["members"]]
    return build(members, data=data, name=f"{card.name}-gate", given_bias=ensemble["favour"]["bias"],
                 given_temperature=ensemble["temperature"], cache_dir=cache_dir)


def requantize(model_dir: Path, run_dir: Path, *, data: Path, cache_dir: Path) -> Path:
    """The gated run quantized back into ``model_dir`` with its card's view and referral threshold."""
    from quantize.pipeline import QuantizeOptions, quantize_run

    card = ModelCard.load(Path(model_dir) / "card.json")
    rule = card.referral
    return quantize_run(run_dir, QuantizeOptions(
        name=Path(model_dir).name, out=Path(model_dir).parent, data=data, checkpoint="gated", cache_dir=cache_dir,
        preprocessing=card.preprocessing, referral_sensitivity=(rule.target_sensitivity or 0.9) if rule else 0,
        referral_threshold=rule.threshold if rule else None, referral_picked_on=rule.picked_on if rule else ""))


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(prog="python -m train.lesion_gate", description=__doc__.split("\n\n")[0])
    parser.add_argument("path", type=Path, help="a shipped ensemble's model folder, or a training or ensemble run")
    parser.add_argument("--checkpoint", default="calibrated", help="the run's checkpoint to extend")
    parser.add_argument("--data", type=Path, required=True, help="HAM10000 root (with masks/ for bare skin)")
    parser.add_argument("--extra", type=Path, default=None, help="ISIC 2017 root: more lesions, from other clinics")
    parser.add_argument("--everyday", type=Path, default=None, help="a folder of everyday photos (negatives)")
    parser.add_argument("--zoom", type=zoom_argument, default=None,
                        help="the centre zoom the card will ask for (default: the run's calibration zoom)")
    parser.add_argument("--cache-dir", type=Path, default=Path("cache"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    shipped = (args.path / "card.json").is_file()
    try:
        run_dir = run_from_model_dir(args.path, data=args.data, cache_dir=args.cache_dir) if shipped else args.path
        summary = run_dir / "calibration.json"
        zoom = args.zoom if args.zoom is not None else (
            json.loads(summary.read_text()).get("zoom", 1.0) if summary.is_file() else 1.0)
        path = fit_gate(run_dir, checkpoint=args.checkpoint, data=args.data, extra=args.extra,
                        everyday=args.everyday, zoom=zoom, cache_dir=args.cache_dir, seed=args.seed)
        if shipped:
            print(f"wrote {requantize(args.path, run_dir, data=args.data, cache_dir=args.cache_dir)}")
            return args.path
    except (ValueError, FileNotFoundError) as err:
        parser.error(str(err))
    print(f"wrote {path}; next: python -m quantize {run_dir} --checkpoint gated --zoom {zoom} --name <name>")
    return path


if __name__ == "__main__":
    main()
