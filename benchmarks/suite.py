"""One benchmark run over every model folder: sections in a fixed order, results as one dict.

Order matters for honest numbers: the TFLite timings run first, in a process that has not
loaded TensorFlow; the daemon and ``device predict`` run as their own processes while this one
waits; the Keras baseline runs last. A section that cannot run here (no data, no broker, no
Keras) is skipped with a note; one that fails is recorded as an error, the run goes on, and
the CLI exits non-zero.
"""
from __future__ import annotations

import datetime as dt
import logging
import os
import tempfile
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from benchmarks import Skipped
from benchmarks.accuracy import model_accuracy
from benchmarks.baseline import SEED_DESIGN, Architecture, keras_predict_latency
from benchmarks.broker import Mosquitto
from benchmarks.daemon import DaemonOptions, daemon_fps
from benchmarks.env import environment, load_average
from benchmarks.estimate import MEASURE_ON_PI, pi_estimates, pi_frame_budget
from benchmarks.frames import camera_frames, load_images, write_replay_frames
from benchmarks.latency import FrameLoop, TimingOptions, frame_throughput, model_latency
from benchmarks.memory import REPO_ROOT, predict_memory
from device.card import ModelCard
from device.config import CARD_FILE, ModelConfig

_log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
SECTIONS = ("daemon", "memory", "accuracy", "baseline")  # the ones --skip may leave out
DEFAULT_MODEL = Path(ModelConfig().dir).name
SAME_ARCH_TARGET = 5.0  # int8 path vs the same architecture served by Keras predict
DEFAULT_VS_SEED_TARGET = 10.0  # the default model's int8 path vs the seed CNN served by Keras predict
DAEMON_RATIO_TARGET = 0.9  # end-to-end daemon fps / inference-only fps


def default_threads() -> tuple[int, ...]:
    """1, 2 and 4 threads where the machine has that many cores, and all of its cores."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return tuple(sorted({n for n in (1, 2, 4) if n <= cores} | {cores}))


@dataclass(frozen=True)
class BenchOptions:
    models_dir: Path = Path("models")
    data: Path | None = None  # HAM10000 root for the accuracy section; None skips it
    images: Path = REPO_ROOT / "tests" / "fixtures" / "ham10000_mini" / "images"  # frames to time on
    out: Path = Path("benchmarks/results")
    threads: tuple[int, ...] = field(default_factory=default_threads)
    repeats: int = 5
    quick: bool = False  # smoke mode: few iterations, short daemon window
    daemon_threads: int = ModelConfig().threads
    cache_dir: Path | None = Path("cache")  # decoded test-split pixels, shared with train/
    skip: tuple[str, ...] = ()

    def __post_init__(self):
        unknown = sorted(set(self.skip) - set(SECTIONS))
        if unknown:
            raise ValueError(f"skip: unknown sections {unknown}; choose from {list(SECTIONS)}")
        if not self.threads or min(self.threads) < 1:
            raise ValueError(f"threads: expected positive counts, got {self.threads}")
        if self.repeats < 1:
            raise ValueError(f"repeats: expected >= 1, got {self.repeats}")


@dataclass(frozen=True)
class Plan:
    """Iteration counts; ``quick`` only proves the harness works end to end."""

    images: int
    tflite: TimingOptions
    keras: TimingOptions
    daemon: DaemonOptions

    @classmethod
    def for_options(cls, o: BenchOptions) -> Plan:
        if o.quick:
            return cls(images=8, tflite=TimingOptions(warmup=3, iters=20, repeats=o.repeats),
                       keras=TimingOptions(warmup=2, iters=5, repeats=o.repeats),
                       daemon=DaemonOptions(threads=o.daemon_threads, warmup_frames=3, window_s=1.5, repeats=1))
        return cls(images=64, tflite=TimingOptions(warmup=20, iters=200, repeats=o.repeats),
                   keras=TimingOptions(warmup=5, iters=50, repeats=o.repeats),
                   daemon=DaemonOptions(threads=o.daemon_threads, warmup_frames=30, window_s=10.0,
                                        repeats=min(o.repeats, 3)))


def command_line(o: BenchOptions) -> str:
    """The command that repeats this run."""
    parts = ["python -m benchmarks", f"--models-dir {o.models_dir}", f"--threads {','.join(map(str, o.threads))}",
             f"--repeats {o.repeats}"]
    if o.data is not None:
        parts.append(f"--data {o.data}")
    if o.skip:
        parts.append(f"--skip {','.join(o.skip)}")
    if o.quick:
        parts.append("--quick")
    return " ".join(parts)


def find_models(models_dir: Path) -> list[tuple[Path, ModelCard]]:
    """Every ``<models_dir>/<name>/`` with a card, in name order."""
    models_dir = Path(models_dir)
    if not models_dir.is_dir():
        raise FileNotFoundError(f"models folder not found: {models_dir}")
    found = [(d.resolve(), ModelCard.load(d / CARD_FILE)) for d in sorted(models_dir.iterdir())
             if (d / CARD_FILE).is_file()]
    if not found:
        raise FileNotFoundError(f"no model folders (<name>/{CARD_FILE}) in {models_dir}")
    return found


class _Recorder:
    """Runs sections, turning Skipped into a note and any other failure into a recorded error."""

    def __init__(self):
        self.notes: list[str] = []
        self.errors: list[str] = []

    def section(self, name: str, fn: Callable[[], object]):
        try:
            return fn()
        except Skipped as why:
            self.notes.append(f"{name}: skipped, {why}")
            _log.warning("%s skipped: %s", name, why)
        except Exception as err:  # noqa: BLE001 - one failing section must not lose the others
            self.errors.append(f"{name}: {type(err).__name__}: {err}")
            _log.error("%s failed:\n%s", name, traceback.format_exc())
        return None


def run_suite(options: BenchOptions) -> dict:
    """Measure every model in ``options.models_dir``; returns the JSON-ready results."""
    plan = Plan.for_options(options)
    rec = _Recorder()
    env = environment()
    models = find_models(options.models_dir)
    images = load_images(options.images, plan.images)
    frames = camera_frames(images)
    entries = [_describe(model_dir, card) for model_dir, card in models]

    for entry, (model_dir, card) in zip(entries, models):
        entry["latency"] = model_latency(model_dir, card, images, threads=options.threads, timing=plan.tflite)
        entry["frame_throughput"] = {"threads": options.daemon_threads, **frame_throughput(
            model_dir, frames, threads=options.daemon_threads, timing=plan.tflite).to_dict()}

    with tempfile.TemporaryDirectory(prefix="dermedge-bench-") as tmp:
        if "daemon" not in options.skip:
            replay = write_replay_frames(frames, Path(tmp) / "frames.npy")
            rec.section("daemon", lambda: _daemon_section(entries, models, frames, replay, Path(tmp), plan, rec))
        if "memory" not in options.skip:
            for entry, (model_dir, _) in zip(entries, models):
                entry["memory"]["predict"] = rec.section(
                    f"memory {entry['name']}", lambda d=model_dir: predict_memory(d, options.images))

    if "accuracy" not in options.skip:
        for entry, (model_dir, card) in zip(entries, models):
            entry["accuracy"] = rec.section(f"accuracy {entry['name']}", lambda d=model_dir, c=card: _accuracy(
                d, c, options))

    baselines = {}
    if "baseline" not in options.skip:
        baselines = _baselines(models, plan, rec)
    for entry, (_, card) in zip(entries, models):
        entry["speedup"] = _speedup(entry, card, models, baselines, max(options.threads))
        if entry["macs"]:
            entry["estimates"] = pi_estimates(entry["macs"])
            if entry.get("daemon"):
                entry["daemon"]["pi"] = pi_frame_budget(entry["daemon"]["stages"], entry["macs"])

    env["load_average_end"] = load_average()
    return {
        "schema_version": SCHEMA_VERSION,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "mode": "quick" if options.quick else "full",
        "command": command_line(options),
        "options": {k: (list(v) if isinstance(v, tuple) else str(v) if isinstance(v, Path) else v)
                    for k, v in asdict(options).items()},
        "plan": {"images": plan.images, "tflite": asdict(plan.tflite), "keras": asdict(plan.keras),
                 "daemon": asdict(plan.daemon)},
        "targets": {"same_arch_speedup": SAME_ARCH_TARGET, "default_vs_seed_speedup": DEFAULT_VS_SEED_TARGET,
                    "daemon_ratio": DAEMON_RATIO_TARGET},
        "environment": env,
        "default_model": DEFAULT_MODEL,
        "models": entries,
        "baselines": baselines,
        "measure_on_pi": MEASURE_ON_PI,
        "notes": rec.notes,
        "errors": rec.errors,
    }


def _describe(model_dir: Path, card: ModelCard) -> dict:
    arch = card.architecture
    return {
        "name": card.name,
        "dir": str(model_dir),
        "default": model_dir.name == DEFAULT_MODEL,
        "arch": arch.get("arch"),
        "width_mult": arch.get("width_mult"),
        "input": [card.input.height, card.input.width],
        "params": arch.get("params"),
        "macs": arch.get("macs") and arch["macs"] * card.inferences_per_frame,  # per frame, all TTA views
        "tta": card.preprocessing.tta,
        "view": card.view,
        "int8_size_bytes": card.model_file.size_bytes,
        "float_size_bytes": card.float_file.size_bytes if card.float_file else None,
        "memory": {},
    }


def _daemon_section(entries, models, frames, replay: Path, workdir: Path, plan: Plan, rec: _Recorder) -> None:
    with Mosquitto() as broker:
        for entry, (model_dir, _) in zip(entries, models):
            result = rec.section(f"daemon {entry['name']}", lambda d=model_dir: daemon_fps(
                d, replay, mqtt_port=broker.port, workdir=workdir, options=plan.daemon,
                inference_only=FrameLoop(d, frames, threads=plan.daemon.threads, warmup=plan.tflite.warmup).run_for))
            if result is None:
                continue
            entry["daemon"] = result
            entry["memory"]["daemon"] = {"peak_rss_mb": result["peak_rss_mb"]}


def _accuracy(model_dir: Path, card: ModelCard, options: BenchOptions) -> dict:
    if options.data is None:
        raise Skipped("no data root given (--data ROOT)")
    if not Path(options.data).is_dir():
        raise Skipped(f"data root {options.data} not found")
    return model_accuracy(model_dir, card, options.data, cache_dir=options.cache_dir, threads=max(options.threads))


def _seed_architecture(models) -> Architecture:
    """A trained seed CNN in models/ if there is one, else the design's."""
    for _, card in models:
        if card.architecture.get("arch") == SEED_DESIGN.arch:
            return Architecture.from_card(card)
    return SEED_DESIGN


def _baselines(models, plan: Plan, rec: _Recorder) -> dict:
    wanted = []
    for model_dir, card in models:
        arch = rec.section(f"baseline {card.name}", lambda c=card, d=model_dir: Architecture.from_card(c, d.parent))
        if arch is not None and arch not in wanted:
            wanted.append(arch)
    if _seed_architecture(models) not in wanted:
        wanted.append(_seed_architecture(models))
    out = {}
    for arch in wanted:
        result = rec.section(f"baseline {arch.label}", lambda a=arch: keras_predict_latency(a, plan.keras))
        if result is not None:
            out[arch.label] = result
    return out


def _arch_label(card: ModelCard, models_dir: Path) -> str | None:
    """The baseline key of the card's architecture; None where it has none (the section said why)."""
    try:
        return Architecture.from_card(card, models_dir).label
    except Skipped:
        return None


def _speedup(entry: dict, card: ModelCard, models, baselines: dict, threads: int) -> dict | None:
    """How much faster the int8 path (at ``threads``) is than Keras predict, and whether targets are met."""
    int8 = next((row for row in entry["latency"]["int8"] if row["threads"] == threads), None)
    if int8 is None or not baselines:
        return None
    out = {"threads": threads, "int8_p50_ms": int8["p50_ms"]}
    same_label = _arch_label(card, Path(entry["dir"]).parent)
    if same_label is not None:
        same = baselines.get(same_label)
        if same is not None:
            out["same_arch_baseline"] = same_label
            out["vs_same_arch"] = same["p50_ms"] / int8["p50_ms"]
            out["vs_same_arch_meets_target"] = out["vs_same_arch"] >= SAME_ARCH_TARGET
    seed = baselines.get(_seed_architecture(models).label)
    if seed is not None:
        out["seed_baseline"] = _seed_architecture(models).label
        out["vs_seed_cnn"] = seed["p50_ms"] / int8["p50_ms"]
        if entry["default"]:
            out["vs_seed_cnn_meets_target"] = out["vs_seed_cnn"] >= DEFAULT_VS_SEED_TARGET
    return out
