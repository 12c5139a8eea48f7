"""benchmarks/results/README.md is generated from the runs' JSON and marks the run that measured
today's default; a committed index that differs from its source fails here."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from benchmarks.index import RESULTS, current_run, render

REPO = Path(__file__).parents[2]


def test_committed_index_is_current():
    assert (RESULTS / "README.md").read_text() == render(), "run: python -m benchmarks.index (make docs)"


def _run(results: Path, stem: str, created: str, mode: str, models: list[str]) -> None:
    entries = [{"name": m, "int8_size_bytes": 1} for m in models]
    (results / f"{stem}.json").write_text(json.dumps({"created": created, "mode": mode, "models": entries}))


@pytest.fixture()
def shelf(tmp_path, tiny_model_dir):
    models = tmp_path / "models"
    shutil.copytree(tiny_model_dir, models / "tiny")
    (models / "DEFAULT").write_text("tiny\n")
    results = tmp_path / "results"
    results.mkdir()
    return results, models


def test_current_is_the_newest_full_run_of_the_default(shelf):
    results, models = shelf
    _run(results, "old", "2026-01-01T00:00:00+00:00", "full", ["tiny"])
    _run(results, "quick", "2026-01-03T00:00:00+00:00", "quick", ["tiny"])
    _run(results, "other", "2026-01-04T00:00:00+00:00", "full", ["another"])
    assert current_run(results, models).stem == "old"
    text = render(results, models)
    assert "| [old](old.md) **(current)** |" in text and text.count("(current)") == 1
    assert "earlier file of the default" in text  # 1 byte measured, not the card's size


def test_no_run_of_the_default_says_what_to_run(shelf):
    results, models = shelf
    _run(results, "other", "2026-01-04T00:00:00+00:00", "full", ["another"])
    with pytest.raises(LookupError, match="make bench"):
        current_run(results, models)
