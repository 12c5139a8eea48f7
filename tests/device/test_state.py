"""device.state.LiveState: latest result and frame, fps window, health, Prometheus metrics."""

from __future__ import annotations

import threading
import types

import cv2
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

import device.state as state_module
from device.state import LATENCY_BUCKETS, LiveState


class FakeClock:
    """Stands in for time.monotonic inside device.state, so fps is exact."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(state_module, "time", types.SimpleNamespace(monotonic=fake.monotonic))
    return fake


def overlay(h: int = 48, w: int = 64) -> np.ndarray:
    """A frame with a red left half and a blue right half (RGB)."""
    rgb = np.zeros((h, w, 3), np.uint8)
    rgb[:, : w // 2] = (255, 0, 0)
    rgb[:, w // 2 :] = (0, 0, 255)
    return rgb


def metrics(state: LiveState) -> dict:
    return {family.name: family for family in text_string_to_metric_families(state.metrics_text())}


def sample(families: dict, name: str, **labels) -> float:
    for family in families.values():
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    raise KeyError(f"{name} {labels}")


def test_empty_state():
    state = LiveState("m")
    assert state.latest() is None
    assert state.latest_jpeg() is None
    assert state.wait_jpeg(0, timeout=0.01) == (0, None)
    health = state.health()
    assert health["status"] == "ok"
    assert health["model"] == "m"
    assert health["frames"] == 0 and health["fps"] == 0.0
    assert health["last_frame_age_s"] is None
    assert {health["camera"], health["mqtt"], health["inference"]} == {"unknown"}


def test_publish_frame_stores_result_and_encodes_overlay_as_rgb_jpeg(make_result):
    state = LiveState("m")
    result = make_result("mel", frame_id=7)
    state.publish_frame(result, overlay())
    assert state.latest() is result
    jpeg = state.latest_jpeg()
    assert jpeg[:2] == b"\xff\xd8"
    decoded = cv2.cvtColor(cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    assert decoded.shape == (48, 64, 3)
    # colour order survives the round trip: red stays red, blue stays blue
    assert decoded[24, 8, 0] > 200 and decoded[24, 8, 2] < 60
    assert decoded[24, 56, 2] > 200 and decoded[24, 56, 0] < 60
    assert state.latest_jpeg() is jpeg  # encoded once per frame, shared by every reader


def test_new_frame_replaces_cached_jpeg(make_result):
    state = LiveState("m")
    state.publish_frame(make_result(), overlay(48, 64))
    first = state.latest_jpeg()
    state.publish_frame(make_result(frame_id=2), overlay(30, 40))
    second = state.latest_jpeg()
    assert second != first
    assert cv2.imdecode(np.frombuffer(second, np.uint8), cv2.IMREAD_COLOR).shape == (30, 40, 3)


def test_wait_jpeg_wakes_on_new_frame(make_result):
    state = LiveState("m")
    got = []
    waiter = threading.Thread(target=lambda: got.append(state.wait_jpeg(0, timeout=10)))
    waiter.start()
    state.publish_frame(make_result(), overlay())
    waiter.join(10)
    assert not waiter.is_alive()
    seq, jpeg = got[0]
    assert seq == 1 and jpeg == state.latest_jpeg()
    assert state.wait_jpeg(seq, timeout=0.01) == (seq, None)  # nothing newer yet


def test_fps_over_sliding_window_and_zero_when_stalled(clock, make_result):
    state = LiveState("m", fps_window=10, fps_max_age_s=5.0)
    for _ in range(20):
        state.publish_frame(make_result(), overlay())
        clock.now += 0.25
    assert state.fps == pytest.approx(4.0)
    for _ in range(10):  # faster frames fill the window, the old rate is forgotten
        state.publish_frame(make_result(), overlay())
        clock.now += 0.1
    assert state.fps == pytest.approx(10.0)
    clock.now += 6.0
    assert state.fps == 0.0
    assert state.health()["last_frame_age_s"] == pytest.approx(6.1)


def test_health_degraded_by_a_bad_component():
    state = LiveState("m")
    state.set_component("camera", "ok")
    state.set_component("mqtt", "connected")
    state.set_component("inference", "ok")
    assert state.health()["status"] == "ok"
    state.set_component("camera", "degraded", "read failed; retrying in 2.0 s")
    health = state.health()
    assert health["status"] == "degraded"
    assert health["camera"] == "degraded"
    assert health["details"]["camera"] == "read failed; retrying in 2.0 s"
    state.set_component("camera", "ok")
    state.set_component("inference", "stalled")
    assert state.health()["status"] == "degraded"


def test_metrics_parse_as_prometheus_text(clock, make_result):
    state = LiveState('model "x"\\1')  # label escaping
    for i, ms in enumerate((3.0, 30.0, 300.0, 3000.0)):
        state.publish_frame(make_result(frame_id=i, latency_ms=ms), overlay())
        clock.now += 0.5
    state.count_dropped(5)
    state.count_error("camera_read")
    state.count_error("camera_read")
    state.count_error("mqtt_publish")
    state.count_request("/predict", 200)
    state.count_request("/predict", 400)
    state.count_request("/predict", 400)
    state.set_component("camera", "ok")

    families = metrics(state)
    assert sample(families, "dermedge_up") == 1
    assert sample(families, "dermedge_info", model='model "x"\\1') == 1
    assert sample(families, "dermedge_frames_total") == 4
    assert sample(families, "dermedge_fps") == pytest.approx(2.0)
    assert sample(families, "dermedge_dropped_frames_total") == 5
    assert sample(families, "dermedge_errors_total", kind="camera_read") == 2
    assert sample(families, "dermedge_errors_total", kind="mqtt_publish") == 1
    assert sample(families, "dermedge_http_requests_total", route="/predict", code="400") == 2
    assert families["dermedge_latency_seconds"].type == "histogram"
    # total latencies 3 ms, 30 ms, 300 ms, 3 s: cumulative buckets
    assert sample(families, "dermedge_latency_seconds_bucket", stage="total", le="0.005") == 1
    assert sample(families, "dermedge_latency_seconds_bucket", stage="total", le="0.05") == 2
    assert sample(families, "dermedge_latency_seconds_bucket", stage="total", le="0.5") == 3
    assert sample(families, "dermedge_latency_seconds_bucket", stage="total", le="+Inf") == 4
    assert sample(families, "dermedge_latency_seconds_count", stage="total") == 4
    assert sample(families, "dermedge_latency_seconds_sum", stage="total") == pytest.approx(3.333)
    buckets = [
        s
        for s in families["dermedge_latency_seconds"].samples
        if s.name.endswith("_bucket") and s.labels["stage"] == "inference"
    ]
    assert len(buckets) == len(LATENCY_BUCKETS) + 1

    state.set_component("camera", "degraded")
    assert sample(metrics(state), "dermedge_up") == 0


def test_concurrent_writers_and_readers(make_result):
    state = LiveState("m")
    errors = []

    def write():
        for i in range(200):
            state.publish_frame(make_result(frame_id=i), overlay())
            state.count_dropped(1)

    def read():
        try:
            for _ in range(100):
                state.latest_jpeg()
                state.health()
                state.metrics_text()
        except Exception as err:  # noqa: BLE001 - any failure is the finding
            errors.append(err)

    threads = [threading.Thread(target=write) for _ in range(2)] + [
        threading.Thread(target=read) for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    assert state.health()["frames"] == 400
    assert sample(metrics(state), "dermedge_dropped_frames_total") == 400


def test_frame_budget_in_metrics_as_a_prometheus_summary(make_result):
    state = LiveState("m")
    state.stages.add("infer", 0.004)
    state.stages.add("infer", 0.006)
    state.stages.add("quality", 0.0005)
    families = metrics(state)
    assert families["dermedge_stage_seconds"].type == "summary"
    assert sample(families, "dermedge_stage_seconds_count", stage="infer") == 2
    assert sample(families, "dermedge_stage_seconds_sum", stage="infer") == pytest.approx(0.010)
    assert sample(families, "dermedge_stage_max_seconds", stage="infer") == pytest.approx(0.006)
    assert sample(families, "dermedge_stage_seconds_count", stage="quality") == 1
    # every stage is exported from the start, so a scraper sees zeros rather than gaps
    assert sample(families, "dermedge_stage_seconds_count", stage="jpeg") == 0
    with pytest.raises(KeyError):
        state.stages.add("no such stage", 1.0)


def test_a_bare_frame_is_drawn_and_encoded_only_when_someone_asks(make_result):
    state = LiveState("m")
    bare = np.full((120, 160, 3), 40, np.uint8)
    for i in range(5):
        state.publish_frame(make_result(frame_id=i), bare, overlaid=False)
    budget = state.stages.snapshot()
    assert budget["overlay"][0] == 0 and budget["jpeg"][0] == 0  # nobody watched: no work
    jpeg = state.latest_jpeg()
    assert state.latest_jpeg() is jpeg  # one drawing and one encoding per frame, however many ask
    budget = state.stages.snapshot()
    assert budget["overlay"][0] == 1 and budget["jpeg"][0] == 1
    shown = cv2.cvtColor(cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    assert shown.shape == bare.shape
    assert np.abs(shown.astype(int) - 40).max() > 100  # the overlay's panel and text are on it
    assert (bare == 40).all()  # drawn on a copy: the camera's frame is untouched
