"""quantize.regate: a shipped folder scored again as a changed card asks, and refused when it cannot be."""
from __future__ import annotations

import dataclasses
import json
import re
import shutil

import numpy as np
import pytest

from device.card import ModelCard, sha256_file
from device.engine import Engine
from quantize.gate import GateError
from quantize.pipeline import QuantizeOptions
from quantize.regate import _check_rebuild, regate
from train.data import load_pixels, redraw_split, select
from train.dataset import engine_probs
from train.metrics import classification_report


@pytest.fixture
def model_copy(tiny_model_dir, tmp_path):
    return shutil.copytree(tiny_model_dir, tmp_path / "tiny")


def _edit_card(folder, edit):
    raw = json.loads((folder / "card.json").read_text())
    edit(raw)
    (folder / "card.json").write_text(json.dumps(raw))


def test_regate_scores_the_same_file_as_the_new_card_asks(model_copy, fixture_dir):
    before = ModelCard.load(model_copy / "card.json")
    regate(model_copy, data=fixture_dir, zoom=0.8, threads=1)
    card = ModelCard.load(model_copy / "card.json")
    assert card.preprocessing.zoom == 0.8 and card.model_file == before.model_file
    assert sha256_file(model_copy / "model_int8.tflite") == before.model_file.sha256
    test = select(redraw_split(card.split, fixture_dir, owner=card.name), "test")
    probs = engine_probs(Engine.from_model_dir(model_copy, num_threads=1), load_pixels(test, 48, 64, None), desc="int8")
    expected = classification_report(probs, np.array([r.label for r in test]), card.codes)
    assert card.metrics["int8"]["accuracy"] == expected["accuracy"]
    assert card.metrics["int8"]["macro_auc"] == pytest.approx(expected["macro_auc"])
    assert card.metrics["int8"] != before.metrics["int8"]  # the zoom changed what the model saw
    assert "- centre zoom: 0.80" in (model_copy / "REPORT.md").read_text()


def test_a_failed_gate_leaves_the_folder_as_it_was(model_copy, fixture_dir):
    _edit_card(model_copy, lambda c: c["quantization"]["gate"].update(min_agreement=1.01))
    card_before, report_before = (model_copy / "card.json").read_text(), (model_copy / "REPORT.md").read_text()
    with pytest.raises(GateError, match="agreement"):
        regate(model_copy, data=fixture_dir, zoom=0.8, threads=1)
    assert (model_copy / "card.json").read_text() == card_before
    assert (model_copy / "REPORT.md").read_text() == report_before


def test_refusals_name_what_is_missing(model_copy, fixture_dir):
    (model_copy / "card.sig").write_bytes(b"x")
    with pytest.raises(ValueError, match=re.escape("card.sig: the folder is signed")):
        regate(model_copy, data=fixture_dir, zoom=0.8)
    (model_copy / "card.sig").unlink()
    _edit_card(model_copy, lambda c: c.update(float_file=None))
    with pytest.raises(ValueError, match="field 'float_file' is missing"):
        regate(model_copy, data=fixture_dir, zoom=0.8)
    with pytest.raises(ValueError, match="rebuilds mobilenet_v2 models; the card's architecture.arch is 'concat_resnet'"):
        regate(model_copy, data=fixture_dir, zoom=0.8, float_from_int8=True)


def test_a_rebuilt_float_reference_must_reproduce_the_cards_float_accuracy(model_copy, fixture_dir):
    card = ModelCard.load(model_copy / "card.json")
    test = select(redraw_split(card.split, fixture_dir, owner=card.name), "test")
    options = QuantizeOptions(name="tiny", num_threads=1)
    _check_rebuild(card, model_copy / "model_float.tflite", test, options)  # the shipped float: it matches
    off = card.metrics["float"]["accuracy"] + 0.01
    wrong = dataclasses.replace(card, metrics={**card.metrics, "float": {**card.metrics["float"], "accuracy": off}})
    with pytest.raises(ValueError, match="more than 0.1 points apart"):
        _check_rebuild(wrong, model_copy / "model_float.tflite", test, options)
    _check_rebuild(wrong, model_copy / "model_float.tflite", test, options, tolerance=1.5)  # allowed, knowingly
