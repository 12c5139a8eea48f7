"""The paired comparison: the bootstrap on made-up scores, the command on the tiny model and fixture."""
from __future__ import annotations

import re

import numpy as np
import pytest

from benchmarks.paired import main, paired

K = 1  # the compared class in the made-up scores


def _scores(labels: np.ndarray, right: np.ndarray, num_classes: int = 3) -> np.ndarray:
    """Probabilities whose arg-max is the label where ``right`` holds and the next class elsewhere."""
    predicted = np.where(right, labels, (labels + 1) % num_classes)
    probs = np.full((len(labels), num_classes), 0.1)
    probs[np.arange(len(labels)), predicted] = 0.8
    return probs


@pytest.fixture
def split():
    rng = np.random.default_rng(3)
    labels = np.repeat(np.arange(3), 40)
    groups = np.arange(len(labels)) // 2  # two images per lesion
    a = _scores(labels, rng.random(len(labels)) < 0.6)
    b = _scores(labels, rng.random(len(labels)) < 0.9)
    return labels, groups, a, b


def test_a_better_model_shows_a_positive_difference_whose_interval_excludes_zero(split):
    labels, groups, a, b = split
    rows = {r.figure: r for r in paired(a, b, labels, groups, K, resamples=300)}
    accuracy = rows["accuracy"]
    assert accuracy.a == pytest.approx(100 * np.mean(a.argmax(1) == labels))
    assert accuracy.b == pytest.approx(100 * np.mean(b.argmax(1) == labels))
    assert accuracy.diff > 0 and accuracy.low > 0 and accuracy.low <= accuracy.diff <= accuracy.high
    assert rows["accuracy + balanced"].diff == pytest.approx(accuracy.diff + rows["balanced accuracy"].diff)


def test_swapping_the_models_negates_every_difference(split):
    labels, groups, a, b = split
    forward, backward = paired(a, b, labels, groups, K, resamples=200), paired(b, a, labels, groups, K, resamples=200)
    for f, r in zip(forward, backward, strict=True):
        assert f.diff == pytest.approx(-r.diff)
        assert (f.low, f.high) == pytest.approx((-r.high, -r.low))
        assert f.se == pytest.approx(r.se)


def test_a_model_against_itself_differs_by_nothing(split):
    labels, groups, a, _ = split
    for row in paired(a, a, labels, groups, K, resamples=100):
        assert (row.diff, row.se, row.low, row.high) == (0.0, 0.0, 0.0, 0.0)


def test_resamples_draw_whole_lesions(split):
    # one lesion holding every image: each resample is the whole split, so the difference never varies
    labels, _, a, b = split
    rows = paired(a, b, labels, np.zeros(len(labels)), K, resamples=50)
    for row in rows:
        assert row.se == pytest.approx(0.0) and row.low == pytest.approx(row.diff) == pytest.approx(row.high)
    # one lesion per image: the difference does vary
    assert paired(a, b, labels, np.arange(len(labels)), K, resamples=50)[0].se > 0


def test_the_command_compares_a_model_with_itself_as_equal(tiny_model_dir, fixture_dir, tmp_path, capsys):
    from tests.train.test_train_extra_data import make_extra

    extra = make_extra(tmp_path / "isic")
    assert main(["--model-dir", str(tiny_model_dir), "--model-dir", str(tiny_model_dir), "--data", str(fixture_dir),
                 "--cache-dir", str(tmp_path), "--class", "nv", "--resamples", "50", "--extra", str(extra)]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and not line.startswith("| figure")]
    assert [row.split("|")[1].strip() for row in rows] == [
        "accuracy", "balanced accuracy", "accuracy + balanced", "nv recall", "nv AUC", "accuracy", "nv AUC"]
    for row in rows:
        a, b, diff = (float(c) for c in row.split("|")[2:5])
        assert a == b and diff == 0.0
    assert re.search(r"isic val \(\d+ images, other clinics\)", out)


def test_the_command_wants_exactly_two_models(tiny_model_dir, fixture_dir, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["--model-dir", str(tiny_model_dir), "--data", str(fixture_dir), "--cache-dir", str(tmp_path)])
    assert exit_info.value.code == 2


def test_a_bias_moves_model_b_only_towards_the_class(tiny_model_dir, fixture_dir, tmp_path, capsys):
    args = ["--model-dir", str(tiny_model_dir), "--model-dir", str(tiny_model_dir), "--data", str(fixture_dir),
            "--cache-dir", str(tmp_path), "--class", "nv", "--resamples", "20"]

    def recalls(out: str) -> tuple[float, float]:
        row = next(line for line in out.splitlines() if line.startswith("| nv recall"))
        return tuple(float(c) for c in row.split("|")[2:4])

    assert main([*args, "--bias", "0"]) == 0
    a, b = recalls(capsys.readouterr().out)
    assert a == b
    assert main([*args, "--bias", "20"]) == 0
    out = capsys.readouterr().out
    assert recalls(out) == (a, 100.0) and "nv bias 20" in out
