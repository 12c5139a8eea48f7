"""device.capture: folder replay, the OpenCV backend on a generated video, latest-frame-wins,
reopening a source that disappears, and the picamera2 backend against a stand-in module.

The picamera2 stand-in below is the only fake here: picamera2 needs a Raspberry Pi camera.
"""
import itertools
import sys
import threading
import time
import types
from pathlib import Path
from typing import ClassVar

import cv2
import numpy as np
import pytest

from device.capture import (
    CaptureError,
    FolderCamera,
    FrameGrabber,
    MemoryCamera,
    OpenCvCamera,
    Picamera2Camera,
    aspect_within,
    fit_within,
    make_camera,
)
from device.config import CameraConfig
from tests.helpers import wait_for

# Distinct solid colours (RGB), written under names whose sort order differs from the list order.
COLOURS = {"c_blue.png": (20, 40, 230), "a_red.png": (230, 30, 20), "b_green.png": (30, 220, 40)}
ORDER = ["a_red.png", "b_green.png", "c_blue.png"]


@pytest.fixture
def colour_folder(tmp_path) -> Path:
    folder = tmp_path / "frames"
    folder.mkdir()
    for name, rgb in COLOURS.items():
        img = np.full((60, 80, 3), rgb, np.uint8)
        cv2.imwrite(str(folder / name), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    (folder / "notes.txt").write_text("not an image")
    return folder


def colour_name(rgb: np.ndarray) -> str:
    mean = rgb.reshape(-1, 3).mean(axis=0)
    return min(COLOURS, key=lambda n: np.abs(mean - COLOURS[n]).sum())


def test_folder_replays_in_name_order_as_rgb(colour_folder):
    with FolderCamera(colour_folder, loop=False) as cam:
        seen = []
        while (shot := cam.read()) is not None:
            model_rgb, display = shot
            assert model_rgb.shape == (60, 80, 3) and model_rgb.dtype == np.uint8
            assert display is model_rgb
            seen.append(colour_name(model_rgb))
    assert seen == ORDER


def test_folder_loops(colour_folder):
    with FolderCamera(colour_folder, loop=True) as cam:
        seen = [colour_name(cam.read()[0]) for _ in range(7)]
    assert seen == ORDER * 2 + ORDER[:1]


def test_folder_scales_large_images_to_fit(tmp_path):
    cv2.imwrite(str(tmp_path / "big.png"), np.zeros((1000, 2000, 3), np.uint8))
    with FolderCamera(tmp_path, width=640, height=480) as cam:
        rgb, _ = cam.read()
    assert rgb.shape == (320, 640, 3)
    small = np.zeros((10, 20, 3), np.uint8)
    assert fit_within(small, 640, 480) is small  # never scaled up


def test_folder_skips_undecodable_files(colour_folder):
    (colour_folder / "b_broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    with FolderCamera(colour_folder, loop=False) as cam:
        seen = []
        while (shot := cam.read()) is not None:
            seen.append(colour_name(shot[0]))
    assert seen == ORDER


def test_folder_errors_name_the_folder(tmp_path):
    with pytest.raises(CaptureError, match=f"image folder not found: {tmp_path / 'gone'}"):
        FolderCamera(tmp_path / "gone").open()
    with pytest.raises(CaptureError, match="no images"):
        FolderCamera(tmp_path).open()


def test_grabber_numbers_frames_and_paces_replay(colour_folder):
    fps = 25.0
    grabber = FrameGrabber(FolderCamera(colour_folder), fps=fps)
    grabber.start()
    try:
        captures = [grabber.get(timeout=5.0) for _ in range(8)]
    finally:
        grabber.stop()
    assert all(c is not None for c in captures)
    ids = [c.frame.frame_id for c in captures]
    assert ids == sorted(set(ids))
    # Frame n is the n-th image of the looping replay, whatever a busy machine made us skip.
    assert [colour_name(c.frame.rgb) for c in captures] == [ORDER[(i - 1) % 3] for i in ids]
    times = [c.frame.t_capture for c in captures]
    # Pacing only ever makes frames later, so the lower bound holds on any machine.
    assert min(np.diff(times)) >= 0.8 / fps
    assert all(abs(c.frame.timestamp - time.time()) < 60 for c in captures)
    assert grabber.status == "stopped"


def test_latest_frame_wins_with_a_slow_consumer(colour_folder):
    grabber = FrameGrabber(FolderCamera(colour_folder), fps=200.0)
    grabber.start()
    try:
        ids = []
        for _ in range(6):
            capture = grabber.get(timeout=5.0)
            ids.append(capture.frame.frame_id)
            time.sleep(0.06)  # inference slower than the camera
        assert wait_for(lambda: grabber.dropped > 0)
    finally:
        grabber.stop()
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    skipped = sum(b - a - 1 for a, b in itertools.pairwise(ids))
    assert skipped > 0  # the consumer never saw a stale queue, it jumped ahead
    assert grabber.dropped >= skipped


def test_replay_at_fps_zero_waits_for_the_consumer(colour_folder):
    grabber = FrameGrabber(FolderCamera(colour_folder, loop=False), fps=0.0)
    grabber.start()
    try:
        ids = []
        while (capture := grabber.get(timeout=5.0)) is not None:
            ids.append(capture.frame.frame_id)
            time.sleep(0.02)
    finally:
        grabber.stop()
    assert ids == [1, 2, 3]
    assert grabber.dropped == 0
    assert grabber.ended


def test_grabber_reopens_a_folder_that_disappears(colour_folder):
    statuses = []
    grabber = FrameGrabber(FolderCamera(colour_folder), fps=100.0, retry_initial_s=0.05, retry_max_s=0.2,
                           on_status=lambda status, detail: statuses.append((status, detail)))
    grabber.start()
    moved = colour_folder.with_name("moved")
    try:
        assert grabber.get(timeout=5.0) is not None
        colour_folder.rename(moved)
        assert wait_for(lambda: grabber.status == "degraded")
        assert "frames" in grabber.detail  # names the folder or the file that went missing
        while grabber.get(timeout=0.1) is not None:  # drain what was captured before
            pass
        assert grabber.get(timeout=0.3) is None  # nothing flows while the source is gone
        moved.rename(colour_folder)
        assert wait_for(lambda: grabber.status == "ok")
        capture = grabber.get(timeout=5.0)
    finally:
        grabber.stop()
    assert capture is not None
    assert grabber.failures >= 1
    names = [s for s, _ in statuses]
    assert names[0] == "ok" and "ok" in names[names.index("degraded"):]  # back after the outage
    assert names[-1] == "stopped"


# --- OpenCV backend on a generated video ------------------------------------------


@pytest.fixture
def video_file(tmp_path) -> Path:
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (96, 64))
    assert writer.isOpened()
    for i in range(6):
        rgb = np.full((64, 96, 3), COLOURS[ORDER[i % 3]], np.uint8)
        writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def test_opencv_reads_a_video_file_as_rgb(video_file):
    with OpenCvCamera(path=str(video_file), loop=False) as cam:
        assert not cam.live
        seen = []
        while (shot := cam.read()) is not None:
            assert shot[0].shape == (64, 96, 3)
            seen.append(colour_name(shot[0]))
    assert seen == ORDER * 2


def test_opencv_loops_a_video_file(video_file):
    with OpenCvCamera(path=str(video_file), loop=True) as cam:
        seen = [colour_name(cam.read()[0]) for _ in range(8)]
    assert seen == (ORDER * 3)[:8]


def test_opencv_video_that_disappears_degrades_then_recovers(video_file, tmp_path):
    grabber = FrameGrabber(OpenCvCamera(path=str(video_file), loop=True), fps=200.0, retry_initial_s=0.05,
                           retry_max_s=0.1)
    grabber.start()
    hidden = tmp_path / "hidden.avi"
    try:
        assert grabber.get(timeout=5.0) is not None
        video_file.rename(hidden)
        assert wait_for(lambda: grabber.status == "degraded")  # noticed when the loop reopens it
        assert "video file not found" in grabber.detail
        hidden.rename(video_file)
        assert wait_for(lambda: grabber.status == "ok")
        assert grabber.get(timeout=5.0) is not None
    finally:
        grabber.stop()


def test_opencv_missing_camera_or_file_is_a_capture_error(tmp_path):
    with pytest.raises(CaptureError, match="video file not found"):
        OpenCvCamera(path=str(tmp_path / "none.avi")).open()
    with pytest.raises(CaptureError, match="cannot open usb camera 97"):
        OpenCvCamera(device=97).open()


def test_make_camera_picks_the_backend(tmp_path):
    assert isinstance(make_camera(CameraConfig(source="folder", path=str(tmp_path))), FolderCamera)
    assert isinstance(make_camera(CameraConfig(source="opencv", path="x.mp4")), OpenCvCamera)
    cam = make_camera(CameraConfig(lores_width=160, lores_height=120), preview=True)
    assert isinstance(cam, Picamera2Camera) and cam.preview and cam.lores_size == (160, 120)


# --- picamera2 backend against a stand-in module -------------------------------------


class StandInRequest:
    def __init__(self, cam):
        self.cam = cam

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.cam.released += 1

    def make_array(self, name):
        return self.cam.arrays[name]


class StandInPicamera2:
    """Stand-in for picamera2.Picamera2 (the real one needs a Pi camera): records calls."""

    instances: ClassVar[list] = []
    fail_open = False
    platform = types.SimpleNamespace(name="VC4")  # picamera2.Picamera2.platform: VC4 (Pi 4) or PISP (Pi 5)
    knows_preserve_ar = True  # False: a picamera2 too old for the stream flag

    def __init__(self, camera_num=0):
        if StandInPicamera2.fail_open:
            raise RuntimeError("Camera __init__ sequence did not complete.")
        self.camera_num = camera_num
        self.calls = []
        self.config = None
        self.released = 0
        self.overlays = []
        self.arrays = {}
        StandInPicamera2.instances.append(self)

    def create_preview_configuration(self, main=None, lores=None, controls=None):
        return {"main": main, "lores": lores, "controls": controls}

    def configure(self, config):
        if "preserve_ar" in config["lores"] and not StandInPicamera2.knows_preserve_ar:
            raise RuntimeError("Invalid field 'preserve_ar'")
        self.config = config
        (mw, mh), (lw, lh) = config["main"]["size"], config["lores"]["size"]
        main_rgb = np.zeros((mh, mw, 3), np.uint8)
        main_rgb[:, : mw // 2] = COLOURS["a_red.png"]
        main_rgb[:, mw // 2 :] = COLOURS["c_blue.png"]
        # XBGR8888 is [R, G, B, 255] in memory.
        self.arrays["main"] = np.dstack([main_rgb, np.full((mh, mw), 255, np.uint8)])
        # YUV420 comes as (h * 3/2, stride) with padding on the right of every row.
        stride = lw + 32
        lores_rgb = np.zeros((lh, stride, 3), np.uint8)
        lores_rgb[:, : lw // 2] = COLOURS["b_green.png"]
        lores_rgb[:, lw // 2 : lw] = COLOURS["a_red.png"]
        lores_rgb[:, lw:] = 255  # padding the backend must cut off
        # BGR888 is [R, G, B] in memory; YUV420 needs converting.
        rgb_lores = config["lores"]["format"] == "BGR888"
        self.arrays["lores"] = lores_rgb if rgb_lores else cv2.cvtColor(lores_rgb, cv2.COLOR_RGB2YUV_I420)
        self.calls.append("configure")

    def start_preview(self, preview):
        self.calls.append(("start_preview", preview))

    def start(self):
        self.calls.append("start")

    def captured_request(self):
        return StandInRequest(self)

    def set_overlay(self, overlay):
        self.overlays.append(overlay)

    def stop(self):
        self.calls.append("stop")

    def stop_preview(self):
        self.calls.append("stop_preview")

    def close(self):
        self.calls.append("close")


@pytest.fixture
def picamera2_standin(monkeypatch):
    module = types.ModuleType("picamera2")
    module.Picamera2 = StandInPicamera2
    module.Preview = types.SimpleNamespace(DRM="Preview.DRM", NULL="Preview.NULL")
    StandInPicamera2.instances = []
    StandInPicamera2.fail_open = False
    monkeypatch.setattr(StandInPicamera2, "platform", types.SimpleNamespace(name="VC4"))
    monkeypatch.setattr(StandInPicamera2, "knows_preserve_ar", True)
    monkeypatch.setitem(sys.modules, "picamera2", module)
    return module


def test_picamera2_main_for_display_lores_for_model(picamera2_standin):
    cam = Picamera2Camera(camera_num=1, width=64, height=48, lores_width=32, lores_height=24, fps=15.0,
                          preview=True)
    with cam:
        rgb, display = cam.read()
        cam.set_overlay(np.zeros((48, 64, 4), np.uint8))
    fake = StandInPicamera2.instances[0]
    assert fake.camera_num == 1
    assert fake.config["main"] == {"size": (64, 48), "format": "XBGR8888"}
    assert fake.config["lores"] == {"size": (32, 24), "format": "YUV420"}
    assert fake.config["controls"] == {"FrameRate": 15.0}
    assert ("start_preview", "Preview.DRM") in fake.calls
    assert fake.calls.index("configure") < fake.calls.index("start")
    assert fake.calls[-3:] == ["stop", "stop_preview", "close"]
    assert fake.released == 1  # the request went back to the camera
    assert len(fake.overlays) == 1 and fake.overlays[0].shape == (48, 64, 4)
    # Model frame: the lores stream, stride padding removed, converted to RGB.
    assert rgb.shape == (24, 32, 3) and rgb.flags.c_contiguous
    assert np.abs(rgb[:, :14].reshape(-1, 3).mean(0) - COLOURS["b_green.png"]).max() < 12
    assert np.abs(rgb[:, 18:].reshape(-1, 3).mean(0) - COLOURS["a_red.png"]).max() < 12
    # Display frame: the main stream as RGB (alpha dropped).
    assert display.shape == (48, 64, 3)
    assert tuple(display[0, 0]) == COLOURS["a_red.png"] and tuple(display[0, -1]) == COLOURS["c_blue.png"]


def test_picamera2_in_the_grabber_and_open_failures(picamera2_standin):
    StandInPicamera2.fail_open = True
    statuses = []
    grabber = FrameGrabber(Picamera2Camera(width=64, height=48, lores_width=32, lores_height=24),
                           retry_initial_s=0.05, retry_max_s=0.1, on_status=lambda s, d: statuses.append((s, d)))
    grabber.start()
    try:
        assert wait_for(lambda: grabber.status == "degraded")
        assert "cannot open picamera2 camera 0" in grabber.detail
        StandInPicamera2.fail_open = False
        capture = grabber.get(timeout=5.0)
    finally:
        grabber.stop()
    assert capture is not None and capture.frame.rgb.shape == (24, 32, 3)
    assert capture.display.shape == (48, 64, 3)
    assert StandInPicamera2.instances[-1].calls[-1] == "close"


def test_picamera2_not_installed_is_a_capture_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "picamera2", None)  # import fails, as off a Pi
    with pytest.raises(CaptureError, match="picamera2 is not installed"):
        Picamera2Camera().open()


def test_picamera2_on_a_pi_5_gives_lores_at_the_model_aspect_in_rgb(picamera2_standin, monkeypatch, caplog):
    monkeypatch.setattr(StandInPicamera2, "platform", types.SimpleNamespace(name="PISP"))
    cam = Picamera2Camera(width=640, height=480, lores_width=320, lores_height=240, model_aspect=(224, 224))
    with cam:
        rgb, _ = cam.read()
    config = StandInPicamera2.instances[-1].config
    assert config["lores"] == {"size": (240, 240), "format": "BGR888", "preserve_ar": True}
    assert rgb.shape == (240, 240, 3) and rgb.flags.c_contiguous  # square, as the model: no crop left to do
    assert np.abs(rgb[:, :100].reshape(-1, 3).mean(0) - COLOURS["b_green.png"]).max() < 2  # no conversion
    # A picamera2 that does not know the flag: the main stream's view in YUV420, as on a Pi 4.
    monkeypatch.setattr(StandInPicamera2, "knows_preserve_ar", False)
    with cam:
        rgb, _ = cam.read()
    assert StandInPicamera2.instances[-1].config["lores"] == {"size": (320, 240), "format": "YUV420"}
    assert rgb.shape == (240, 320, 3)
    assert "refused" in caplog.text


def test_picamera2_on_a_pi_4_keeps_lores_at_the_main_view(picamera2_standin):
    with Picamera2Camera(width=640, height=480, lores_width=320, lores_height=240, model_aspect=(224, 224)) as cam:
        assert cam.read()[0].shape == (240, 320, 3)  # VC4 crops both streams alike; the daemon crops
    assert StandInPicamera2.instances[-1].config["lores"] == {"size": (320, 240), "format": "YUV420"}


def test_aspect_within_keeps_even_sizes():
    assert aspect_within((320, 240), (224, 224)) == (240, 240)
    assert aspect_within((320, 240), (150, 200)) == (320, 240)
    assert aspect_within((320, 240), (300, 200)) == (160, 240)
    assert aspect_within((321, 241), (1, 3)) == (320, 106)


# --- in-memory replay ----------------------------------------------------------------


def test_memory_camera_replays_decoded_frames_without_copies(tmp_path):
    frames = np.stack([np.full((6, 8, 3), v, np.uint8) for v in (10, 20, 30)])
    cam = MemoryCamera(frames, loop=False)
    with cam:
        seen = []
        while (shot := cam.read()) is not None:
            rgb, display = shot
            assert display is rgb and np.shares_memory(rgb, frames) and not rgb.flags.writeable
            seen.append(int(rgb[0, 0, 0]))
    assert seen == [10, 20, 30]
    assert frames.flags.writeable  # the caller's array is left as it was
    path = tmp_path / "frames.npy"
    np.save(path, frames)
    with make_camera(CameraConfig(source="memory", path=str(path))) as looped:
        assert [int(looped.read()[0][0, 0, 0]) for _ in range(5)] == [10, 20, 30, 10, 20]


def test_memory_camera_refuses_what_is_not_frames(tmp_path):
    with pytest.raises(CaptureError, match=r"expected \(N, H, W, 3\) uint8"):
        MemoryCamera(np.zeros((6, 8, 3), np.uint8)).open()
    with pytest.raises(CaptureError, match="cannot read frames"):
        MemoryCamera(tmp_path / "none.npy").open()
    with pytest.raises(CaptureError, match="not open"):
        MemoryCamera(np.zeros((1, 2, 2, 3), np.uint8)).read()


class GatedMemoryCamera(MemoryCamera):
    """Reads the first ``free`` frames at once, then each read waits for the gate (a slow source)."""

    def __init__(self, frames, free: int):
        super().__init__(frames, loop=False)
        self.free, self.reads = free, 0
        self.gate = threading.Event()

    def read(self):
        self.reads += 1
        if self.reads > self.free:
            self.gate.wait(5.0)
        return super().read()


def test_full_speed_replay_reads_one_frame_ahead_and_drops_nothing():
    frames = np.stack([np.full((4, 4, 3), v, np.uint8) for v in range(6)])
    camera = GatedMemoryCamera(frames, free=2)
    grabber = FrameGrabber(camera, fps=0.0)
    grabber.start()
    try:
        first = grabber.get(timeout=5.0)
        # The third read (blocked at the gate) starts while frame 2 is still untaken: it was read ahead...
        assert wait_for(lambda: camera.reads >= 3, what="a read with frame 2 waiting")
        second = grabber.get(timeout=0)  # ...so it is there at once, with the capture thread stuck
        assert (first.frame.frame_id, second.frame.frame_id) == (1, 2)
        camera.gate.set()
        rest = [grabber.get(timeout=5.0) for _ in range(4)]
        assert [c.frame.frame_id for c in rest] == [3, 4, 5, 6]
        assert [int(c.frame.rgb[0, 0, 0]) for c in (first, second, *rest)] == list(range(6))
        assert grabber.dropped == 0
        assert grabber.get(timeout=0.5) is None and grabber.ended
    finally:
        camera.gate.set()
        grabber.stop()
