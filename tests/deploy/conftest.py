"""Deployment test fixtures (helpers in tests/deploy/daemon_process.py)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.daemon_process import DaemonProcess


@pytest.fixture
def start_daemon(tmp_path):
    """``start_daemon(config, env=None)`` -> a started DaemonProcess; every one is killed at the end."""
    started: list[DaemonProcess] = []

    def start(config: dict[str, Any], env: dict[str, str] | None = None) -> DaemonProcess:
        workdir = tmp_path / f"daemon{len(started)}"
        workdir.mkdir()
        started.append(DaemonProcess(workdir, config, env))
        return started[-1].start()

    yield start
    for daemon in started:
        daemon.kill()


@pytest.fixture
def images(tmp_path, fixture_dir) -> Path:
    """A private copy of a few fixture images, which the tests may take away."""
    folder = tmp_path / "images"
    folder.mkdir()
    for image in sorted((fixture_dir / "images").glob("*.jpg"))[:8]:
        shutil.copy(image, folder)
    return folder
