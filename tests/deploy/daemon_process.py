"""The daemon as systemd runs it, for the deployment tests: a real ``python -m device run``
subprocess with a YAML config file, its log in a file and HTTP on a known loopback port.

The broker, notify socket and MQTT subscriber helpers are the device tests' own, re-exported.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import requests
import yaml

from tests.device.conftest import Broker, Subscriber, find_free_port
from tests.helpers import NotifySocket, wait_for

__all__ = [
    "REPO",
    "TIMEOUT",
    "Broker",
    "DaemonProcess",
    "NotifySocket",
    "Subscriber",
    "daemon_config",
    "find_free_port",
    "frames_keep_rising",
    "wait_for",
]

REPO = Path(__file__).parents[2]
# Guards against hangs only; the deadlines the service contract sets are in the tests themselves.
TIMEOUT = 40.0


class DaemonProcess:
    """``python -m device run --config FILE`` as a child process.

    stdout and stderr go to a file, not a pipe, so a chatty daemon can never block on a full pipe.
    """

    def __init__(self, workdir: Path, config: dict[str, Any], env: dict[str, str] | None = None):
        self.workdir = workdir
        self.config = config
        self.config_path = workdir / "device.yaml"
        self.log_path = workdir / "daemon.log"
        self.port = config.get("http", {}).get("port")
        self.base = f"http://127.0.0.1:{self.port}"
        self.token = config.get("http", {}).get("token")
        self.env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc: subprocess.Popen | None = None

    def write_config(self, **changes: Any) -> None:
        """Rewrite the config file, with top-level sections replaced by ``changes``."""
        self.config = {**self.config, **changes}
        self.config_path.write_text(yaml.safe_dump(self.config))

    def start(self) -> DaemonProcess:
        self.write_config()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "device", "run", "--config", str(self.config_path)],
                cwd=REPO,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def get(self, path: str, **kwargs) -> requests.Response:
        kwargs.setdefault("headers", self.headers())
        return requests.get(self.base + path, timeout=10, **kwargs)

    def post(self, path: str, **kwargs) -> requests.Response:
        kwargs.setdefault("headers", self.headers())
        return requests.post(self.base + path, timeout=30, **kwargs)

    def health(self) -> dict:
        """/health (with the token, so the details are there), or {} while the server is not answering (yet)."""
        try:
            return requests.get(self.base + "/health", headers=self.headers(), timeout=5).json()
        except requests.RequestException:
            return {}

    def wait_health(self, predicate, what: str, timeout: float = TIMEOUT) -> dict:
        """Poll /health until ``predicate(health)`` holds; fails early if the daemon exits."""

        def check():
            if not self.running:
                raise AssertionError(
                    f"daemon exited ({self.proc.returncode}) waiting for {what}:\n{self.log()[-3000:]}"
                )
            health = self.health()
            return health if health and predicate(health) else None

        return wait_for(check, timeout, what)

    def wait_running(self) -> dict:
        """Wait for the first classified frames."""
        return self.wait_health(lambda h: h["frames"] >= 2 and h["inference"] == "ok", "first frames")

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait_exit(self, timeout: float = TIMEOUT) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"daemon still running after {timeout} s:\n{self.log()[-3000:]}") from None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM as systemd would send it; SIGKILL if it has not exited after ``timeout``."""
        if self.running:
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    def kill(self) -> None:
        if self.running:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)


def daemon_config(model_dir: Path, images: Path, *, device_id: str, **sections: dict) -> dict[str, Any]:
    """A config for a headless daemon on an image folder, MQTT off, HTTP on a free port;
    ``sections`` replace (camera, mqtt) or extend (http) the defaults."""
    http = {"port": find_free_port(), **sections.pop("http", {})}
    return {
        "device_id": device_id,
        "model": {"dir": str(model_dir), "threads": 1},
        "camera": {
            "source": "folder",
            "path": str(images),
            "fps": 10.0,
            "retry_initial_s": 0.2,
            "retry_max_s": 1.0,
        },
        "mqtt": {"enabled": False},
        "overlay": {"mode": "none"},
        "http": http,
        **sections,
    }


def frames_keep_rising(daemon: DaemonProcess, seconds: float, checks: int = 4) -> list[int]:
    """Frame counts read ``checks`` times over ``seconds``; asserts each is above the last."""
    counts = [daemon.health()["frames"]]
    for _ in range(checks):
        time.sleep(seconds / checks)
        counts.append(daemon.health()["frames"])
    assert all(b > a for a, b in itertools.pairwise(counts)), f"inference paused: frame counts {counts}"
    return counts
