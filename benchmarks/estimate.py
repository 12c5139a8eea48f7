"""Raspberry Pi 4 and Pi 5 frame-rate ESTIMATES for machines we have not measured on.

An estimate scales one published int8 figure by multiply-accumulates per frame:

    fps(model) = reference fps x product(documented factors) x reference MACs / model MACs

It assumes the runtime sustains the same MAC rate on our network as on the reference network,
which is optimistic for very small models (fixed per-invoke overhead weighs more) and ignores
layer mix. It is a planning figure, never a result: the report labels it ESTIMATE and gives the
command that replaces it with a measurement on the board itself.

The daemon's other stages (fit, quality, postprocess, MQTT...) are scaled by the same factor as
inference: a stage's time here x (estimated invoke time on the board / measured invoke time
here), so the daemon keeps the share of its frame that inference has here. NumPy and OpenCV work
slows down on a Cortex-A72 by a factor of its own, not necessarily the int8 one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

# MobileNetV2 1.0 at 224x224: 300 M multiply-adds (Sandler et al., "MobileNetV2: Inverted
# Residuals and Linear Bottlenecks", CVPR 2018, arXiv:1801.04381).
MOBILENET_V2_MACS = 300_000_000
PI4_REFERENCE_FPS = 45.5
PI4_REFERENCE_SOURCE = (
    "Q-engineering, 'TensorFlow Lite classification running on a bare Raspberry Pi 4' (README benchmark "
    "table of github.com/Qengineering/TensorFlow_Lite_Classification_RPi_64-bits): Mobile_V2 Lite "
    "(mobilenet_v2_1.0_224_quant.tflite, 8-bit quantized TFLite, C++, 4 threads) 45.5 FPS on a Raspberry Pi 4 "
    "at 1950 MHz, 64-bit OS"
)
PI4_CLOCK = (1800 / 1950, "reference board overclocked to 1950 MHz; scaled to the stock 1.8 GHz")
PI5_VS_PI4 = (2.0, ("Raspberry Pi 5 over Pi 4: the low end of the '2-3x increase in CPU performance' "
                   "Raspberry Pi publishes for Pi 5 (raspberrypi.com/products/raspberry-pi-5)"))
MEASURE_ON_PI = (
    "sudo apt install -y mosquitto && make setup-device && .venv/bin/pip install tqdm matplotlib && "
    "TF_CPP_MIN_LOG_LEVEL=3 .venv/bin/python -m benchmarks --models-dir models --threads 1,2,4"
)


@dataclass(frozen=True)
class Reference:
    board: str
    model: str
    macs: int
    fps: float
    source: str
    factors: tuple[tuple[float, str], ...]  # (multiplier, why) applied to the published fps

    @property
    def scale(self) -> float:
        return math.prod(value for value, _ in self.factors)


PI4 = Reference(board="Raspberry Pi 4 Model B (Cortex-A72, 4 threads)", model="MobileNetV2 1.0 224, 8-bit",
                macs=MOBILENET_V2_MACS, fps=PI4_REFERENCE_FPS, source=PI4_REFERENCE_SOURCE, factors=(PI4_CLOCK,))
PI5 = Reference(board="Raspberry Pi 5 (Cortex-A76, 4 threads)", model="MobileNetV2 1.0 224, 8-bit",
                macs=MOBILENET_V2_MACS, fps=PI4_REFERENCE_FPS, source=PI4_REFERENCE_SOURCE,
                factors=(PI4_CLOCK, PI5_VS_PI4))
REFERENCES = {"pi4": PI4, "pi5": PI5}


def estimate_fps(macs: int, reference: Reference) -> float:
    """Frames/s of a model with ``macs`` multiply-accumulates per frame, scaled from ``reference``."""
    if macs <= 0:
        raise ValueError(f"macs must be > 0, got {macs}")
    return reference.fps * reference.scale * reference.macs / macs


def pi_frame_budget(budget: dict, macs: int) -> dict:
    """Both boards' ESTIMATE of the daemon's frame: every stage of ``budget`` (a measured frame
    budget, ``benchmarks.daemon.frame_budget``) scaled by the board's inference factor, and the
    end-to-end frames/s beside the inference-only (invoke) one."""
    infer_ms = budget["per_stage"]["infer"]["ms_per_frame"]
    if infer_ms <= 0:
        raise ValueError(f"the frame budget has no inference time ({infer_ms} ms)")
    out = {}
    for key, ref in REFERENCES.items():
        inference_fps = estimate_fps(macs, ref)
        factor = 1e3 / inference_fps / infer_ms
        frame_ms = budget["frame_ms"] * factor
        out[key] = {"kind": "ESTIMATE", "board": ref.board, "factor": factor,
                    "ms_per_frame": {stage: row["ms_per_frame"] * factor for stage, row in budget["per_stage"].items()},
                    "loop_ms": budget["loop_ms"] * factor, "other_ms": budget["other_ms"] * factor,
                    "frame_ms": frame_ms,
                    "inference_only_fps": inference_fps, "end_to_end_fps": 1e3 / frame_ms}
    return out


def pi_estimates(macs: int) -> dict:
    """Both boards' ESTIMATE for one model, with how each was derived."""
    out = {}
    for key, ref in REFERENCES.items():
        fps = estimate_fps(macs, ref)
        out[key] = {"kind": "ESTIMATE", "board": ref.board, "fps": fps, "latency_ms": 1e3 / fps,
                    "reference": {"model": ref.model, "macs": ref.macs, "fps": ref.fps, "source": ref.source,
                                  "factors": [{"value": v, "why": why} for v, why in ref.factors]}}
    return out
