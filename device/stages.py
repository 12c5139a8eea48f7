"""The frame budget: where a frame's time goes, stage by stage, measured inside the daemon.

Each stage keeps a call count, a sum and a maximum of its durations in seconds, in lists sized
once for the fixed stage names, so recording costs two ``perf_counter`` calls and a few list
updates (no per-frame allocation of note). ``/metrics`` exports them as one Prometheus summary
(``dermedge_stage_seconds{stage=...}``, ``_sum`` and ``_count``) and the benchmark divides the
sums by the frames classified to get milliseconds per frame.
"""
from __future__ import annotations

import threading

# In the order a frame meets them. The prepare thread takes the grabber's newest frame (``grab``,
# idle time when the camera is slower than the model), measures its ``quality`` and runs the
# engine's crop, resize, normalise and quantize (``fit``) while the inference loop classifies the
# frame before; the loop's ``wait`` is what it then waits for the prepared frame (all of the above
# that inference did not cover), ``infer`` the interpreter's invoke. ``overlay`` and ``jpeg`` run
# only for a screen or an HTTP viewer (``jpeg`` in the HTTP thread that asked); ``state`` hands the
# frame to HTTP; ``display`` shows it on a screen.
STAGES = ("grab", "quality", "fit", "wait", "infer", "postprocess", "overlay", "display", "state", "mqtt", "jpeg")
# The prepare thread's stages, beside the loop.
PREPARE_STAGES = STAGES[:3]
# The stages of the inference loop itself, timed once per classified frame (or skipped): a frame
# takes their sum.
LOOP_STAGES = STAGES[3:-1]
STAGE_HELP = {
    "grab": "taking the camera's newest frame (prepare thread, beside the loop)",
    "quality": "brightness and sharpness of the model's view (prepare thread)",
    "fit": "crop, resize, normalise and quantize to the model input (engine, prepare thread)",
    "wait": "the loop waiting for the prepared frame: what grab, quality and fit took beyond the inference beside them",
    "infer": "the interpreter's invoke (engine)",
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
