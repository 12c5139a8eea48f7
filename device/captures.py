"""Case captures: the shown full-resolution frame as JPEG plus a JSON sidecar, kept on disk.

A person examining a lesion keeps what they saw: ``<id>.jpg`` is the display frame without the
overlay, ``<id>.json`` the Result, the model (name, file, sha256), the settings that shaped the
Result and the time (:func:`capture_sidecar`). Ids are made here from the time and the frame
number and are the only names ever joined to the folder (:data:`ID_PATTERN`), so a request cannot
reach another file.

Every file is written to a temporary name in the same folder, flushed to disk and renamed, so
a full disk or a power cut leaves either the whole capture or none of it, and never touches an
earlier one. Retention deletes the oldest captures beyond ``max_count`` or ``max_total_mb``.
A disk that refuses writes (an SD card remounted read-only, the usual Pi failure, or one failing
with I/O errors) is :class:`StorageUnavailable`: the earlier captures can still be listed and read,
:meth:`CaptureStore.unavailable` says why no new one can be saved, and no clean-up step raises.
"""
from __future__ import annotations

import dataclasses
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

from device.card import ModelCard
from device.config import CapturesConfig, Config
from device.postprocess import iso_utc
from device.types import Result

_log = logging.getLogger(__name__)

ID_PATTERN = re.compile(r"\d{8}T\d{9}Z-\d+(?:-\d+)?")
KINDS = ("jpg", "json")
_TMP_PREFIX = ".tmp-"


class CaptureError(RuntimeError):
    """A capture that could not be saved; the message says why."""


class DiskFullError(CaptureError):
    """Not enough free space (or the disk filled up while writing); earlier captures are kept."""


class StorageUnavailable(CaptureError):
    """The capture folder cannot be written: a read-only or failing disk."""


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


def capture_sidecar(result: Result, card: ModelCard, cfg: Config, *, now: float) -> dict:
    """What a capture keeps beside its image: the time (``now``, wall clock), the Result, the model
    that made it and the settings that shaped it (camera, postprocessing)."""
    return {
        "timestamp": iso_utc(now),
        "device_id": cfg.device_id,
        "result": result.to_dict(),
        "model": {"name": card.name, "file": card.model_file.path, "sha256": card.model_file.sha256,
                  "dir": cfg.model.dir},
        "settings": {"camera": {"source": cfg.camera.source, "path": cfg.camera.path,
                                "device": cfg.camera.device, "width": cfg.camera.width,
                                "height": cfg.camera.height},
                     "postprocess": dataclasses.asdict(cfg.postprocess)},
        "disclaimer": card.disclaimer,
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
        self._failure: str | None = None  # why the last save found no working disk; None after a success

    def save(self, display_rgb: np.ndarray, sidecar: dict, *, timestamp: float, frame_id: int) -> CaptureInfo:
        """Store one capture; ``sidecar`` gains ``id`` and ``image``. Raises CaptureError."""
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(display_rgb, cv2.COLOR_RGB2BGR),
                               [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
        if not ok:
            raise CaptureError("the frame could not be encoded as JPEG")
        jpeg = buf.tobytes()
        with self._lock:
            try:
                info = self._save(jpeg, display_rgb.shape, sidecar, timestamp, frame_id)
            except StorageUnavailable as err:
                self._failure = str(err)
                raise
            self._failure = None
        _log.info("capture %s saved in %s", info.id, self.folder)
        return info

    def unavailable(self) -> str | None:
        """Why no capture can be saved now, or None: the folder's file system is mounted read-only,
        or the last save failed for want of a working disk (until a save succeeds)."""
        if _read_only(self.folder):
            return f"the capture folder {self.folder} is on a read-only file system"
        return self._failure

    def _save(self, jpeg: bytes, shape: tuple[int, ...], sidecar: dict, timestamp: float,
              frame_id: int) -> CaptureInfo:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StorageUnavailable(f"cannot create the capture folder {self.folder}: {err.strerror}") from err
        capture_id = self._new_id(timestamp, frame_id)
        h, w = shape[:2]
        body = json.dumps({"id": capture_id, **sidecar,
                           "image": {"file": f"{capture_id}.jpg", "width": w, "height": h}}, indent=2)
        self._check_space(len(jpeg) + len(body))
        image = self.folder / f"{capture_id}.jpg"
        self._write_atomic(image, jpeg)
        try:
            self._write_atomic(self.folder / f"{capture_id}.json", body.encode())
        except CaptureError:
            _remove_quietly(image)  # an image without its sidecar is not a capture
            raise
        self._prune(keep=capture_id)
        try:
            return self._info(capture_id)
        except OSError as err:  # written, then unreadable: the disk is failing
            raise StorageUnavailable(f"capture {capture_id} written but unreadable: {err.strerror}") from err

    def list(self) -> list[CaptureInfo]:
        """Complete captures (image and sidecar), newest first; none when the folder cannot be read."""
        infos = []
        try:
            ids = self._ids()
        except OSError as err:
            _log.warning("captures in %s cannot be listed: %s", self.folder, err)
            return []
        for capture_id in sorted(ids, reverse=True):
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
        try:
            free = shutil.disk_usage(self.folder).free
        except OSError as err:
            raise StorageUnavailable(f"cannot read the free space of {self.folder}: {err.strerror}") from err
        if free - needed < self.min_free_bytes:
            raise DiskFullError(
                f"disk full: {_size(free)} free in {self.folder}, a capture needs {_size(needed)} "
                f"and captures.min_free_mb keeps {_size(self.min_free_bytes)} free; earlier captures are kept"
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
            _remove_quietly(tmp)
            if err.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFullError(f"disk full: cannot write {path.name} in {self.folder}; earlier captures "
                                   "are kept") from err
            raise StorageUnavailable(f"cannot write {path}: {err.strerror or err}") from err

    def _prune(self, *, keep: str) -> None:
        """Delete the oldest captures beyond the count and size limits (never ``keep``); a disk that
        fails here leaves them for the next save, the new capture is kept either way."""
        try:
            self._prune_oldest(keep)
        except OSError as err:
            _log.warning("captures in %s not pruned: %s", self.folder, err)

    def _prune_oldest(self, keep: str) -> None:
        ids = sorted(self._ids())
        sizes = {i: sum((self.folder / f"{i}.{k}").stat().st_size for k in KINDS) for i in ids}
        total = sum(sizes.values())
        for capture_id in ids:
            if len(ids) <= self.max_count and total <= self.max_bytes:
                break
            if capture_id == keep:
                continue
            for kind in KINDS:
                _remove_quietly(self.folder / f"{capture_id}.{kind}")
            ids = [i for i in ids if i != capture_id]
            total -= sizes[capture_id]
            _log.info("capture %s deleted (retention: %d captures, %.0f MB at most)", capture_id,
                      self.max_count, self.max_bytes / 1024 / 1024)


def _remove_quietly(path: Path) -> None:
    """Delete ``path`` if it is there; a disk that refuses (read-only: even a missing file gives
    EROFS) is logged, never raised, so clean-up cannot hide the error that called for it."""
    try:
        path.unlink(missing_ok=True)
    except OSError as err:
        _log.warning("could not remove %s: %s", path, err.strerror or err)


def _read_only(folder: Path) -> bool:
    """Whether the file system holding ``folder`` (or its nearest existing parent) is mounted read-only."""
    for path in (folder, *folder.parents):
        try:
            return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
        except FileNotFoundError:
            continue
        except OSError:  # a parent that is a file, a failing disk: the save itself will say
            return False
    return False


def _size(nbytes: int) -> str:
    """Bytes in the units the settings use (MB = 2**20 bytes); KB below one MB, so it never reads 0.0 MB."""
    return f"{nbytes / 2**20:.1f} MB" if nbytes >= 2**20 else f"{max(1, round(nbytes / 1024))} KB"
