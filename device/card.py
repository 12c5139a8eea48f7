"""The model card: the one contract between the workstation and the device.

``models/<name>/card.json`` is written by ``quantize`` and read here. Loading
validates every field the device relies on and names the field that is wrong,
so a bad card is refused before an interpreter is ever built.
"""
from __future__ import annotations

import argparse
import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
DISCLAIMER = "Screening aid, not a diagnosis. See a dermatologist about any lesion that worries you."
INPUT_DTYPES = ("int8", "uint8", "float32")
PREPROCESS_POLICIES = ("center_crop_resize",)
# Test-time augmentation -> inferences per frame; the views are device.preprocess.tta_views.
TTA_VIEWS = {"none": 1, "flips": 4}
TTA_MODES = tuple(TTA_VIEWS)
# Per-image colour constancy before (x - mean) / std; device.preprocess.colour_constancy.
COLOUR_MODES = ("none", "shades_of_grey")


def valid_zoom(zoom: float) -> float:
    """``zoom`` if it is a share of each side the model can be shown, (0, 1]; else ValueError."""
    if not 0.0 < zoom <= 1.0:
        raise ValueError(f"expected a share in (0, 1], got {zoom!r}")
    return zoom


def zoom_argument(text: str) -> float:
    """An argparse ``type`` for ``--zoom`` options, so a bad share is refused before any model loads."""
    try:
        return valid_zoom(float(text))
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


class CardError(ValueError):
    """A card that is missing, unreadable or inconsistent; the message names the field or file."""


@dataclass(frozen=True)
class Label:
    code: str
    name: str


@dataclass(frozen=True)
class TensorSpec:
    """Interpreter tensor facts the device checks at load time."""

    dtype: str
    scale: float = 0.0
    zero_point: int = 0


@dataclass(frozen=True)
class InputSpec(TensorSpec):
    height: int = 0
    width: int = 0
    channels: int = 3
    layout: str = "NHWC"
    color_order: str = "RGB"


@dataclass(frozen=True)
class Normalization:
    """Applied by ``device.preprocess.normalize`` on 0-255 pixels, never inside the model. ``colour``
    first balances each image's channels (device.preprocess.colour_constancy), so that cameras and
    lighting of other clinics look alike to the model."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    colour: str = "none"


@dataclass(frozen=True)
class Preprocessing:
    policy: str = "center_crop_resize"
    interpolation: str = "area"
    description: str = (
        "Centre-crop the frame to the model's aspect ratio, resize to height x width (when zoom < 1, "
        "enlarge its centred zoom share of each side back to that size), RGB uint8, then (x - mean) / std "
        "per channel."
    )
    tta: str = "none"  # "flips": the engine averages over the four flips (4 inferences per frame)
    # The centred share of each side the model sees, enlarged back to its input (1.0: the whole
    # fitted frame). Training zooms in at random; a zoom at its mean shows lesions at the size the
    # network learned them (device.preprocess.centre_zoom).
    zoom: float = 1.0


@dataclass(frozen=True)
class ModelFile:
    path: str
    sha256: str
    size_bytes: int


@dataclass(frozen=True)
class Referral:
    """When to advise seeing a dermatologist: the summed probability of ``classes`` reaches
    ``threshold``. The threshold was picked for ``target_sensitivity`` on the ``picked_on``
    split; ``sensitivity`` and ``specificity`` were measured on the test split."""

    classes: tuple[str, ...]  # label codes whose probabilities are summed
    threshold: float
    sensitivity: float
    specificity: float
    advice: str
    target_sensitivity: float | None = None
    picked_on: str = ""


@dataclass(frozen=True)
class Gate:
    """The not-a-lesion gate: a second model output, the probability that the frame shows no skin
    lesion. At ``threshold`` or above a Result says ``advice`` instead of a class. ``rates`` are the
    measured rejection rates (free-form, for people); ``picked_on`` names where the threshold was set."""

    output: TensorSpec
    threshold: float
    method: str
    advice: str
    picked_on: str = ""
    rates: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelCard:
    name: str
    labels: tuple[Label, ...]
    input: InputSpec
    output: TensorSpec
    normalization: Normalization
    preprocessing: Preprocessing
    model_file: ModelFile
    architecture: dict[str, Any] = field(default_factory=dict)  # params, macs, family
    metrics: dict[str, Any] = field(default_factory=dict)  # {"float": {...}, "int8": {...}}
    split: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    dataset: dict[str, Any] = field(default_factory=dict)
    quantization: dict[str, Any] = field(default_factory=dict)
    float_file: ModelFile | None = None
    referral: Referral | None = None  # cards without one give Results with refer None
    gate: Gate | None = None  # cards without one never give a not_lesion Result
    description: str = ""
    disclaimer: str = DISCLAIMER
    schema_version: int = SCHEMA_VERSION

    @property
    def view(self) -> str:
        """What the model is shown beyond the fit to its input, in words (tables and reports)."""
        pre, colour = self.preprocessing, self.normalization.colour
        parts = [f"centre {100 * pre.zoom:.0f}%"] if pre.zoom != 1.0 else []
        parts += [f"{TTA_VIEWS[pre.tta]} {pre.tta}"] if pre.tta != "none" else []
        parts += [colour.replace("_", " ")] if colour != "none" else []
        return ", ".join(parts) or "none"

    @property
    def codes(self) -> tuple[str, ...]:
        return tuple(label.code for label in self.labels)

    @property
    def inferences_per_frame(self) -> int:
        return TTA_VIEWS[self.preprocessing.tta]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_dict(cls, data: Any) -> ModelCard:
        return _parse_card(data)

    @classmethod
    def load(cls, path: Path) -> ModelCard:
        path = Path(path)
        if not path.is_file():
            raise CardError(f"model card not found: {path}")
        return cls.from_bytes(path.read_bytes(), path)

    @classmethod
    def from_bytes(cls, content: bytes, path: Path) -> ModelCard:
        """The card in ``content``, the bytes of ``path`` (which errors name), read once by a caller
        that checks those same bytes otherwise too (their signature)."""
        try:
            data = json.loads(content)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise CardError(f"{path}: not valid JSON ({err})") from err
        try:
            return cls.from_dict(data)
        except CardError as err:
            raise CardError(f"{path}: {err}") from err


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_model_file(card: ModelCard, model_dir: Path, model_file: ModelFile | None = None) -> Path:
    """Path of one of the card's model files (default: the int8 ``model_file``) after checking
    it exists and its sha256 matches."""
    return read_model_file(card, model_dir, model_file)[0]


def read_model_file(card: ModelCard, model_dir: Path, model_file: ModelFile | None = None) -> tuple[Path, bytes]:
    """``(path, bytes)`` of one of the card's model files, read once, after checking the sha256 of
    those very bytes: a file replaced after the check can never be what gets loaded."""
    model_file = model_file or card.model_file
    field_name = "float_file" if model_file is card.float_file else "model_file"
    path = Path(model_dir) / model_file.path
    if not path.is_file():
        raise CardError(f"model file not found: {path}")
    content = path.read_bytes()
    actual = hashlib.sha256(content).hexdigest()
    if actual != model_file.sha256:
        raise CardError(
            f"{path}: sha256 {actual[:12]}... does not match the card's "
            f"{field_name}.sha256 {model_file.sha256[:12]}..."
        )
    return path, content


# --- validation -------------------------------------------------------------------


def _get(data: dict, key: str, kind, where: str, default=...):
    path = f"{where}.{key}" if where else key
    if key not in data:
        if default is ...:
            raise CardError(f"missing field '{path}'")
        return default
    value = data[key]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise CardError(f"field '{path}': expected {names}, got {type(value).__name__}")
    return value


def _section(data: dict, key: str, optional: bool = False) -> dict | None:
    if optional and data.get(key) is None:
        return None
    return _get(data, key, dict, "")


def _triple(section: dict, key: str, where: str) -> tuple[float, float, float]:
    values = _get(section, key, list, where)
    if len(values) != 3 or not all(isinstance(v, (int, float)) for v in values):
        raise CardError(f"field '{where}.{key}': expected 3 numbers, got {values!r}")
    return tuple(float(v) for v in values)  # type: ignore[return-value]


def _model_file(section: dict, where: str) -> ModelFile:
    sha = _get(section, "sha256", str, where)
    if len(sha) != 64:
        raise CardError(f"field '{where}.sha256': expected 64 hex digits")
    return ModelFile(
        path=_get(section, "path", str, where),
        sha256=sha,
        size_bytes=_get(section, "size_bytes", int, where),
    )


def _tensor(section: dict, where: str) -> dict:
    dtype = _get(section, "dtype", str, where)
    if dtype not in INPUT_DTYPES:
        raise CardError(f"field '{where}.dtype': expected one of {INPUT_DTYPES}, got {dtype!r}")
    scale = _get(section, "scale", float, where, 0.0)
    if dtype != "float32" and scale <= 0:
        raise CardError(f"field '{where}.scale': must be > 0 for {dtype} tensors")
    return {"dtype": dtype, "scale": scale, "zero_point": _get(section, "zero_point", int, where, 0)}


def _fraction(section: dict, key: str, where: str, *, optional: bool = False) -> float | None:
    """A number in [0, 1]; ``optional`` ones may be absent or null."""
    if optional and section.get(key) is None:
        return None
    if key not in section:
        raise CardError(f"missing field '{where}.{key}'")
    value = section[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise CardError(f"field '{where}.{key}': expected a number in [0, 1], got {value!r}")
    return float(value)


def _referral(section: dict, codes: tuple[str, ...]) -> Referral:
    where = "referral"
    classes = _get(section, "classes", list, where)
    unknown = [c for c in classes if c not in codes]
    if not classes or unknown or len(set(classes)) != len(classes):
        raise CardError(f"field '{where}.classes': expected distinct label codes from {list(codes)}, "
                        f"got {classes!r}")
    advice = _get(section, "advice", str, where).strip()
    if not advice:
        raise CardError(f"field '{where}.advice': must not be empty")
    return Referral(
        classes=tuple(classes),
        threshold=_fraction(section, "threshold", where),
        sensitivity=_fraction(section, "sensitivity", where),
        specificity=_fraction(section, "specificity", where),
        advice=advice,
        target_sensitivity=_fraction(section, "target_sensitivity", where, optional=True),
        picked_on=_get(section, "picked_on", str, where, ""),
    )


def _gate(section: dict) -> Gate:
    where = "gate"
    spec = TensorSpec(**_tensor(_get(section, "output", dict, where), "gate.output"))
    texts = {key: _get(section, key, str, where).strip() for key in ("method", "advice")}
    for key, text in texts.items():
        if not text:
            raise CardError(f"field '{where}.{key}': must not be empty")
    return Gate(output=spec, threshold=_fraction(section, "threshold", where), method=texts["method"],
                advice=texts["advice"], picked_on=_get(section, "picked_on", str, where, ""),
                rates=_get(section, "rates", dict, where, {}))


def _parse_card(data: Any) -> ModelCard:
    if not isinstance(data, dict):
        raise CardError("card must be a JSON object")
    version = _get(data, "schema_version", int, "")
    if version != SCHEMA_VERSION:
        raise CardError(f"field 'schema_version': expected {SCHEMA_VERSION}, got {version}")
    labels_raw = _get(data, "labels", list, "")
    if not labels_raw:
        raise CardError("field 'labels': must not be empty")
    labels = []
    for i, item in enumerate(labels_raw):
        if not isinstance(item, dict):
            raise CardError(f"field 'labels[{i}]': expected object")
        labels.append(Label(_get(item, "code", str, f"labels[{i}]"), _get(item, "name", str, f"labels[{i}]")))
    if len({label.code for label in labels}) != len(labels):
        raise CardError("field 'labels': codes must be unique")

    inp = _section(data, "input")
    spec = InputSpec(
        **_tensor(inp, "input"),
        height=_get(inp, "height", int, "input"),
        width=_get(inp, "width", int, "input"),
        channels=_get(inp, "channels", int, "input"),
        layout=_get(inp, "layout", str, "input", "NHWC"),
        color_order=_get(inp, "color_order", str, "input", "RGB"),
    )
    if spec.height <= 0 or spec.width <= 0 or spec.channels != 3:
        raise CardError("field 'input': height and width must be > 0 and channels 3")
    if spec.layout != "NHWC" or spec.color_order != "RGB":
        raise CardError("field 'input': only NHWC RGB input is supported")

    norm = _section(data, "normalization")
    colour = _get(norm, "colour", str, "normalization", "none")
    if colour not in COLOUR_MODES:
        raise CardError(f"field 'normalization.colour': expected one of {COLOUR_MODES}, got {colour!r}")
    normalization = Normalization(_triple(norm, "mean", "normalization"), _triple(norm, "std", "normalization"),
                                  colour)
    if min(normalization.std) <= 0:
        raise CardError("field 'normalization.std': must be > 0")

    pre = _section(data, "preprocessing")
    policy = _get(pre, "policy", str, "preprocessing")
    if policy not in PREPROCESS_POLICIES:
        raise CardError(f"field 'preprocessing.policy': expected one of {PREPROCESS_POLICIES}, got {policy!r}")
    tta = _get(pre, "tta", str, "preprocessing", "none")
    if tta not in TTA_MODES:
        raise CardError(f"field 'preprocessing.tta': expected one of {TTA_MODES}, got {tta!r}")
    zoom = _get(pre, "zoom", float, "preprocessing", 1.0)
    try:
        valid_zoom(zoom)
    except ValueError as err:
        raise CardError(f"field 'preprocessing.zoom': {err}") from None

    float_file = _section(data, "float_file", optional=True)
    referral = _section(data, "referral", optional=True)
    gate = _section(data, "gate", optional=True)
    return ModelCard(
        schema_version=version,
        name=_get(data, "name", str, ""),
        description=_get(data, "description", str, "", ""),
        disclaimer=_get(data, "disclaimer", str, "", DISCLAIMER),
        labels=tuple(labels),
        input=spec,
        output=TensorSpec(**_tensor(_section(data, "output"), "output")),
        normalization=normalization,
        preprocessing=Preprocessing(
            policy=policy,
            interpolation=_get(pre, "interpolation", str, "preprocessing", "area"),
            description=_get(pre, "description", str, "preprocessing", Preprocessing.description),
            tta=tta,
            zoom=zoom,
        ),
        model_file=_model_file(_section(data, "model_file"), "model_file"),
        float_file=_model_file(float_file, "float_file") if float_file else None,
        referral=_referral(referral, tuple(label.code for label in labels)) if referral else None,
        gate=_gate(gate) if gate is not None else None,
        architecture=_get(data, "architecture", dict, "", {}),
        metrics=_get(data, "metrics", dict, "", {}),
        split=_get(data, "split", dict, "", {}),
        training=_get(data, "training", dict, "", {}),
        dataset=_get(data, "dataset", dict, "", {}),
        quantization=_get(data, "quantization", dict, "", {}),
    )
