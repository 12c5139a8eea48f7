"""The TFLite inference engine: one interpreter, built once, one call per frame.

    engine = Engine.from_model_dir("models/edgenet")
    inference = engine.infer(rgb)          # any-size HxWx3 uint8 RGB -> Inference

The interpreter comes from ``ai_edge_litert``, else ``tflite_runtime``, else
TensorFlow (the workstation). At load the interpreter's input and output tensors are
checked against the model card and a mismatch is refused naming the card field, so a
card and a model file that do not belong together never produce scores. Quantization
uses the tensors' own scale and zero point. The card's centre zoom (``preprocessing.zoom``) and
test-time augmentation (``preprocessing.tta``, outputs averaged over the views) are applied here,
so every caller (daemon, HTTP, CLI, the quantization gate) scores the same way. Thresholds, top-k and the uncertain state
are not decided here (see postprocess).
"""
from __future__ import annotations

import importlib
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from device.card import CardError, ModelCard, read_model_file
from device.native_stderr import native_stderr_to_log
from device.preprocess import (
    centre_zoom,
    colour_levels,
    dequantize,
    fit_to_input,
    input_table,
    tta_views,
)
from device.types import Inference, Prepared

_log = logging.getLogger(__name__)

# (backend name, module, attribute holding the Interpreter class), in order of preference.
BACKENDS: tuple[tuple[str, str, str], ...] = (
    ("ai_edge_litert", "ai_edge_litert.interpreter", "Interpreter"),
    ("tflite_runtime", "tflite_runtime.interpreter", "Interpreter"),
    ("tensorflow", "tensorflow", "lite.Interpreter"),
)
VARIANTS = ("int8", "float")
# The card stores the converter's float32 scale as a JSON double; allow for that rounding.
_SCALE_RTOL = 1e-5


@dataclass(frozen=True)
class TensorInfo:
    """What the engine needs to know about one interpreter tensor."""

    index: int
    shape: tuple[int, ...]
    dtype: str  # numpy dtype name: "int8", "uint8", "float32"
    scale: float  # 0.0 for float tensors
    zero_point: int

    @classmethod
    def from_detail(cls, detail: dict) -> TensorInfo:
        scale, zero_point = detail.get("quantization", (0.0, 0))
        return cls(
            index=int(detail["index"]),
            shape=tuple(int(d) for d in detail["shape"]),
            dtype=np.dtype(detail["dtype"]).name,
            scale=float(scale),
            zero_point=int(zero_point),
        )


def interpreter_class(backends=BACKENDS) -> tuple[str, type]:
    """The first importable ``(backend name, Interpreter class)`` of ``backends``."""
    tried = []
    for name, module_name, attr in backends:
        try:
            obj = importlib.import_module(module_name)
        except ImportError as err:
            tried.append(f"{module_name} ({err})")
            continue
        for part in attr.split("."):
            obj = getattr(obj, part)
        return name, obj
    raise ImportError(
        "no TFLite interpreter found; install ai-edge-litert (or tflite-runtime). Tried: " + "; ".join(tried)
    )


def open_interpreter(model_path: Path, *, num_threads: int = 2, content: bytes | None = None):
    """``(interpreter with tensors allocated, backend name)`` for a ``.tflite`` file.

    The interpreter is given the model's bytes (``content``, else the file read whole), never the
    path: with a path it maps the file, and a ``cp`` or a truncation over that file while it runs
    pulls the pages from under it (SIGBUS, the process dies). ``model_path`` names it in errors.
    """
    backend, cls = interpreter_class()
    try:
        content = Path(model_path).read_bytes() if content is None else content
        with native_stderr_to_log():
            interpreter = cls(model_content=content, num_threads=num_threads)
            interpreter.allocate_tensors()
    except ValueError as err:
        raise CardError(f"{model_path}: not a loadable TFLite model ({err})") from err
    return interpreter, backend


# The not-a-lesion gate's output: one probability. Outputs are told apart by shape, never by order.
GATE_SHAPE = (1, 1)


def model_tensors(interpreter) -> tuple[TensorInfo, TensorInfo, TensorInfo | None]:
    """The input, the class output and the not-a-lesion output (None when the model has only the
    class output) of a classifier interpreter."""
    inputs, outputs = interpreter.get_input_details(), interpreter.get_output_details()
    if len(inputs) != 1 or len(outputs) not in (1, 2):
        raise CardError(f"expected one input and one or two output tensors, got {len(inputs)} and {len(outputs)}")
    infos = [TensorInfo.from_detail(detail) for detail in outputs]
    gates = [info for info in infos if info.shape == GATE_SHAPE]
    if len(infos) == 2 and len(gates) != 1:
        raise CardError(f"expected a class output and a {GATE_SHAPE} not-a-lesion output, got shapes "
                        f"{[info.shape for info in infos]}")
    gate = gates[0] if len(infos) == 2 else None
    classes = next(info for info in infos if info is not gate)
    return TensorInfo.from_detail(inputs[0]), classes, gate


def model_io(interpreter) -> tuple[TensorInfo, TensorInfo]:
    """The input and the class output of a classifier interpreter (a gate output is left aside)."""
    inp, classes, _ = model_tensors(interpreter)
    return inp, classes


class Engine:
    """A TFLite classifier checked against its model card.

    ``infer`` may be called from several threads (daemon loop and HTTP uploads); a
    lock serialises access to the interpreter, which is not thread-safe.
    """

    def __init__(self, model_path: Path, card: ModelCard, *, num_threads: int = 2, variant: str = "int8",
                 content: bytes | None = None):
        if variant not in VARIANTS:
            raise ValueError(f"variant: expected one of {VARIANTS}, got {variant!r}")
        self.card = card
        self.model_path = Path(model_path)
        self.variant = variant
        self._interpreter, self.backend = open_interpreter(self.model_path, num_threads=num_threads,
                                                           content=content)
        self._input, self._output, self._gate = model_tensors(self._interpreter)
        self._check_against_card()
        norm, inp = card.normalization, self._input
        self._table = input_table(norm.mean, norm.std, inp.dtype, inp.scale, inp.zero_point)
        self._lock = threading.Lock()
        _log.info("loaded %s (%s) with %s, %d threads, input %s %s, zoom %.2f, test-time augmentation %s",
                  self.model_path, variant, self.backend, num_threads, self._input.shape, self._input.dtype,
                  card.preprocessing.zoom, card.preprocessing.tta)

    @classmethod
    def from_model_dir(cls, model_dir, *, variant: str = "int8", num_threads: int = 2,
                       check: Callable[[bytes, Path, str], object] | None = None) -> Engine:
        """Read ``model_dir/card.json`` and the variant's file once each, verify the sha256 of the
        file's bytes against the card, and build the engine from those bytes, so what was checked
        is what runs. ``check(card bytes, model path, model sha256)`` (the signature) sees the same
        bytes before the interpreter parses anything; files replaced meanwhile are never loaded."""
        model_dir = Path(model_dir)
        if not model_dir.is_dir():
            raise FileNotFoundError(f"model folder not found: {model_dir}")
        card_path = model_dir / "card.json"
        if not card_path.is_file():
            raise CardError(f"model card not found: {card_path}")
        card_bytes = card_path.read_bytes()
        card = ModelCard.from_bytes(card_bytes, card_path)
        if variant == "float" and card.float_file is None:
            raise CardError(f"{card_path}: field 'float_file' is missing; no float model shipped")
        model_file = card.float_file if variant == "float" else card.model_file
        path, content = read_model_file(card, model_dir, model_file)
        if check is not None:
            check(card_bytes, path, model_file.sha256)  # the sha256 of ``content``, just verified
        return cls(path, card, num_threads=num_threads, variant=variant, content=content)

    @property
    def input_size(self) -> tuple[int, int]:
        return self.card.input.height, self.card.input.width

    def infer(self, rgb: np.ndarray) -> Inference:
        """Any-size HxWx3 uint8 RGB frame -> class probabilities in card label order, with timings."""
        return self.run(self.prepare(rgb))

    def prepare(self, rgb: np.ndarray) -> Prepared:
        """The first half of :meth:`infer`: the frame fitted, zoomed and turned into the input
        tensors. It does not touch the interpreter, so a caller may prepare the next frame while
        this engine runs the current one."""
        t0 = time.perf_counter()
        tensors = self._tensors(fit_to_input(rgb, *self.input_size))
        return Prepared(tensors, preprocess_ms=(time.perf_counter() - t0) * 1e3)

    def run(self, prepared: Prepared) -> Inference:
        """The second half of :meth:`infer`: the interpreter on ``prepared``'s tensors."""
        t0 = time.perf_counter()
        probabilities, not_lesion = self._run_all(prepared.tensors)
        return Inference(probabilities, preprocess_ms=prepared.preprocess_ms,
                         inference_ms=(time.perf_counter() - t0) * 1e3, not_lesion=not_lesion)

    def infer_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """An already fitted (H, W, 3) uint8 image -> float32 probabilities (batch evaluation)."""
        expected = (*self.input_size, 3)
        if pixels.shape != expected:
            raise ValueError(f"expected fitted pixels of shape {expected}, got {pixels.shape}")
        return self._run_all(self._tensors(pixels))[0]

    # --- internals ----------------------------------------------------------------

    def _tensors(self, pixels: np.ndarray) -> tuple[np.ndarray, ...]:
        """Fitted pixels -> the input tensor of each test-time view of the card's zoomed view."""
        pre = self.card.preprocessing
        view = centre_zoom(pixels, pre.zoom)
        table = self._table
        levels = colour_levels(view, self.card.normalization.colour)
        if levels is not None:
            # The colour constancy maps each level of each channel, so it folds into the lookup table;
            # the flipped views share the view's histogram and so its table.
            table = np.take_along_axis(table[0], levels.astype(np.intp), axis=0)[np.newaxis]
        return tuple(self._to_input(v, table) for v in tta_views(view, pre.tta))

    def _run_all(self, tensors: tuple[np.ndarray, ...]) -> tuple[np.ndarray, float | None]:
        """Probabilities and the not-a-lesion score (None without a gate), each averaged over the
        test-time views (one tensor when the card asks for none)."""
        runs = [self._run(t) for t in tensors]
        probabilities = runs[0][0] if len(runs) == 1 else np.mean([p for p, _ in runs], axis=0, dtype=np.float32)
        if self._gate is None:
            return probabilities, None
        return probabilities, float(np.mean([g for _, g in runs], dtype=np.float32))

    def _to_input(self, pixels: np.ndarray, table: np.ndarray | None = None) -> np.ndarray:
        """One view -> its input tensor through ``table`` (default: the card's normalization alone)."""
        # cv2.LUT needs contiguous input; a flipped test-time view is a strided one.
        return cv2.LUT(np.ascontiguousarray(pixels), self._table if table is None else table)[np.newaxis]

    def _run(self, tensor: np.ndarray) -> tuple[np.ndarray, float | None]:
        with self._lock:
            self._interpreter.set_tensor(self._input.index, tensor)
            self._interpreter.invoke()
            raw = self._interpreter.get_tensor(self._output.index)[0]
            gate = None if self._gate is None else self._interpreter.get_tensor(self._gate.index)[0]
        gate_score = None if gate is None else float(_dequantized(gate, self._gate)[0])
        return _dequantized(raw, self._output), gate_score

    def _check_against_card(self) -> None:
        card, inp, out, gate = self.card, self._input, self._output, self._gate
        where = f"{self.model_path} does not match its card"
        expected_shape = (1, card.input.height, card.input.width, card.input.channels)
        if inp.shape != expected_shape:
            raise CardError(f"{where}: field 'input' says shape {expected_shape[1:]}, model has {inp.shape[1:]}")
        if out.shape != (1, len(card.labels)):
            raise CardError(f"{where}: field 'labels' has {len(card.labels)} classes, model output is {out.shape}")
        # A card with a gate needs the model's (1, 1) output; a card without one, a model without it.
        if card.gate is None and gate is not None:
            raise CardError(f"{where}: the model has a not-a-lesion output, the card no field 'gate'")
        if card.gate is not None and gate is None:
            raise CardError(f"{where}: field 'gate' needs a {GATE_SHAPE} not-a-lesion output, the model has none")
        tensors = [("input", card.input, inp), ("output", card.output, out)]
        if gate is not None:
            tensors.append(("gate.output", card.gate.output, gate))
        if self.variant == "float":
            for field, _, info in tensors:
                if info.dtype != "float32":
                    raise CardError(f"{where}: float variant expects float32 {field}, model has {info.dtype}")
            return
        for field, spec, info in tensors:
            if info.dtype != spec.dtype:
                raise CardError(f"{where}: field '{field}.dtype' is {spec.dtype}, model has {info.dtype}")
            if spec.dtype == "float32":
                continue
            if not math.isclose(info.scale, spec.scale, rel_tol=_SCALE_RTOL):
                raise CardError(f"{where}: field '{field}.scale' is {spec.scale}, model has {info.scale}")
            if info.zero_point != spec.zero_point:
                raise CardError(
                    f"{where}: field '{field}.zero_point' is {spec.zero_point}, model has {info.zero_point}"
                )


def _dequantized(raw: np.ndarray, info: TensorInfo) -> np.ndarray:
    """An output tensor's values as float32 (a copy), with the tensor's own scale and zero point."""
    if info.dtype == "float32":
        return raw.astype(np.float32, copy=True)
    return dequantize(raw, info.scale, info.zero_point)
