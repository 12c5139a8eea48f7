"""The operating-point command on the tiny model and fixture (the bias itself: test_train_calibrate)."""
from __future__ import annotations

import json
import re
import shutil

import pytest

from benchmarks.operating import main


def test_the_command_prints_val_and_test_rows(tiny_model_dir, fixture_dir, tmp_path, capsys):
    assert main(["--model-dir", str(tiny_model_dir), "--data", str(fixture_dir), "--cache-dir", str(tmp_path),
                 "--class", "nv", "--biases", "0,1"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith(("| 0.00", "| 1.00"))]
    assert len(rows) == 2
    # favouring nv never lowers nv's recall, on val or on test
    cells = [[float(c.strip().rstrip("%")) for c in row.strip("|").split("|")] for row in rows]
    assert cells[1][3] >= cells[0][3] and cells[1][6] >= cells[0][6]


def test_the_command_prints_the_class_auc_that_no_bias_changes(tiny_model_dir, fixture_dir, tmp_path, capsys):
    args = ["--model-dir", str(tiny_model_dir), "--data", str(fixture_dir), "--cache-dir", str(tmp_path), "--class", "nv"]
    def auc_line(out: str) -> str:
        return next(line for line in out.splitlines() if "ROC AUC" in line)

    assert main([*args, "--biases", "0"]) == 0
    line = auc_line(capsys.readouterr().out)
    assert main([*args, "--biases", "0,2"]) == 0
    assert auc_line(capsys.readouterr().out) == line
    val, test = (float(v) for v in re.findall(r"(?:val|test) (\d\.\d{3})", line))
    assert 0.0 <= val <= 1.0 and 0.0 <= test <= 1.0


def test_an_ensemble_of_one_model_twice_scores_as_the_model(tiny_model_dir, fixture_dir, tmp_path, capsys):
    args = ["--data", str(fixture_dir), "--cache-dir", str(tmp_path), "--class", "nv", "--biases", "0,0.5,1"]
    assert main(["--model-dir", str(tiny_model_dir), *args]) == 0
    alone = capsys.readouterr().out
    assert main(["--model-dir", str(tiny_model_dir), "--model-dir", str(tiny_model_dir), *args]) == 0
    assert capsys.readouterr().out == alone


def test_the_command_refuses_models_whose_labels_differ(tiny_model_dir, fixture_dir, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(tiny_model_dir, other)
    card = json.loads((other / "card.json").read_text())
    card["labels"] = card["labels"][::-1]
    (other / "card.json").write_text(json.dumps(card))
    with pytest.raises(SystemExit) as exit_info:
        main(["--model-dir", str(tiny_model_dir), "--model-dir", str(other), "--data", str(fixture_dir),
              "--cache-dir", str(tmp_path)])
    assert exit_info.value.code == 2


def test_the_command_refuses_an_unknown_class(tiny_model_dir, fixture_dir, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["--model-dir", str(tiny_model_dir), "--data", str(fixture_dir), "--cache-dir", str(tmp_path),
              "--class", "tumour"])
    assert exit_info.value.code == 2


def test_a_refitted_model_s_val_rows_are_marked_in_sample(tiny_model_dir, fixture_dir, tmp_path, capsys):
    args = ["--data", str(fixture_dir), "--cache-dir", str(tmp_path), "--class", "nv", "--biases", "0"]
    assert main(["--model-dir", str(tiny_model_dir), *args]) == 0
    assert "in-sample" not in capsys.readouterr().out
    refit = tmp_path / "refit"
    shutil.copytree(tiny_model_dir, refit)
    card = json.loads((refit / "card.json").read_text())
    card["split"]["fit_on"] = ["train", "val"]
    (refit / "card.json").write_text(json.dumps(card))
    assert main(["--model-dir", str(refit), *args]) == 0
    assert "val figures are in-sample" in capsys.readouterr().out


def test_the_command_prints_test_intervals_around_the_first_bias_figures(tiny_model_dir, fixture_dir, tmp_path,
                                                                         capsys):
    args = ["--model-dir", str(tiny_model_dir), "--data", str(fixture_dir), "--cache-dir", str(tmp_path),
            "--class", "nv", "--biases", "0,1"]
    assert main([*args, "--resamples", "300"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("| 0.00"))
    test_accuracy = float(row.strip("|").split("|")[4].strip().rstrip("%"))
    line = next(line for line in out.splitlines() if line.startswith("test at nv bias 0.00"))
    value, lo, hi = (float(v) for v in re.search(r"accuracy (\S+)% \[(\S+)%, (\S+)%\]", line).groups())
    assert value == test_accuracy and lo <= value <= hi
    assert main([*args, "--resamples", "0"]) == 0
    assert "intervals" not in capsys.readouterr().out


def test_the_command_scores_the_extra_set_as_a_second_test(tiny_model_dir, fixture_dir, tmp_path, capsys):
    from tests.train.test_train_extra_data import ROWS, make_extra

    extra = make_extra(tmp_path / "isic")
    assert main(["--model-dir", str(tiny_model_dir), "--data", str(fixture_dir), "--cache-dir", str(tmp_path),
                 "--biases", "0", "--resamples", "0", "--extra", str(extra)]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("isic ")]
    assert [line.split()[1] for line in lines] == ["val", "test"]
    for line, split in zip(lines, ("val", "test"), strict=True):
        assert f"({sum(r[2] == split for r in ROWS)} images" in line
        recalls = dict(re.findall(r"(mel|bkl|nv) recall (n/a|\d+\.\d%)", line))
        assert set(recalls) == {"mel", "bkl", "nv"}
        # val holds no bkl image: its recall is n/a, not 0%; the others are shares
        assert (recalls["bkl"] == "n/a") == (split == "val")
        assert all(0.0 <= float(v.rstrip("%")) <= 100.0 for v in recalls.values() if v != "n/a")
