"""A real mosquitto broker on a free loopback port for the end-to-end run, and a subscriber that
counts what the daemon publishes (proof that MQTT was really on)."""
from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Self

import paho.mqtt.client as mqtt

from benchmarks import Skipped

_log = logging.getLogger(__name__)

_SBIN_MOSQUITTO = Path("/usr/sbin/mosquitto")  # Debian installs it outside a normal user's PATH


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def mosquitto_binary() -> str:
    found = shutil.which("mosquitto") or (str(_SBIN_MOSQUITTO) if _SBIN_MOSQUITTO.is_file() else None)
    if found is None:
        raise Skipped("mosquitto is not installed (apt install mosquitto)")
    return found


class Mosquitto:
    """``with Mosquitto() as broker: broker.port``; the broker runs with a throw-away config."""

    def __init__(self, *, start_timeout: float = 10.0):
        self.start_timeout = start_timeout
        self.port = 0
        self._dir: tempfile.TemporaryDirectory | None = None
        self._proc: subprocess.Popen | None = None

    def __enter__(self) -> Self:
        binary = mosquitto_binary()
        self._dir = tempfile.TemporaryDirectory(prefix="bench-mosquitto-")
        self.port = free_port()
        conf = Path(self._dir.name) / "mosquitto.conf"
        conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        log = open(Path(self._dir.name) / "mosquitto.log", "wb")
        self._proc = subprocess.Popen([binary, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + self.start_timeout
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                break
            except OSError:
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    text = (Path(self._dir.name) / "mosquitto.log").read_text(errors="replace")
                    self.__exit__()
                    raise RuntimeError(f"mosquitto did not start on port {self.port}: {text[-500:]}")
                time.sleep(0.05)
        _log.info("mosquitto listening on 127.0.0.1:%d", self.port)
        return self

    def __exit__(self, *exc) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None


class MessageCounter:
    """Counts messages on one topic filter while the ``with`` block runs."""

    def __init__(self, port: int, topic: str, *, connect_timeout: float = 10.0):
        self.port, self.topic, self.connect_timeout = port, topic, connect_timeout
        self.count = 0
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="dermedge-bench-counter")
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = lambda *args: self._subscribed.set()
        self._client.on_message = self._on_message

    def __enter__(self) -> Self:
        self._client.connect("127.0.0.1", self.port)
        self._client.loop_start()
        if not self._subscribed.wait(self.connect_timeout):
            self.__exit__()
            raise RuntimeError(f"could not subscribe to {self.topic} on port {self.port}")
        return self

    def __exit__(self, *exc) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        client.subscribe(self.topic)

    def _on_message(self, client, userdata, message) -> None:
        with self._lock:
            self.count += 1
