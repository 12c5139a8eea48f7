"""The card parser the device loads with: round trip, defaults, and the field named when one is wrong."""
from __future__ import annotations

import json
import re

import pytest

from device.card import CardError, ModelCard


@pytest.fixture(scope="module")
def card_dict(tiny_model_dir) -> dict:
    return json.loads((tiny_model_dir / "card.json").read_text())


def test_round_trip(card_dict):
    card = ModelCard.from_dict(card_dict)
    assert ModelCard.from_dict(json.loads(json.dumps(card.to_dict()))) == card


def test_cards_without_tta_mean_none(card_dict):
    del card_dict["preprocessing"]["tta"]
    assert ModelCard.from_dict(card_dict).preprocessing.tta == "none"


BAD_FIELDS = {
    "schema_version": lambda d: d.update(schema_version=2),
    "labels": lambda d: d.update(labels=[]),
    "labels[0].code": lambda d: d["labels"][0].pop("code"),
    "input.dtype": lambda d: d["input"].update(dtype="int4"),
    "input.scale": lambda d: d["input"].update(scale=0.0),
    "normalization.std": lambda d: d["normalization"].update(std=[1.0, 0.0, 1.0]),
    "preprocessing.policy": lambda d: d["preprocessing"].update(policy="stretch"),
    "preprocessing.tta": lambda d: d["preprocessing"].update(tta="rotations"),
    "model_file.sha256": lambda d: d["model_file"].update(sha256="abc"),
}


@pytest.mark.parametrize("field", sorted(BAD_FIELDS))
def test_a_bad_field_is_named(card_dict, field):
    bad = json.loads(json.dumps(card_dict))
    BAD_FIELDS[field](bad)
    with pytest.raises(CardError, match=re.escape(f"field '{field}'")):
        ModelCard.from_dict(bad)


def test_load_names_the_file(tmp_path):
    missing = tmp_path / "card.json"
    with pytest.raises(CardError, match=re.escape(f"model card not found: {missing}")):
        ModelCard.load(missing)
    missing.write_text("{not json")
    with pytest.raises(CardError, match=re.escape(f"{missing}: not valid JSON")):
        ModelCard.load(missing)
