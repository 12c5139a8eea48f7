"""The on-screen overlay and the displays that show it.

:func:`render_overlay` is a pure function: frame + Result -> a new RGB image with the class,
confidence, state, FPS, top-3 bars, the Result's advice (retake, point at a lesion, the card's
referral, docs/results.md) and a one-line "screening aid, not a diagnosis" notice. The panel sits in
the top-left corner, away from the centre the model looks at, in white text on a dark ground.
The same image feeds HTTP (snapshot, MJPEG). :func:`render_layer` draws the same thing on a
transparent RGBA canvas for picamera2's DRM preview, which shows the camera itself and only
takes an overlay. Displays share one interface (as picamera2's previews do), so the daemon
never branches on the mode: ``none``, ``opencv`` (a full-screen window) or ``drm``.
"""
from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass

import cv2
import numpy as np

from device.config import OverlayConfig
from device.types import Result

_log = logging.getLogger(__name__)

NOTICE = "Screening aid, not a diagnosis"
STATE_COLORS = {  # RGB
    "ok": (70, 200, 110),
    "uncertain": (250, 190, 30),
    "poor_quality": (230, 70, 70),
    "not_lesion": (150, 160, 175),
}
TEXT_COLOR = (255, 255, 255)
BAR_TRACK = (90, 90, 90)
BAR_FILL = (90, 170, 250)
REFER_COLOR = (255, 170, 60)  # the advice text when the Result refers
_ADVICE_LINES = 2
_LAYER_ALPHA = 170  # panel opacity on the RGBA layer
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_BASE_WIDTH = 640  # sizes below are for a 640-pixel-wide frame and scale with it


Rect = tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive)


@dataclass(frozen=True)
class Layout:
    """Where everything goes on a frame of a given size (tests read it to check pixels)."""

    scale: float
    panel: Rect
    title_origin: tuple[int, int]
    status_origin: tuple[int, int]
    label_x: int
    bars: tuple[Rect, Rect, Rect]  # top-1..3 bar tracks
    notice: Rect
    advice: Rect  # just above the notice; drawn only when the Result has advice
    swatch: Rect  # the state's colour, left of the title


def layout(width: int, height: int) -> Layout:
    # A corner panel of about 40% x 25% of the frame: it stays out of the central half, where the
    # model looks and the lesion is.
    s = max(0.5, width / _BASE_WIDTH)
    pad, line, row = round(8 * s), round(22 * s), round(20 * s)
    panel_w = min(width - 2 * pad, round(250 * s))
    x0, y0 = pad, pad
    bar_x0 = x0 + round(56 * s)
    bar_x1 = x0 + panel_w - round(46 * s)
    bar_h = round(11 * s)
    bars = tuple(
        (bar_x0, y0 + 2 * line + round(6 * s) + i * row, bar_x1, y0 + 2 * line + round(6 * s) + i * row + bar_h)
        for i in range(3)
    )
    panel = (x0, y0, x0 + panel_w, bars[-1][3] + pad)
    notice_h = round(24 * s)
    advice_h = _ADVICE_LINES * round(22 * s) + round(6 * s)
    swatch_y1 = y0 + line - round(3 * s)
    return Layout(
        scale=s,
        panel=panel,
        swatch=(x0 + pad, swatch_y1 - round(12 * s), x0 + pad + round(12 * s), swatch_y1),
        title_origin=(x0 + pad + round(18 * s), swatch_y1),
        status_origin=(x0 + pad, y0 + 2 * line - round(4 * s)),
        label_x=x0 + pad,
        bars=bars,  # type: ignore[arg-type]
        notice=(0, height - notice_h, width, height),
        advice=(0, height - notice_h - advice_h, width, height - notice_h),
    )


def title_text(result: Result | None) -> str:
    return "Waiting for frames..." if result is None else result.headline


def render_overlay(frame: np.ndarray, result: Result | None) -> np.ndarray:
    """A new HxWx3 RGB image: ``frame`` (RGB or RGBA, not modified) with the overlay drawn."""
    out = np.array(frame[..., :3], dtype=np.uint8, order="C", copy=True)
    _draw(out, result)
    return out


def render_layer(width: int, height: int, result: Result | None) -> np.ndarray:
    """The overlay alone on a transparent HxWx4 RGBA canvas (picamera2 ``set_overlay``)."""
    layer = np.zeros((height, width, 4), dtype=np.uint8)
    _draw(layer, result)
    return layer


def _draw(canvas: np.ndarray, result: Result | None) -> None:
    h, w = canvas.shape[:2]
    lay = layout(w, h)
    s = lay.scale
    rgba = canvas.shape[2] == 4

    def color(rgb: tuple[int, int, int]) -> tuple[int, ...]:
        return (*rgb, 255) if rgba else rgb

    def text(value: str, origin: tuple[int, int], size: float, rgb, max_x: int, weight: float = 1.5,
             shrink: float = 1.0) -> None:
        """``shrink`` < 1: a smaller font, down to that share of ``size``, before the text is cut."""
        font_scale, thick = size * s, max(1, round(weight * s))
        while (font_scale > size * s * shrink
               and cv2.getTextSize(value, _FONT, font_scale, thick)[0][0] > max_x - origin[0]):
            font_scale -= 0.025 * s
        value = _fit_text(value, font_scale, thick, max_x - origin[0])
        cv2.putText(canvas, value, origin, _FONT, font_scale, color(rgb), thick, cv2.LINE_AA)

    # without bars (no class shown) the panel ends below the status line
    short = result is not None and not result.shows_class
    _shade(canvas, (*lay.panel[:3], lay.status_origin[1] + round(8 * s)) if short else lay.panel, rgba)
    _shade(canvas, lay.notice, rgba)
    px1 = lay.panel[2] - round(8 * s)
    if result is not None:
        sx0, sy0, sx1, sy1 = lay.swatch
        cv2.rectangle(canvas, (sx0, sy0), (sx1 - 1, sy1 - 1), color(STATE_COLORS.get(result.state, TEXT_COLOR)), -1)
    text(title_text(result), lay.title_origin, 0.55, TEXT_COLOR, px1, weight=2.0, shrink=0.7)
    if result is not None:
        confidence = f"{result.confidence:.0%}  " if result.shows_class else ""
        fps = f"  {result.fps:.1f} FPS" if result.fps > 0 else ""  # a slow replay has no rate yet
        text(f"{confidence}{result.state.replace('_', ' ')}{fps}", lay.status_origin, 0.45, TEXT_COLOR, px1)
        for (code, prob), (x0, y0, x1, y1) in zip(result.top3 if result.shows_class else (), lay.bars):
            text(code, (lay.label_x, y1), 0.4, TEXT_COLOR, x0)
            cv2.rectangle(canvas, (x0, y0), (x1 - 1, y1 - 1), color(BAR_TRACK), -1)
            fill = x0 + round((x1 - x0) * min(max(prob, 0.0), 1.0))
            if fill > x0:
                cv2.rectangle(canvas, (x0, y0), (fill - 1, y1 - 1), color(BAR_FILL), -1)
            text(f"{prob:.0%}", (x1 + round(6 * s), y1), 0.4, TEXT_COLOR, lay.panel[2])
    if result is not None and result.advice:
        _shade(canvas, lay.advice, rgba)
        ax0, ay0, ax1, _ = lay.advice
        step, font_scale, thick = round(22 * s), 0.5 * s, max(1, round(1.5 * s))
        lines = _wrap(result.advice, font_scale, thick, ax1 - ax0 - round(16 * s))
        for i, line in enumerate(lines):
            text(line, (ax0 + round(8 * s), ay0 + (i + 1) * step), 0.5, REFER_COLOR if result.refer else TEXT_COLOR,
                 ax1)
    nx0, _, nx1, ny1 = lay.notice
    text(NOTICE, (nx0 + round(8 * s), ny1 - round(7 * s)), 0.5, TEXT_COLOR, nx1)


def _shade(canvas: np.ndarray, rect: Rect, rgba: bool) -> None:
    """Darken a region to a quarter (RGB), so white text reads on any frame, or make it a
    translucent black panel (RGBA)."""
    x0, y0, x1, y1 = rect
    region = canvas[max(0, y0):y1, max(0, x0):x1]
    if rgba:
        region[...] = (0, 0, 0, _LAYER_ALPHA)
    else:
        np.right_shift(region, 2, out=region)  # a quarter of the brightness: cheaper than a blend


def _wrap(value: str, font_scale: float, thick: int, max_w: int) -> list[str]:
    """``value`` broken at spaces into at most ``_ADVICE_LINES`` lines of ``max_w`` pixels
    (the last one cut with '...' if it still does not fit)."""
    lines: list[str] = []
    words = value.split()
    while words and len(lines) < _ADVICE_LINES - 1:
        n = len(words)
        while n > 1 and cv2.getTextSize(" ".join(words[:n]), _FONT, font_scale, thick)[0][0] > max_w:
            n -= 1
        lines.append(" ".join(words[:n]))
        words = words[n:]
    if words:
        lines.append(_fit_text(" ".join(words), font_scale, thick, max_w))
    return lines


def _fit_text(value: str, font_scale: float, thick: int, max_w: int) -> str:
    """``value`` cut with '...' so it fits ``max_w`` pixels."""
    if cv2.getTextSize(value, _FONT, font_scale, thick)[0][0] <= max_w:
        return value
    while value and cv2.getTextSize(value + "...", _FONT, font_scale, thick)[0][0] > max_w:
        value = value[:-1]
    return value + "..."


# --- displays ---------------------------------------------------------------------


# Window keys -> the commands Display.show returns.
KEY_COMMANDS = {ord("s"): "capture", ord("f"): "freeze", ord("q"): "quit", 27: "quit"}  # 27: Esc
COMMANDS = ("capture", "freeze", "quit")


class Display(ABC):
    """Shows overlaid frames; every mode accepts the same calls.

    ``show`` returns a command the viewer gave (one of COMMANDS), or None; only a window
    has keys, so the other displays always return None. ``shows_frames`` says whether ``show``
    needs the overlaid frame; when it does not, the daemon draws none and passes None.
    """

    shows_frames = False

    @abstractmethod
    def show(self, overlaid: np.ndarray | None, result: Result | None) -> str | None: ...

    def close(self) -> None:
        """Release the screen; quiet when nothing is open."""


class NullDisplay(Display):
    """Headless: frames still go to HTTP (which draws the overlay when someone looks), nothing to a screen."""

    def show(self, overlaid: np.ndarray | None, result: Result | None) -> str | None:
        return None


class OpenCvDisplay(Display):
    """A (full-screen) OpenCV window: a desktop session or a USB camera setup.

    Keys: ``s`` saves a capture, ``f`` freezes or unfreezes the shown frame, ``q`` or Esc stops.

    ``gui`` is the module with OpenCV's highgui calls; the tests pass a stand-in screen,
    because the headless OpenCV wheel used here has no window support.
    """

    WINDOW = "DermEdge"
    shows_frames = True

    def __init__(self, *, fullscreen: bool = True, gui=cv2):
        self._gui = gui
        self._fullscreen = fullscreen
        self._open = False

    def show(self, overlaid: np.ndarray, result: Result | None) -> str | None:
        gui = self._gui
        if not self._open:
            gui.namedWindow(self.WINDOW, gui.WINDOW_NORMAL)
            if self._fullscreen:
                gui.setWindowProperty(self.WINDOW, gui.WND_PROP_FULLSCREEN, gui.WINDOW_FULLSCREEN)
            self._open = True
        gui.imshow(self.WINDOW, cv2.cvtColor(overlaid, cv2.COLOR_RGB2BGR))
        key = gui.waitKey(1)  # also lets highgui paint; -1 when no key was pressed
        return KEY_COMMANDS.get(key & 0xFF) if key >= 0 else None

    def close(self) -> None:
        if self._open:
            self._gui.destroyWindow(self.WINDOW)
            self._open = False


class DrmDisplay(Display):
    """picamera2's DRM preview (HDMI, no desktop): the camera draws itself, we set an RGBA overlay.

    ``target`` is anything with ``set_overlay(rgba)`` (``capture.Picamera2Camera``). Building
    and uploading the layer costs more than drawing on a frame, so it is rebuilt only when what
    it shows changed (:func:`layer_key`), and then at most ``max_hz`` times a second. Only tested
    against a stand-in here.
    """

    def __init__(self, target, *, width: int, height: int, max_hz: float = 5.0):
        self._target = target
        self._size = (width, height)
        self._min_interval = 1.0 / max_hz
        self._last = float("-inf")
        self._shown: tuple | None = None  # layer_key of the layer on screen

    def show(self, overlaid: np.ndarray | None, result: Result | None) -> str | None:
        now = time.monotonic()
        if now - self._last < self._min_interval:
            return None
        key = layer_key(result)
        if key == self._shown:
            return None
        self._last, self._shown = now, key
        self._target.set_overlay(render_layer(*self._size, result))
        return None

    def close(self) -> None:
        self._target.set_overlay(None)  # picamera2 removes the overlay
        self._last, self._shown = float("-inf"), None


def layer_key(result: Result | None) -> tuple | None:
    """What the overlay shows of ``result``, at the precision it shows it (whole percent, FPS to
    a tenth): two Results with the same key draw the same layer."""
    if result is None:
        return None
    confidence = None if result.confidence is None else round(result.confidence, 2)
    return (title_text(result), result.state, confidence, round(result.fps, 1),
            tuple((code, round(p, 2)) for code, p in result.top3), result.refer)


def make_display(cfg: OverlayConfig, *, target=None, width: int = 640, height: int = 480) -> Display:
    """The display ``cfg.mode`` names; ``drm`` draws through ``target.set_overlay``."""
    if cfg.mode == "opencv":
        return OpenCvDisplay(fullscreen=cfg.fullscreen)
    if cfg.mode == "drm":
        if target is None or not hasattr(target, "set_overlay"):
            raise ValueError("overlay.mode drm needs camera.source picamera2 (its DRM preview)")
        return DrmDisplay(target, width=width, height=height)
    return NullDisplay()
