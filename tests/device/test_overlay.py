"""device.overlay: pixels of the rendered overlay, the RGBA layer, and the display sinks.

The OpenCV window and the DRM preview are exercised against stand-ins (a recording
highgui module and a recording ``set_overlay`` target): there is no screen here.
"""
import time

import numpy as np
import pytest

from device.config import OverlayConfig
from device.overlay import (
    BAR_FILL,
    BAR_TRACK,
    REFER_COLOR,
    STATE_COLORS,
    DrmDisplay,
    NullDisplay,
    OpenCvDisplay,
    layer_key,
    layout,
    make_display,
    render_layer,
    render_overlay,
    title_text,
)
from device.types import ReferralDecision, Result
from tests.helpers import StandInGui

GREY = 200


ADVICE = ("See a dermatologist soon: this lesion has features seen in skin cancers (melanoma, basal cell "
          "carcinoma or actinic keratosis).")


def make_result(state="ok", top3=(("mel", 0.75), ("nv", 0.2), ("bcc", 0.05)), fps=9.5, reason="",
                referral_score=None):
    referral = None if referral_score is None else ReferralDecision(
        score=referral_score, threshold=0.3, sensitivity=0.9, specificity=0.7, advice=ADVICE)
    return Result(
        class_code=top3[0][0], class_name="Melanoma", class_index=4, confidence=top3[0][1],
        all_probabilities=dict(top3), top3=tuple(top3), state=state, model="unit", frame_id=7,
        timestamp="2024-01-01T00:00:00.000Z", latency_ms={"total": 1.0}, fps=fps,
        quality={"reason": reason} if reason else {},
        referral=referral,
    )


def grey_frame(h=480, w=640) -> np.ndarray:
    return np.full((h, w, 3), GREY, np.uint8)


def near(pixels: np.ndarray, rgb, tol=30) -> np.ndarray:
    return (np.abs(pixels.astype(int) - np.array(rgb)) <= tol).all(axis=-1)


def band(img, rect):
    x0, y0, x1, y1 = rect
    return img[y0:y1, x0:x1]


def test_output_is_a_new_rgb_image_and_the_input_is_untouched():
    frame = grey_frame()
    frame[100:200, 300:400] = (10, 120, 240)
    before = frame.copy()
    out = render_overlay(frame, make_result())
    assert out.shape == frame.shape and out.dtype == np.uint8
    assert not np.shares_memory(out, frame)
    np.testing.assert_array_equal(frame, before)
    rgba = np.dstack([frame, np.full(frame.shape[:2], 255, np.uint8)])
    assert render_overlay(rgba, make_result()).shape == (480, 640, 3)  # picamera2 main stream


def test_overlay_stays_in_the_panel_and_notice_strip():
    out = render_overlay(grey_frame(), make_result())
    lay = layout(640, 480)
    changed = (out != GREY).any(axis=-1)
    mask = np.zeros_like(changed)
    for rect in (lay.panel, lay.notice):
        x0, y0, x1, y1 = rect
        mask[y0:y1, x0:x1] = True
    assert not changed[~mask].any()  # the lesion view itself is left alone
    assert changed[lay.panel[1]:lay.panel[3], lay.panel[0]:lay.panel[2]].mean() > 0.9  # shaded


def test_title_is_white_beside_a_swatch_of_the_state_colour():
    lay = layout(640, 480)
    y = lay.title_origin[1]
    title = (lay.title_origin[0], y - 20, lay.panel[2], y + 4)
    for state, other in (("ok", "poor_quality"), ("uncertain", "ok"), ("poor_quality", "ok"), ("not_lesion", "ok")):
        out = render_overlay(grey_frame(), make_result(state=state))
        assert near(band(out, lay.swatch), STATE_COLORS[state], tol=2).all(), state
        assert not near(band(out, lay.swatch), STATE_COLORS[other], tol=20).any(), state
        assert near(band(out, title), (255, 255, 255), tol=40).sum() > 80, state  # white, high contrast


def test_status_line_shows_the_fps():
    lay = layout(640, 480)
    y = lay.status_origin[1]
    slow = render_overlay(grey_frame(), make_result(fps=9.5))
    fast = render_overlay(grey_frame(), make_result(fps=27.5))
    differs = (slow != fast).any(axis=-1)
    ys, _ = np.nonzero(differs)
    assert len(ys) > 0
    assert ys.min() >= y - 20 and ys.max() <= y + 4  # only the status line changed


def test_top3_bars_are_filled_in_proportion():
    result = make_result(top3=(("mel", 0.75), ("nv", 0.2), ("bcc", 0.05)))
    out = render_overlay(grey_frame(), result)
    lengths = []
    for (code, prob), (x0, y0, x1, y1) in zip(result.top3, layout(640, 480).bars):
        row = out[(y0 + y1) // 2, x0:x1]
        filled = near(row, BAR_FILL, tol=2)
        track = near(row, BAR_TRACK, tol=2)
        assert (filled | track).all(), code
        length = int(filled.sum())
        assert length == pytest.approx(prob * (x1 - x0), abs=1.5), code
        assert filled[:length].all()  # filled from the left
        lengths.append(length)
    assert lengths[0] > lengths[1] > lengths[2]


def test_notice_strip_carries_text():
    out = render_overlay(grey_frame(), make_result())
    strip = band(out, layout(640, 480).notice)
    assert near(strip, (255, 255, 255), tol=40).sum() > 200  # white text on the darkened strip
    assert near(strip, (GREY // 4,) * 3, tol=2).mean() > 0.5


def test_referral_advice_is_drawn_only_when_the_result_refers():
    lay = layout(640, 480)
    refer = render_overlay(grey_frame(), make_result(referral_score=0.8))
    strip = band(refer, lay.advice)
    assert near(strip, REFER_COLOR, tol=30).sum() > 300  # two lines of advice text
    rows = np.nonzero(near(strip, REFER_COLOR, tol=30).any(axis=1))[0]
    assert rows.max() - rows.min() > 25  # wrapped onto a second line, not cut to one
    for quiet in (make_result(referral_score=0.1), make_result()):  # below threshold; no rule
        out = render_overlay(grey_frame(), quiet)
        assert (band(out, lay.advice) == GREY).all()
        assert not near(out, REFER_COLOR, tol=30).any()
    # the advice sits beside the disclaimer, which is still drawn
    assert near(band(refer, lay.notice), (255, 255, 255), tol=40).sum() > 200


def test_poor_and_not_lesion_results_show_their_advice_in_white_and_never_a_referral():
    lay = layout(640, 480)
    poor = render_overlay(grey_frame(), make_result(state="poor_quality", reason="too blurry"))
    assert near(band(poor, lay.advice), (255, 255, 255), tol=40).sum() > 200  # "Retake the photo: ..."
    assert not near(poor, REFER_COLOR, tol=30).any()
    x0, y0, x1, y1 = lay.bars[0]
    assert not near(poor[(y0 + y1) // 2, x0:x1], BAR_TRACK, tol=2).any()  # says nothing of the lesion: no bars
    gate = Result(class_code=None, class_name=None, class_index=None, confidence=None, all_probabilities={},
                  top3=(), state="not_lesion", model="unit", frame_id=8, timestamp="2024-01-01T00:00:00.000Z",
                  latency_ms={"total": 1.0}, fps=9.5, gate_advice="Point the camera at a skin lesion.")
    assert title_text(gate) == "Not a skin lesion"
    out = render_overlay(grey_frame(), gate)
    assert near(band(out, lay.advice), (255, 255, 255), tol=40).sum() > 200
    x0, y0, x1, y1 = lay.bars[0]
    assert not near(out[(y0 + y1) // 2, x0:x1], BAR_TRACK, tol=2).any()  # no class, so no bars


def test_waiting_and_state_titles():
    assert title_text(None).startswith("Waiting")
    assert title_text(make_result(state="poor_quality", reason="too dark")) == "Poor image quality (too dark)"
    assert title_text(make_result(state="uncertain")) == "Uncertain: Melanoma?"
    assert title_text(make_result()) == "Melanoma"
    out = render_overlay(grey_frame(), None)  # before the first result: no bars
    x0, y0, x1, y1 = layout(640, 480).bars[0]
    assert not near(out[(y0 + y1) // 2, x0:x1], BAR_TRACK, tol=2).any()


def test_scales_with_the_frame():
    small, big = layout(320, 240), layout(1280, 960)
    assert big.panel[2] - big.panel[0] > 2 * (small.panel[2] - small.panel[0]) - 10
    assert render_overlay(grey_frame(240, 320), make_result()).shape == (240, 320, 3)


def test_rgba_layer_is_transparent_outside_the_panel():
    layer = render_layer(640, 480, make_result())
    assert layer.shape == (480, 640, 4)
    lay = layout(640, 480)
    alpha = layer[..., 3]
    x0, y0, x1, y1 = lay.panel
    assert (alpha[y0:y1, x0:x1] > 0).all()
    assert alpha[lay.panel[3] + 5 : lay.notice[1] - 5].max() == 0
    bx0, by0, _, by1 = lay.bars[0]
    assert tuple(layer[(by0 + by1) // 2, bx0 + 2]) == (*BAR_FILL, 255)


# --- displays (stand-ins for the screen) ---------------------------------------------


def test_window_keys_become_commands():
    gui = StandInGui(keys=[ord("s"), -1, ord("f"), ord("x"), ord("q"), 27, ord("S")])
    display = OpenCvDisplay(gui=gui)
    frame = np.zeros((4, 4, 3), np.uint8)
    commands = [display.show(frame, None) for _ in range(8)]
    assert commands == ["capture", None, "freeze", None, "quit", "quit", None, None]  # S is not s; no key: None


def test_opencv_display_shows_bgr_full_screen():
    gui = StandInGui()
    display = OpenCvDisplay(fullscreen=True, gui=gui)
    frame = np.zeros((4, 4, 3), np.uint8)
    frame[..., 0] = 250  # red in RGB
    display.show(frame, None)
    display.show(frame, None)
    display.close()
    names = [c[0] for c in gui.calls]
    assert names == ["namedWindow", "fullscreen", "imshow", "waitKey", "imshow", "waitKey", "destroyWindow"]
    shown = gui.calls[2][1]
    assert tuple(shown[0, 0]) == (0, 0, 250)  # OpenCV windows take BGR


class StandInPreview:
    """Stand-in for picamera2's set_overlay target (a DRM preview needs a Pi and a screen)."""

    def __init__(self):
        self.overlays = []

    def set_overlay(self, overlay):
        self.overlays.append(overlay)


def test_drm_display_sets_a_rate_limited_rgba_overlay():
    target = StandInPreview()
    display = DrmDisplay(target, width=320, height=240, max_hz=1.0)
    display.show(np.zeros((240, 320, 3), np.uint8), make_result())
    display.show(np.zeros((240, 320, 3), np.uint8), make_result())  # within the same second: skipped
    assert len(target.overlays) == 1
    assert target.overlays[0].shape == (240, 320, 4)
    display.close()
    assert target.overlays[-1] is None  # overlay removed


def test_make_display_by_mode():
    assert isinstance(make_display(OverlayConfig(mode="none")), NullDisplay)
    assert isinstance(make_display(OverlayConfig(mode="opencv")), OpenCvDisplay)
    assert isinstance(make_display(OverlayConfig(mode="drm"), target=StandInPreview()), DrmDisplay)
    with pytest.raises(ValueError, match="drm needs camera.source picamera2"):
        make_display(OverlayConfig(mode="drm"), target=object())
    NullDisplay().show(grey_frame(), None)


def test_drm_layer_is_rebuilt_only_when_what_it_shows_changes():
    target = StandInPreview()
    display = DrmDisplay(target, width=320, height=240, max_hz=1000.0)
    assert not display.shows_frames  # the daemon draws no frame for it
    display.show(None, make_result(fps=9.5))
    time.sleep(0.01)
    display.show(None, make_result(fps=9.52))  # shows as 9.5 FPS: the same layer
    assert len(target.overlays) == 1
    time.sleep(0.01)
    display.show(None, make_result(fps=9.7))
    time.sleep(0.01)
    display.show(None, make_result(fps=9.7, state="uncertain"))
    assert len(target.overlays) == 3
    assert layer_key(make_result(top3=(("mel", 0.751), ("nv", 0.2), ("bcc", 0.05)))) == layer_key(make_result())
    assert layer_key(make_result(top3=(("mel", 0.70), ("nv", 0.25), ("bcc", 0.05)))) != layer_key(make_result())


def test_only_a_window_needs_the_overlaid_frame():
    assert OpenCvDisplay(gui=StandInGui()).shows_frames
    assert not NullDisplay().shows_frames
