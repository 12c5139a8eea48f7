"""Shared fixtures: the HAM10000 mini fixture and a tiny, really trained and quantized model.

TensorFlow and Keras are imported inside the fixtures, so test sessions that never ask
for a model (most device tests) do not pay for loading them.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import WEB, run_node

FIXTURE_DIR = Path(__file__).parent / "fixtures" / "ham10000_mini"


@pytest.fixture(scope="session")
def fixture_dir() -> Path:
    """63 real HAM10000 images (9 per class) with their metadata CSV."""
    return FIXTURE_DIR


@pytest.fixture(scope="session")
def tiny_run_dir(tmp_path_factory, fixture_dir) -> Path:
    """A real training run (``train.train.fit``) on the fixture: concat_resnet 48x64, width 0.25, 4 epochs.

    The concat-ResNet is used because it learns image-dependent outputs in a few steps;
    edgenet's many BatchNorm layers still carry their initial moving statistics after
    so few steps and its outputs come out nearly constant.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from train.train import TrainConfig, fit, new_run_dir

    root = tmp_path_factory.mktemp("tiny_run")
    cfg = TrainConfig(data=str(fixture_dir), arch="concat_resnet", name="tiny", height=48, width=64, width_mult=0.25,
                      epochs=4, batch_size=16, lr_policy="constant", max_lr=3e-3, augment=False,
                      runs_dir=str(root), cache_dir=str(root / "cache"), workers=1)
    return fit(cfg, new_run_dir(cfg))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_run_dir, fixture_dir) -> Path:
    """A complete model folder (model_int8.tflite, model_float.tflite, card.json, REPORT.md)
    written by ``quantize`` from :func:`tiny_run_dir`."""
    from quantize.gate import GateThresholds
    from quantize.pipeline import QuantizeOptions, quantize_run

    # A 2-epoch model on 63 images is barely better than chance, so its top-1 is fragile on
    # a handful of test images; the gate itself is tested in tests/quantize, not here.
    lenient = GateThresholds(max_drop=100.0, min_agreement=0.0)
    options = QuantizeOptions(name="tiny", out=tmp_path_factory.mktemp("models"), data=fixture_dir,
                              representative=32, keep_float=True, thresholds=lenient, num_threads=1)
    return quantize_run(tiny_run_dir, options)


@pytest.fixture(scope="session")
def web_deps() -> Path:
    """web/node_modules as web/package-lock.json pins it (installed once with npm ci when missing):
    LiteRT.js and esbuild for the browser app, playwright-core for every browser test."""
    if not (WEB / "node_modules" / "@litertjs" / "core").is_dir():
        run_node("npm", "ci", "--no-audit", "--no-fund")
    return WEB / "node_modules"


@pytest.fixture(scope="session")
def negative_images(tmp_path_factory) -> list[Path]:
    """A few frames that are not skin lesions (blue paper, a leaf, a sky), made here (tests/gated_model.py)."""
    from tests.gated_model import write_negatives

    return write_negatives(tmp_path_factory.mktemp("negatives"))


@pytest.fixture(scope="session")
def gated_model_dir(tmp_path_factory, fixture_dir, negative_images) -> Path:
    """A tiny int8 model folder with the not-a-lesion gate's second output and card section."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from tests.gated_model import make_gated_model_dir

    images = sorted((fixture_dir / "images").glob("*.jpg"))[::3]
    return make_gated_model_dir(tmp_path_factory.mktemp("models") / "tiny-gated", images, negative_images)
