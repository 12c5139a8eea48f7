"""Frame sources behind one small interface, and the capture thread that keeps only the newest frame.

Backends (picked by ``camera.source``):

- ``picamera2``: the Pi camera. A large ``main`` stream goes to the screen and a small ``lores``
  stream to the model, as picamera2 intends; where the ISP can crop the two streams apart (Pi 5),
  ``lores`` comes at the model's aspect ratio and in RGB, so the daemon neither crops nor converts.
  picamera2 only exists on a Pi, so it is imported when the camera opens and tested here against
  a stand-in module with the same API.
- ``opencv``: ``cv2.VideoCapture`` on a USB camera index or a video file (optionally looped).
- ``folder``: replays the images of a folder in name order (optionally looped).
- ``memory``: replays frames already decoded (an ``.npy`` of N x H x W x 3 uint8 RGB, loaded at
  open), so a replay hands over raw frames as a camera does and costs no decoding: the
  benchmark's camera, which measures the daemon and not the stand-in.

Every backend returns RGB: colour order is fixed here and nowhere else. :class:`FrameGrabber`
runs the camera in a thread. It numbers and timestamps frames, keeps only the latest one (a
frame the consumer never took is dropped and counted, so inference never works on a stale
queue), paces replay sources at ``camera.fps`` and reopens a failed source with backoff.
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import cv2
import numpy as np

from device.config import CameraConfig
from device.decode import IMAGE_SUFFIXES, ImageDecodeError, load_image
from device.types import Frame

_log = logging.getLogger(__name__)

# Decoded replay images are kept up to this many bytes, so replay costs no JPEG decoding.
_FOLDER_CACHE_BYTES = 128 * 1024 * 1024
# Frames a full-speed replay (fps 0) reads ahead of the consumer (references, not copies).
READ_AHEAD = 4


class CaptureError(RuntimeError):
    """The source cannot be opened or read; the grabber closes it and retries with backoff."""


@dataclass(frozen=True)
class Capture:
    """One captured frame: ``frame.rgb`` feeds the model, ``display`` goes to the screen and HTTP.

    ``display`` is the same array as ``frame.rgb`` except on picamera2 (main vs lores stream).
    """

    frame: Frame
    display: np.ndarray


class Camera(ABC):
    """A frame source. ``read`` returns ``(model_rgb, display_rgb)`` or None at the end of a replay."""

    live: bool = True  # paced by the hardware; replay sources are paced by the grabber instead

    @abstractmethod
    def open(self) -> None: ...

    @abstractmethod
    def read(self) -> tuple[np.ndarray, np.ndarray] | None: ...

    @abstractmethod
    def close(self) -> None: ...

    def describe(self) -> str:
        return type(self).__name__

    def source(self) -> str:
        """What the last frame read came from, for Result.source: a camera's name by default."""
        return self.describe()

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def fit_within(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    """Scale ``rgb`` down (never up) to fit ``width x height``, keeping its aspect ratio."""
    h, w = rgb.shape[:2]
    scale = min(width / w, height / h)
    if scale >= 1:
        return rgb
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)


class FolderCamera(Camera):
    """Replays the images of a folder in name order, scaled to fit the configured frame size."""

    live = False

    def __init__(self, path: str | Path, *, loop: bool = True, width: int = 640, height: int = 480):
        self.path = Path(path)
        self.loop = loop
        self.size = (width, height)
        self._files: list[Path] = []
        self._index = 0
        self._cache: dict[Path, tuple[tuple[int, int], np.ndarray]] = {}
        self._cache_bytes = 0
        self._last_name = ""

    def describe(self) -> str:
        return f"folder {self.path}"

    def source(self) -> str:
        return self._last_name

    def open(self) -> None:
        if not self.path.is_dir():
            raise CaptureError(f"image folder not found: {self.path}")
        self._files = sorted(p for p in self.path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self._files:
            raise CaptureError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {self.path}")
        self._index = 0

    def read(self) -> tuple[np.ndarray, np.ndarray] | None:
        for _ in range(len(self._files)):
            if self._index >= len(self._files):
                if not self.loop:
                    return None
                self._index = 0
            path = self._files[self._index]
            self._index += 1
            try:
                rgb = self._load(path)
            except ImageDecodeError as err:
                _log.warning("skipping %s", err)
                continue
            self._last_name = path.name
            return rgb, rgb
        raise CaptureError(f"no decodable images left in {self.path}")

    def close(self) -> None:
        self._files = []

    def _load(self, path: Path) -> np.ndarray:
        try:
            st = path.stat()
        except OSError as err:
            raise CaptureError(f"cannot read {path}: {err.strerror}") from err
        key = (st.st_mtime_ns, st.st_size)  # a changed file is decoded again
        cached = self._cache.get(path)
        if cached and cached[0] == key:
            return cached[1]
        try:
            rgb = fit_within(load_image(path), *self.size)
        except OSError as err:
            raise CaptureError(f"cannot read {path}: {err.strerror}") from err
        rgb.setflags(write=False)  # frames are shared with the consumer, never edited
        if self._cache_bytes + rgb.nbytes <= _FOLDER_CACHE_BYTES:
            self._cache[path] = (key, rgb)
            self._cache_bytes += rgb.nbytes
        return rgb


class MemoryCamera(Camera):
    """Replays frames already decoded: an (N, H, W, 3) uint8 RGB array, or an ``.npy`` file of one
    loaded at open. Nothing is decoded, copied or scaled per frame; frames are read-only."""

    live = False

    def __init__(self, frames: np.ndarray | str | Path, *, loop: bool = True):
        self._given = frames
        self.loop = loop
        self._frames: np.ndarray | None = None
        self._index = 0

    def describe(self) -> str:
        given = self._given
        return f"memory {given}" if isinstance(given, (str, Path)) else f"memory ({len(given)} frames)"

    def source(self) -> str:
        return f"frame {self._index - 1}"

    def open(self) -> None:
        frames = self._given
        if isinstance(frames, (str, Path)):
            try:
                frames = np.load(frames, allow_pickle=False)
            except (OSError, ValueError) as err:
                raise CaptureError(f"cannot read frames from {frames}: {err}") from err
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or not len(frames):
            raise CaptureError(f"{self.describe()}: expected (N, H, W, 3) uint8 RGB frames, "
                               f"got {frames.shape} {frames.dtype}")
        frames = frames.view()
        frames.setflags(write=False)  # shared with the consumer, never edited
        self._frames, self._index = frames, 0

    def read(self) -> tuple[np.ndarray, np.ndarray] | None:
        if self._frames is None:
            raise CaptureError(f"{self.describe()} is not open")
        if self._index >= len(self._frames):
            if not self.loop:
                return None
            self._index = 0
        rgb = self._frames[self._index]
        self._index += 1
        return rgb, rgb

    def close(self) -> None:
        self._frames = None


class OpenCvCamera(Camera):
    """``cv2.VideoCapture`` on a USB camera (``device`` index) or a video file (``path``)."""

    def __init__(self, *, device: int = 0, path: str = "", loop: bool = True, width: int = 640,
                 height: int = 480):
        self.device = device
        self.path = path
        self.loop = loop
        self.size = (width, height)
        self.live = not path
        self._cap: cv2.VideoCapture | None = None

    def describe(self) -> str:
        return f"video {self.path}" if self.path else f"usb camera {self.device}"

    def source(self) -> str:
        return Path(self.path).name if self.path else self.describe()

    def open(self) -> None:
        if self.path and not Path(self.path).is_file():
            raise CaptureError(f"video file not found: {self.path}")
        cap = cv2.VideoCapture(self.path) if self.path else cv2.VideoCapture(self.device)
        if not cap.isOpened():
            cap.release()
            raise CaptureError(f"cannot open {self.describe()}")
        if self.live:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.size[0])
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.size[1])
        self._cap = cap

    def read(self) -> tuple[np.ndarray, np.ndarray] | None:
        if self._cap is None:
            raise CaptureError(f"{self.describe()} is not open")
        ok, bgr = self._cap.read()
        if not ok and not self.live:
            if not self.loop:
                return None
            # Reopen rather than seek, so a file that disappeared is noticed.
            self.close()
            self.open()
            ok, bgr = self._cap.read()
        if not ok or bgr is None:
            raise CaptureError(f"cannot read a frame from {self.describe()}")
        rgb = fit_within(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), *self.size)
        return rgb, rgb

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


class Picamera2Camera(Camera):
    """The Pi camera through picamera2: ``main`` for the screen, ``lores`` (YUV420) for the model.

    picamera2 cannot run on this machine; tests exercise this class against a stand-in module
    with picamera2's API injected as ``sys.modules["picamera2"]``.
    """

    # XBGR8888 is [R, G, B, A] in memory and is what the DRM preview shows natively;
    # YUV420 is the only lores format a Pi 4 offers. A Pi 5 (picamera2's PiSP platform) also gives
    # lores in BGR888, which is [R, G, B] in memory, and crops it to its own aspect ratio.
    MAIN_FORMAT = "XBGR8888"
    LORES_FORMAT = "YUV420"
    LORES_RGB_FORMAT = "BGR888"

    def __init__(self, *, camera_num: int = 0, width: int = 640, height: int = 480,
                 lores_width: int = 320, lores_height: int = 240, fps: float = 0.0,
                 preview: bool = False, model_aspect: tuple[int, int] | None = None):
        self.camera_num = camera_num
        self.main_size = (width, height)
        self.lores_box = (lores_width, lores_height)  # as configured; lores_size is what was granted
        self.lores_size = self.lores_box
        self.fps = fps
        self.preview = preview  # start picamera2's DRM preview (HDMI without a desktop)
        self.model_aspect = model_aspect  # the model input's (height, width)
        self.lores_format = self.LORES_FORMAT
        self._cam = None

    def describe(self) -> str:
        return f"picamera2 camera {self.camera_num}"

    def open(self) -> None:
        try:
            from picamera2 import Picamera2, Preview
        except ImportError as err:
            raise CaptureError("picamera2 is not installed (apt install python3-picamera2)") from err
        try:
            cam = Picamera2(self.camera_num)
        except Exception as err:  # picamera2 raises bare errors when no camera is attached
            raise CaptureError(f"cannot open {self.describe()}: {err}") from err
        try:
            self._configure(cam, getattr(getattr(Picamera2, "platform", None), "name", "") == "PISP")
            if self.preview:
                cam.start_preview(Preview.DRM)
            cam.start()
        except Exception as err:
            cam.close()
            raise CaptureError(f"cannot start {self.describe()}: {err}") from err
        self._cam = cam

    def read(self) -> tuple[np.ndarray, np.ndarray]:
        if self._cam is None:
            raise CaptureError(f"{self.describe()} is not open")
        try:
            with self._cam.captured_request() as request:
                main = request.make_array("main")
                lores = request.make_array("lores")
        except Exception as err:
            raise CaptureError(f"{self.describe()}: capture failed: {err}") from err
        lw, lh = self.lores_size
        if self.lores_format == self.LORES_RGB_FORMAT:
            return np.ascontiguousarray(lores[:lh, :lw, :3]), main[..., :3]
        # make_array gives YUV420 as (h * 3/2, stride): convert, then trim the stride padding.
        rgb = np.ascontiguousarray(cv2.cvtColor(lores, cv2.COLOR_YUV2RGB_I420)[:lh, :lw])
        return rgb, main[..., :3]

    def _configure(self, cam, crops_apart: bool) -> None:
        """Configure main and lores. Where the ISP crops the streams apart (``crops_apart``: Pi 5),
        lores is asked for at the model's aspect in RGB; a picamera2 too old for that gets the
        plain lores (the main stream's view in YUV420, cropped by the daemon) with a warning."""
        controls = {"FrameRate": self.fps} if self.fps > 0 else {}
        main = {"size": self.main_size, "format": self.MAIN_FORMAT}
        plain = {"size": self.lores_box, "format": self.LORES_FORMAT}
        if crops_apart and self.model_aspect is not None:
            size = aspect_within(self.lores_box, self.model_aspect)
            try:
                cam.configure(cam.create_preview_configuration(
                    main=main, lores={"size": size, "format": self.LORES_RGB_FORMAT, "preserve_ar": True},
                    controls=controls))
                self.lores_size, self.lores_format = size, self.LORES_RGB_FORMAT
                return
            except Exception as err:  # noqa: BLE001 - picamera2 raises bare errors for configurations
                _log.warning("%s: lores at the model's aspect refused (%s); using %dx%d %s", self.describe(),
                             err, *self.lores_box, self.LORES_FORMAT)
        cam.configure(cam.create_preview_configuration(main=main, lores=plain, controls=controls))
        self.lores_size, self.lores_format = plain["size"], self.LORES_FORMAT

    def set_overlay(self, rgba: np.ndarray) -> None:
        """Hand an RGBA overlay to the running preview (no-op while the camera is closed)."""
        if self._cam is not None:
            self._cam.set_overlay(rgba)

    def close(self) -> None:
        cam, self._cam = self._cam, None
        if cam is None:
            return
        try:
            cam.stop()
            if self.preview:
                cam.stop_preview()
        finally:
            cam.close()


def aspect_within(box: tuple[int, int], aspect: tuple[int, int]) -> tuple[int, int]:
    """The largest ``(width, height)`` within ``box`` (width, height) at ``aspect`` (height,
    width), both even as picamera2 requires."""
    (bw, bh), (ah, aw) = box, aspect
    scale = min(bw / aw, bh / ah)
    return max(2, int(aw * scale) // 2 * 2), max(2, int(ah * scale) // 2 * 2)


def make_camera(cfg: CameraConfig, *, preview: bool = False, model_aspect: tuple[int, int] | None = None) -> Camera:
    """The backend ``cfg.source`` names (``preview``: picamera2's DRM preview for the overlay;
    ``model_aspect``: the model input's (height, width), for picamera2's lores stream)."""
    if cfg.source == "folder":
        return FolderCamera(cfg.path, loop=cfg.loop, width=cfg.width, height=cfg.height)
    if cfg.source == "memory":
        return MemoryCamera(cfg.path, loop=cfg.loop)
    if cfg.source == "opencv":
        return OpenCvCamera(device=cfg.device, path=cfg.path, loop=cfg.loop, width=cfg.width,
                            height=cfg.height)
    return Picamera2Camera(camera_num=cfg.device, width=cfg.width, height=cfg.height,
                           lores_width=cfg.lores_width, lores_height=cfg.lores_height, fps=cfg.fps,
                           preview=preview, model_aspect=model_aspect)


class FrameGrabber:
    """Runs a camera in a thread and hands out only the newest frame.

    Replay sources are paced at ``fps``; with ``fps == 0`` they go as fast as the consumer
    takes frames (nothing is dropped, nothing spins), up to ``READ_AHEAD`` frames read ahead so
    the consumer does not wait for this thread to be scheduled, as it never waits for a camera
    that is faster than the model. Live cameras are paced by the hardware.
    On a failure the camera is closed and reopened with exponential backoff; ``on_status``
    hears ``("ok" | "degraded" | "ended" | "stopped", detail)`` on every change.
    """

    def __init__(self, camera: Camera, *, fps: float = 0.0, retry_initial_s: float = 0.5,
                 retry_max_s: float = 10.0, on_status: Callable[[str, str], None] | None = None):
        self.camera = camera
        self.fps = fps
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self._on_status = on_status
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._latest: Capture | None = None
        self._ahead: collections.deque[Capture] = collections.deque()  # a full-speed replay's next frames
        self._thread: threading.Thread | None = None
        self._next_id = 1
        self.dropped = 0  # frames replaced before the consumer took them
        self.failures = 0  # open/read failures (each followed by a reopen)
        self.status = "starting"
        self.detail = ""

    @property
    def ended(self) -> bool:
        """True once a non-looping replay has no more frames."""
        return self.status == "ended"

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="capture", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 3.0) -> None:
        if self._thread is None:
            return
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        self._thread.join(timeout)
        if self._thread.is_alive():
            _log.warning("capture thread did not stop within %.1f s", timeout)
        self._thread = None

    def get(self, timeout: float) -> Capture | None:
        """The newest frame not yet taken, waiting up to ``timeout`` s; None if none came."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._latest is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._stop.is_set() or self.ended:
                    return None
                self._cond.wait(remaining)
            capture, self._latest = self._latest, self._ahead.popleft() if self._ahead else None
            self._cond.notify_all()  # wakes a replay waiting for its frame to be taken
            return capture

    # --- capture thread ---------------------------------------------------------------

    def _run(self) -> None:
        backoff = self.retry_initial_s
        opened = False
        next_due = time.monotonic()
        try:
            while not self._stop.is_set():
                if not opened:
                    try:
                        self.camera.open()
                        opened = True
                        self._set_status("ok", self.camera.describe())
                    except Exception as err:  # noqa: BLE001 - any failure means: retry later
                        backoff = self._failed(err, backoff)
                        continue
                if not self.camera.live:
                    next_due = self._pace(next_due)
                    if self._stop.is_set():
                        break
                try:
                    shot = self.camera.read()
                except Exception as err:  # noqa: BLE001 - any failure means: reopen
                    self._close_quietly()
                    opened = False
                    backoff = self._failed(err, backoff)
                    continue
                if shot is None:
                    self._set_status("ended", f"{self.camera.describe()}: end of replay")
                    with self._cond:
                        self._cond.notify_all()
                    return
                backoff = self.retry_initial_s
                self._publish(*shot)
        finally:
            self._close_quietly()
            if not self.ended:
                self._set_status("stopped", "")

    def _pace(self, next_due: float) -> float:
        if self.fps > 0:
            delay = next_due - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)
            # Count the next interval from when this frame really went out, so a late frame is
            # never followed by an early one (no catch-up bursts).
            return max(next_due, time.monotonic()) + 1.0 / self.fps
        with self._cond:
            while len(self._ahead) >= READ_AHEAD and not self._stop.is_set():
                self._cond.wait(0.5)
        return next_due

    def _publish(self, rgb: np.ndarray, display: np.ndarray) -> None:
        frame = Frame(frame_id=self._next_id, timestamp=time.time(), t_capture=time.monotonic(), rgb=rgb,
                      source=self.camera.source())
        self._next_id += 1
        with self._cond:
            if self._latest is None:
                self._latest = Capture(frame, display)
            elif not self.camera.live and self.fps <= 0:  # _pace let it through: there is room ahead
                self._ahead.append(Capture(frame, display))
            else:
                self.dropped += 1
                self._latest = Capture(frame, display)
            self._cond.notify_all()

    def _failed(self, err: Exception, backoff: float) -> float:
        self.failures += 1
        if not isinstance(err, CaptureError):  # not a known device failure: keep the traceback
            _log.warning("unexpected capture failure", exc_info=err)
        self._set_status("degraded", f"{err}; retrying in {backoff:.1f} s")
        self._stop.wait(backoff)
        return min(backoff * 2, self.retry_max_s)

    def _close_quietly(self) -> None:
        try:
            self.camera.close()
        except Exception as err:  # noqa: BLE001 - a broken device may fail to close; reopening still works
            _log.warning("closing %s failed: %s", self.camera.describe(), err)

    def _set_status(self, status: str, detail: str) -> None:
        if status == self.status and detail == self.detail:
            return
        changed = status != self.status
        self.status, self.detail = status, detail
        if changed:
            level = logging.WARNING if status == "degraded" else logging.INFO
            _log.log(level, "camera %s%s", status, f": {detail}" if detail else "")
        if self._on_status is not None:
            self._on_status(status, detail)
