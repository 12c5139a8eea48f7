"""The Keras baseline builds every architecture train/ builds, from the card alone (and an
ensemble's member cards beside it), or skips saying why: the benchmark must not fail on the shelf."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from benchmarks import Skipped
from benchmarks.baseline import Architecture, build_keras
from device.card import ModelCard
from train.config import DEFAULT_INPUT

REPO = Path(__file__).parents[2]
CARDS = sorted(p for top in ("models", "experiments") for p in (REPO / top).glob("*/card.json"))


@pytest.mark.parametrize("card_path", CARDS, ids=lambda p: f"{p.parts[-3]}/{p.parts[-2]}")
def test_baseline_rebuilds_the_cards_network(card_path):
    card = ModelCard.load(card_path)
    model = build_keras(Architecture.from_card(card, card_path.parents[1]))
    # random weights, same graph: the parameter count the card recorded from the trained model
    assert model.count_params() == card.architecture["params"]
    assert tuple(model.input_shape[1:]) == (card.input.height, card.input.width, 3)


@pytest.mark.parametrize("arch", sorted(DEFAULT_INPUT))
def test_every_family_train_builds_has_a_baseline(arch):
    """Every --arch train/ accepts, at its default input, with nothing shipped of it yet."""
    h, w = DEFAULT_INPUT[arch]
    model = build_keras(Architecture(arch, (h, w, 3)))
    assert model.output_shape == (None, 7)


def test_an_ensemble_without_its_members_is_skipped_naming_them(tmp_path):
    default = REPO / "models" / "dermnet-mnv2-trio"
    shutil.copytree(default, tmp_path / default.name, ignore=shutil.ignore_patterns("*.tflite", "training"))
    card = ModelCard.load(tmp_path / default.name / "card.json")
    with pytest.raises(Skipped, match="member card.*not found.*dermnet-mnv2-cut16-refit"):
        Architecture.from_card(card, tmp_path)


def test_an_unknown_architecture_is_skipped_with_the_known_ones():
    with pytest.raises(Skipped, match="'vit_tiny'.*seed_cnn.*mobilenet_v2"):
        build_keras(Architecture("vit_tiny", (90, 120, 3)))
