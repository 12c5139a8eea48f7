"""End-to-end frames/s of the real daemon and where its frame time goes: ``python -m device run``
as a child process.

The camera is the in-memory replay (``camera.source: memory``) of 640x480 frames already decoded,
at full speed (``camera.fps: 0``), so every figure is the daemon's own: a Pi camera hands over raw
frames too, and a stand-in that decodes files would charge its decoding to the daemon. No screen
(``overlay.mode: none``) and no HTTP viewer, so nothing draws or encodes the overlay (the daemon
draws it only for a screen or a viewer); results go to a real mosquitto and HTTP serves on
loopback. The rate is read from the daemon's own ``/health`` frame counter over a fixed window
after warm-up, so start-up and model loading do not count, and the frame budget from its
``/metrics`` stage sums over the same window.

Inference-only (``Engine.infer`` on the same frames, one after another) is measured in this
process just before each daemon run, so a machine that other work slows down slows both sides
of the ratio alike.
"""
from __future__ import annotations

import json
import logging
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from benchmarks.broker import MessageCounter, free_port
from benchmarks.memory import DeviceProcess
from benchmarks.stats import median
from device.stages import LOOP_STAGES, STAGES

_log = logging.getLogger(__name__)

DEVICE_ID = "bench"
MQTT_PREFIX = "dermedge"
_POLL_S = 0.1
# dermedge_stage_seconds_sum{stage="infer"} 1.25 (and _count): device.state's exposition.
_STAGE_LINE = re.compile(r'^dermedge_stage_seconds_(sum|count)\{stage="([a-z_]+)"\} (\S+)$', re.MULTILINE)


@dataclass(frozen=True)
class DaemonOptions:
    threads: int  # interpreter threads, as in the device's model.threads
    warmup_frames: int  # classified frames before the window opens
    window_s: float  # measured seconds per run
    repeats: int  # fresh daemon processes; figures are medians
    startup_timeout_s: float = 120.0


def daemon_config(model_dir: Path, frames: Path, *, threads: int, mqtt_port: int, http_port: int) -> dict:
    return {
        "device_id": DEVICE_ID,
        "log_level": "WARNING",
        "model": {"dir": str(model_dir), "threads": threads},
        "camera": {"source": "memory", "path": str(frames), "loop": True, "fps": 0},
        "overlay": {"mode": "none"},
        "mqtt": {"enabled": True, "host": "127.0.0.1", "port": mqtt_port, "prefix": MQTT_PREFIX},
        "http": {"enabled": True, "host": "127.0.0.1", "port": http_port},
    }


def daemon_fps(model_dir: Path, frames: Path, *, mqtt_port: int, workdir: Path, options: DaemonOptions,
               inference_only: Callable[[], float]) -> dict:
    """Medians over ``options.repeats`` daemon runs, each after an ``inference_only()`` measurement
    (frames/s), the frame budget of the median run, and every run's figures."""
    runs = []
    for i in range(options.repeats):
        reference = inference_only()
        run = _one_run(model_dir, frames, mqtt_port=mqtt_port, workdir=workdir, options=options, index=i)
        runs.append({**run, "inference_only_fps": reference, "ratio": run["fps"] / reference})
    peaks = [r["peak_rss_mb"] for r in runs if r["peak_rss_mb"] is not None]  # None without /proc
    fps, reference = median([r["fps"] for r in runs]), median([r["inference_only_fps"] for r in runs])
    middle = sorted(runs, key=lambda r: r["ratio"])[len(runs) // 2]
    return {
        "threads": options.threads,
        "window_s": options.window_s,
        "fps": fps,
        "inference_only_fps": reference,
        "ratio": fps / reference,
        "peak_rss_mb": median(peaks) if peaks else None,
        "mqtt_messages_per_s": median([r["mqtt_messages"] / r["window_s"] for r in runs]),
        "stages": middle["stages"],
        "runs": runs,
    }


def stage_sums(metrics_text: str) -> dict[str, tuple[int, float]]:
    """``{stage: (count, seconds)}`` from the daemon's ``/metrics`` text."""
    found: dict[str, list] = {}
    for kind, stage, value in _STAGE_LINE.findall(metrics_text):
        found.setdefault(stage, [0, 0.0])[0 if kind == "count" else 1] = float(value)
    missing = sorted(set(STAGES) - set(found))
    if missing:
        raise RuntimeError(f"/metrics has no dermedge_stage_seconds for {missing}")
    return {stage: (int(count), seconds) for stage, (count, seconds) in found.items()}


def frame_budget(before: dict, after: dict, frames: int, frame_ms: float) -> dict:
    """Per stage between two :func:`stage_sums`: milliseconds per classified frame, runs per frame
    and milliseconds per run; ``loop_ms`` is the inference loop's stages summed, ``frame_ms`` the
    wall time per frame, ``other_ms`` what no stage accounts for."""
    if frames <= 0:
        raise ValueError(f"no frames classified in the window ({frames})")
    stages = {}
    for stage in STAGES:
        runs = after[stage][0] - before[stage][0]
        seconds = after[stage][1] - before[stage][1]
        stages[stage] = {"ms_per_frame": seconds * 1e3 / frames, "runs_per_frame": runs / frames,
                         "ms_per_run": seconds * 1e3 / runs if runs else None}
    loop_ms = sum(stages[s]["ms_per_frame"] for s in LOOP_STAGES)
    return {"per_stage": stages, "loop_ms": loop_ms, "frame_ms": frame_ms, "other_ms": frame_ms - loop_ms}


def _one_run(model_dir: Path, frames: Path, *, mqtt_port: int, workdir: Path, options: DaemonOptions,
             index: int) -> dict:
    http_port = free_port()
    config = Path(workdir) / f"daemon-{index}.yaml"
    config.write_text(yaml.safe_dump(daemon_config(model_dir, frames, threads=options.threads,
                                                   mqtt_port=mqtt_port, http_port=http_port)))
    base = f"http://127.0.0.1:{http_port}"
    with MessageCounter(mqtt_port, f"{MQTT_PREFIX}/{DEVICE_ID}/result") as counter, \
            DeviceProcess(["run", "--config", str(config)]) as process:
        try:
            _wait_for_frames(process, f"{base}/health", options.warmup_frames, options.startup_timeout_s)
            budget0 = stage_sums(_get(f"{base}/metrics"))
            t0, frames0 = _sample(f"{base}/health")
            messages0 = counter.count
            time.sleep(options.window_s)
            t1, frames1 = _sample(f"{base}/health")
            budget1 = stage_sums(_get(f"{base}/metrics"))
            messages = counter.count - messages0
            health = json.loads(_get(f"{base}/health"))
        except (RuntimeError, OSError) as err:
            tail = process.stop().stderr_tail
            raise RuntimeError(f"daemon run failed: {err}; its stderr ends: {tail}") from err
    finished = process.finished
    if finished.returncode != 0:
        raise RuntimeError(f"daemon exited with {finished.returncode} after SIGTERM: {finished.stderr_tail}")
    if health.get("mqtt") != "connected":
        raise RuntimeError(f"daemon was not connected to the broker: /health says mqtt {health.get('mqtt')!r}")
    window, frames = t1 - t0, frames1 - frames0
    if frames <= 0:
        raise RuntimeError(f"daemon classified no frames in {window:.1f} s")
    # The metrics were read just outside the health samples: the budget counts its own frames.
    budget = frame_budget(budget0, budget1, budget1["infer"][0] - budget0["infer"][0], window * 1e3 / frames)
    return {"fps": frames / window, "frames": frames, "window_s": window,
            "mqtt_messages": messages, "peak_rss_mb": finished.peak_rss_mb, "health": health, "stages": budget}


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()


def _sample(url: str) -> tuple[float, int]:
    """(time, frames classified) with the time taken half-way through the request."""
    t_before = time.monotonic()
    frames = int(json.loads(_get(url))["frames"])
    return (t_before + time.monotonic()) / 2, frames


def _wait_for_frames(process: DeviceProcess, url: str, frames: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not process.running():
            raise RuntimeError("daemon exited during start-up")
        try:
            if int(json.loads(_get(url))["frames"]) >= frames:
                return
        except (urllib.error.URLError, ConnectionError):
            pass  # HTTP is not up yet
        time.sleep(_POLL_S)
    raise RuntimeError(f"daemon classified fewer than {frames} frames within {timeout:.0f} s")
