"""The not-a-lesion gate's negatives (train/negatives.py), head (train/lesion_gate.py) and its threshold,
rates and refusal on the int8 file (quantize/lesion_gate.py), end to end on the fixture."""
from __future__ import annotations

import dataclasses
import json
from collections import Counter

import numpy as np
import pytest

from device.card import ModelCard
from device.decode import load_image
from device.engine import Engine
from train import data as ds
from train import negatives as ng


def test_skin_band_holds_no_lesion_and_none_without_room():
    rgb = np.random.default_rng(0).integers(0, 255, size=(150, 200, 3), dtype=np.uint8)
    mask = np.zeros((150, 200), np.uint8)
    mask[40:110, 120:190] = 255  # a lesion in the right part: the free band is on the left
    band = ng.skin_band(rgb, mask)
    assert band is not None
    # The band is cut from the left edge, ends before the lesion's dilated rim, and keeps at most 4:3.
    assert band.shape[1] <= 120 - ng.MASK_MARGIN and band.shape[0] <= band.shape[1] * 4 / 3 + 1
    y0 = (150 - band.shape[0]) // 2  # the band's middle piece, from the image's left edge
    np.testing.assert_array_equal(band, rgb[y0 : y0 + band.shape[0], : band.shape[1]])
    mask[:, :] = 0
    mask[10:140, 30:170] = 255  # no side leaves a quarter free
    assert ng.skin_band(rgb, mask) is None


def test_bare_skin_follows_the_lesion_split(fixture_dir):
    records = ds.split_records(ds.load_records(fixture_dir), seed=42)
    bands = list(ng.bare_skin(records, fixture_dir))
    assert bands, "the fixture's masks leave lesion-free bands in some images"
    split_of = {r.image_id: r.split for r in records}
    assert all(b.part == ng.PART_OF_SPLIT[split_of[b.source]] for b in bands)
    assert all(b.rgb.ndim == 3 and min(b.rgb.shape[:2]) >= 20 for b in bands)


def test_everyday_parts_are_stable_and_shared_as_stated():
    names = [f"n{i:08d}_thing.jpg" for i in range(3000)]
    parts = [ng.part_of_name(n) for n in names]
    assert parts == [ng.part_of_name(n) for n in names]
    shares = Counter(parts)
    for part, share in zip(ng.PARTS, ng.EVERYDAY_SHARES, strict=True):
        assert abs(shares[part] / len(names) - share) < 0.03


def test_pick_threshold_keeps_lesions_and_rates_count_them():
    from train.lesion_gate import GateImages, Limits, pick_threshold, rejection_rates

    groups = np.array(["lesion:ham10000:nv"] * 98 + ["lesion:ham10000:mel"] * 2 + ["everyday"] * 50)
    scores = np.concatenate([np.linspace(0.0, 0.6, 98), [0.05, 0.7], np.linspace(0.4, 1.0, 50)])
    images = GateImages(np.zeros((150, 1, 1, 3), np.uint8), groups, np.array(["pick"] * 150))
    levels = np.arange(1, 256) / 256
    threshold = pick_threshold(scores, images, Limits(pick_lesions=0.05, pick_melanomas=0.0), levels=levels)
    # No melanoma may go: the threshold must sit above the melanoma at 0.7.
    assert threshold > 0.7 and threshold - 0.7 <= 1 / 256
    rates = rejection_rates(scores, images, threshold)
    assert rates["lesion:ham10000:mel"] == {"rejected": 0.0, "n": 2}
    assert rates["everyday"]["rejected"] == pytest.approx(np.mean(scores[100:] >= threshold))


def test_features_graph_keeps_the_models_probabilities(tiny_run_dir):
    import keras

    from train.lesion_gate import members, with_features
    from train.run import TrainingRun

    model = TrainingRun.load(tiny_run_dir).load_model("best")
    x = np.random.default_rng(1).normal(size=(4, *model.input_shape[1:])).astype(np.float32)
    probs, feats = with_features(model).predict(x, verbose=0)
    np.testing.assert_allclose(probs, model.predict(x, verbose=0), atol=1e-5)
    assert feats.shape == (4, members(model)[0].get_layer("head").input.shape[-1])
    # Two members averaged (a train.ensemble graph): the features are both members', side by side.
    inputs = keras.Input(model.input_shape[1:])
    twins = [keras.Model(model.input, model.get_layer("logits").output, name=f"member{i}") for i in range(2)]
    ensemble = keras.Model(inputs, keras.layers.Softmax()(keras.layers.Average()([t(inputs) for t in twins])))
    probs2, feats2 = with_features(ensemble).predict(x, verbose=0)
    np.testing.assert_allclose(probs2, probs, atol=1e-5)
    np.testing.assert_allclose(feats2, np.concatenate([feats, feats], axis=1), atol=1e-5)


@pytest.fixture(scope="module")
def gated_run(tiny_run_dir, fixture_dir, negative_images, tmp_path_factory):
    """The tiny run with a gate fitted on the fixture (its masks give bare skin) and made negatives."""
    from train.lesion_gate import fit_gate

    path = fit_gate(tiny_run_dir, checkpoint="best", data=fixture_dir, extra=None,
                    everyday=negative_images[0].parent, zoom=1.0, cache_dir=tmp_path_factory.mktemp("cache"))
    return path.parent


def test_fit_gate_writes_a_two_output_checkpoint_and_its_record(gated_run):
    import keras

    from train.lesion_gate import CANDIDATES, GATE_FILE, GATE_OUTPUT

    model = keras.models.load_model(gated_run / "gated.keras", compile=False)
    assert [tuple(o.shape[1:]) for o in model.outputs] == [(7,), (1,)]
    assert model.get_layer(GATE_OUTPUT).activation.__name__ == "sigmoid"
    record = json.loads((gated_run / GATE_FILE).read_text())
    assert record["method"] in CANDIDATES and set(record["candidates"]) == set(CANDIDATES)
    assert record["counts"]["fit"]["bare_skin"] > 0 and record["counts"]["fit"]["made"] > 0
    assert sum(n for g, n in record["counts"]["fit"].items() if g.startswith("lesion:")) > 0


def _lenient():
    from quantize.gate import GateThresholds
    from train.lesion_gate import Limits

    # A 4-epoch model on 63 images: the gate's plumbing is under test here, not its figures.
    return GateThresholds(max_drop=100.0, min_agreement=0.0), Limits(max_lesions=1.0, max_melanomas=1.0,
                                                                     min_everyday=0.0, min_bare_skin=0.0)


def test_quantize_writes_the_gate_section_the_engine_uses(gated_run, fixture_dir, tmp_path, negative_images):
    from quantize.pipeline import QuantizeOptions, quantize_run

    thresholds, limits = _lenient()
    dest = quantize_run(gated_run, QuantizeOptions(name="tiny-gated", out=tmp_path, data=fixture_dir,
                                                   checkpoint="gated", representative=32, thresholds=thresholds,
                                                   gate_limits=limits, num_threads=1, referral_sensitivity=0))
    card = ModelCard.load(dest / "card.json")
    assert card.gate is not None and 0.0 < card.gate.threshold <= 1.0
    assert card.gate.output.dtype == "int8" and card.gate.advice
    report = card.gate.rates["report"]
    assert {"lesions", "lesion:ham10000", "bare_skin"} <= set(report)
    assert all(0.0 <= row["rejected"] <= 1.0 and row["n"] > 0 for row in report.values())
    engine = Engine.from_model_dir(dest, num_threads=1)
    scores = [engine.infer(load_image(p)).not_lesion for p in negative_images]
    assert all(isinstance(s, float) and 0.0 <= s <= 1.0 for s in scores)


def test_quantize_refuses_a_gate_that_misses_its_limits(gated_run, fixture_dir, tmp_path):
    from quantize.gate import GateError
    from quantize.pipeline import QuantizeOptions, quantize_run

    thresholds, limits = _lenient()
    impossible = dataclasses.replace(limits, min_bare_skin=1.01)
    with pytest.raises(GateError, match="bare_skin rejected"):
        quantize_run(gated_run, QuantizeOptions(name="tiny-gated", out=tmp_path, data=fixture_dir,
                                                checkpoint="gated", representative=32, thresholds=thresholds,
                                                gate_limits=impossible, num_threads=1, referral_sensitivity=0))
    assert not (tmp_path / "tiny-gated").exists()


def test_calibration_set_gets_fit_negatives_only():
    from train.lesion_gate import GateImages, with_negatives

    groups = np.array(["lesion:ham10000:nv"] * 4 + ["everyday"] * 6 + ["bare_skin"] * 6)
    parts = np.array(["fit"] * 4 + ["fit", "fit", "fit", "pick", "pick", "report"] + ["fit"] * 3 + ["report"] * 3)
    pixels = np.arange(16, dtype=np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 3), np.uint8)
    images = GateImages(pixels, groups, parts)
    rep = np.zeros((5, 2, 2, 3), np.float32)
    out = with_negatives(rep, images, mean=[0, 0, 0], std=[1, 1, 1], seed=3, count=4)
    assert out.shape == (9, 2, 2, 3)
    drawn = {int(v) for v in out[5:, 0, 0, 0]}
    assert len(drawn) == 4 and drawn <= {4, 5, 6, 10, 11, 12}  # fit-part negatives only
    again = with_negatives(rep, images, mean=[0, 0, 0], std=[1, 1, 1], seed=3, count=4)
    np.testing.assert_array_equal(out, again)
    assert len(with_negatives(rep, images, mean=[0, 0, 0], std=[1, 1, 1], count=100)) == 5 + 6
