"""Helpers shared by the device and deploy tests (not fixtures: plain functions and classes)."""
from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

TIMEOUT = 30.0  # guards against hangs only; nothing here measures speed
WEB = Path(__file__).resolve().parents[1] / "web"


def run_node(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """A node/npm command in web/; fails the test with its output when it fails."""
    done = subprocess.run(args, cwd=WEB, check=False, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done


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


class StandInGui:
    """Stand-in for cv2's highgui calls (the headless OpenCV wheel here has no windows, and there is
    no screen): records every call; ``waitKey`` returns the queued ``keys`` one by one, then -1."""

    WINDOW_NORMAL, WND_PROP_FULLSCREEN, WINDOW_FULLSCREEN = 0, 0, 1

    def __init__(self, keys=()):
        self.calls = []
        self.keys = list(keys)

    def namedWindow(self, name, flags):
        self.calls.append(("namedWindow", name))

    def setWindowProperty(self, name, prop, value):
        self.calls.append(("fullscreen", name))

    def imshow(self, name, image):
        self.calls.append(("imshow", image))

    def waitKey(self, ms):
        self.calls.append(("waitKey", ms))
        return self.keys.pop(0) if self.keys else -1

    def destroyWindow(self, name):
        self.calls.append(("destroyWindow", name))


def scan_bomb(width: int, height: int, repeats: int) -> bytes:
    """A progressive JPEG of a flat grey image whose last scan is repeated ``repeats`` more times.

    Every repeat is a few dozen bytes (a flat image has no AC detail, so the scan is one run of
    empty blocks), yet the decoder passes over the whole image again for each: the field probe's
    upload, made small. The scan's Huffman table (the DHT just before it) is repeated with it."""
    import io

    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((height, width, 3), 128, np.uint8)).save(buf, "JPEG", progressive=True, quality=80)
    data = buf.getvalue()
    last_scan = data.rindex(b"\xff\xda")
    table = data.rfind(b"\xff\xc4", 0, last_scan)  # Pillow writes a DHT before each scan
    start = table if table != -1 and b"\xff\xda" not in data[table:last_scan] else last_scan
    end = data.rindex(b"\xff\xd9")
    return data[:end] + data[start:end] * repeats + data[end:]
