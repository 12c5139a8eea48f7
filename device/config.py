"""Typed device configuration: one YAML file in, frozen dataclasses (one per section) out.

Validation is strict so a typo in the YAML is an error, not a silent default: an unknown
key, a wrong type or a bad value raises :class:`ConfigError` naming the dotted path
(``mqtt.port: expected int, got str``). Every field has a default, so a Pi with no config
file runs as is. Whether the model folder exists is checked separately
(:func:`check_model_dir`), because the defaults must load on a machine without the model.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import re
import socket
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

CARD_FILE = "card.json"
# The one place the default model is named: models/DEFAULT holds its folder name. The Makefile,
# the install and arm64 scripts, web/build.mjs and models/README.md read the same file.
MODELS_DIR = Path(__file__).resolve().parents[1] / "models"
DEFAULT_MODEL_FILE = "DEFAULT"


def default_model_name(models_dir: Path = MODELS_DIR) -> str | None:
    """The folder name in ``<models_dir>/DEFAULT``; None when there is no such file."""
    try:
        return (Path(models_dir) / DEFAULT_MODEL_FILE).read_text().strip()
    except FileNotFoundError:
        return None


def default_model_dir() -> str:
    """``models/<name>`` for the default model (relative, like ``model.dir``).

    Without ``models/DEFAULT`` (device/ copied alone) it is ``models``, which ``check_model_dir``
    then refuses naming the folder, so the defaults still load."""
    name = default_model_name()
    return "models" if name is None else f"models/{name}"


class ConfigError(ValueError):
    """A bad config value or file; the message starts with the dotted key or the path."""


def _default_device_id() -> str:
    host = socket.gethostname().split(".")[0] or "device"
    return f"dermedge-{host}"


@dataclass(frozen=True)
class ModelConfig:
    dir: str = field(default_factory=default_model_dir)  # folder with card.json and the int8 .tflite it names
    threads: int = 2  # interpreter threads
    public_keys: tuple[str, ...] = ()  # Ed25519 public key files (PEM) that may sign models
    require_signature: bool = False  # refuse a model without a valid signature by one of them


@dataclass(frozen=True)
class CameraConfig:
    source: Literal["picamera2", "opencv", "folder", "memory"] = "picamera2"
    device: int = 0  # opencv: USB camera index, used when path is empty
    path: str = ""  # opencv: video file; folder: image folder; memory: .npy of decoded frames
    loop: bool = True  # replay a video file or folder forever
    fps: float = 10.0  # folder/video replay rate; 0 = as fast as possible
    width: int = 640  # main (display) stream
    height: int = 480
    lores_width: int = 320  # picamera2 lores stream fed to the model (cropped to the model's
    lores_height: int = 240  # aspect within this size where the camera can: Pi 5)
    retry_initial_s: float = 0.5  # reopen backoff after a capture failure
    retry_max_s: float = 10.0


@dataclass(frozen=True)
class PostprocessConfig:
    smoothing: int = 1  # frames averaged; 1 = off
    min_confidence: float = 0.5  # below -> "uncertain"
    min_brightness: float = 40.0  # mean luma 0..255; below -> "poor_quality" (too dark)
    max_brightness: float = 220.0  # above -> "poor_quality" (too bright)
    min_sharpness: float = 20.0  # variance of the Laplacian; below -> "poor_quality" (too blurry)


@dataclass(frozen=True)
class OverlayConfig:
    mode: Literal["none", "opencv", "drm"] = "none"
    fullscreen: bool = True  # opencv window only


@dataclass(frozen=True)
class MqttConfig:
    enabled: bool = True
    host: str = "localhost"
    port: int = 1883
    prefix: str = "dermedge"
    qos: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False
    ca_certs: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    keepalive: int = 30
    max_rate_hz: float = 2.0  # result messages per second at most, changes included
    heartbeat_s: float = 10.0  # an unchanged result is repeated this often
    home_assistant: bool = False
    discovery_prefix: str = "homeassistant"


@dataclass(frozen=True)
class HttpConfig:
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 5000  # 0 picks a free port (tests)
    token: str | None = None  # bearer token for every route but /health
    token_file: str | None = None  # or a file holding it, read at start (not readable by others)
    max_upload_mb: float = 8.0
    # Memory all image decodes together may hold (uploads wait for room; one that alone needs more
    # is refused with 422). 64 MB keeps the daemon under ~250 MB on a 1 GB Pi.
    decode_memory_mb: float = 64.0
    stream_fps: float = 10.0  # MJPEG frames per second at most
    threads: int = 8  # waitress worker threads (each open MJPEG stream holds one, decodes half at most)
    connection_limit: int = 512  # open connections before waitress stops accepting
    idle_timeout_s: int = 10  # a connection with no request in progress is closed after this
    wrong_tokens_per_minute: int = 10  # per client; beyond this its token checks get 429 until a minute has passed
    # Reverse proxies (IP addresses) whose X-Forwarded-For and -Proto are believed; from any other
    # peer they are dropped. install.sh --tls's nginx on this machine: ["127.0.0.1"].
    trusted_proxies: tuple[str, ...] = ()
    # Host header names answered besides localhost, this device's own names and any IP address
    # (device.hosts); "*" answers any name (turns off the DNS-rebinding guard).
    allowed_hosts: tuple[str, ...] = ()


@dataclass(frozen=True)
class CapturesConfig:
    enabled: bool = True
    dir: str = ""  # "" = $STATE_DIRECTORY/captures (systemd), else ~/.local/state/dermedge/captures
    max_count: int = 200  # the oldest captures are deleted beyond this many...
    max_total_mb: float = 500.0  # ...or beyond this much disk space (images and sidecars)
    min_free_mb: float = 50.0  # refuse a capture that would leave less free space than this
    jpeg_quality: int = 92
    button_gpio: int | None = None  # BCM pin of a push button that saves a capture (gpiozero); None = no button


@dataclass(frozen=True)
class Config:
    device_id: str = field(default_factory=_default_device_id)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    model: ModelConfig = field(default_factory=ModelConfig)
    camera: CameraConfig = field(default_factory=CameraConfig)
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)
    overlay: OverlayConfig = field(default_factory=OverlayConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    captures: CapturesConfig = field(default_factory=CapturesConfig)


# A host name as a Host header names it: letters, digits, hyphens and dots.
_HOST_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?\.?")
# Value rules beyond the type: dotted key -> (check, what it must be).
_RULES: dict[str, tuple[typing.Callable[[Any], bool], str]] = {
    "device_id": (lambda v: bool(v) and not any(c in v for c in "/#+"), "non-empty, without / # +"),
    "model.dir": (bool, "non-empty"),
    "model.threads": (lambda v: v >= 1, ">= 1"),
    "camera.device": (lambda v: v >= 0, ">= 0"),
    "camera.fps": (lambda v: v >= 0, ">= 0"),
    "camera.width": (lambda v: v > 0, "> 0"),
    "camera.height": (lambda v: v > 0, "> 0"),
    "camera.lores_width": (lambda v: v > 0, "> 0"),
    "camera.lores_height": (lambda v: v > 0, "> 0"),
    "camera.retry_initial_s": (lambda v: v > 0, "> 0"),
    "camera.retry_max_s": (lambda v: v > 0, "> 0"),
    "postprocess.smoothing": (lambda v: v >= 1, ">= 1"),
    "postprocess.min_confidence": (lambda v: 0 <= v <= 1, "between 0 and 1"),
    "postprocess.min_brightness": (lambda v: 0 <= v <= 255, "between 0 and 255"),
    "postprocess.max_brightness": (lambda v: 0 <= v <= 255, "between 0 and 255"),
    "postprocess.min_sharpness": (lambda v: v >= 0, ">= 0"),
    "mqtt.host": (bool, "non-empty"),
    "mqtt.port": (lambda v: 1 <= v <= 65535, "between 1 and 65535"),
    "mqtt.prefix": (lambda v: bool(v) and not any(c in v for c in "#+"), "non-empty, without # +"),
    "mqtt.qos": (lambda v: v in (0, 1, 2), "0, 1 or 2"),
    "mqtt.keepalive": (lambda v: v >= 5, ">= 5"),
    "mqtt.max_rate_hz": (lambda v: v > 0, "> 0"),
    "mqtt.heartbeat_s": (lambda v: v > 0, "> 0"),
    "http.port": (lambda v: 0 <= v <= 65535, "between 0 and 65535"),
    "http.token_file": (bool, "non-empty"),
    "http.max_upload_mb": (lambda v: v > 0, "> 0"),
    "http.decode_memory_mb": (lambda v: v >= 8, ">= 8"),
    "http.threads": (lambda v: 1 <= v <= 64, "between 1 and 64"),
    "http.connection_limit": (lambda v: 16 <= v <= 4096, "between 16 and 4096"),
    "http.idle_timeout_s": (lambda v: 1 <= v <= 300, "between 1 and 300"),
    "http.wrong_tokens_per_minute": (lambda v: v >= 1, ">= 1"),
    "http.stream_fps": (lambda v: v > 0, "> 0"),
    "captures.max_count": (lambda v: v >= 1, ">= 1"),
    "captures.max_total_mb": (lambda v: v > 0, "> 0"),
    "captures.min_free_mb": (lambda v: v >= 0, ">= 0"),
    "captures.jpeg_quality": (lambda v: 1 <= v <= 100, "between 1 and 100"),
    "captures.button_gpio": (lambda v: 0 <= v <= 27, "a BCM GPIO number between 0 and 27"),
}


def token_problem(token: str) -> str | None:
    """Why ``token`` cannot work as a bearer token, or None. The header is read as latin-1 and
    stripped, so only non-empty printable ASCII without spaces can ever match. The reason never
    quotes the token."""
    if not token:
        return "is empty (null means no token)"
    for position, char in enumerate(token, start=1):
        if not "!" <= char <= "~":
            kind = "whitespace" if char.isspace() else "a non-printable or non-ASCII character"
            return f"has {kind} at position {position}: use printable ASCII without spaces"
    return None


def config_from_dict(data: Mapping[str, Any] | None) -> Config:
    """Validate a parsed YAML mapping (None = empty) and build the :class:`Config`."""
    cfg = _build(Config, {} if data is None else data, "")
    _check_cross_fields(cfg)
    return cfg


def load_config(path: str | Path | None) -> Config:
    """Read and validate a YAML config file; ``None`` gives the defaults."""
    if path is None:
        return config_from_dict({})
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from err
    try:
        return config_from_dict(data)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from err


def with_overrides(cfg: Config, **flat: Any) -> Config:
    """A copy of ``cfg`` with CLI overrides applied and validated again.

    Keys are ``<section>_<field>`` (``camera_source``, ``http_port``) or a top-level field
    (``device_id``); ``None`` values mean "flag not given" and are skipped.
    """
    data = to_dict(cfg)
    for key, value in flat.items():
        if value is None:
            continue
        if key in data and not isinstance(data[key], dict):
            data[key] = value
            continue
        section, _, name = key.partition("_")
        if not isinstance(data.get(section), dict) or name not in data[section]:
            raise ConfigError(f"unknown override '{key}'")
        data[section][name] = value
    return config_from_dict(data)


def to_dict(cfg: Config) -> dict[str, Any]:
    """Plain nested dict of a config (what :func:`config_from_dict` accepts)."""
    return dataclasses.asdict(cfg)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def check_model_dir(model: ModelConfig) -> Path:
    """The model folder as a Path after checking it and its card exist (errors name the path)."""
    folder = Path(model.dir)
    if not folder.is_dir():
        shelved = Path("models") / folder  # the name alone of a shipped model: say where it is
        hint = f" (did you mean {shelved}?)" if not folder.is_absolute() and shelved.is_dir() else ""
        raise ConfigError(f"model.dir: model folder not found: {folder}{hint}")
    if not (folder / CARD_FILE).is_file():
        raise ConfigError(f"model.dir: model card not found: {folder / CARD_FILE}")
    return folder


def check_camera_path(camera: CameraConfig) -> None:
    """A replay folder or video file must exist when the daemon starts (a typo is not a camera
    that is "not there yet"); later disappearances are retried by the capture thread."""
    if camera.source == "folder" and not Path(camera.path).is_dir():
        raise ConfigError(f"camera.path: image folder not found: {camera.path}")
    if camera.source == "opencv" and camera.path and not Path(camera.path).is_file():
        raise ConfigError(f"camera.path: video file not found: {camera.path}")
    if camera.source == "memory" and not Path(camera.path).is_file():
        raise ConfigError(f"camera.path: frames file not found: {camera.path}")


# --- validation -------------------------------------------------------------------


def _build(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            dotted = f"{where}.{key}" if where else str(key)
            raise ConfigError(f"{dotted}: unknown key (allowed: {', '.join(sorted(names))})")
    values = {}
    for name in names & set(data):
        dotted = f"{where}.{name}" if where else name
        kind = hints[name]
        if dataclasses.is_dataclass(kind):
            values[name] = _build(kind, data[name], dotted)
        else:
            values[name] = _check_value(data[name], kind, dotted)
    return cls(**values)


def _check_value(value: Any, kind: Any, dotted: str) -> Any:
    optional = isinstance(kind, types.UnionType) and type(None) in typing.get_args(kind)
    if optional:
        if value is None:
            return None
        kind = next(k for k in typing.get_args(kind) if k is not type(None))
    if typing.get_origin(kind) is tuple:  # tuple[str, ...]: a YAML list of strings
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v for v in value):
            raise ConfigError(f"{dotted}: expected a list of non-empty strings, got {value!r}")
        return tuple(value)
    if typing.get_origin(kind) is Literal:
        allowed = typing.get_args(kind)
        if value not in allowed:
            raise ConfigError(f"{dotted}: expected one of {', '.join(map(str, allowed))}, got {value!r}")
        return value
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise ConfigError(f"{dotted}: expected {kind.__name__}, got {type(value).__name__}")
    rule = _RULES.get(dotted)
    if rule and not rule[0](value):
        raise ConfigError(f"{dotted}: must be {rule[1]}, got {value!r}")
    return value


def _check_cross_fields(cfg: Config) -> None:
    for proxy in cfg.http.trusted_proxies:
        if not _is_ip(proxy):
            raise ConfigError(f"http.trusted_proxies: {proxy!r} is not an IP address")
    for name in cfg.http.allowed_hosts:
        if name != "*" and not _HOST_NAME.fullmatch(name) and not _is_ip(name):
            raise ConfigError(f"http.allowed_hosts: {name!r} is not a host name or address (no scheme, port or path)")
    if cfg.http.token is not None and (problem := token_problem(cfg.http.token)):
        raise ConfigError(f"http.token: {problem}")
    if cfg.http.token is not None and cfg.http.token_file is not None:
        raise ConfigError("http.token_file: set together with http.token; keep one")
    if cfg.model.require_signature and not cfg.model.public_keys:
        raise ConfigError("model.require_signature: needs at least one key in model.public_keys")
    if cfg.mqtt.password is not None and cfg.mqtt.username is None:
        raise ConfigError("mqtt.password: set without mqtt.username")
    if cfg.camera.retry_max_s < cfg.camera.retry_initial_s:
        raise ConfigError("camera.retry_max_s: must be >= camera.retry_initial_s")
    if cfg.postprocess.max_brightness <= cfg.postprocess.min_brightness:
        raise ConfigError("postprocess.max_brightness: must be > postprocess.min_brightness")
    if cfg.overlay.mode == "drm" and cfg.camera.source != "picamera2":
        raise ConfigError("overlay.mode: drm needs camera.source picamera2 (its DRM preview)")
    if cfg.camera.source in ("folder", "memory") and not cfg.camera.path:
        raise ConfigError(f"camera.path: required when camera.source is {cfg.camera.source}")
