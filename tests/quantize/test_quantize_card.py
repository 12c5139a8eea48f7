"""card.json written by quantize: valid for the device, complete, and bound to its files."""
from __future__ import annotations

import json
import shutil

import pytest

from device.card import CardError, ModelCard, Preprocessing, sha256_file
from device.engine import Engine
from quantize.card import build_card
from train.data import CITATION, CLASSES, LICENSE
from train.run import TrainingRun

METRIC_KEYS = ("accuracy", "balanced_accuracy", "macro_f1", "macro_auc", "ece", "per_class")


def _strict_json(path):
    def refuse(token):
        raise ValueError(f"non-standard JSON constant {token}")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_card_validates_and_describes_the_model(tiny_model_dir):
    card = ModelCard.load(tiny_model_dir / "card.json")
    assert card.name == "tiny"
    assert [(label.code, label.name) for label in card.labels] == list(CLASSES)
    assert (card.input.height, card.input.width, card.input.channels) == (48, 64, 3)
    assert card.input.dtype == "int8" and card.input.scale > 0
    assert card.preprocessing.policy == "center_crop_resize"
    for model_file in (card.model_file, card.float_file):
        path = tiny_model_dir / model_file.path
        assert model_file.sha256 == sha256_file(path)
        assert model_file.size_bytes == path.stat().st_size
    assert card.architecture["arch"] == "concat_resnet"
    assert card.architecture["params"] > 0 and card.architecture["macs"] > 0
    assert card.dataset["citation"] == CITATION and card.dataset["license"] == LICENSE
    assert card.split["method"] == "lesion" and set(card.split["counts"]) == {"train", "val", "test"}
    assert card.training["arch"] == "concat_resnet" and card.training["checkpoint"] == "best"
    assert "data" not in card.training  # workstation paths stay out of the shipped card
    assert card.quantization["gate"]["passed"] is True
    assert card.quantization["representative"]["count"] > 0


def test_card_metrics_for_float_and_int8(tiny_model_dir):
    card = ModelCard.load(tiny_model_dir / "card.json")
    assert card.metrics["split"] == "test" and card.metrics["n"] > 0
    for variant in ("float", "int8"):
        metrics = card.metrics[variant]
        for key in METRIC_KEYS:
            assert key in metrics, f"{variant}.{key}"
        assert set(metrics["per_class"]) == {code for code, _ in CLASSES}
        assert all("recall" in row for row in metrics["per_class"].values())
        assert 0.0 <= metrics["accuracy"] <= 1.0


def test_card_is_strict_json(tiny_model_dir):
    # NaN (an absent class's AUC on a tiny split) must be written as null, not NaN.
    _strict_json(tiny_model_dir / "card.json")


def test_report_is_written_next_to_the_card(tiny_model_dir):
    text = (tiny_model_dir / "REPORT.md").read_text()
    assert "| metric | float | int8 |" in text and "**passed**" in text


@pytest.fixture
def model_copy(tiny_model_dir, tmp_path):
    return shutil.copytree(tiny_model_dir, tmp_path / "tiny")


def test_tampered_model_file_is_refused(model_copy):
    path = model_copy / "model_int8.tflite"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CardError, match=r"model_int8\.tflite: sha256 .* model_file\.sha256"):
        Engine.from_model_dir(model_copy)


def test_tampered_card_sha_is_refused(model_copy):
    raw = json.loads((model_copy / "card.json").read_text())
    raw["float_file"]["sha256"] = "0" * 64
    (model_copy / "card.json").write_text(json.dumps(raw))
    Engine.from_model_dir(model_copy)  # the int8 file is still intact
    with pytest.raises(CardError, match=r"model_float\.tflite: sha256 .* float_file\.sha256"):
        Engine.from_model_dir(model_copy, variant="float")


def test_missing_files_are_named(model_copy, tmp_path):
    (model_copy / "model_int8.tflite").unlink()
    with pytest.raises(CardError, match=r"model file not found: .*model_int8\.tflite"):
        Engine.from_model_dir(model_copy)
    (model_copy / "card.json").unlink()
    with pytest.raises(CardError, match=r"card\.json"):
        Engine.from_model_dir(model_copy)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        Engine.from_model_dir(tmp_path / "nowhere")


def test_float_variant_needs_a_float_file(model_copy):
    raw = json.loads((model_copy / "card.json").read_text())
    raw["float_file"] = None
    (model_copy / "card.json").write_text(json.dumps(raw))
    with pytest.raises(CardError, match="float_file"):
        Engine.from_model_dir(model_copy, variant="float")


def test_card_carries_the_preprocessing_asked_for(tiny_run_dir, tiny_model_dir):
    card = build_card(TrainingRun.load(tiny_run_dir), name="tiny", int8_path=tiny_model_dir / "model_int8.tflite",
                      preprocessing=Preprocessing(tta="flips", zoom=0.86))
    parsed = ModelCard.from_dict(json.loads(json.dumps(card.to_dict()))).preprocessing
    assert (parsed.tta, parsed.zoom) == ("flips", 0.86)
    default = ModelCard.load(tiny_model_dir / "card.json").preprocessing
    assert (default.tta, default.zoom) == ("none", 1.0)


def test_card_carries_the_runs_colour_constancy(tiny_run_dir, tiny_model_dir, tmp_path):
    run_dir = shutil.copytree(tiny_run_dir, tmp_path / "run")
    meta = json.loads((run_dir / "meta.json").read_text())
    meta["normalization"]["colour"] = "shades_of_grey"
    (run_dir / "meta.json").write_text(json.dumps(meta))
    card = build_card(TrainingRun.load(run_dir), name="tiny", int8_path=tiny_model_dir / "model_int8.tflite")
    parsed = ModelCard.from_dict(json.loads(json.dumps(card.to_dict()))).normalization
    assert (parsed.colour, list(parsed.mean)) == ("shades_of_grey", meta["normalization"]["mean"])
    assert ModelCard.load(tiny_model_dir / "card.json").normalization.colour == "none"
