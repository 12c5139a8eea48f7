"""Case captures: the shown full-resolution frame as JPEG plus a JSON sidecar, kept on disk.

A person examining a lesion keeps what they saw: ``<id>.jpg`` is the display frame without the
overlay, ``<id>.json`` the Result, the model (name, file, sha256), the settings that shaped the
Result and the time. Ids are made here from the time and the frame number and are the only
names ever joined to the folder (:data:`ID_PATTERN`), so a request cannot reach another file.

Every file is written to a temporary name in the same folder, flushed to disk and renamed, so
a full disk or a power cut leaves either the whole capture or none of it, and never touches an
earlier one. Retention deletes the oldest captures beyond ``max_count`` or ``max_total_mb``.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np

from device.config import CapturesConfig

_log = logging.getLogger(__name__)

ID_PATTERN = re.compile(r"\d{8}T\d{9}Z-\d+(?:-\d+)?")
KINDS = ("jpg", "json")
_TMP_PREFIX = ".tmp-"


class CaptureError(RuntimeError):
    """A capture that could not be saved; the message says why."""


class DiskFullError(CaptureError):
    """Not enough free space (or the disk filled up while writing); earlier captures are kept."""


class NothingToCaptureError(CaptureError):
    """No frame has been classified yet."""


@dataclass(frozen=True)
class CaptureInfo:
    """One stored capture as the list shows it."""

    id: str
    timestamp: str
    class_code: str | None  # None (and confidence None) for a result that shows no class
    class_name: str | None
    confidence: float | None
    state: str
    refer: bool | None
    model: str
    source: str
    size_bytes: int  # image and sidecar
    headline: str = ""  # what the result said (docs/results.md)
    advice: str = ""

    def to_dict(self) -> dict:
        return {
            "id": self.id, "timestamp": self.timestamp, "class_code": self.class_code,
            "class_name": self.class_name, "confidence": self.confidence, "state": self.state,
            "refer": self.refer, "model": self.model, "source": self.source, "size_bytes": self.size_bytes,
            "headline": self.headline, "advice": self.advice,
            "image": f"/captures/{self.id}.jpg", "sidecar": f"/captures/{self.id}.json",
        }


def default_dir(env: dict[str, str] | None = None) -> Path:
    """systemd's StateDirectory when running as the service, else the user's XDG state folder."""
    env = os.environ if env is None else env
    if env.get("STATE_DIRECTORY"):
        return Path(env["STATE_DIRECTORY"].split(":")[0]) / "captures"
    base = env.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "dermedge" / "captures"


class CaptureStore:
    """The capture folder: save (atomic, with retention), list newest first, and look up by id."""

    def __init__(self, cfg: CapturesConfig, *, env: dict[str, str] | None = None):
        self.folder = Path(cfg.dir) if cfg.dir else default_dir(env)
        self.max_count = cfg.max_count
        self.max_bytes = int(cfg.max_total_mb * 1024 * 1024)
        self.min_free_bytes = int(cfg.min_free_mb * 1024 * 1024)
        self.jpeg_quality = cfg.jpeg_quality
        self._lock = threading.Lock()

    def save(self, display_rgb: np.ndarray, sidecar: dict, *, timestamp: float, frame_id: int) -> CaptureInfo:
        """Store one capture; ``sidecar`` gains ``id`` and ``image``. Raises CaptureError."""
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(display_rgb, cv2.COLOR_RGB2BGR),
                               [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
        if not ok:
            raise CaptureError("the frame could not be encoded as JPEG")
        jpeg = buf.tobytes()
        with self._lock:
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise CaptureError(f"cannot create the capture folder {self.folder}: {err.strerror}") from err
            capture_id = self._new_id(timestamp, frame_id)
            h, w = display_rgb.shape[:2]
            body = json.dumps({"id": capture_id, **sidecar,
                               "image": {"file": f"{capture_id}.jpg", "width": w, "height": h}}, indent=2)
            self._check_space(len(jpeg) + len(body))
            image = self.folder / f"{capture_id}.jpg"
            self._write_atomic(image, jpeg)
            try:
                self._write_atomic(self.folder / f"{capture_id}.json", body.encode())
            except CaptureError:
                image.unlink(missing_ok=True)  # an image without its sidecar is not a capture
                raise
            self._prune(keep=capture_id)
        _log.info("capture %s saved in %s", capture_id, self.folder)
        return self._info(capture_id)

    def list(self) -> list[CaptureInfo]:
        """Complete captures (image and sidecar), newest first."""
        infos = []
        for capture_id in sorted(self._ids(), reverse=True):
            try:
                infos.append(self._info(capture_id))
            except (OSError, ValueError) as err:  # a sidecar edited or damaged by hand
                _log.warning("capture %s skipped: %s", capture_id, err)
        return infos

    def path(self, capture_id: str, kind: str) -> Path | None:
        """The file of a capture, or None for an id that is malformed or not stored."""
        if kind not in KINDS or not ID_PATTERN.fullmatch(capture_id):
            return None
        path = self.folder / f"{capture_id}.{kind}"
        return path if path.is_file() else None

    # --- internals ----------------------------------------------------------------------

    def _ids(self) -> set[str]:
        if not self.folder.is_dir():
            return set()
        names = {p.name for p in self.folder.iterdir()}
        return {n[:-4] for n in names if n.endswith(".jpg") and ID_PATTERN.fullmatch(n[:-4])
                and f"{n[:-4]}.json" in names}

    def _info(self, capture_id: str) -> CaptureInfo:
        data = json.loads((self.folder / f"{capture_id}.json").read_text())
        result = data.get("result", {})
        size = sum((self.folder / f"{capture_id}.{kind}").stat().st_size for kind in KINDS)
        return CaptureInfo(
            id=capture_id, timestamp=str(data.get("timestamp", "")), class_code=result.get("class_code"),
            class_name=result.get("class_name"), confidence=result.get("confidence"),
            state=str(result.get("state", "")), refer=result.get("refer"), model=str(data.get("model", {}).get(
                "name", "")), source=str(result.get("source", "")), size_bytes=size,
            headline=str(result.get("headline") or result.get("class_name") or ""), advice=str(result.get("advice", "")),
        )

    def _new_id(self, timestamp: float, frame_id: int) -> str:
        when = datetime.fromtimestamp(timestamp, UTC)
        base = f"{when:%Y%m%dT%H%M%S}{when.microsecond // 1000:03d}Z-{frame_id}"
        capture_id, n = base, 1
        while (self.folder / f"{capture_id}.jpg").exists() or (self.folder / f"{capture_id}.json").exists():
            n += 1
            capture_id = f"{base}-{n}"
        return capture_id

    def _check_space(self, needed: int) -> None:
        free = shutil.disk_usage(self.folder).free
        if free - needed < self.min_free_bytes:
            raise DiskFullError(
                f"disk full: {free / 1e6:.1f} MB free in {self.folder}, a capture needs {needed / 1e6:.1f} MB "
                f"and captures.min_free_mb keeps {self.min_free_bytes / 1e6:.0f} MB free; earlier captures "
                "are kept"
            )

    def _write_atomic(self, path: Path, data: bytes) -> None:
        tmp = path.with_name(f"{_TMP_PREFIX}{path.name}")
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except OSError as err:
            tmp.unlink(missing_ok=True)
            if err.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFullError(f"disk full: cannot write {path.name} in {self.folder}; earlier captures "
                                   "are kept") from err
            raise CaptureError(f"cannot write {path}: {err.strerror or err}") from err

    def _prune(self, *, keep: str) -> None:
        """Delete the oldest captures beyond the count and size limits (never ``keep``)."""
        ids = sorted(self._ids())
        sizes = {i: sum((self.folder / f"{i}.{k}").stat().st_size for k in KINDS) for i in ids}
        total = sum(sizes.values())
        for capture_id in ids:
            if len(ids) <= self.max_count and total <= self.max_bytes:
                break
            if capture_id == keep:
                continue
            for kind in KINDS:
                (self.folder / f"{capture_id}.{kind}").unlink(missing_ok=True)
            ids = [i for i in ids if i != capture_id]
            total -= sizes[capture_id]
            _log.info("capture %s deleted (retention: %d captures, %.0f MB at most)", capture_id,
                      self.max_count, self.max_bytes / 1024 / 1024)
