"""Case captures on disk (atomic writes, retention, a full disk, safe ids), and the daemon's
window keys and GPIO button, which go through stand-ins: there is no screen and no GPIO here."""
from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import threading
from typing import ClassVar

import cv2
import numpy as np
import pytest

import device.captures as captures_module
import device.daemon as daemon_module
from device.button import CaptureButton
from device.captures import CaptureError, CaptureStore, DiskFullError, StorageUnavailable, default_dir
from device.config import CapturesConfig, config_from_dict
from device.daemon import Daemon
from device.overlay import OpenCvDisplay
from tests.helpers import TIMEOUT, StandInGui, wait_for


def frame(value: int, h: int = 48, w: int = 64) -> np.ndarray:
    rgb = np.zeros((h, w, 3), np.uint8)
    rgb[..., 0] = value
    rgb[: h // 2, : w // 2] = (0, 200, 0)
    return rgb


def store(tmp_path, **changes) -> CaptureStore:
    return CaptureStore(CapturesConfig(**{"dir": str(tmp_path / "captures"), "min_free_mb": 0.0, **changes}))


def save(s: CaptureStore, value: int, t: float = 1_700_000_000.0, frame_id: int = 1):
    return s.save(frame(value), {"result": {"class_code": "nv", "confidence": 0.5, "state": "ok"}},
                  timestamp=t, frame_id=frame_id)


def test_a_capture_is_an_image_and_a_sidecar_with_a_safe_id(tmp_path):
    s = store(tmp_path)
    info = save(s, 120, t=1_700_000_000.25, frame_id=7)
    assert info.id == "20231114T221320250Z-7"
    image = cv2.imread(str(s.path(info.id, "jpg")))
    assert image.shape == (48, 64, 3)
    assert abs(int(image[40, 60, 2]) - 120) <= 3  # RGB in, written as a normal (BGR) JPEG
    sidecar = json.loads(s.path(info.id, "json").read_text())
    assert sidecar["id"] == info.id and sidecar["image"] == {"file": f"{info.id}.jpg", "width": 64, "height": 48}
    assert save(s, 120, t=1_700_000_000.25, frame_id=7).id == f"{info.id}-2"  # same instant: still unique
    assert [i.id for i in s.list()] == [f"{info.id}-2", info.id]
    for bad in ("../captures/" + info.id, info.id + "/", "..", "", f"{info.id}.jpg", "20231114T221320250Z"):
        assert s.path(bad, "jpg") is None, bad
    assert s.path(info.id, "png") is None
    assert not [p for p in s.folder.iterdir() if p.name.startswith(".")]  # no temp files left


def test_retention_by_count_and_by_size(tmp_path):
    s = store(tmp_path, max_count=3)
    ids = [save(s, 10 * i, t=1_700_000_000 + i).id for i in range(5)]
    assert [i.id for i in s.list()] == ids[:1:-1]  # the three newest, newest first
    assert len(list(s.folder.iterdir())) == 6

    one = sum(p.stat().st_size for p in s.folder.iterdir()) / 3
    s = CaptureStore(CapturesConfig(dir=str(s.folder), max_count=100, max_total_mb=2.5 * one / 2**20,
                                    min_free_mb=0.0))
    newest = save(s, 99, t=1_700_000_100).id
    assert [i.id for i in s.list()] == [newest, ids[-1]]  # two fit in 2.5 captures' worth of bytes


def test_a_full_disk_refuses_the_capture_and_keeps_the_earlier_ones(tmp_path, monkeypatch):
    s = store(tmp_path)
    first = save(s, 50, t=1_700_000_000)
    before = {p.name: p.read_bytes() for p in s.folder.iterdir()}

    # 1. less free space than captures.min_free_mb: refused before anything is written
    full = CaptureStore(CapturesConfig(dir=str(s.folder), min_free_mb=1e12))
    with pytest.raises(DiskFullError, match=r"disk full: .* MB free in .*; earlier captures are kept"):
        save(full, 60, t=1_700_000_001)

    # 2. the disk fills up in the middle of writing the sidecar (ENOSPC from a real write call)
    real_open = open

    def open_that_fills_up(path, mode="r", *args, **kwargs):
        fh = real_open(path, mode, *args, **kwargs)
        if "w" in mode and str(path).endswith(".json"):
            def write(data):
                real_write(data[: len(data) // 2])
                raise OSError(errno.ENOSPC, "No space left on device")
            real_write = fh.write
            fh.write = write
        return fh

    monkeypatch.setattr(captures_module, "open", open_that_fills_up, raising=False)
    with pytest.raises(DiskFullError, match="disk full: cannot write .*json"):
        save(s, 70, t=1_700_000_002)
    monkeypatch.undo()
    after = {p.name: p.read_bytes() for p in s.folder.iterdir()}
    assert after == before  # no half capture, no temp file, the first one intact
    assert [i.id for i in s.list()] == [first.id]


def test_an_unwritable_folder_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    s = CaptureStore(CapturesConfig(dir=str(blocker / "captures"), min_free_mb=0.0))
    with pytest.raises(CaptureError, match=f"cannot create the capture folder {blocker / 'captures'}"):
        save(s, 1)


def test_a_failing_disk_is_storage_unavailable_and_says_so_until_a_save_succeeds(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")  # a real failure, for root too: ENOTDIR from the kernel
    s = CaptureStore(CapturesConfig(dir=str(blocker / "captures"), min_free_mb=0.0))
    assert s.unavailable() is None and s.list() == []
    with pytest.raises(StorageUnavailable, match="cannot create the capture folder"):
        save(s, 1)
    assert "cannot create the capture folder" in s.unavailable()
    blocker.unlink()
    save(s, 2)
    assert s.unavailable() is None


def test_the_disk_full_message_gives_sizes_in_the_settings_units(tmp_path):
    setting = float(shutil.disk_usage(tmp_path).free // 2**20 + 50)  # more than is free: always refused
    s = store(tmp_path, min_free_mb=setting)
    with pytest.raises(DiskFullError) as refused:
        save(s, 50)
    message = str(refused.value)
    assert f"captures.min_free_mb keeps {setting:.1f} MB free" in message, message  # not 1.048576 times it
    needs = re.search(r"a capture needs (\d+) KB", message)
    assert needs and int(needs.group(1)) >= 1, message  # a few KB, not "0.0 MB"


def test_default_folder_is_the_service_state_directory():
    assert default_dir({"STATE_DIRECTORY": "/var/lib/dermedge"}) == default_dir(
        {"STATE_DIRECTORY": "/var/lib/dermedge:/other"})
    assert str(default_dir({"STATE_DIRECTORY": "/var/lib/dermedge"})) == "/var/lib/dermedge/captures"
    assert str(default_dir({"XDG_STATE_HOME": "/home/pi/.state"})) == "/home/pi/.state/dermedge/captures"


class StandInButton:
    """Stand-in for gpiozero.Button (no GPIO here): records how it was made; the test presses it."""

    made: ClassVar[list[StandInButton]] = []

    def __init__(self, pin, *, pull_up, bounce_time):
        self.pin, self.pull_up, self.bounce_time = pin, pull_up, bounce_time
        self.when_pressed = None
        self.closed = False
        StandInButton.made.append(self)

    def press(self):
        self.when_pressed()

    def close(self):
        self.closed = True


def test_button_calls_back_and_survives_a_failed_capture(caplog):
    presses = []

    def on_press():
        presses.append(1)
        if len(presses) == 2:
            raise DiskFullError("disk full: test")

    button = CaptureButton(17, on_press, button_class=StandInButton)
    assert button.start()
    made = StandInButton.made[-1]
    assert (made.pin, made.pull_up, made.bounce_time > 0) == (17, True, True)
    made.press()
    with caplog.at_level(logging.WARNING, logger="device.button"):
        made.press()  # raises inside on_press: logged, not raised into gpiozero's thread
    made.press()
    assert len(presses) == 3 and "disk full: test" in caplog.text
    button.close()
    assert made.closed


def test_without_gpiozero_the_button_is_reported_and_skipped(caplog, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "gpiozero", None)  # import gpiozero -> ImportError
    with caplog.at_level(logging.WARNING, logger="device.button"):
        assert CaptureButton(4, lambda: None).start() is False
    assert "gpiozero is not installed" in caplog.text and "apt install python3-gpiozero" in caplog.text


def test_window_keys_and_the_button_drive_the_daemon(tmp_path, fixture_dir, monkeypatch, mqtt_broker,
                                                     mqtt_subscriber):
    """f freezes the shown frame (inference goes on), s and the button save the shown frame, the
    capture event reaches MQTT, q stops the daemon cleanly."""
    gui = StandInGui()
    monkeypatch.setattr(daemon_module, "make_display", lambda *a, **k: OpenCvDisplay(gui=gui))
    monkeypatch.setattr(daemon_module, "CaptureButton",
                        lambda pin, on_press: CaptureButton(pin, on_press, button_class=StandInButton))
    device_id = f"keys-{os.getpid()}"
    cfg = config_from_dict({
        "device_id": device_id,
        "model": {"dir": "experiments/dermnet-edge", "threads": 1},
        "camera": {"source": "folder", "path": str(fixture_dir / "images"), "fps": 20.0},
        "overlay": {"mode": "opencv"},
        "mqtt": {"host": mqtt_broker.host, "port": mqtt_broker.port},
        "http": {"enabled": False},
        "captures": {"dir": str(tmp_path / "captures"), "min_free_mb": 0.0, "button_gpio": 17},
    })
    topic = f"dermedge/{device_id}/capture"
    subscriber = mqtt_subscriber(mqtt_broker, [topic])
    daemon = Daemon(cfg)
    codes: list[int] = []
    runner = threading.Thread(target=lambda: codes.append(daemon.run()))
    runner.start()
    try:
        def shown():
            return [c[1] for c in gui.calls if c[0] == "imshow"]

        wait_for(lambda: daemon.frames >= 3 and daemon.publisher.connected, TIMEOUT, "first frames, MQTT")
        gui.keys.append(ord("f"))
        wait_for(lambda: daemon._frozen is not None, TIMEOUT, "the f key")
        frozen_at, frozen_frame = len(shown()), daemon._frozen.result.frame_id
        wait_for(lambda: daemon.frames >= frozen_frame + 5, TIMEOUT, "frames while frozen")
        assert daemon.state.latest().frame_id > frozen_frame  # inference and HTTP state go on
        after = shown()[frozen_at:]
        assert len(after) >= 4 and all(np.array_equal(a, after[0]) for a in after)  # the screen does not

        gui.keys.append(ord("s"))
        wait_for(lambda: len(daemon.captures.list()) == 1, TIMEOUT, "the s key's capture")
        capture = daemon.captures.list()[0]
        sidecar = json.loads(daemon.captures.path(capture.id, "json").read_text())
        assert sidecar["result"]["frame_id"] == frozen_frame  # what was shown, not the newest frame
        event = json.loads(subscriber.wait_for(topic).payload)
        assert event["id"] == capture.id and event["device_id"] == device_id
        assert event["image"] == f"/captures/{capture.id}.jpg"

        gui.keys.append(ord("f"))
        wait_for(lambda: daemon._frozen is None, TIMEOUT, "unfreeze")
        unfrozen_at = len(shown())
        wait_for(lambda: len(shown()) >= unfrozen_at + 3, TIMEOUT, "live frames again")
        assert not all(np.array_equal(a, after[0]) for a in shown()[unfrozen_at:])

        StandInButton.made[-1].press()  # the GPIO button, from gpiozero's thread in real life
        assert len(daemon.captures.list()) == 2

        gui.keys.append(27)  # Esc
        runner.join(TIMEOUT)
        assert not runner.is_alive() and codes == [0]
        assert StandInButton.made[-1].closed
        assert ("destroyWindow", "DermEdge") in gui.calls
    finally:
        daemon.request_stop()
        runner.join(TIMEOUT)
