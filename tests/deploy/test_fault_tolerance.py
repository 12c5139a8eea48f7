"""Fault tolerance of the daemon as a service, with real processes: ``python -m device run`` as a
subprocess on the tiny int8 model, a real mosquitto that is killed and restarted, replay cameras
whose folder or video file disappears, systemd's notify socket owned by the test, signals.

The deadlines below (10 s to publish again after the broker returns, 5 s to exit on SIGTERM)
are the service contract of the deployment issue, not speed measurements.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from device.card import sha256_file
from device.daemon import STALL_FILE_ENV  # test-only hook: the loop blocks while the file exists
from tests.deploy.daemon_process import (
    REPO,
    TIMEOUT,
    Broker,
    NotifySocket,
    Subscriber,
    daemon_config,
    frames_keep_rising,
    wait_for,
)

PUBLISH_AGAIN_WITHIN_S = 10.0
EXIT_WITHIN_S = 5.0


@pytest.fixture
def broker(tmp_path):
    workdir = tmp_path / "broker"
    workdir.mkdir()
    broker = Broker(workdir).start()
    yield broker
    broker.stop()


def device_id(name: str) -> str:
    return f"deploy-{name}-{os.getpid()}"


def copy_model(src: Path, dst: Path, *, name: str | None = None) -> Path:
    """A copy of a model folder, optionally renamed in its card (the sha256 still checks out)."""
    shutil.copytree(src, dst)
    if name is not None:
        card = json.loads((dst / "card.json").read_text())
        card["name"] = name
        (dst / "card.json").write_text(json.dumps(card))
    return dst


# --- MQTT broker ------------------------------------------------------------------------


def test_broker_restart_never_pauses_inference_and_publishing_resumes(
    tmp_path, tiny_model_dir, images, broker, start_daemon
):
    ident = device_id("broker")
    result_topic, status_topic = f"dermedge/{ident}/result", f"dermedge/{ident}/status"
    daemon = start_daemon(
        daemon_config(
            tiny_model_dir,
            images,
            device_id=ident,
            mqtt={"host": broker.host, "port": broker.port, "max_rate_hz": 20.0, "keepalive": 5},
        )
    )
    daemon.wait_health(lambda h: h["mqtt"] == "connected" and h["frames"] >= 2, "MQTT connected")
    sub = Subscriber(broker, [result_topic, status_topic])
    try:
        sub.wait_for(result_topic, timeout=TIMEOUT)
        assert sub.on(status_topic)[-1].payload == b"online"
    finally:
        sub.close()

    broker.kill()  # abrupt: the daemon's connection drops without a goodbye
    health = daemon.wait_health(lambda h: h["mqtt"] == "disconnected", "MQTT disconnected")
    assert health["status"] == "degraded"
    frames_keep_rising(daemon, seconds=3.0)  # inference never waits on the broker

    broker.start()  # same port; persistence is off, so nothing retained survives the restart
    returned = time.monotonic()
    sub = Subscriber(broker, [result_topic, status_topic])
    try:
        # "online" can only be there again if the daemon re-published it on reconnecting.
        sub.wait_for(status_topic, "online", timeout=PUBLISH_AGAIN_WITHIN_S)
        result = sub.wait_for(
            result_topic, timeout=max(0.1, PUBLISH_AGAIN_WITHIN_S - (time.monotonic() - returned))
        )
        assert time.monotonic() - returned <= PUBLISH_AGAIN_WITHIN_S
        data = json.loads(result.payload)
        assert data["model"] == "tiny" and data["class_code"] in data["all_probabilities"]
    finally:
        sub.close()
    daemon.wait_health(lambda h: h["mqtt"] == "connected" and h["status"] == "ok", "healthy again")
    frames_keep_rising(daemon, seconds=1.0)
    assert daemon.running
    assert "Traceback" not in daemon.log()


# --- camera -----------------------------------------------------------------------------


def retry_delays(daemon, seconds: float) -> list[float]:
    """The distinct 'retrying in X s' delays /health shows for the camera over ``seconds``."""
    seen: list[float] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        detail = daemon.health().get("details", {}).get("camera", "")
        match = re.search(r"retrying in ([\d.]+) s", detail)
        if match and (not seen or float(match.group(1)) != seen[-1]):
            seen.append(float(match.group(1)))
        time.sleep(0.05)
    return seen


def check_http_answers(daemon) -> None:
    for path in ("/health", "/latest", "/metrics", "/snapshot.jpg"):
        assert daemon.get(path).status_code == 200, path
    upload = daemon.post(
        "/predict", files={"image": next(REPO.glob("tests/fixtures/ham10000_mini/images/*.jpg")).read_bytes()}
    )
    assert upload.status_code == 200 and upload.json()["frame_id"] == 0


def test_image_folder_removed_is_reopened_with_backoff_and_recovers(
    tmp_path, tiny_model_dir, images, start_daemon
):
    daemon = start_daemon(daemon_config(tiny_model_dir, images, device_id=device_id("folder")))
    daemon.wait_running()
    away = images.rename(tmp_path / "images-away")

    health = daemon.wait_health(lambda h: h["camera"] == "degraded", "camera degraded")
    assert health["status"] == "degraded"
    assert str(images) in health["details"]["camera"]
    delays = retry_delays(daemon, seconds=3.0)
    # Backoff: 0.2 s doubling up to the configured 1.0 s.
    assert delays == sorted(delays) and len(delays) >= 3 and max(delays) == 1.0, delays
    check_http_answers(daemon)
    stuck = daemon.health()["frames"]
    time.sleep(0.5)
    assert daemon.health()["frames"] == stuck  # no camera, no frames: nothing stale is replayed

    away.rename(images)
    daemon.wait_health(lambda h: h["camera"] == "ok" and h["status"] == "ok", "camera back")
    frames_keep_rising(daemon, seconds=1.0)


@pytest.fixture
def video(tmp_path, fixture_dir) -> Path:
    """A 1-second MJPEG video of fixture lesions."""
    import cv2

    from device.decode import load_image

    path = tmp_path / "lesions.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (320, 240))
    for image in sorted((fixture_dir / "images").glob("*.jpg"))[:10]:
        writer.write(cv2.cvtColor(cv2.resize(load_image(image), (320, 240)), cv2.COLOR_RGB2BGR))
    writer.release()
    assert path.stat().st_size > 0
    return path


def test_video_file_that_disappears_is_reopened_and_recovers(
    tmp_path, tiny_model_dir, images, video, start_daemon
):
    config = daemon_config(tiny_model_dir, images, device_id=device_id("video"))
    config["camera"].update(source="opencv", path=str(video), loop=True)
    daemon = start_daemon(config)
    daemon.wait_running()
    kept = video.rename(tmp_path / "kept.avi")

    # The open file still plays to its end; the reopen for the next loop finds nothing.
    health = daemon.wait_health(lambda h: h["camera"] == "degraded", "camera degraded")
    assert "video file not found" in health["details"]["camera"]
    check_http_answers(daemon)

    kept.rename(video)
    daemon.wait_health(lambda h: h["camera"] == "ok" and h["status"] == "ok", "camera back")
    frames_keep_rising(daemon, seconds=1.0)


# --- watchdog -----------------------------------------------------------------------------


def test_stalled_loop_stops_feeding_the_watchdog_and_health_says_so(
    tmp_path, tiny_model_dir, images, start_daemon
):
    notify = NotifySocket(tmp_path / "notify.sock")
    stall = tmp_path / "stall"
    # WatchdogSec=1 as systemd would pass it: the daemon feeds every 0.25 s while frames flow.
    env = {"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "1000000", STALL_FILE_ENV: str(stall)}
    daemon = start_daemon(daemon_config(tiny_model_dir, images, device_id=device_id("stall")), env)
    try:
        wait_for(lambda: notify.drain().count("WATCHDOG=1") >= 3, TIMEOUT, "the watchdog being fed")
        assert notify.lines.index("READY=1") < notify.lines.index("WATCHDOG=1")

        stall.touch()
        health = daemon.wait_health(lambda h: h["inference"] == "stalled", "inference stalled")
        assert health["status"] == "degraded"
        fed = notify.drain().count("WATCHDOG=1")
        time.sleep(1.5)  # six feed intervals
        assert notify.drain().count("WATCHDOG=1") == fed, "a stalled loop must not feed the watchdog"
        assert daemon.get("/health").status_code == 200 and daemon.get("/metrics").status_code == 200

        stall.unlink()
        daemon.wait_health(lambda h: h["inference"] == "ok" and h["status"] == "ok", "inference back")
        wait_for(lambda: notify.drain().count("WATCHDOG=1") > fed, TIMEOUT, "the watchdog fed again")
    finally:
        notify.close()


# --- signals --------------------------------------------------------------------------------


def test_sigterm_publishes_offline_releases_the_camera_and_exits_0(
    tmp_path, tiny_model_dir, images, video, broker, start_daemon
):
    ident = device_id("sigterm")
    status_topic = f"dermedge/{ident}/status"
    notify = NotifySocket(tmp_path / "notify.sock")
    config = daemon_config(
        tiny_model_dir, images, device_id=ident, mqtt={"host": broker.host, "port": broker.port}
    )
    config["camera"].update(source="opencv", path=str(video), loop=True)
    daemon = start_daemon(config, {"NOTIFY_SOCKET": str(notify.path)})
    sub = Subscriber(broker, [status_topic])
    try:
        daemon.wait_health(lambda h: h["mqtt"] == "connected" and h["frames"] >= 2, "running with MQTT")
        fds = Path(f"/proc/{daemon.proc.pid}/fd")
        assert any(os.path.realpath(fd) == str(video) for fd in fds.iterdir()), "the video is not open"

        daemon.signal(signal.SIGTERM)
        sent = time.monotonic()
        assert daemon.wait_exit(TIMEOUT) == 0, daemon.log()[-3000:]
        assert time.monotonic() - sent <= EXIT_WITHIN_S
        sub.wait_for(status_topic, "offline", timeout=TIMEOUT)
        assert sub.on(status_topic)[-1].payload == b"offline"
        log = daemon.log()
        assert "SIGTERM received" in log and "camera stopped" in log
        assert "STOPPING=1" in notify.drain()
    finally:
        sub.close()
        notify.close()


def test_sighup_reloads_config_and_model_and_refuses_a_bad_one(
    tmp_path, tiny_model_dir, images, start_daemon
):
    model_a = copy_model(tiny_model_dir, tmp_path / "model-a")
    model_b = copy_model(tiny_model_dir, tmp_path / "model-b", name="tiny-b")
    corrupt = copy_model(tiny_model_dir, tmp_path / "model-corrupt", name="corrupt")
    tflite = corrupt / "model_int8.tflite"
    tflite.write_bytes(tflite.read_bytes()[:-64] + b"\0" * 64)  # sha256 no longer matches the card
    bad_card = copy_model(tiny_model_dir, tmp_path / "model-bad-card", name="bad-card")
    card = json.loads((bad_card / "card.json").read_text())
    card["model_file"]["sha256"] = "0" * 64
    (bad_card / "card.json").write_text(json.dumps(card))

    notify = NotifySocket(tmp_path / "notify.sock")
    daemon = start_daemon(
        daemon_config(model_a, images, device_id=device_id("reload")), {"NOTIFY_SOCKET": str(notify.path)}
    )
    try:
        assert daemon.wait_running()["model"] == "tiny"

        daemon.write_config(model={"dir": str(model_b), "threads": 1})
        daemon.signal(signal.SIGHUP)
        daemon.wait_health(lambda h: h["model"] == "tiny-b", "model tiny-b after SIGHUP")
        assert "RELOADING=1" in notify.drain()
        frames_keep_rising(daemon, seconds=1.0)

        for refused, reloads in ((corrupt, 1), (bad_card, 2)):
            daemon.write_config(model={"dir": str(refused), "threads": 1})
            daemon.signal(signal.SIGHUP)
            counted = f'dermedge_errors_total{{kind="reload"}} {reloads}'
            wait_for(
                lambda line=counted: line in daemon.get("/metrics").text,
                TIMEOUT,
                f"reload of {refused.name} refused",
            )
            assert daemon.health()["model"] == "tiny-b"
            assert str(refused / "model_int8.tflite") in daemon.log()
            frames_keep_rising(daemon, seconds=1.0)

        # A config that no longer validates is refused the same way.
        daemon.config_path.write_text(yaml.safe_dump({**daemon.config, "camera": {"sorce": "folder"}}))
        daemon.signal(signal.SIGHUP)
        wait_for(
            lambda: 'dermedge_errors_total{kind="reload"} 3' in daemon.get("/metrics").text,
            TIMEOUT,
            "bad config refused",
        )
        assert "camera.sorce" in daemon.log()
        assert daemon.health()["model"] == "tiny-b" and daemon.running
    finally:
        notify.close()


# --- refusing to start ---------------------------------------------------------------------


def run_daemon_expecting_failure(config: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "device", "run", "--config", str(config)],
        cwd=REPO,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        check=False,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert proc.returncode != 0, proc.stdout + proc.stderr
    return proc


def _missing_model_file(model: Path) -> str:
    (model / "model_int8.tflite").unlink()
    return str(model / "model_int8.tflite")


def _sha_mismatch(model: Path) -> str:
    tflite = model / "model_int8.tflite"
    tflite.write_bytes(b"\0" * 64 + tflite.read_bytes()[64:])
    return str(tflite)


def _garbage_with_matching_card(model: Path) -> str:
    """Bytes that are no TFLite model, with a card that vouches for them: the interpreter must refuse."""
    tflite = model / "model_int8.tflite"
    tflite.write_bytes(os.urandom(4096))
    card = json.loads((model / "card.json").read_text())
    card["model_file"].update(sha256=sha256_file(tflite), size_bytes=4096)
    (model / "card.json").write_text(json.dumps(card))
    return str(tflite)


def _missing_card(model: Path) -> str:
    (model / "card.json").unlink()
    return str(model / "card.json")


@pytest.mark.parametrize(
    "break_model", [_missing_model_file, _sha_mismatch, _garbage_with_matching_card, _missing_card]
)
def test_broken_model_exits_non_zero_naming_the_file(tmp_path, tiny_model_dir, images, break_model):
    model = copy_model(tiny_model_dir, tmp_path / "model")
    named = break_model(model)
    config = tmp_path / "device.yaml"
    config.write_text(yaml.safe_dump(daemon_config(model, images, device_id=device_id("broken"))))
    proc = run_daemon_expecting_failure(config)
    assert named in proc.stderr, proc.stderr


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"camera": {"sorce": "folder"}}, "camera.sorce"),
        ({"mqtt": {"port": "1883x"}}, "mqtt.port"),
        ({"http": {"port": 70000}}, "http.port"),
        ({"model": {"dir": "/nonexistent/model"}}, "model.dir"),
        ({"log_level": "LOUD"}, "log_level"),
    ],
)
def test_bad_config_exits_non_zero_naming_the_key(tmp_path, tiny_model_dir, images, change, named):
    config = tmp_path / "device.yaml"
    config.write_text(
        yaml.safe_dump({**daemon_config(tiny_model_dir, images, device_id=device_id("bad")), **change})
    )
    proc = run_daemon_expecting_failure(config)
    assert named in proc.stderr, proc.stderr


@pytest.mark.parametrize("text", ["camera: [unclosed\n", None])
def test_unreadable_or_missing_config_file_exits_non_zero_naming_it(tmp_path, text):
    config = tmp_path / "device.yaml"
    if text is not None:
        config.write_text(text)
    proc = run_daemon_expecting_failure(config)
    assert str(config) in proc.stderr, proc.stderr
