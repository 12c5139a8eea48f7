"""The card parser the device loads with: round trip, defaults, and the field named when one is wrong."""
from __future__ import annotations

import json
import re

import pytest

from device.card import CardError, Gate, ModelCard, Referral, TensorSpec


@pytest.fixture(scope="module")
def card_dict(tiny_model_dir) -> dict:
    return json.loads((tiny_model_dir / "card.json").read_text())


def test_round_trip(card_dict):
    card = ModelCard.from_dict(card_dict)
    assert ModelCard.from_dict(json.loads(json.dumps(card.to_dict()))) == card


def test_cards_without_tta_zoom_or_colour_mean_none(card_dict):
    old = json.loads(json.dumps(card_dict))
    old["preprocessing"].pop("tta"), old["preprocessing"].pop("zoom", None), old["normalization"].pop("colour", None)
    card = ModelCard.from_dict(old)
    assert (card.preprocessing.tta, card.preprocessing.zoom, card.normalization.colour) == ("none", 1.0, "none")
    old["normalization"]["colour"] = "shades_of_grey"
    assert ModelCard.from_dict(old).normalization.colour == "shades_of_grey"


def test_zoom_must_be_a_number(card_dict):
    bad = json.loads(json.dumps(card_dict))
    bad["preprocessing"]["zoom"] = "0.8"
    with pytest.raises(CardError, match=re.escape("field 'preprocessing.zoom': expected float, got str")):
        ModelCard.from_dict(bad)


BAD_FIELDS = {
    "schema_version": lambda d: d.update(schema_version=2),
    "labels": lambda d: d.update(labels=[]),
    "labels[0].code": lambda d: d["labels"][0].pop("code"),
    "input.dtype": lambda d: d["input"].update(dtype="int4"),
    "input.scale": lambda d: d["input"].update(scale=0.0),
    "normalization.std": lambda d: d["normalization"].update(std=[1.0, 0.0, 1.0]),
    "preprocessing.policy": lambda d: d["preprocessing"].update(policy="stretch"),
    "preprocessing.tta": lambda d: d["preprocessing"].update(tta="rotations"),
    "normalization.colour": lambda d: d["normalization"].update(colour="grey_world"),
    "preprocessing.zoom": lambda d: d["preprocessing"].update(zoom=1.5),
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


REFERRAL = {
    "classes": ["akiec", "bcc", "mel"], "threshold": 0.21, "target_sensitivity": 0.9, "picked_on": "val",
    "sensitivity": 0.91, "specificity": 0.72,
    "advice": "See a dermatologist: this lesion has features of a skin cancer.",
}


def with_referral(card_dict: dict, **changes) -> dict:
    data = json.loads(json.dumps(card_dict))
    data["referral"] = {**REFERRAL, **changes}
    return data


def test_cards_without_a_referral_load_with_none(card_dict):
    without = {k: v for k, v in card_dict.items() if k != "referral"}  # as the shipped cards are
    assert ModelCard.from_dict(without).referral is None
    assert ModelCard.from_dict({**without, "referral": None}).referral is None


def test_referral_is_parsed_and_round_trips(card_dict):
    card = ModelCard.from_dict(with_referral(card_dict))
    assert card.referral == Referral(classes=("akiec", "bcc", "mel"), threshold=0.21, sensitivity=0.91,
                                     specificity=0.72, advice=REFERRAL["advice"], target_sensitivity=0.9,
                                     picked_on="val")
    assert ModelCard.from_dict(json.loads(json.dumps(card.to_dict()))) == card
    minimal = {k: REFERRAL[k] for k in ("classes", "threshold", "sensitivity", "specificity", "advice")}
    card = ModelCard.from_dict({**card_dict, "referral": minimal})
    assert (card.referral.target_sensitivity, card.referral.picked_on) == (None, "")


BAD_REFERRALS = [  # (changes, field, message after the field)
    ({"threshold": 1.5}, "threshold", "expected a number in [0, 1], got 1.5"),
    ({"threshold": "0.2"}, "threshold", "expected a number in [0, 1], got '0.2'"),
    ({"sensitivity": True}, "sensitivity", "expected a number in [0, 1], got True"),
    ({"target_sensitivity": -0.1}, "target_sensitivity", "expected a number in [0, 1], got -0.1"),
    ({"classes": ["mel", "melanoma"]}, "classes", "expected distinct label codes from"),
    ({"classes": []}, "classes", "expected distinct label codes from"),
    ({"classes": ["mel", "mel"]}, "classes", "expected distinct label codes from"),
    ({"advice": "  "}, "advice", "must not be empty"),
]


@pytest.mark.parametrize(("changes", "field", "message"), BAD_REFERRALS)
def test_a_bad_referral_field_is_named(card_dict, changes, field, message):
    with pytest.raises(CardError, match=re.escape(f"field 'referral.{field}': {message}")):
        ModelCard.from_dict(with_referral(card_dict, **changes))


def test_a_missing_referral_field_is_named(card_dict):
    data = with_referral(card_dict)
    del data["referral"]["threshold"]
    with pytest.raises(CardError, match=re.escape("missing field 'referral.threshold'")):
        ModelCard.from_dict(data)


GATE = {"output": {"dtype": "int8", "scale": 0.00390625, "zero_point": -128}, "threshold": 0.62,
        "method": "logistic head on the pooled features", "advice": "Point the camera at a skin lesion.",
        "picked_on": "val negatives and lesions", "rates": {"everyday_test": 0.98, "lesion_test": 0.015}}


def test_a_gate_is_parsed_and_round_trips_and_cards_without_one_have_none(card_dict):
    card = ModelCard.from_dict({**card_dict, "gate": GATE})
    assert card.gate == Gate(output=TensorSpec("int8", 0.00390625, -128), threshold=0.62, method=GATE["method"],
                             advice=GATE["advice"], picked_on=GATE["picked_on"], rates=GATE["rates"])
    assert ModelCard.from_dict(json.loads(json.dumps(card.to_dict()))) == card
    assert ModelCard.from_dict({k: v for k, v in card_dict.items() if k != "gate"}).gate is None


@pytest.mark.parametrize(("changes", "message"), [
    ({"threshold": 1.2}, "field 'gate.threshold': expected a number in [0, 1], got 1.2"),
    ({"threshold": -0.01}, "field 'gate.threshold': expected a number in [0, 1], got -0.01"),
    ({"threshold": None}, "field 'gate.threshold': expected a number in [0, 1], got None"),
    ({"advice": " "}, "field 'gate.advice': must not be empty"),
    ({"output": {"dtype": "int8", "zero_point": -128}}, "field 'gate.output.scale': must be > 0 for int8"),
    ({"output": {"dtype": "int4", "scale": 0.1}}, "field 'gate.output.dtype': expected one of"),
    ({"rates": [0.9]}, "field 'gate.rates': expected dict"),
])
def test_a_bad_gate_field_is_named(card_dict, changes, message):
    with pytest.raises(CardError, match=re.escape(message)):
        ModelCard.from_dict({**card_dict, "gate": {**GATE, **changes}})


@pytest.mark.parametrize("missing", ["output", "threshold", "method", "advice"])
def test_a_missing_gate_field_is_named(card_dict, missing):
    with pytest.raises(CardError, match=re.escape(f"missing field 'gate.{missing}'")):
        ModelCard.from_dict({**card_dict, "gate": {k: v for k, v in GATE.items() if k != missing}})
