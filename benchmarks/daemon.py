"""End-to-end frames/s of the real daemon: ``python -m device run`` as a child process.

The camera is the folder replay of 640x480 frames at full speed (``camera.fps: 0``), the overlay
is drawn on every frame (``overlay.mode: none`` means no screen, not no drawing), results go to a
real mosquitto and HTTP serves on loopback. The rate is read from the daemon's own ``/health``
frame counter over a fixed window after warm-up, so start-up and model loading do not count.
"""
from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml

from benchmarks.broker import MessageCounter, free_port
from benchmarks.memory import DeviceProcess
from benchmarks.stats import median

_log = logging.getLogger(__name__)

DEVICE_ID = "bench"
MQTT_PREFIX = "dermedge"
_POLL_S = 0.1


@dataclass(frozen=True)
class DaemonOptions:
    threads: int  # interpreter threads, as in the device's model.threads
    warmup_frames: int  # classified frames before the window opens
    window_s: float  # measured seconds per run
    repeats: int  # fresh daemon processes; figures are medians
    startup_timeout_s: float = 120.0


def daemon_config(model_dir: Path, replay: Path, *, threads: int, mqtt_port: int, http_port: int) -> dict:
    return {
        "device_id": DEVICE_ID,
        "log_level": "WARNING",
        "model": {"dir": str(model_dir), "threads": threads},
        "camera": {"source": "folder", "path": str(replay), "loop": True, "fps": 0},
        "overlay": {"mode": "none"},
        "mqtt": {"enabled": True, "host": "127.0.0.1", "port": mqtt_port, "prefix": MQTT_PREFIX},
        "http": {"enabled": True, "host": "127.0.0.1", "port": http_port},
    }


def daemon_fps(model_dir: Path, replay: Path, *, mqtt_port: int, workdir: Path, options: DaemonOptions) -> dict:
    """Medians over ``options.repeats`` daemon runs, and every run's figures."""
    runs = [_one_run(model_dir, replay, mqtt_port=mqtt_port, workdir=workdir, options=options, index=i)
            for i in range(options.repeats)]
    peaks = [r["peak_rss_mb"] for r in runs if r["peak_rss_mb"] is not None]  # None without /proc
    return {
        "threads": options.threads,
        "window_s": options.window_s,
        "fps": median([r["fps"] for r in runs]),
        "peak_rss_mb": median(peaks) if peaks else None,
        "mqtt_messages_per_s": median([r["mqtt_messages"] / r["window_s"] for r in runs]),
        "runs": runs,
    }


def _one_run(model_dir: Path, replay: Path, *, mqtt_port: int, workdir: Path, options: DaemonOptions,
             index: int) -> dict:
    http_port = free_port()
    config = Path(workdir) / f"daemon-{index}.yaml"
    config.write_text(yaml.safe_dump(daemon_config(model_dir, replay, threads=options.threads,
                                                   mqtt_port=mqtt_port, http_port=http_port)))
    health_url = f"http://127.0.0.1:{http_port}/health"
    with MessageCounter(mqtt_port, f"{MQTT_PREFIX}/{DEVICE_ID}/result") as counter, \
            DeviceProcess(["run", "--config", str(config)]) as process:
        try:
            _wait_for_frames(process, health_url, options.warmup_frames, options.startup_timeout_s)
            t0, frames0 = _sample(health_url)
            messages0 = counter.count
            time.sleep(options.window_s)
            t1, frames1 = _sample(health_url)
            messages = counter.count - messages0
            health = _health(health_url)
        except (RuntimeError, OSError) as err:
            tail = process.stop().stderr_tail
            raise RuntimeError(f"daemon run failed: {err}; its stderr ends: {tail}") from err
    finished = process.finished
    if finished.returncode != 0:
        raise RuntimeError(f"daemon exited with {finished.returncode} after SIGTERM: {finished.stderr_tail}")
    if health.get("mqtt") != "connected":
        raise RuntimeError(f"daemon was not connected to the broker: /health says mqtt {health.get('mqtt')!r}")
    window = t1 - t0
    return {"fps": (frames1 - frames0) / window, "frames": frames1 - frames0, "window_s": window,
            "mqtt_messages": messages, "peak_rss_mb": finished.peak_rss_mb, "health": health}


def _health(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


def _sample(url: str) -> tuple[float, int]:
    """(time, frames classified) with the time taken half-way through the request."""
    t_before = time.monotonic()
    frames = int(_health(url)["frames"])
    return (t_before + time.monotonic()) / 2, frames


def _wait_for_frames(process: DeviceProcess, url: str, frames: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not process.running():
            raise RuntimeError("daemon exited during start-up")
        try:
            if int(_health(url)["frames"]) >= frames:
                return
        except (urllib.error.URLError, ConnectionError):
            pass  # HTTP is not up yet
        time.sleep(_POLL_S)
    raise RuntimeError(f"daemon classified fewer than {frames} frames within {timeout:.0f} s")
