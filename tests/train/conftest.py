"""Training-side fixtures: one tiny run trained through the real CLI entry point.

The run is shared by the training, evaluation and Grad-CAM tests so the suite trains
only once: seed_cnn at 56x72 (the smallest input its valid convolutions accept), width
0.25, augmentation off and a fixed seed so the loss curve is reproducible.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

TINY_SEED_CNN = (
    "--arch", "seed_cnn", "--height", "56", "--width", "72", "--width-mult", "0.25", "--batch-size", "16",
    "--augment", "false", "--optimizer", "adam", "--lr-policy", "constant", "--max-lr", "3e-3",
    "--seed", "1", "--workers", "1",
)


@pytest.fixture(scope="session")
def tiny_argv(fixture_dir):
    """``tiny_argv(workdir, *extra)``: ``python -m train`` arguments for a tiny fixture run
    whose run directory and pixel cache stay under ``workdir``."""

    def argv(workdir: Path, *extra: str) -> list[str]:
        return ["--data", str(fixture_dir), "--runs-dir", str(workdir / "runs"),
                "--cache-dir", str(workdir / "cache"), *TINY_SEED_CNN, *extra]

    return argv


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, tiny_argv) -> Path:
    """Run directory of a 3-epoch training on the fixture (no evaluation yet)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from train.train import main

    return main(tiny_argv(tmp_path_factory.mktemp("trained"), "--epochs", "3", "--no-evaluate"))
