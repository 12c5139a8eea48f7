"""TFLite latency through the device's own engine: per variant and thread count, after warm-up.

Two measurements:

- ``model_latency``: ``Engine.infer_pixels`` on images already fitted to the model input
  (normalize, quantize, invoke, dequantize), the figure the latency table and GMAC/s come from;
- ``frame_throughput``: ``Engine.infer`` on 640x480 camera frames (crop and resize included), the
  inference-only frame rate; :class:`FrameLoop` runs the same calls in slices between the daemon's
  for the ratio the daemon's end-to-end rate is judged by.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.stats import Timing, time_calls
from device.card import ModelCard
from device.engine import Engine
from device.preprocess import fit_to_input

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TimingOptions:
    warmup: int  # untimed calls after loading, so caches and thread pools are warm
    iters: int  # timed calls per run
    repeats: int  # runs; every figure is the median over runs


def variants(card: ModelCard) -> tuple[str, ...]:
    return ("int8", "float") if card.float_file is not None else ("int8",)


def achieved_gmacs(macs: int, latency_ms: float) -> float:
    """Multiply-accumulates per second, in billions, at a per-frame latency."""
    return macs / (latency_ms / 1e3) / 1e9


def model_latency(model_dir: Path, card: ModelCard, images: list[np.ndarray], *, threads: tuple[int, ...],
                  timing: TimingOptions) -> dict[str, list[dict]]:
    """``{variant: [one row per thread count]}`` with p50/p95 latency, frames/s and GMAC/s."""
    pixels = [fit_to_input(rgb, card.input.height, card.input.width) for rgb in images]
    macs = int(card.architecture.get("macs", 0)) * card.inferences_per_frame
    out: dict[str, list[dict]] = {}
    for variant in variants(card):
        rows = []
        for n in threads:
            engine = Engine.from_model_dir(model_dir, variant=variant, num_threads=n)
            result = time_calls(lambda i, e=engine: e.infer_pixels(pixels[i % len(pixels)]),
                                warmup=timing.warmup, iters=timing.iters, repeats=timing.repeats,
                                desc=f"{card.name} {variant} {n}t")
            row = {"threads": n, "backend": engine.backend, **result.to_dict()}
            row["gmacs_per_s"] = achieved_gmacs(macs, result.p50_ms) if macs else None
            rows.append(row)
            _log.info("%s %s %d threads: p50 %.2f ms, %.1f fps", card.name, variant, n, result.p50_ms, result.fps)
        out[variant] = rows
    return out


class FrameLoop:
    """int8 ``Engine.infer`` on full camera frames, one after another, in slices of wall time: the
    daemon's inference-only counterpart, run between slices of the daemon so both see the same
    machine (benchmarks.daemon)."""

    def __init__(self, model_dir: Path, frames: list[np.ndarray], *, threads: int, warmup: int):
        self.engine = Engine.from_model_dir(model_dir, num_threads=threads)
        self.frames = frames
        self._next = 0
        self.run_calls(warmup)

    def run_calls(self, n: int) -> None:
        for _ in range(n):
            self.engine.infer(self.frames[self._next % len(self.frames)])
            self._next += 1

    def run_for(self, seconds: float) -> tuple[int, float, float]:
        """``(calls, seconds they took, CPU seconds this process spent meanwhile)``: calls one after
        another until ``seconds`` have passed."""
        t0, cpu0, calls = time.perf_counter(), time.process_time(), 0
        while time.perf_counter() - t0 < seconds:
            self.run_calls(1)
            calls += 1
        return calls, time.perf_counter() - t0, time.process_time() - cpu0


def frame_throughput(model_dir: Path, frames: list[np.ndarray], *, threads: int, timing: TimingOptions) -> Timing:
    """int8 ``Engine.infer`` on full camera frames, one after another, as the daemon calls it."""
    engine = Engine.from_model_dir(model_dir, num_threads=threads)
    return time_calls(lambda i: engine.infer(frames[i % len(frames)]), warmup=timing.warmup,
                      iters=timing.iters, repeats=timing.repeats, desc=f"{engine.card.name} frames {threads}t")
