"""Helpers shared by the device and deploy tests (not fixtures: plain functions and classes)."""
from __future__ import annotations

import socket
import time
from pathlib import Path

TIMEOUT = 30.0  # guards against hangs only; nothing here measures speed


def wait_for(predicate, timeout: float = TIMEOUT, what: str = "condition", interval: float = 0.02):
    """The first truthy value of ``predicate()``; AssertionError naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


class NotifySocket:
    """A unix datagram socket standing where systemd's NOTIFY_SOCKET would be."""

    def __init__(self, path: Path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.lines: list[str] = []

    def drain(self) -> list[str]:
        """Every line received so far (reads only what is already queued)."""
        while True:
            try:
                self.lines.extend(self.sock.recv(4096).decode().split("\n"))
            except BlockingIOError:
                return self.lines

    def close(self):
        self.sock.close()
