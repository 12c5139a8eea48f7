"""The shelf names its default once: models/DEFAULT. Everything that picks a model by default
reads it (the daemon's config, the Makefile, the arm64 and install scripts, the web build), the
generated models/README.md marks it, and every other folder on the shelf has a stated role."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from device.config import default_model_name, load_config
from quantize.table import load_shelf

REPO = Path(__file__).parents[2]
MODELS = REPO / "models"
DEFAULT = default_model_name(MODELS)
# every model folder name anywhere in the tree: none may be written into the default's readers
ALL_NAMES = sorted({p.parent.name for top in ("models", "experiments") for p in (REPO / top).glob("*/card.json")})
READERS = ("Makefile", "device/config.py", "device/systemd/check_arm64.sh", "device/systemd/install.sh",
           "web/build.mjs")


def _names_in(text: str) -> list[str]:
    return [n for n in ALL_NAMES if re.search(rf"(?<![\w-]){re.escape(n)}(?![\w-])", text)]


def test_default_file_names_a_shipped_model():
    assert DEFAULT and (MODELS / DEFAULT / "card.json").is_file()


@pytest.mark.parametrize("path", READERS)
def test_readers_name_no_model_themselves(path):
    assert _names_in((REPO / path).read_text()) == [], f"{path} names a model; read models/DEFAULT instead"


def test_daemon_default_is_the_default_file():
    assert load_config(None).model.dir == f"models/{DEFAULT}"


def test_example_config_names_the_default():
    example = yaml.safe_load((REPO / "device" / "config.example.yaml").read_text())
    assert example["model"]["dir"] == f"models/{DEFAULT}"


def test_makefile_model_is_the_default():
    out = subprocess.run(["make", "-s", "--no-print-directory", "--eval", "print-model: ; @echo $(MODEL)",
                          "print-model"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.strip() == f"models/{DEFAULT}"


def test_arm64_check_reads_the_default_file():
    text = (REPO / "device" / "systemd" / "check_arm64.sh").read_text()
    assert 'MODEL=$SRC/models/$(<"$SRC/models/DEFAULT")' in text


def test_web_build_reads_the_default_file():
    assert "'models', 'DEFAULT'" in (REPO / "web" / "build.mjs").read_text()


def test_index_marks_the_default_and_only_it():
    rows = [line for line in (MODELS / "README.md").read_text().splitlines() if line.startswith("| [")]
    marked = [line.split("]")[0][3:] for line in rows if "| **default** |" in line]
    assert marked == [DEFAULT]


def test_every_shelf_folder_has_a_role():
    shelf = load_shelf(MODELS)
    on_shelf = {p.parent.name for p in MODELS.glob("*/card.json")}
    assert all((MODELS / m / "card.json").is_file() for m in shelf.members), "a member of the default is missing"
    assert set(shelf.roles) <= on_shelf, "shelf.yaml gives a role to a folder that is not in models/"
    unexplained = on_shelf - {shelf.default, *shelf.members, *shelf.roles}
    assert not unexplained, f"no role in models/shelf.yaml (or move to experiments/): {sorted(unexplained)}"


def test_no_loose_records_on_the_shelf():
    loose = sorted(p.name for p in MODELS.iterdir() if p.is_file() and p.name not in {"README.md", "DEFAULT", "shelf.yaml"})
    assert not loose, f"records belong in experiments/: {loose}"


EXPERIMENTS = REPO / "experiments"


def test_experiments_index_lists_every_protocol_and_model_folder():
    index = (EXPERIMENTS / "README.md").read_text()
    protocols = sorted(p.name for p in EXPERIMENTS.glob("*-PROTOCOL.md"))
    folders = sorted(p.parent.name for p in EXPERIMENTS.glob("*/card.json"))
    missing = [p for p in protocols if f"({p})" not in index]
    missing += [f for f in folders if f"({f}/training/README.md)" not in index]
    assert not missing, f"experiments/README.md has no row for: {missing}"
