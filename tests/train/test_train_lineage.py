"""train.lineage: a two-member lineage on the fixture images, run for real through the project's own
commands (train twice, calibrate, quantize per member; ensemble; quantize), then resumed."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from device.card import ModelCard
from train.lineage import STATE_FILE, Lineage, main

REPO = Path(__file__).parents[2]
TINY = {"arch": "mobilenet_v2", "backbone_weights": "none", "height": 32, "width": 40, "width_mult": 0.35,
        "batch_size": 16, "augment": False, "freeze_epochs": 0, "lr_policy": "constant", "max_lr": 1e-3,
        "bn_mode": "reestimate", "workers": 1, "epochs": 1, "stop_epoch": 1, "refit": True}


def _member(name: str, seed: int) -> dict:
    return {"name": name, "stage1": {"seed": seed}, "stage2": {"seed": seed},
            "calibrate": {"tau": 0.0, "temperature": 1.0}, "referral": {"threshold": 0.5, "picked_on": "a test"}}


@pytest.fixture(scope="module")
def lineage(tmp_path_factory, fixture_dir):
    root = tmp_path_factory.mktemp("lineage")
    (root / "stage1.yaml").write_text(yaml.safe_dump(TINY))
    (root / "stage2.yaml").write_text(yaml.safe_dump({**TINY, "qat": True}))
    spec = {"stage1": str(root / "stage1.yaml"), "stage2": str(root / "stage2.yaml"), "zoom": 1.0,
            "members": [_member("a", 1), _member("b", 2)],
            "ensemble": {"name": "ab", "bias": 0.0, "temperature": 1.0,
                         "referral": {"threshold": 0.5, "picked_on": "a test"}},
            # a one-epoch network's top-1 is fragile: the gate still runs, with room
            "quantize": {"max_drop": 100, "min_agreement": 0, "representative": 16, "threads": 1}}
    (root / "lineage.yaml").write_text(yaml.safe_dump(spec))
    work = root / "work"
    final = main([str(root / "lineage.yaml"), "--data", str(fixture_dir), "--work", str(work)])
    return root, work, final


def test_the_chain_ends_in_a_gated_ensemble_of_its_members(lineage):
    _, work, final = lineage
    card = ModelCard.load(final / "card.json")
    assert card.name == "ab" and card.architecture["arch"] == "mobilenet_v2_x2"
    assert [m["name"] for m in card.training["ensemble"]["members"]] == ["a", "b"]
    assert card.training["ensemble"]["fitted_on_val"] == []  # every value was given, none fitted on val
    assert card.referral.threshold == pytest.approx(0.5)
    for member in ("a", "b"):
        assert ModelCard.load(work / "models" / member / "card.json").split["fit_on"] == ["train", "val"]


def test_a_second_run_resumes_only_what_is_not_done(lineage, fixture_dir):
    root, work, final = lineage
    state = json.loads((work / STATE_FILE).read_text())
    assert list(state) == ["a/stage1", "a/stage2", "a/calibrate", "a/quantize", "b/stage1", "b/stage2",
                           "b/calibrate", "b/quantize", "ab/ensemble", "ab/quantize"]
    before = {p: p.stat().st_mtime_ns for p in (work / "models").rglob("card.json")}
    del state["ab/quantize"]
    (work / STATE_FILE).write_text(json.dumps(state))
    assert main([str(root / "lineage.yaml"), "--data", str(fixture_dir), "--work", str(work)]) == final
    after = {p: p.stat().st_mtime_ns for p in (work / "models").rglob("card.json")}
    assert [p.parent.name for p in before if after[p] != before[p]] == ["ab"]  # only the last step ran again


def test_the_default_lineage_names_the_shipped_members():
    lineage = Lineage.load(REPO / "train" / "configs" / "default" / "lineage.yaml")
    trio = ModelCard.load(REPO / "models" / lineage.ensemble.name / "card.json")
    assert [m.name for m in lineage.members] == [m["name"] for m in trio.training["ensemble"]["members"]]
    assert lineage.ensemble.bias == trio.training["ensemble"]["favour"]["bias"]
    assert lineage.ensemble.temperature == pytest.approx(trio.training["ensemble"]["temperature"])
    for member in lineage.members:
        card = ModelCard.load(REPO / "models" / member.name / "card.json")
        assert card.architecture["backbone_cut"] == member.stage1["backbone_cut"]
        assert card.referral.threshold == pytest.approx(member.referral.threshold)


def test_a_lineage_missing_a_key_names_it(tmp_path):
    (tmp_path / "l.yaml").write_text(yaml.safe_dump({"stage1": "a", "stage2": "b", "zoom": 1, "members": []}))
    with pytest.raises(ValueError, match="'ensemble'"):
        Lineage.load(tmp_path / "l.yaml")
