"""The accuracy gate: int8 against float on the same split, through the device's engine.

Both models run image by image through ``device.engine.Engine.infer_pixels``, the
path the device uses, so the gate measures what ships. The int8 model passes when
its accuracy is at most ``max_drop`` points below the float model's and its top-1
prediction agrees with the float model's on at least ``min_agreement`` of images.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from device.engine import Engine
from train.dataset import engine_probs
from train.metrics import classification_report


class GateError(RuntimeError):
    """The int8 model lost too much against the float model; the message says by how much."""


@dataclass(frozen=True)
class GateThresholds:
    max_drop: float = 1.0  # largest allowed int8 accuracy drop vs float, in percentage points
    min_agreement: float = 0.97  # smallest allowed share of images where int8 and float top-1 agree


@dataclass(frozen=True)
class GateResult:
    float_report: dict
    int8_report: dict
    agreement: float  # share of images with the same top-1 class
    accuracy_drop: float  # float accuracy minus int8 accuracy, in percentage points
    thresholds: GateThresholds
    failures: tuple[str, ...]
    int8_probs: np.ndarray | None = None  # (N, classes), kept for the referral rule and reports

    @property
    def passed(self) -> bool:
        return not self.failures

    def summary(self) -> dict:
        """The verdict as stored in the card (without the two full reports)."""
        return {"passed": self.passed, "accuracy_drop_points": self.accuracy_drop,
                "agreement": self.agreement, "failures": list(self.failures), **asdict(self.thresholds)}


def compare(float_probs: np.ndarray, int8_probs: np.ndarray, y_true: np.ndarray, labels: tuple[str, ...],
            thresholds: GateThresholds) -> GateResult:
    """Score both models on the same labels and apply the thresholds."""
    if len(y_true) == 0:
        raise GateError("the evaluation split is empty; nothing to gate on")
    float_report = classification_report(float_probs, y_true, labels)
    int8_report = classification_report(int8_probs, y_true, labels)
    agreement = float((float_probs.argmax(axis=1) == int8_probs.argmax(axis=1)).mean())
    drop = 100.0 * (float_report["accuracy"] - int8_report["accuracy"])
    failures = []
    if drop > thresholds.max_drop:
        failures.append(f"int8 accuracy {100 * int8_report['accuracy']:.2f}% is {drop:.2f} points below "
                        f"float {100 * float_report['accuracy']:.2f}% (allowed {thresholds.max_drop:.2f})")
    if agreement < thresholds.min_agreement:
        failures.append(f"int8/float top-1 agreement {100 * agreement:.2f}% is below "
                        f"{100 * thresholds.min_agreement:.2f}%")
    return GateResult(float_report, int8_report, agreement, drop, thresholds, tuple(failures), int8_probs)


def evaluate(float_engine: Engine, int8_engine: Engine, pixels: np.ndarray, y_true: np.ndarray,
             thresholds: GateThresholds) -> GateResult:
    labels = int8_engine.card.codes
    float_probs = engine_probs(float_engine, pixels, desc="float")
    int8_probs = engine_probs(int8_engine, pixels, desc="int8")
    return compare(float_probs, int8_probs, np.asarray(y_true), labels, thresholds)


def check(result: GateResult, *, name: str) -> None:
    """Raise :class:`GateError` naming every failed threshold."""
    if not result.passed:
        raise GateError(f"int8 gate failed for {name}: " + "; ".join(result.failures))


def markdown_report(result: GateResult, *, name: str, facts: dict[str, str] | None = None) -> str:
    """Side-by-side float / int8 metrics as a Markdown page."""
    f, q = result.float_report, result.int8_report
    lines = [f"# {name}: float vs int8", ""]
    for key, value in (facts or {}).items():
        lines.append(f"- {key}: {value}")
    lines += [
        f"- evaluated on {f['n']} images",
        (f"- top-1 agreement int8 vs float: {100 * result.agreement:.2f}% "
         f"(minimum {100 * result.thresholds.min_agreement:.2f}%)"),
        f"- accuracy drop: {result.accuracy_drop:.2f} points (maximum {result.thresholds.max_drop:.2f})",
        f"- gate: **{'passed' if result.passed else 'FAILED'}**",
        *(f"  - {failure}" for failure in result.failures),
        "",
        "| metric | float | int8 |",
        "|---|---|---|",
    ]
    for label, key, pct in (("accuracy", "accuracy", True), ("balanced accuracy", "balanced_accuracy", True),
                            ("macro-F1", "macro_f1", True), ("macro AUC", "macro_auc", False),
                            ("ECE", "ece", False)):
        lines.append(f"| {label} | {_fmt(f[key], pct)} | {_fmt(q[key], pct)} |")
    for code in f["per_class"]:
        support = f["per_class"][code]["support"]
        lines.append(f"| recall {code} (n={support}) | {_fmt(f['per_class'][code]['recall'], True)} "
                     f"| {_fmt(q['per_class'][code]['recall'], True)} |")
    lines += ["", "A screening aid, not a diagnosis.", ""]
    return "\n".join(lines)


def _fmt(value, percent: bool) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "n/a"
    return f"{100 * value:.2f}%" if percent else f"{value:.4f}"
