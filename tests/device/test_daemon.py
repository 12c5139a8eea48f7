"""The whole daemon end to end with real parts: the tiny int8 model, a real mosquitto broker,
the real HTTP server on a free port, replay cameras (an image folder and a generated video),
and systemd's notify protocol on a unix datagram socket the test owns.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import requests
import yaml

import device.daemon as daemon_module
from device.config import config_from_dict
from device.daemon import Daemon
from device.decode import load_image
from device.types import STATES
from tests.helpers import TIMEOUT, NotifySocket, wait_for

REPO = Path(__file__).parents[2]
RESULT_KEYS = {"class_code", "class_name", "class_index", "confidence", "all_probabilities", "top3", "state",
               "model", "frame_id", "timestamp", "latency_ms", "fps", "quality", "disclaimer", "refer", "referral",
               "source", "headline", "advice", "lesion_gate"}


def check_result(data: dict, codes: tuple[str, ...]) -> None:
    assert set(data) == RESULT_KEYS
    assert data["class_code"] in codes and data["class_index"] == codes.index(data["class_code"])
    assert list(data["all_probabilities"]) == list(codes)
    assert sum(data["all_probabilities"].values()) == pytest.approx(1.0, abs=1e-3)
    assert data["confidence"] == pytest.approx(max(data["all_probabilities"].values()), abs=1e-6)
    assert data["top3"][0]["class_code"] == data["class_code"] and len(data["top3"]) == 3
    assert data["state"] in STATES
    assert set(data["latency_ms"]) == {"preprocess", "inference", "total"}
    assert data["latency_ms"]["total"] >= data["latency_ms"]["inference"] > 0
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", data["timestamp"])
    assert "not a diagnosis" in data["disclaimer"]


@pytest.fixture
def codes(tiny_model_dir) -> tuple[str, ...]:
    return tuple(label["code"] for label in json.loads((tiny_model_dir / "card.json").read_text())["labels"])


def write_config(path: Path, **sections) -> Path:
    path.write_text(yaml.safe_dump(sections))
    return path


def start_daemon(config: Path, notify: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "NOTIFY_SOCKET": str(notify), "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "device", "run", "--config", str(config), *args], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen, timeout: float = TIMEOUT) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        raise AssertionError(f"daemon did not exit:\n{out[-3000:]}")
    return out


def test_daemon_on_an_image_folder_end_to_end(tmp_path, tiny_model_dir, fixture_dir, mqtt_broker, free_port,
                                              mqtt_subscriber, codes):
    device_id = f"e2e-folder-{os.getpid()}"
    port = free_port()
    config = write_config(
        tmp_path / "device.yaml", device_id=device_id, model={"dir": str(tiny_model_dir), "threads": 1},
        camera={"source": "folder", "path": str(fixture_dir / "images"), "fps": 20.0},
        mqtt={"host": mqtt_broker.host, "port": mqtt_broker.port, "max_rate_hz": 20.0, "heartbeat_s": 0.2},
        http={"port": port},
    )
    notify = NotifySocket(tmp_path / "notify.sock")
    result_topic, status_topic = f"dermedge/{device_id}/result", f"dermedge/{device_id}/status"
    sub = mqtt_subscriber(mqtt_broker, [result_topic, status_topic])
    proc = start_daemon(config, notify.path)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: len(sub.on(result_topic)) >= 5, what="5 results on MQTT")
        sub.wait_for(status_topic, "online")
        results = [json.loads(m.payload) for m in sub.on(result_topic)]
        for data in results:
            check_result(data, codes)
            assert data["model"] == "tiny"
        ids = [d["frame_id"] for d in results]
        assert ids == sorted(ids) and len(set(ids)) == len(ids)

        latest = requests.get(f"{base}/latest", timeout=5)
        assert latest.status_code == 200
        check_result(latest.json(), codes)
        assert latest.json()["frame_id"] >= ids[0]
        health = wait_for(lambda: (h := requests.get(f"{base}/health", timeout=5).json())["mqtt"] == "connected"
                          and h, what="health with mqtt connected")
        assert health["camera"] == "ok" and health["inference"] == "ok" and health["status"] == "ok"
        assert health["model"] == "tiny" and health["frames"] >= 5
        snapshot = requests.get(f"{base}/snapshot.jpg", timeout=5)
        assert snapshot.headers["Content-Type"].startswith("image/jpeg")
        frame = cv2.imdecode(np.frombuffer(snapshot.content, np.uint8), cv2.IMREAD_COLOR)
        assert frame.shape == (150, 200, 3)  # the fixture images, never scaled up
        # An upload runs through the same engine and postprocessing.
        image = fixture_dir / "images" / "ISIC_0024475.jpg"
        upload = requests.post(f"{base}/predict", files={"image": image.read_bytes()}, timeout=10)
        assert upload.status_code == 200
        check_result(upload.json(), codes)
        assert upload.json()["frame_id"] == 0

        lines = wait_for(lambda: "WATCHDOG=1" in notify.drain() and notify.lines, what="WATCHDOG=1")
        assert lines.index("READY=1") < lines.index("WATCHDOG=1")

        proc.send_signal(signal.SIGTERM)
        out = finish(proc)
        assert proc.returncode == 0, out
        assert "SIGTERM received" in out
        sub.wait_for(status_topic, "offline")
        assert "STOPPING=1" in notify.drain()
        with pytest.raises(requests.ConnectionError):
            requests.get(f"{base}/health", timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()
        notify.close()


@pytest.fixture
def short_video(tmp_path, fixture_dir) -> Path:
    """12 frames of fixture lesions at 320x240, written with cv2.VideoWriter."""
    path = tmp_path / "lesions.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (320, 240))
    assert writer.isOpened()
    for image in sorted((fixture_dir / "images").glob("*.jpg"))[:12]:
        rgb = cv2.resize(load_image(image), (320, 240))
        writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def test_daemon_on_a_generated_video_end_to_end(tmp_path, tiny_model_dir, short_video, mqtt_broker, free_port,
                                                mqtt_subscriber, codes):
    device_id = f"e2e-video-{os.getpid()}"
    config = write_config(
        tmp_path / "device.yaml", device_id=device_id, model={"dir": str(tiny_model_dir), "threads": 1},
        camera={"source": "opencv", "path": str(short_video), "loop": False, "fps": 0.0},
        mqtt={"host": mqtt_broker.host, "port": mqtt_broker.port, "max_rate_hz": 1000.0},
        http={"port": free_port()},
    )
    notify = NotifySocket(tmp_path / "notify.sock")
    result_topic, status_topic = f"dermedge/{device_id}/result", f"dermedge/{device_id}/status"
    sub = mqtt_subscriber(mqtt_broker, [result_topic, status_topic])
    # fps 0 and no loop: every frame is classified once, then the daemon stops by itself.
    proc = start_daemon(config, notify.path)
    try:
        out = finish(proc)
        assert proc.returncode == 0, out
        assert "replay finished after 12 frames" in out
        sub.wait_for(status_topic, "offline")
        results = [json.loads(m.payload) for m in sub.on(result_topic)]
        assert results, "no result published"
        for data in results:
            check_result(data, codes)
            assert 1 <= data["frame_id"] <= 12
        sub.wait_for(status_topic, "online")
        assert {"READY=1", "WATCHDOG=1", "STOPPING=1"} <= set(notify.drain())
    finally:
        if proc.poll() is None:
            proc.kill()
        notify.close()


# --- in-process: reload and stall detection ----------------------------------------


def daemon_config(model_dir: Path, images: Path, **camera):
    return config_from_dict({
        "device_id": f"inproc-{os.getpid()}", "model": {"dir": str(model_dir), "threads": 1},
        "camera": {"source": "folder", "path": str(images), "fps": 50.0, **camera},
        "mqtt": {"enabled": False}, "http": {"port": 0},
    })


def test_reload_refuses_a_corrupt_model_and_keeps_running(tmp_path, tiny_model_dir, fixture_dir):
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    daemon = Daemon(daemon_config(model_dir, fixture_dir / "images"))
    daemon.start()
    try:
        wait_for(lambda: daemon.frames >= 3, what="frames")
        running = daemon.state.latest()
        model_file = model_dir / "model_int8.tflite"
        model_file.write_bytes(model_file.read_bytes()[:-16] + b"\0" * 16)  # sha256 no longer matches
        assert daemon.reload() is False
        before = daemon.frames
        wait_for(lambda: daemon.frames >= before + 3, what="frames after a refused reload")
        assert daemon.state.latest().model == running.model
        assert 'dermedge_errors_total{kind="reload"} 1' in daemon.state.metrics_text()
        shutil.copy(tiny_model_dir / "model_int8.tflite", model_file)
        assert daemon.reload() is True
        port = daemon.http.port
        health = requests.get(f"http://127.0.0.1:{port}/health", timeout=5).json()
        assert health["status"] == "ok" and health["mqtt"] == "disabled"
    finally:
        daemon.stop()


class GatedEngine:
    """Wraps the real engine; blocks in the interpreter's half (run) while the gate is closed
    (a stalled loop)."""

    def __init__(self, engine):
        self.engine, self.card = engine, engine.card
        self.prepare = engine.prepare
        self.gate = threading.Event()
        self.gate.set()

    def run(self, prepared):
        self.gate.wait()
        return self.engine.run(prepared)

    def infer(self, rgb):
        return self.run(self.prepare(rgb))


def test_stalled_inference_stops_the_watchdog_and_shows_in_health(tmp_path, tiny_model_dir, fixture_dir,
                                                                   monkeypatch):
    from device.engine import Engine
    from device.watchdog import Notifier

    monkeypatch.setattr(daemon_module, "STALL_AFTER_S", 0.5)
    notify = NotifySocket(tmp_path / "notify.sock")
    engine = GatedEngine(Engine.from_model_dir(tiny_model_dir, num_threads=1))
    notifier = Notifier({"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "400000"})  # feed every 0.1 s
    daemon = Daemon(daemon_config(tiny_model_dir, fixture_dir / "images"), engine=engine, notifier=notifier)
    runner = threading.Thread(target=daemon.run)
    runner.start()
    try:
        wait_for(lambda: notify.drain().count("WATCHDOG=1") >= 2, what="watchdog feeding")
        engine.gate.clear()
        wait_for(lambda: daemon.state.health()["inference"] == "stalled", what="stalled in health")
        assert daemon.state.health()["status"] == "degraded"
        notify.drain()
        fed_before = notify.lines.count("WATCHDOG=1")
        time.sleep(0.5)  # five feed intervals
        assert notify.drain().count("WATCHDOG=1") == fed_before  # a stalled loop feeds nothing
        engine.gate.set()
        wait_for(lambda: daemon.state.health()["inference"] == "ok", what="recovery")
        wait_for(lambda: notify.drain().count("WATCHDOG=1") > fed_before, what="feeding again")
    finally:
        engine.gate.set()
        daemon.request_stop()
        runner.join(TIMEOUT)
        notify.close()
    assert not runner.is_alive()


# --- the frame budget ------------------------------------------------------------------


def test_memory_camera_daemon_times_every_stage_draws_nothing_unwatched_and_keeps_results(
        tmp_path, tiny_model_dir, fixture_dir):
    from prometheus_client.parser import text_string_to_metric_families

    from device.engine import Engine
    from device.predict import model_for

    images = sorted((fixture_dir / "images").glob("*.jpg"))[:6]
    frames = np.stack([cv2.resize(load_image(p), (160, 120)) for p in images])
    np.save(tmp_path / "frames.npy", frames)
    cfg = config_from_dict({
        "device_id": f"budget-{os.getpid()}", "model": {"dir": str(tiny_model_dir), "threads": 1},
        "camera": {"source": "memory", "path": str(tmp_path / "frames.npy"), "fps": 0},
        "mqtt": {"enabled": False}, "http": {"port": 0},
    })
    daemon = Daemon(cfg, max_frames=len(frames))
    daemon.start()
    try:
        wait_for(lambda: daemon.frames >= len(frames), what="every frame classified")
        base = f"http://127.0.0.1:{daemon.http.port}"

        def budget() -> dict[str, tuple[float, float]]:
            text = requests.get(f"{base}/metrics", timeout=5).text
            family = next(f for f in text_string_to_metric_families(text) if f.name == "dermedge_stage_seconds")
            assert family.type == "summary"
            out: dict[str, list[float]] = {}
            for s in family.samples:
                out.setdefault(s.labels["stage"], [0, 0.0])[0 if s.name.endswith("_count") else 1] = s.value
            return {stage: tuple(v) for stage, v in out.items()}

        counted = budget()
        for stage in ("grab", "quality", "fit", "wait", "infer", "postprocess", "display", "state", "mqtt"):
            assert counted[stage][0] == len(frames), stage
        assert counted["infer"][1] > 0 and counted["quality"][1] > 0
        assert counted["overlay"] == (0, 0.0) and counted["jpeg"] == (0, 0.0)  # no screen, nobody watching
        snapshot = requests.get(f"{base}/snapshot.jpg", timeout=5)
        assert snapshot.status_code == 200
        watched = budget()
        assert watched["overlay"][0] == 1 and watched["jpeg"][0] == 1  # drawn and encoded once, when asked

        # The same Result as the engine and postprocessing give that frame on their own.
        last = daemon.state.latest()
        assert last.frame_id == len(frames) and last.source == f"frame {len(frames) - 1}"
        engine = Engine.from_model_dir(tiny_model_dir, num_threads=1)
        alone = model_for(engine, cfg).stream.process(engine.infer(frames[-1]), rgb=frames[-1], frame_id=last.frame_id,
                                                      timestamp=0.0, t_start=0.0)
        for field in ("class_code", "state", "confidence", "all_probabilities", "top3", "quality", "referral"):
            assert getattr(last, field) == getattr(alone, field), field
    finally:
        daemon.stop()
