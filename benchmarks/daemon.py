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

Inference-only (``Engine.infer`` on the same frames, one after another, ``FrameLoop``) runs in
this process in slices between slices of the daemon, which is paused meanwhile (SIGSTOP and
SIGCONT): on a machine whose load comes and goes, both sides of the ratio see the same machine.
Besides frames/s, both sides' CPU seconds per frame are compared (the daemon's from
``/proc/<pid>/stat``, all its threads): on a machine other work keeps busy, wall time depends on
how the scheduler shares the cores, CPU time much less.
"""
from __future__ import annotations

import json
import logging
import os
import re
import signal
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
from device.stages import LOOP_STAGES, PREPARE_STAGES, STAGES

_log = logging.getLogger(__name__)

DEVICE_ID = "bench"
MQTT_PREFIX = "dermedge"
_POLL_S = 0.1
SLICE_S = 1.0  # measured seconds per slice of each side
# After the daemon resumes, the frame it was paused in finishes (its stages carry the pause)
# before the next slice starts counting.
_SETTLE_S = 0.1
_PROC = Path("/proc")
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
               inference_only: Callable[[float], tuple[int, float, float]]) -> dict:
    """Medians over ``options.repeats`` daemon runs, the frame budget of the median run, and every
    run's figures. ``inference_only(seconds)`` runs inference-only calls for about that long and
    returns ``(calls, seconds, CPU seconds)`` (``benchmarks.latency.FrameLoop.run_for``)."""
    runs = [_one_run(model_dir, frames, mqtt_port=mqtt_port, workdir=workdir, options=options, index=i,
                     inference_only=inference_only) for i in range(options.repeats)]
    peaks = [r["peak_rss_mb"] for r in runs if r["peak_rss_mb"] is not None]  # None without /proc
    fps, reference = median([r["fps"] for r in runs]), median([r["inference_only_fps"] for r in runs])
    middle = sorted(runs, key=lambda r: r["ratio"])[len(runs) // 2]
    return {
        "threads": options.threads,
        "window_s": options.window_s,
        "fps": fps,
        "inference_only_fps": reference,
        # Paired: each run's daemon and inference-only slices shared the machine's load.
        "ratio": median([r["ratio"] for r in runs]),
        "cpu_ratio": _median_or_none([r["cpu_ratio"] for r in runs]),
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
    and milliseconds per run; ``loop_ms`` is the inference loop's stages summed, ``prepare_ms`` the
    prepare thread's (beside the loop, so not part of the frame's time), ``frame_ms`` the wall time per
    frame, ``other_ms`` what no loop stage accounts for."""
    if frames <= 0:
        raise ValueError(f"no frames classified in the window ({frames})")
    stages = {}
    for stage in STAGES:
        runs = after[stage][0] - before[stage][0]
        seconds = after[stage][1] - before[stage][1]
        stages[stage] = {"ms_per_frame": seconds * 1e3 / frames, "runs_per_frame": runs / frames,
                         "ms_per_run": seconds * 1e3 / runs if runs else None}
    loop_ms = sum(stages[s]["ms_per_frame"] for s in LOOP_STAGES)
    prepare_ms = sum(stages[s]["ms_per_frame"] for s in PREPARE_STAGES)
    return {"per_stage": stages, "loop_ms": loop_ms, "prepare_ms": prepare_ms, "frame_ms": frame_ms,
            "other_ms": frame_ms - loop_ms}


def _one_run(model_dir: Path, frames: Path, *, mqtt_port: int, workdir: Path, options: DaemonOptions,
             index: int, inference_only: Callable[[float], tuple[int, float, float]]) -> dict:
    http_port = free_port()
    config = Path(workdir) / f"daemon-{index}.yaml"
    config.write_text(yaml.safe_dump(daemon_config(model_dir, frames, threads=options.threads,
                                                   mqtt_port=mqtt_port, http_port=http_port)))
    base = f"http://127.0.0.1:{http_port}"
    slices = max(2, round(options.window_s / SLICE_S))
    slice_s = options.window_s / slices
    window = frames = messages = calls = 0
    calls_s = calls_cpu = daemon_cpu = budget_s = 0.0
    totals = {stage: (0, 0.0) for stage in STAGES}  # stage sums over the daemon's slices only
    with MessageCounter(mqtt_port, f"{MQTT_PREFIX}/{DEVICE_ID}/result") as counter, \
            DeviceProcess(["run", "--config", str(config)]) as process:
        try:
            _wait_for_frames(process, f"{base}/health", options.warmup_frames, options.startup_timeout_s)
            for _ in range(slices):
                process.proc.send_signal(signal.SIGSTOP)
                try:
                    n, seconds, cpu = inference_only(slice_s)
                finally:
                    process.proc.send_signal(signal.SIGCONT)
                calls, calls_s, calls_cpu = calls + n, calls_s + seconds, calls_cpu + cpu
                time.sleep(_SETTLE_S)
                tb0, budget0 = _budget(base)
                (t0, frames0), messages0 = _sample(base), counter.count
                cpu0 = _cpu_seconds(process.proc.pid)
                time.sleep(slice_s)
                cpu1 = _cpu_seconds(process.proc.pid)
                (t1, frames1), (tb1, budget1) = _sample(base), _budget(base)
                budget_s += tb1 - tb0
                daemon_cpu = None if None in (cpu0, cpu1, daemon_cpu) else daemon_cpu + cpu1 - cpu0
                window, frames, messages = window + t1 - t0, frames + frames1 - frames0, messages + counter.count - messages0
                totals = {s: (totals[s][0] + budget1[s][0] - budget0[s][0], totals[s][1] + budget1[s][1] - budget0[s][1])
                          for s in STAGES}
            health = json.loads(_get(f"{base}/health"))
        except (RuntimeError, OSError) as err:
            process.proc.send_signal(signal.SIGCONT)
            tail = process.stop().stderr_tail
            raise RuntimeError(f"daemon run failed: {err}; its stderr ends: {tail}") from err
    finished = process.finished
    if finished.returncode != 0:
        raise RuntimeError(f"daemon exited with {finished.returncode} after SIGTERM: {finished.stderr_tail}")
    if health.get("mqtt") != "connected":
        raise RuntimeError(f"daemon was not connected to the broker: /health says mqtt {health.get('mqtt')!r}")
    if frames <= 0 or calls <= 0:
        raise RuntimeError(f"no frames classified ({frames} by the daemon in {window:.1f} s, {calls} inference-only)")
    # The metrics were read just outside the health samples: the budget has its own frames and time.
    budget = frame_budget({s: (0, 0.0) for s in STAGES}, totals, totals["infer"][0],
                          budget_s * 1e3 / totals["infer"][0])
    fps, reference = frames / window, calls / calls_s
    cpu_ms = None if daemon_cpu is None else daemon_cpu * 1e3 / frames  # per frame, all the daemon's threads
    return {"fps": fps, "frames": frames, "window_s": window, "slices": slices, "inference_only_fps": reference,
            "inference_only_calls": calls, "ratio": fps / reference,
            "cpu_ms_per_frame": cpu_ms, "inference_only_cpu_ms_per_frame": calls_cpu * 1e3 / calls,
            "cpu_ratio": None if cpu_ms is None else calls_cpu * 1e3 / calls / cpu_ms, "mqtt_messages": messages,
            "peak_rss_mb": finished.peak_rss_mb, "health": health, "stages": budget}


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process, all its threads (None without /proc)."""
    try:
        fields = (_PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime: fields 14 and 15


def _median_or_none(values: list) -> float | None:
    known = [v for v in values if v is not None]
    return median(known) if known else None


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()


def _budget(base: str) -> tuple[float, dict[str, tuple[int, float]]]:
    """(time, :func:`stage_sums`) from ``/metrics``, the time taken half-way through the request."""
    t_before = time.monotonic()
    sums = stage_sums(_get(f"{base}/metrics"))
    return (t_before + time.monotonic()) / 2, sums


def _sample(base: str) -> tuple[float, int]:
    """(time, frames classified) from ``/health``, the time taken half-way through the request."""
    t_before = time.monotonic()
    frames = int(json.loads(_get(f"{base}/health"))["frames"])
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
