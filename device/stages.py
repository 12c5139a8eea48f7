"""The frame budget: where a frame's time goes, stage by stage, measured inside the daemon.

Each stage keeps a call count, a sum and a maximum of its durations in seconds, in lists sized
once for the fixed stage names, so recording costs two ``perf_counter`` calls and a few list
updates (no per-frame allocation of note). ``/metrics`` exports them as one Prometheus summary
(``dermedge_stage_seconds{stage=...}``, ``_sum`` and ``_count``) and the benchmark divides the
sums by the frames classified to get milliseconds per frame.
"""
from __future__ import annotations

import threading

# In the order a frame meets them. ``capture`` is the wait for the grabber's newest frame (idle
# time when the camera is slower than the model); ``fit`` is the engine's crop, resize, normalise
# and quantize, ``infer`` its invoke; ``overlay`` and ``jpeg`` run only for a screen or an HTTP
# viewer (``jpeg`` in the HTTP thread that asked); ``state`` hands the frame to HTTP; ``display``
# shows it on a screen.
STAGES = ("capture", "fit", "infer", "quality", "postprocess", "overlay", "display", "state", "mqtt", "jpeg")
# The stages of the inference loop itself, timed once per classified frame (or skipped).
LOOP_STAGES = STAGES[:-1]
STAGE_HELP = {
    "capture": "waiting for and taking the camera's newest frame",
    "fit": "crop, resize, normalise and quantize to the model input (engine)",
    "infer": "the interpreter's invoke (engine)",
    "quality": "brightness and sharpness of the model's view: the wait for it beyond inference, beside which it runs",
    "postprocess": "probabilities, smoothing, states and the Result",
    "overlay": "drawing the overlay (for a screen, or for an HTTP viewer on request)",
    "display": "handing the frame to the screen",
    "state": "publishing the Result and frame to HTTP (LiveState)",
    "mqtt": "offering the Result to MQTT (JSON and queueing only when it is sent)",
    "jpeg": "JPEG encoding for /snapshot.jpg and /stream.mjpg, once per frame someone watches",
}


class StageClock:
    """Count, sum and maximum of each stage's durations; safe to record from several threads."""

    def __init__(self, stages: tuple[str, ...] = STAGES):
        self.stages = stages
        self._index = {name: i for i, name in enumerate(stages)}
        self._count = [0] * len(stages)
        self._sum = [0.0] * len(stages)
        self._max = [0.0] * len(stages)
        self._lock = threading.Lock()

    def add(self, stage: str, seconds: float) -> None:
        """Record one run of ``stage`` (a KeyError names a stage that is not in the list)."""
        i = self._index[stage]
        with self._lock:
            self._count[i] += 1
            self._sum[i] += seconds
            self._max[i] = max(self._max[i], seconds)

    def snapshot(self) -> dict[str, tuple[int, float, float]]:
        """``{stage: (count, sum_s, max_s)}`` for every stage, recorded or not."""
        with self._lock:
            return {name: (self._count[i], self._sum[i], self._max[i]) for name, i in self._index.items()}
