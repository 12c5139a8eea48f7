"""Timing loops and the statistics every section reports: percentiles within a run, medians across runs."""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm


@dataclass(frozen=True)
class RunStats:
    """One timed run of ``n`` calls."""

    n: int
    p50_ms: float
    p95_ms: float
    mean_ms: float
    fps: float  # calls per second of wall time spent in the calls


@dataclass(frozen=True)
class Timing:
    """Medians over repeated runs, plus each run's figures so the spread stays visible."""

    p50_ms: float
    p95_ms: float
    mean_ms: float
    fps: float
    runs: tuple[RunStats, ...]

    def to_dict(self) -> dict:
        return {"p50_ms": self.p50_ms, "p95_ms": self.p95_ms, "mean_ms": self.mean_ms, "fps": self.fps,
                "runs": [vars(r) for r in self.runs]}


def percentile(samples, q: float) -> float:
    """The ``q``-th percentile (0..100) with linear interpolation between closest ranks."""
    values = np.asarray(samples, dtype=np.float64)
    if values.size == 0:
        raise ValueError("percentile of no samples")
    return float(np.percentile(values, q))


def median(values) -> float:
    return percentile(values, 50)


def run_stats(seconds) -> RunStats:
    """Statistics of one run from the duration of each call, in seconds."""
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    if ms.size == 0:
        raise ValueError("a run needs at least one timed call")
    return RunStats(n=int(ms.size), p50_ms=percentile(ms, 50), p95_ms=percentile(ms, 95),
                    mean_ms=float(ms.mean()), fps=float(ms.size / (ms.sum() / 1e3)))


def combine(runs) -> Timing:
    """Median of each statistic over the runs."""
    runs = tuple(runs)
    if not runs:
        raise ValueError("no runs to combine")
    return Timing(p50_ms=median([r.p50_ms for r in runs]), p95_ms=median([r.p95_ms for r in runs]),
                  mean_ms=median([r.mean_ms for r in runs]), fps=median([r.fps for r in runs]), runs=runs)


def time_calls(fn: Callable[[int], object], *, warmup: int, iters: int, repeats: int, desc: str) -> Timing:
    """Call ``fn(i)`` ``warmup`` times untimed, then ``repeats`` runs of ``iters`` timed calls."""
    if iters < 1 or repeats < 1:
        raise ValueError(f"iters and repeats must be >= 1, got {iters} and {repeats}")
    for i in range(warmup):
        fn(i)
    runs = []
    with tqdm(total=iters * repeats, desc=desc, unit="call", leave=False) as bar:
        for _ in range(repeats):
            seconds = np.empty(iters)
            for i in range(iters):
                t0 = time.perf_counter()
                fn(i)
                seconds[i] = time.perf_counter() - t0
                bar.update()
            runs.append(run_stats(seconds))
    return combine(runs)
