"""The committed models/ folder keeps its promises: every card loads the way the device loads it,
names a model file that is there with the recorded hash, and the comparison table is current."""
from __future__ import annotations

from pathlib import Path

import pytest

from device.card import DISCLAIMER, ModelCard, verify_model_file
from quantize.table import render

MODELS = Path(__file__).parents[2] / "models"
EXPERIMENTS = Path(__file__).parents[2] / "experiments"
# the design's two families, the default (trio) with its members, and the fast variant
SHIPPED = ("concat-resnet", "dermnet-mnv2-cut13-s2-refit", "dermnet-mnv2-cut16-refit", "dermnet-mnv2-cut9",
           "dermnet-mnv2-cut9-refit", "dermnet-mnv2-trio", "seed-cnn")
TRIED = tuple(sorted(p.parent.name for p in EXPERIMENTS.glob("*/card.json")))
MAX_FILE_BYTES = 10 * 1024 * 1024


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_card_matches_its_model_file(name):
    card = ModelCard.load(MODELS / name / "card.json")
    assert card.name == name
    verify_model_file(card, MODELS / name)
    assert card.disclaimer == DISCLAIMER
    assert card.metrics["split"] == "test" and card.metrics["n"] > 1000  # the full held-out split
    assert card.split["method"] == "lesion"
    assert (MODELS / name / "REPORT.md").read_text().count("gate: **passed**") == 1


def test_shelf_holds_exactly_the_shipped_models():
    assert tuple(sorted(p.parent.name for p in MODELS.glob("*/card.json"))) == SHIPPED


@pytest.mark.parametrize("name", TRIED)
def test_moved_experiment_still_loads(name):
    """experiments/ keeps its models whole: tests and records load them from there."""
    card = ModelCard.load(EXPERIMENTS / name / "card.json")
    assert card.name == name
    verify_model_file(card, EXPERIMENTS / name)


def test_models_folder_stays_lean():
    big = [str(p) for p in MODELS.rglob("*") if p.is_file() and p.stat().st_size > MAX_FILE_BYTES]
    assert not big, f"over 10 MB in models/: {big}"


def test_table_is_current():
    assert (MODELS / "README.md").read_text() == render(MODELS), "run: python -m quantize.table"
