"""train.ensemble: members rebuilt from their int8 files, the val-picked bias rule, the folded
graph against the members' own logits, and the ensemble gated and carded by quantize."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest

from device.card import ModelCard
from device.engine import Engine
from device.preprocess import centre_zoom, normalize
from quantize.gate import GateThresholds
from quantize.pipeline import QuantizeOptions, quantize_run
from train import ensemble
from train.data import load_pixels, read_split, select
from train.ensemble import build, choose_bias, load_member, main
from train.run import TrainingRun
from train.train import main as train_main

TINY_MNV2 = ("--arch", "mobilenet_v2", "--backbone-weights", "none", "--height", "32", "--width", "40",
             "--width-mult", "0.35", "--batch-size", "16", "--augment", "false", "--freeze-epochs", "0",
             "--lr-policy", "constant", "--max-lr", "1e-3", "--bn-mode", "reestimate", "--workers", "1",
             "--epochs", "1", "--no-evaluate")
LENIENT = GateThresholds(max_drop=100.0, min_agreement=0.0)  # a 1-epoch model's top-1 is fragile


@pytest.fixture(scope="module")
def members(tmp_path_factory, fixture_dir):
    """Two tiny MobileNetV2 model folders (seeds 1 and 2), trained and quantized for real."""
    root = tmp_path_factory.mktemp("members")
    folders = []
    for seed in (1, 2):
        run = train_main(["--data", str(fixture_dir), "--runs-dir", str(root / "runs"), "--cache-dir",
                          str(root / "cache"), "--seed", str(seed), "--name", f"m{seed}", *TINY_MNV2])
        folders.append(quantize_run(run, QuantizeOptions(name=f"m{seed}", out=root / "models", data=fixture_dir,
                                                         representative=32, thresholds=LENIENT, num_threads=1)))
    return folders


@pytest.fixture(scope="module")
def ensemble_run(members, fixture_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("ensemble")
    return build(members, data=fixture_dir, name="ens", favour="mel", max_accuracy_cost=5.0,
                 runs_dir=root / "runs", cache_dir=root / "cache")


def _fixture_pixels(run_dir, fixture_dir, split="test"):
    records = select(read_split(run_dir / "split.csv", fixture_dir), split)
    return load_pixels(records, 32, 40, None)


def test_a_member_rebuilt_from_its_int8_file_scores_like_its_engine(members, fixture_dir, ensemble_run):
    member = load_member(members[0], 0)
    engine = Engine.from_model_dir(members[0], num_threads=1)
    pixels = _fixture_pixels(ensemble_run, fixture_dir)
    x = normalize(pixels, engine.card.normalization.mean, engine.card.normalization.std)
    rebuilt = keras.ops.convert_to_numpy(keras.ops.softmax(member.model(x, training=False)))
    shipped = np.stack([engine.infer_pixels(p) for p in pixels])
    # int8 activations against float ones: close, not equal
    assert np.abs(rebuilt - shipped).max() < 0.1


def test_the_bias_walks_up_until_val_accuracy_costs_too_much():
    codes = ("nv", "mel")
    # Five nevi (two close calls at 0.6) and two melanomas (close calls at 0.45 and 0.3).
    probs = np.array([[0.9, 0.1]] * 3 + [[0.6, 0.4]] * 2 + [[0.55, 0.45], [0.7, 0.3]])
    labels = np.array([0, 0, 0, 0, 0, 1, 1])
    biases = (0.0, 0.25, 0.5, 0.75, 1.0)
    # 0.25 wins the first melanoma (log 0.45 + 0.25 > log 0.55), 0.5 loses both close nevi
    # (log 0.4 + 0.5 > log 0.6), 1.0 wins the second melanoma (log 0.3 + 1 > log 0.7).
    chosen, table = choose_bias(probs, labels, codes, "mel", max_accuracy_cost=20.0, biases=biases)
    assert [round(row["accuracy"] * 7) for row in table] == [5, 6, 4, 4, 5]
    assert [row["recall"] for row in table] == [0.0, 0.5, 0.5, 0.5, 1.0]
    assert chosen == 1.0  # never 20 points below no bias
    # With no cost allowed it stops where accuracy first falls, not at the equal point after it.
    assert choose_bias(probs, labels, codes, "mel", max_accuracy_cost=0.0, biases=biases)[0] == 0.25
    assert choose_bias(probs, labels, codes, "mel", max_accuracy_cost=0.0, biases=(0.0,))[0] == 0.0


def test_the_graph_is_the_biased_tempered_mean_of_the_members_logits(members, ensemble_run, fixture_dir):
    run = TrainingRun.load(ensemble_run)
    calibration = json.loads((ensemble_run / "calibration.json").read_text())
    bias, temperature = calibration["favour"]["bias"], calibration["temperature"]
    pixels = _fixture_pixels(ensemble_run, fixture_dir)
    x = normalize(pixels, *run.normalization)
    logits = np.mean([keras.ops.convert_to_numpy(load_member(folder, i).model(x, training=False))
                      for i, folder in enumerate(members)], axis=0)
    logits[:, run.labels.index("mel")] += bias
    expected = keras.ops.convert_to_numpy(keras.ops.softmax(logits / temperature))
    np.testing.assert_allclose(run.load_model("calibrated").predict(x, verbose=0), expected, atol=1e-5)
    assert [row["bias"] for row in calibration["val"]["bias"]][:2] == [0.0, 0.25]


def test_the_bias_is_scored_on_the_members_int8_outputs(members, ensemble_run, fixture_dir):
    calibration = json.loads((ensemble_run / "calibration.json").read_text())
    pixels = _fixture_pixels(ensemble_run, fixture_dir, "val")
    labels = np.array([ModelCard.load(members[0] / "card.json").codes.index(r.dx)
                       for r in select(read_split(ensemble_run / "split.csv", fixture_dir), "val")])
    engines = [Engine.from_model_dir(folder, num_threads=1) for folder in members]
    log_probs = np.mean([np.log(np.clip([e.infer_pixels(p) for p in pixels], 1e-12, 1)) for e in engines], axis=0)
    assert calibration["val"]["bias"][0]["accuracy"] == pytest.approx(float((log_probs.argmax(1) == labels).mean()))


def test_the_run_records_its_members_and_counts_their_cost(members, ensemble_run):
    meta = json.loads((ensemble_run / "meta.json").read_text())
    cards = [ModelCard.load(folder / "card.json") for folder in members]
    assert [m["name"] for m in meta["ensemble"]["members"]] == ["m1", "m2"]
    assert [m["sha256"] for m in meta["ensemble"]["members"]] == [c.model_file.sha256 for c in cards]
    assert meta["model"]["macs"] == sum(c.architecture["macs"] for c in cards)
    assert meta["split"] == cards[0].split


def test_quantize_gates_and_cards_the_ensemble_like_any_run(ensemble_run, fixture_dir, tmp_path):
    dest = quantize_run(ensemble_run, QuantizeOptions(name="ens", out=tmp_path, data=fixture_dir, checkpoint="calibrated",
                                                      representative=32, thresholds=LENIENT, num_threads=1))
    card = ModelCard.load(dest / "card.json")
    assert card.training["ensemble"]["combine"] == "mean of the members' logits"
    assert card.training["checkpoint"] == "calibrated" and "lr_policy" not in card.training
    assert card.architecture["arch"] == card.architecture["family"] == "mobilenet_v2_x2"
    probs = Engine.from_model_dir(dest, num_threads=1).infer_pixels(_fixture_pixels(ensemble_run, fixture_dir)[0])
    assert probs.shape == (7,) and abs(float(probs.sum()) - 1.0) < 0.05


def _edited_copy(model_dir, dest, section, **fields):
    shutil.copytree(model_dir, dest)
    card = json.loads((dest / "card.json").read_text())
    card[section].update(fields)
    (dest / "card.json").write_text(json.dumps(card))
    return dest


@pytest.mark.parametrize(("section", "fields", "named"), [("normalization", {"mean": [0.0, 0.0, 0.0]}, "normalization"),
                                                          ("preprocessing", {"zoom": 0.86}, "preprocessing.zoom")])
def test_members_that_cannot_share_an_input_are_refused(members, fixture_dir, tmp_path, section, fields, named):
    other = _edited_copy(members[1], tmp_path / "other", section, **fields)
    with pytest.raises(ValueError, match=f"field '{named}'"):
        build([members[0], other], data=fixture_dir, runs_dir=tmp_path / "runs", cache_dir=tmp_path / "cache")


def test_zoomed_members_are_fitted_on_the_views_they_are_shown(members, fixture_dir, tmp_path, monkeypatch):
    zoomed = [_edited_copy(m, tmp_path / f"z{i}", "preprocessing", zoom=0.5) for i, m in enumerate(members)]
    fitted_on, predict_probs = [], ensemble.predict_probs  # the tiny members' outputs hardly depend on the
    # image, so look at what the temperature fit is given

    def recording_predict_probs(model, pixels, *norm):
        fitted_on.append(pixels)
        return predict_probs(model, pixels, *norm)

    monkeypatch.setattr(ensemble, "predict_probs", recording_predict_probs)
    run = build(zoomed, data=fixture_dir, max_accuracy_cost=5.0, runs_dir=tmp_path / "runs", cache_dir=tmp_path / "c")
    val = load_pixels(select(read_split(run / "split.csv", fixture_dir), "val"), 32, 40, None)
    np.testing.assert_array_equal(fitted_on[0], np.stack([centre_zoom(p, 0.5) for p in val]))
    assert json.loads((run / "calibration.json").read_text())["zoom"] == 0.5
    with pytest.raises(ValueError, match="fitted on views at zoom 0.5, the card would ask for 1.0"):
        quantize_run(run, QuantizeOptions(name="ens", out=tmp_path, data=fixture_dir, checkpoint="calibrated",
                                          representative=32, thresholds=LENIENT, num_threads=1))


def test_a_member_that_cannot_be_rebuilt_is_named(tiny_model_dir, members, fixture_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([str(members[0]), str(tiny_model_dir), "--data", str(fixture_dir), "--runs-dir", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "architecture.arch" in capsys.readouterr().err and not any(tmp_path.iterdir())


def _refitted(members, tmp_path):
    return [_edited_copy(m, tmp_path / f"r{i}", "split", fit_on=["train", "val"]) for i, m in enumerate(members)]


@pytest.mark.parametrize("given", [{}, {"given_bias": 0.5}, {"given_temperature": 2.0}])
def test_refitted_members_refuse_anything_fitted_on_val(members, fixture_dir, tmp_path, given):
    with pytest.raises(ValueError, match=r"refitted on train \+ val.*give --bias and --temperature"):
        build(_refitted(members, tmp_path), data=fixture_dir, runs_dir=tmp_path / "runs",
              cache_dir=tmp_path / "cache", **given)
    assert not (tmp_path / "runs").exists()


def test_refitted_members_take_the_given_bias_and_temperature_and_never_score_val(members, fixture_dir, tmp_path,
                                                                                monkeypatch):
    def no_val(*args, **kwargs):
        raise AssertionError("scored the val split")

    monkeypatch.setattr(ensemble, "int8_probs", no_val)
    monkeypatch.setattr(ensemble, "predict_probs", no_val)
    run_dir = build(_refitted(members, tmp_path), data=fixture_dir, given_bias=0.5, given_temperature=2.0,
                    runs_dir=tmp_path / "runs", cache_dir=tmp_path / "cache")
    run = TrainingRun.load(run_dir)
    assert run.meta.split["fit_on"] == ["train", "val"]  # quantize refuses a val-picked referral for it
    calibration = json.loads((run_dir / "calibration.json").read_text())
    assert (calibration["favour"]["bias"], calibration["temperature"], calibration["fitted_on_val"]) == (0.5, 2.0, [])
    x = normalize(_fixture_pixels(run_dir, fixture_dir), *run.normalization)
    logits = np.mean([keras.ops.convert_to_numpy(load_member(folder, i).model(x, training=False))
                      for i, folder in enumerate(members)], axis=0)
    logits[:, run.labels.index("mel")] += 0.5
    expected = keras.ops.convert_to_numpy(keras.ops.softmax(logits / 2.0))
    np.testing.assert_allclose(run.load_model("calibrated").predict(x, verbose=0), expected, atol=1e-5)


def test_a_member_is_recorded_with_what_its_backbone_was_pretrained_on():
    # a shipped member quantized before cards carried the provenance fields: they come by the backbone's name
    card = ModelCard.load(Path("models/dermnet-mnv2-cut9-refit/card.json"))
    assert "pretrained_on" not in card.training["backbone"]
    record = ensemble.member_record(card)
    assert record["name"] == "dermnet-mnv2-cut9-refit" and record["sha256"] == card.model_file.sha256
    assert record["backbone"]["pretrained_on"].startswith("ImageNet")
    assert record["backbone"]["weights_license"] == "Apache-2.0"
    assert record["backbone"]["weights_sha256"] == card.training["backbone"]["sha256"]


def test_a_member_trained_from_scratch_names_no_pretraining(members, ensemble_run):
    meta = json.loads((ensemble_run / "meta.json").read_text())
    assert all("backbone" not in m or "pretrained_on" not in m["backbone"] for m in meta["ensemble"]["members"])
