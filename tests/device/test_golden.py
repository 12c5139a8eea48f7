"""The shipped default model reproduces its golden outputs on the fixture images.

The golden file is rebuilt by tests/fixtures/make_golden.py whenever the model changes; the
tolerance is two steps of the int8 output, room for another interpreter build or CPU.
"""
import json
from pathlib import Path

import numpy as np
import pytest

from device.decode import load_image
from device.engine import Engine

REPO = Path(__file__).parents[2]
GOLDEN = REPO / "tests" / "fixtures" / "golden_default.json"
IMAGES = REPO / "tests" / "fixtures" / "ham10000_mini" / "images"


@pytest.fixture(scope="module")
def golden():
    return json.loads(GOLDEN.read_text())


@pytest.fixture(scope="module")
def engine(default_model_dir):
    return Engine.from_model_dir(default_model_dir, num_threads=1)


def test_golden_file_is_for_the_shipped_model(engine, golden):
    assert golden["sha256"] == engine.card.model_file.sha256, "model changed: run tests/fixtures/make_golden.py"
    assert sorted(golden["probabilities"]) == sorted(p.name for p in IMAGES.glob("*.jpg"))


def test_default_model_matches_golden_outputs(engine, golden):
    tolerance = 2 * engine.card.output.scale
    for name, expected in golden["probabilities"].items():
        probs = engine.infer(load_image(IMAGES / name)).probabilities
        np.testing.assert_allclose(probs, expected, atol=tolerance, err_msg=name)
        assert int(np.argmax(probs)) == int(np.argmax(expected)) or np.sort(expected)[-1] - np.sort(expected)[-2] <= tolerance
