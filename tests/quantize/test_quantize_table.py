import json
import shutil

from quantize.table import render


def test_table_row_comes_from_the_card(tiny_model_dir, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(tiny_model_dir, models / "tiny")
    card = json.loads((models / "tiny" / "card.json").read_text())
    text = render(models)
    row = next(line for line in text.splitlines() if line.startswith("| [tiny]"))
    assert f"{100 * card['metrics']['int8']['accuracy']:.1f}%" in row
    assert f"{card['architecture']['macs'] / 1e6:.0f} M" in row
    assert "not a diagnosis" in text
    assert "| none |" in row  # the tiny card asks for no test-time augmentation
    header = next(line for line in text.splitlines() if line.startswith("| model |"))
    assert header.count("|") == row.count("|")


def test_table_says_what_view_the_card_asks_for(tiny_model_dir, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(tiny_model_dir, models / "tiny")
    card = json.loads((models / "tiny" / "card.json").read_text())
    card["preprocessing"].update(zoom=0.86, tta="flips")
    card["normalization"]["colour"] = "shades_of_grey"
    (models / "tiny" / "card.json").write_text(json.dumps(card))
    row = next(line for line in render(models).splitlines() if line.startswith("| [tiny]"))
    assert "| centre 86%, 4 flips, shades of grey |" in row
