"""The device daemon: capture -> engine -> postprocess -> (overlay, MQTT, HTTP), until told to stop.

``start()`` is an ordered checklist (engine, live state, MQTT, HTTP, camera, display, inference
loop) and ``stop()`` undoes it in reverse. SIGINT/SIGTERM set one stop event; SIGHUP reloads
the config and the model, keeping the running model when the new one does not check out.

Threads: the capture thread (``capture.FrameGrabber``) keeps only the newest frame; a prepare
thread takes it, measures its quality and fits it to the model input (``Engine.prepare``) while
the inference thread runs the interpreter on the frame before it (a two-stage pipeline, so a
frame's preprocessing costs the loop nothing when the cores allow). The inference thread then
classifies the prepared frame, draws the overlay (only for a screen that shows frames; HTTP
draws its own when someone watches), hands the Result and frame to ``LiveState`` (which HTTP
reads) and to MQTT (on change, rate-limited, never blocking), times every stage of the frame
(``LiveState.stages``, device.stages) and feeds the systemd watchdog; the main
thread handles signals and watches for a stalled loop. A broker that is down or a camera that
fails never stops the HTTP endpoint. The main thread also watches the model folder: files
replaced there are reloaded with the same checks as SIGHUP (device.model_watch).
"""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import logging
import os
import signal
import threading
import time
from pathlib import Path
from time import perf_counter
from typing import Any

import numpy as np

from device.api import create_app
from device.button import CaptureButton
from device.capture import Capture, FrameGrabber, make_camera
from device.captures import CaptureError, CaptureInfo, CaptureStore, NothingToCaptureError, capture_sidecar
from device.config import Config, check_camera_path, load_config, with_overrides
from device.limits import return_freed_memory
from device.model_watch import ModelWatch
from device.overlay import Display, make_display, render_overlay
from device.page import Page
from device.predict import LoadedModel, load_model, model_for
from device.publish import MqttPublisher
from device.server import HttpServer
from device.state import LiveState
from device.types import Prepared, Quality, Result
from device.watchdog import Notifier

_log = logging.getLogger(__name__)

# Inference counts as stalled when the camera is fine but no frame was classified for this long
# (or for three frame intervals of a slow replay, whichever is longer).
STALL_AFTER_S = 5.0
_SUPERVISE_EVERY_S = 0.5
_STATUS_EVERY_S = 10.0
# Errors that mean "this model or config cannot be used" (ConfigError and CardError are
# ValueErrors, a missing file an OSError), as opposed to bugs.
MODEL_ERRORS = (ValueError, OSError, ImportError)
# Test-only (tests/deploy): while the file this variable names exists, the inference loop blocks
# as a hung interpreter would, so the watchdog can be tested on the real process. Unset in service.
STALL_FILE_ENV = "DERMEDGE_TEST_STALL_FILE"
# Frames kept for captures of the frame a page shows (about a second at the camera's rate).
RECENT_VIEWS = 10


@dataclasses.dataclass(frozen=True)
class View:
    """What the screen shows: the display frame, its Result and the overlaid image (None when no
    screen shows frames: nothing draws it then)."""

    display: np.ndarray
    result: Result
    overlaid: np.ndarray | None


@dataclasses.dataclass(frozen=True)
class Ready:
    """A captured frame made ready for the interpreter by the prepare thread, for ``model``."""

    capture: Capture
    model: LoadedModel
    quality: Quality
    prepared: Prepared


class Daemon:
    """The running device. ``run()`` blocks until SIGINT/SIGTERM (or ``max_frames``) and returns 0.

    Args:
        cfg: validated config (CLI overrides already applied).
        config_path: re-read on SIGHUP (``overrides`` are applied again on top).
        engine: an already built engine (tests); by default built from ``cfg.model``.
        max_frames: stop after this many classified frames (demos, tests).
    """

    def __init__(self, cfg: Config, *, config_path: str | Path | None = None,
                 overrides: dict[str, Any] | None = None, engine: Any = None,
                 max_frames: int | None = None, notifier: Notifier | None = None):
        self.cfg = cfg
        self.config_path = config_path
        self.overrides = dict(overrides or {})
        self.max_frames = max_frames
        self.notifier = notifier or Notifier()
        self._given_engine = engine
        self._stop = threading.Event()
        self._stopped = False
        self._reload = threading.Event()
        self._model: LoadedModel | None = None
        self._model_watch: ModelWatch | None = None
        self.state: LiveState | None = None
        self.publisher: MqttPublisher | None = None
        self.http: HttpServer | None = None
        self.grabber: FrameGrabber | None = None
        self.display: Display | None = None
        self.captures: CaptureStore | None = None
        self.button: CaptureButton | None = None
        self._view: View | None = None  # the newest frame, for captures
        # The last few, so the page can save the very frame it shows (by frame id), a moment late.
        self._recent: collections.deque[View] = collections.deque(maxlen=RECENT_VIEWS)
        self._frozen: View | None = None  # set by the window's f key: shown and captured instead
        self._loop: threading.Thread | None = None
        self._preparer: concurrent.futures.ThreadPoolExecutor | None = None  # prepares the next frame
        self._loop_failed = False
        self.frames = 0
        self._last_frame_at = time.monotonic()
        self._inference_status = ""
        self._dropped_seen = 0
        self._ready_sent = False
        self._stall_file = os.environ.get(STALL_FILE_ENV, "")

    # --- lifecycle ----------------------------------------------------------------

    def start(self) -> None:
        """Bring everything up in order; on failure, what already started is stopped again."""
        return_freed_memory()  # so the decode budget bounds the RSS, not only what is in use
        try:
            check_camera_path(self.cfg.camera)  # first, so a mistyped replay path fails at once
            self._init_model()
            self._init_state()
            self._init_captures()
            self._start_publisher()
            self._start_http()
            self._start_camera()
            self._start_display()
            self._start_button()
            self._start_inference()
        except BaseException:
            self.stop()
            raise
        _log.info("daemon %s running: model %s, camera %s, http %s, mqtt %s", self.cfg.device_id,
                  self.model_name, self.grabber.camera.describe(),
                  f"{self.cfg.http.host}:{self.http.port}" if self.http else "off",
                  f"{self.cfg.mqtt.host}:{self.cfg.mqtt.port}" if self.cfg.mqtt.enabled else "off")

    def run(self) -> int:
        """Start, serve until stopped, stop. Returns the process exit code."""
        previous = self._install_signal_handlers()
        try:
            self.start()
            last_status = 0.0
            while not self._stop.wait(_SUPERVISE_EVERY_S):
                if self._reload.is_set():
                    self._reload.clear()
                    self.reload()
                elif self._model_watch is not None and self._model_watch.changed():
                    _log.info("model folder %s changed: reloading", self._model_watch.folder)
                    self.reload()
                self._supervise()
                if time.monotonic() - last_status >= _STATUS_EVERY_S:
                    last_status = time.monotonic()
                    self.notifier.status(self._status_line())
        finally:
            self.stop()
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        return 1 if self._loop_failed else 0

    def _install_signal_handlers(self) -> dict:
        """SIGTERM/SIGINT stop, SIGHUP reloads; returns the handlers to restore (main thread only)."""
        if threading.current_thread() is not threading.main_thread():
            return {}
        previous = {}
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            previous[signum] = signal.signal(signum, self._on_signal)
        return previous

    def request_stop(self) -> None:
        self._stop.set()

    def stop(self) -> None:
        """Stop in reverse order: loop, MQTT (publishes offline), camera, display, HTTP. Idempotent."""
        self._stop.set()
        if self._stopped:
            return
        self._stopped = True
        self.notifier.stopping()
        if self._loop is not None:
            self._loop.join(timeout=3.0)
            if self._loop.is_alive():
                _log.warning("inference loop did not stop within 3 s")
            self._loop = None
        if self._preparer is not None:
            self._preparer.shutdown(wait=False)
            self._preparer = None
        if self.button is not None:
            self.button.close()
            self.button = None
        if self.publisher is not None:
            self.publisher.stop()
            self.publisher = None
        if self.grabber is not None:
            self.grabber.stop()
            self.grabber = None
        if self.display is not None:
            self.display.close()
            self.display = None
        if self.http is not None:
            self.http.stop()
            self.http = None
        if self.state is not None:
            self.state.set_component("inference", "stopped")

    def _on_signal(self, signum: int, _frame) -> None:
        if signum == signal.SIGHUP:
            self._reload.set()
        else:
            _log.info("%s received, stopping", signal.Signals(signum).name)
            self._stop.set()

    # --- start steps --------------------------------------------------------------

    def _init_model(self) -> None:
        if self._given_engine is not None:
            self._model = model_for(self._given_engine, self.cfg)
        else:
            self._model_watch = ModelWatch(self.cfg.model.dir)  # before the load: a change during it counts
            self._model = load_model(self.cfg)

    @property
    def model_name(self) -> str:
        return self._model.engine.card.name if self._model else ""

    def _init_state(self) -> None:
        self.state = LiveState(self.model_name)
        self.state.set_component("inference", "starting")

    def _init_captures(self) -> None:
        if self.cfg.captures.enabled:
            self.captures = CaptureStore(self.cfg.captures)

    def _start_publisher(self) -> None:
        self.publisher = MqttPublisher(self.cfg.mqtt, self.cfg.device_id, model_name=self.model_name,
                                       state=self.state)
        self.publisher.start()  # connects in the background (or reports "disabled"); never blocks

    def _start_http(self) -> None:
        if not self.cfg.http.enabled:
            return
        page = Page(card=lambda: self._model.engine.card, captures=self.captures,
                    save_capture=self.save_capture if self.captures else None, view=self.state.wait_view)
        app = create_app(self.cfg.http, self.state, self.predict, page=page)
        self.http = HttpServer.from_config(app, self.cfg.http)
        try:
            self.http.start()
        except OSError as err:
            raise OSError(f"http: cannot listen on {self.cfg.http.host}:{self.cfg.http.port} ({err})") from err

    def _start_camera(self) -> None:
        cam_cfg = self.cfg.camera
        card = self._model.engine.card
        camera = make_camera(cam_cfg, preview=self.cfg.overlay.mode == "drm",
                             model_aspect=(card.input.height, card.input.width))
        self.grabber = FrameGrabber(camera, fps=cam_cfg.fps, retry_initial_s=cam_cfg.retry_initial_s,
                                    retry_max_s=cam_cfg.retry_max_s, on_status=self._on_camera_status)
        self.grabber.start()

    def _start_display(self) -> None:
        self.display = make_display(self.cfg.overlay, target=self.grabber.camera,
                                    width=self.cfg.camera.width, height=self.cfg.camera.height)

    def _start_button(self) -> None:
        pin = self.cfg.captures.button_gpio
        if pin is not None and self.captures is not None:
            self.button = CaptureButton(pin, self.save_capture)
            self.button.start()

    def _start_inference(self) -> None:
        self._last_frame_at = time.monotonic()
        self._preparer = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="prepare")
        self._loop = threading.Thread(target=self._inference_loop, name="inference", daemon=True)
        self._loop.start()

    # --- the loop -----------------------------------------------------------------

    def predict(self, rgb: np.ndarray) -> Result:
        """One uploaded RGB image -> Result, through the same engine (no smoothing). For HTTP."""
        t_start, timestamp = time.monotonic(), time.time()
        model = self._model
        inference = model.engine.infer(rgb)
        return model.upload.process(inference, rgb=rgb, frame_id=0, timestamp=timestamp, t_start=t_start,
                                    source="upload")

    def _inference_loop(self) -> None:
        ahead: concurrent.futures.Future | None = None  # the next frame, being prepared
        try:
            while not self._stop.is_set():
                t0 = perf_counter()
                ready = ahead.result() if ahead is not None else self._prepare_next()
                ahead = None
                if ready is None:
                    if self.grabber.ended:
                        _log.info("replay finished after %d frames", self.frames)
                        self._stop.set()
                    elif self.grabber.status != "ok":
                        # Waiting on a camera that is being reopened is not a stall.
                        self.notifier.feed()
                    continue
                self.state.stages.add("wait", perf_counter() - t0)
                if not (self.max_frames and self.frames + 1 >= self.max_frames):
                    ahead = self._preparer.submit(self._prepare_next)
                self._process(ready)
                if self.max_frames and self.frames >= self.max_frames:
                    _log.info("stopping after %d frames (--max-frames)", self.frames)
                    self._stop.set()
        except Exception:  # noqa: BLE001 - reported as a failed exit, so systemd restarts us
            _log.exception("inference loop crashed")
            self._loop_failed = True
            self._stop.set()

    def _prepare_next(self) -> Ready | None:
        """The camera's newest frame with its quality and the model's input tensors; None when no
        frame came (or it could not be prepared). Runs on the prepare thread while the loop
        classifies the frame before (inline for the first)."""
        t0 = perf_counter()
        capture = self.grabber.get(timeout=0.5)
        if capture is None:
            return None
        self.state.stages.add("grab", perf_counter() - t0)
        return self._prepare(capture, self._model)

    def _prepare(self, capture: Capture, model: LoadedModel) -> Ready | None:
        clock = self.state.stages
        try:
            t0 = perf_counter()
            quality = model.stream.quality(capture.frame.rgb)
            t1 = perf_counter()
            prepared = model.engine.prepare(capture.frame.rgb)
        except (ValueError, RuntimeError) as err:  # a bad frame must not end the loop
            self._not_classified(capture.frame.frame_id, err)
            return None
        clock.add("quality", t1 - t0)
        clock.add("fit", prepared.preprocess_ms / 1e3)
        return Ready(capture, model, quality, prepared)

    def _not_classified(self, frame_id: int, err: Exception) -> None:
        self.state.count_error("inference")
        _log.warning("frame %d not classified: %s", frame_id, err)

    def _process(self, ready: Ready) -> None:
        while self._stall_file and os.path.exists(self._stall_file) and not self._stop.is_set():
            time.sleep(0.1)
        model, clock = self._model, self.state.stages
        if ready.model is not model:  # the model was swapped while this frame was prepared for the old one
            ready = self._prepare(ready.capture, model)
            if ready is None:
                return
        capture, frame = ready.capture, ready.capture.frame
        try:
            inference = model.engine.run(ready.prepared)
            t1 = perf_counter()
            result = model.stream.process(inference, rgb=frame.rgb, frame_id=frame.frame_id,
                                          timestamp=frame.timestamp, t_start=frame.t_capture,
                                          fps=self.state.fps, source=frame.source, quality=ready.quality)
            t2 = perf_counter()
        except (ValueError, RuntimeError) as err:  # a bad frame must not end the loop
            self._not_classified(frame.frame_id, err)
            return
        clock.add("infer", inference.inference_ms / 1e3)
        clock.add("postprocess", t2 - t1)
        # Drawn here only for a screen that shows frames; HTTP draws its own copy when asked.
        overlaid = render_overlay(capture.display, result) if self.display.shows_frames else None
        t3 = perf_counter()
        if overlaid is not None:
            clock.add("overlay", t3 - t2)
        self._view = View(capture.display, result, overlaid)
        self._recent.append(self._view)
        shown = self._frozen or self._view
        self._on_command(self.display.show(shown.overlaid, shown.result))
        t4 = perf_counter()
        clock.add("display", t4 - t3)
        if overlaid is None:
            self.state.publish_frame(result, capture.display, overlaid=False)
        else:
            self.state.publish_frame(result, overlaid)
        t5 = perf_counter()
        clock.add("state", t5 - t4)
        self.publisher.publish_result(result)
        clock.add("mqtt", perf_counter() - t5)
        self.frames += 1
        self._last_frame_at = time.monotonic()
        dropped = self.grabber.dropped
        if dropped > self._dropped_seen:
            self.state.count_dropped(dropped - self._dropped_seen)
            self._dropped_seen = dropped
        self._set_inference("ok")
        if not self._ready_sent:
            self.notifier.ready(f"classifying with {self.model_name}")
            self._ready_sent = True
        self.notifier.feed()

    # --- captures and window commands --------------------------------------------

    def save_capture(self, frame_id: int | None = None) -> CaptureInfo:
        """Save the shown frame (the frozen one while frozen; frame ``frame_id``, the one a page
        shows, when given) with its Result; raises CaptureError."""
        if self.captures is None:
            raise CaptureError("captures are turned off (captures.enabled: false)")
        view = self._frozen or self._view
        if frame_id is not None:
            view = next((v for v in (self._frozen, *reversed(self._recent)) if v and v.result.frame_id == frame_id),
                         None)
            if view is None:
                raise NothingToCaptureError(f"frame {frame_id} is no longer held; save again")
        if view is None:
            raise NothingToCaptureError("no frame classified yet")
        now = time.time()
        sidecar = capture_sidecar(view.result, self._model.engine.card, self.cfg, now=now)
        try:
            info = self.captures.save(view.display, sidecar, timestamp=now, frame_id=view.result.frame_id)
        except CaptureError:
            self.state.count_error("capture")
            raise
        self.publisher.publish_capture({"device_id": self.cfg.device_id, **info.to_dict()})
        return info

    def _on_command(self, command: str | None) -> None:
        if command == "quit":
            _log.info("window: quit")
            self._stop.set()
        elif command == "freeze":
            self._frozen = None if self._frozen else self._view
            _log.info("window: display %s", "frozen" if self._frozen else "live again")
        elif command == "capture":
            try:
                self.save_capture()
            except CaptureError as err:
                _log.warning("window: capture not saved: %s", err)

    # --- supervision (main thread) --------------------------------------------------

    def _supervise(self) -> None:
        if self._loop is not None and not self._loop.is_alive():
            self._stop.set()
            return
        fps = self.cfg.camera.fps
        limit = max(STALL_AFTER_S, 3.0 / fps) if fps > 0 else STALL_AFTER_S
        idle = time.monotonic() - self._last_frame_at
        camera_ok = self.grabber is not None and self.grabber.status == "ok"
        if camera_ok and idle > limit:
            self._set_inference("stalled", f"no frame classified for {idle:.1f} s")
        if self.publisher is not None:
            self.publisher.flush()  # a change the rate limit held back, even when frames stop coming

    def _set_inference(self, status: str, detail: str = "") -> None:
        if status != self._inference_status:
            self._inference_status = status
            if status == "stalled":
                _log.warning("inference stalled: %s", detail)
            self.state.set_component("inference", status, detail)

    def _on_camera_status(self, status: str, detail: str) -> None:
        self.state.set_component("camera", status, detail)
        if status == "ok":
            self._last_frame_at = time.monotonic()  # the stall clock starts when frames can flow

    def _status_line(self) -> str:
        camera = self.grabber.status if self.grabber else "off"
        mqtt = "connected" if self.publisher.connected else "not connected"
        return f"{self.state.fps:.1f} fps, {self.frames} frames, camera {camera}, mqtt {mqtt}"

    # --- reload (SIGHUP) ----------------------------------------------------------

    def reload(self) -> bool:
        """Re-read the config and the model; keep the running model if the new one is refused."""
        self.notifier.reloading()
        try:
            cfg = load_config(self.config_path) if self.config_path else self.cfg
            cfg = with_overrides(cfg, **self.overrides)
            if self._model_watch is not None and Path(cfg.model.dir) != self._model_watch.folder:
                self._model_watch = ModelWatch(cfg.model.dir)
            model = load_model(cfg)
        except MODEL_ERRORS as err:
            _log.error("reload refused, keeping model %s: %s", self.model_name, err)
            self.state.count_error("reload")
            self.notifier.ready("reload refused")
            return False
        for section in ("device_id", "camera", "overlay", "mqtt", "http"):
            if getattr(cfg, section) != getattr(self.cfg, section):
                _log.warning("reload: changes to '%s' take effect after a restart", section)
        self._model = model
        self.cfg = dataclasses.replace(self.cfg, model=cfg.model, postprocess=cfg.postprocess)
        self.state.model_name = self.model_name
        _log.info("reloaded: model %s from %s", self.model_name, cfg.model.dir)
        self.notifier.ready(f"reloaded, classifying with {self.model_name}")
        return True
