"""LiveState: the one object the daemon writes and the HTTP API reads.

The daemon calls :meth:`LiveState.publish_frame` once per classified frame; API handlers
read the latest result, the latest overlaid frame as JPEG, health and metrics. The API
never drives the camera. The overlay is drawn (when the daemon has not drawn it for a screen)
and JPEG-encoded lazily, on the first request for a new frame, so a daemon nobody watches pays
nothing for either, and any number of MJPEG clients share one encoding per frame. ``stages``
is the frame budget (:mod:`device.stages`) that ``/metrics`` exports.
"""

from __future__ import annotations

import bisect
import collections
import threading
import time
from dataclasses import dataclass
from time import perf_counter

import cv2
import numpy as np

from device.overlay import render_overlay
from device.stages import STAGES, StageClock
from device.types import Result

# Upper bounds (seconds) of the latency histogram buckets; +Inf is implied.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
# Component statuses that make /health report "degraded".
BAD_STATUSES = frozenset({"degraded", "stalled", "disconnected", "stopped", "error"})
# Components every health report names, "unknown" until the daemon sets them.
CORE_COMPONENTS = ("camera", "mqtt", "inference")
JPEG_QUALITY = 80
# Prometheus families: name -> (type, help).
_METRICS = {
    "dermedge_up": ("gauge", "1 while every component is healthy, 0 when degraded."),
    "dermedge_info": ("gauge", "The loaded model."),
    "dermedge_uptime_seconds": ("gauge", "Seconds since start."),
    "dermedge_frames_total": ("counter", "Frames classified."),
    "dermedge_fps": ("gauge", "Classified frames per second, recent window."),
    "dermedge_dropped_frames_total": ("counter", "Captured frames dropped because inference was busy."),
    "dermedge_errors_total": ("counter", "Errors by kind."),
    "dermedge_http_requests_total": ("counter", "HTTP requests by route and status code."),
    "dermedge_latency_seconds": ("histogram", "Per-frame latency by pipeline stage."),
    "dermedge_stage_seconds": ("summary", "The frame budget: time spent in each stage of the daemon (device.stages)."),
    "dermedge_stage_max_seconds": ("gauge", "The longest single run of each stage since start."),
}


@dataclass(frozen=True)
class Component:
    status: str
    detail: str = ""


class _Histogram:
    """Prometheus histogram of seconds; buckets are stored per bucket and made cumulative on export."""

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)  # last slot is +Inf
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.total += seconds

    def samples(self, stage: str) -> list[tuple[str, float]]:
        """``(name suffix + labels, value)`` rows: cumulative buckets, then sum and count."""
        rows, cumulative = [], 0
        for bound, count in zip((*map(repr, LATENCY_BUCKETS), "+Inf"), self.counts):
            cumulative += count
            rows.append((f"_bucket{_labels(stage=stage, le=bound)}", cumulative))
        rows += [(f"_sum{_labels(stage=stage)}", self.total), (f"_count{_labels(stage=stage)}", cumulative)]
        return rows


class LiveState:
    """Thread-safe latest result, overlaid frame, component health and counters.

    Args:
        model_name: reported by health and metrics.
        fps_window: number of recent frames the frame rate is measured over.
        fps_max_age_s: frames older than this no longer count, so a stalled pipeline reads 0 fps.
    """

    def __init__(self, model_name: str, *, fps_window: int = 30, fps_max_age_s: float = 5.0):
        self.model_name = model_name
        self._fps_max_age_s = fps_max_age_s
        self._started = time.monotonic()
        self._lock = threading.Lock()
        self._new_frame = threading.Condition(self._lock)
        self._result: Result | None = None
        self._frame: np.ndarray | None = None
        self._overlaid = True  # whether _frame already carries the overlay
        self.stages = StageClock()
        # (seq, JPEG) of the newest encoded overlay; encoding holds only _encode_lock, so a
        # slow encode never delays the daemon's publish_frame
        self._jpeg: tuple[int, bytes] | None = None
        self._view_jpeg: tuple[int, bytes] | None = None  # (seq, JPEG) of the frame as stored, for wait_view
        self._encode_lock = threading.Lock()
        self._seq = 0  # frames published; the MJPEG stream waits on it
        self._frame_times: collections.deque[float] = collections.deque(maxlen=fps_window)
        self._dropped = 0
        self._errors: collections.Counter[str] = collections.Counter()
        self._requests: collections.Counter[tuple[str, int]] = collections.Counter()
        self._latency: dict[str, _Histogram] = {}
        self._components: dict[str, Component] = {}

    # --- written by the daemon and the publisher ---------------------------------

    def publish_frame(self, result: Result, frame: np.ndarray, *, overlaid: bool = True) -> None:
        """Store the newest result and its overlaid frame (HxWx3 uint8 RGB).

        ``overlaid=False``: ``frame`` is the bare camera frame (RGB or RGBA), and the overlay is
        drawn on a copy only when someone asks for the JPEG. The frame is kept by reference: the caller must
        not modify it afterwards.
        """
        now = time.monotonic()
        with self._lock:
            self._result = result
            self._frame = frame
            self._overlaid = overlaid
            self._seq += 1
            self._frame_times.append(now)
            for stage, ms in result.latency_ms.items():
                self._latency.setdefault(stage, _Histogram()).observe(ms / 1000.0)
            self._new_frame.notify_all()

    def set_component(self, name: str, status: str, detail: str = "") -> None:
        """Record a component's status, e.g. ``("camera", "degraded", "read failed")``."""
        with self._lock:
            self._components[name] = Component(status, detail)

    def count_error(self, kind: str) -> None:
        with self._lock:
            self._errors[kind] += 1

    def count_dropped(self, n: int) -> None:
        with self._lock:
            self._dropped += n

    def count_request(self, route: str, code: int) -> None:
        with self._lock:
            self._requests[(route, code)] += 1

    # --- read by the API ----------------------------------------------------------

    def latest(self) -> Result | None:
        with self._lock:
            return self._result

    def latest_jpeg(self) -> bytes | None:
        """The newest overlaid frame as JPEG, or None before the first frame."""
        return self._encoded()[1]

    def wait_jpeg(self, after_seq: int, timeout: float) -> tuple[int, bytes | None]:
        """Wait up to ``timeout`` s for a frame newer than ``after_seq``.

        Returns ``(seq, jpeg)`` for the newest frame, or ``(after_seq, None)`` on timeout.
        """
        with self._lock:
            if not self._new_frame.wait_for(lambda: self._seq > after_seq, timeout=timeout):
                return after_seq, None
        return self._encoded()

    def wait_view(self, after_seq: int, timeout: float) -> tuple[int, Result | None, bytes | None]:
        """Wait up to ``timeout`` s for a frame newer than ``after_seq``; ``(seq, Result, JPEG)`` of
        the newest, taken together so a page shows one frame and its own result. The JPEG is the
        frame as stored: bare when no screen drew the overlay on it, so the page, which writes the
        result beside the picture, shows the lesion unobstructed. ``(after_seq, None, None)`` on timeout.
        """
        with self._lock:
            if not self._new_frame.wait_for(lambda: self._seq > after_seq, timeout=timeout):
                return after_seq, None, None
            seq, frame, result, cached = self._seq, self._frame, self._result, self._view_jpeg
        if cached is None or cached[0] != seq:
            ok, buf = cv2.imencode(".jpg", cv2.cvtColor(np.ascontiguousarray(frame[..., :3]), cv2.COLOR_RGB2BGR),
                                   [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
            if not ok:
                return after_seq, None, None
            cached = (seq, buf.tobytes())
            with self._lock:
                self._view_jpeg = cached
        return seq, result, cached[1]

    @property
    def fps(self) -> float:
        with self._lock:
            return self._fps(time.monotonic())

    def health(self) -> dict:
        now = time.monotonic()
        with self._lock:
            components = self._all_components()
            last = self._frame_times[-1] if self._frame_times else None
            report = {
                "status": _overall(components),
                "model": self.model_name,
                "fps": round(self._fps(now), 2),
                "uptime_s": round(now - self._started, 1),
                "frames": self._seq,
                "last_frame_age_s": None if last is None else round(now - last, 3),
            }
            for name, comp in components.items():
                report[name] = comp.status
            report["details"] = {name: c.detail for name, c in components.items() if c.detail}
            return report

    def public_health(self) -> dict:
        """What anyone may see: the overall status and each component's status, no details."""
        with self._lock:
            components = self._all_components()
        return {"status": _overall(components), **{name: c.status for name, c in components.items()}}

    def metrics_text(self) -> str:
        """Prometheus text exposition format (version 0.0.4)."""
        now = time.monotonic()
        with self._lock:
            healthy = not any(c.status in BAD_STATUSES for c in self._components.values())
            samples = {
                "dermedge_up": [("", int(healthy))],
                "dermedge_info": [(_labels(model=self.model_name), 1)],
                "dermedge_uptime_seconds": [("", round(now - self._started, 3))],
                "dermedge_frames_total": [("", self._seq)],
                "dermedge_fps": [("", round(self._fps(now), 3))],
                "dermedge_dropped_frames_total": [("", self._dropped)],
                "dermedge_errors_total": [(_labels(kind=k), v) for k, v in sorted(self._errors.items())],
                "dermedge_http_requests_total": [
                    (_labels(route=r, code=str(c)), v) for (r, c), v in sorted(self._requests.items())
                ],
                "dermedge_latency_seconds": [
                    row for stage, hist in sorted(self._latency.items()) for row in hist.samples(stage)
                ],
            }
        budget = self.stages.snapshot()
        samples["dermedge_stage_seconds"] = [
            row for stage in STAGES for row in ((f"_sum{_labels(stage=stage)}", budget[stage][1]),
                                                (f"_count{_labels(stage=stage)}", budget[stage][0]))]
        samples["dermedge_stage_max_seconds"] = [(_labels(stage=stage), budget[stage][2]) for stage in STAGES]
        lines = []
        for name, (kind, help_text) in _METRICS.items():
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
            lines += [f"{name}{suffix} {value}" for suffix, value in samples[name]]
        return "\n".join(lines) + "\n"

    # --- internals ----------------------------------------------------------------

    def _encoded(self) -> tuple[int, bytes | None]:
        """``(seq, JPEG)`` of the newest overlay, encoding it if no one has yet."""
        with self._encode_lock:
            with self._lock:
                seq, frame, overlaid, result, cached = (self._seq, self._frame, self._overlaid, self._result,
                                                        self._jpeg)
            if cached is not None and cached[0] == seq:
                return cached
            if frame is None:
                return seq, None
            if not overlaid:
                t0 = perf_counter()
                frame = render_overlay(frame, result)
                self.stages.add("overlay", perf_counter() - t0)
            t0 = perf_counter()
            bgr = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
            ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
            self.stages.add("jpeg", perf_counter() - t0)
            if not ok:
                return seq, None
            with self._lock:
                self._jpeg = (seq, buf.tobytes())
                return self._jpeg

    def _all_components(self) -> dict[str, Component]:
        """Every component, the core ones "unknown" until set; call with the lock held."""
        return {name: Component("unknown") for name in CORE_COMPONENTS} | self._components

    def _fps(self, now: float) -> float:
        """Frames per second over the recent window; call with the lock held."""
        times = [t for t in self._frame_times if now - t <= self._fps_max_age_s]
        if len(times) < 2 or times[-1] <= times[0]:
            return 0.0
        return (len(times) - 1) / (times[-1] - times[0])


def _overall(components: dict[str, Component]) -> str:
    return "degraded" if any(c.status in BAD_STATUSES for c in components.values()) else "ok"


def _labels(**labels: str) -> str:
    def escape(value: str) -> str:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    return "{" + ",".join(f'{k}="{escape(v)}"' for k, v in labels.items()) + "}"
