"""The decode plan (device.decode.plan_decode) and the shared decode budget (device.limits).

The memory each plan promises is checked against what the decoder really takes in
tests/deploy/test_memory_budget.py, on the running daemon.
"""
from __future__ import annotations

import threading
import time

import cv2
import numpy as np
import pytest

from device.decode import (
    MAX_JPEG_SCANS,
    MIN_DECODE_SIDE,
    ImageDecodeError,
    ImageTooLarge,
    ImageTooSlow,
    decode_image,
    decode_planned,
    plan_decode,
)
from device.limits import DecodeBudget, DecoderBusy
from tests.helpers import scan_bomb

MB = 2**20


def encode(img: np.ndarray, ext: str, params: tuple[int, ...] = ()) -> bytes:
    ok, buf = cv2.imencode(ext, img, list(params))
    assert ok
    return buf.tobytes()


def grid(h: int, w: int, channels: int = 3, dtype=np.uint8) -> np.ndarray:
    img = np.zeros((h, w, channels), dtype)
    img[::37] = 100
    img[:, ::41] = 200
    return img


def all_given_back(budget: DecodeBudget) -> bool:
    """Every reservation was given back: the whole budget can be held (DecoderBusy after the wait if not)."""
    with budget.reserve(budget.total_bytes):
        return True


def test_a_6000x6000_png_is_planned_at_full_size_and_costs_what_it_decodes_to():
    plan = plan_decode(encode(grid(6000, 6000), ".png", (cv2.IMWRITE_PNG_COMPRESSION, 1)))
    assert (plan.format, plan.width, plan.height, plan.reduce) == ("PNG", 6000, 6000, 1)
    assert 200 * MB < plan.cost_bytes < 215 * MB  # twice the 103 MB array, as measured


@pytest.mark.parametrize(("side", "reduce"), [(400, 1), (959, 1), (960, 2), (2000, 4), (6000, 8)])
def test_big_jpegs_are_decoded_at_reduced_scale_keeping_the_short_side(side, reduce):
    data = encode(grid(side, side * 4 // 3), ".jpg")
    plan = plan_decode(data)
    assert plan.reduce == reduce
    rgb = decode_planned(data, plan)
    assert min(rgb.shape[:2]) == min(side // reduce, MIN_DECODE_SIDE)


def test_a_reduced_jpeg_gives_the_same_picture_as_a_full_decode(fixture_dir):
    img = cv2.resize(cv2.imread(str(min((fixture_dir / "images").iterdir()))), (2400, 1800))
    data = encode(img, ".jpg", (cv2.IMWRITE_JPEG_QUALITY, 95))
    reduced = decode_image(data)
    full = cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    full = cv2.resize(full, reduced.shape[1::-1], interpolation=cv2.INTER_AREA)
    assert np.abs(reduced.astype(int) - full).mean() < 3


def test_progressive_jpegs_count_the_whole_image_coefficient_buffer():
    img = grid(4000, 4000)
    baseline = plan_decode(encode(img, ".jpg"))
    progressive = plan_decode(encode(img, ".jpg", (cv2.IMWRITE_JPEG_PROGRESSIVE, 1)))
    assert baseline.reduce == progressive.reduce == 8
    assert baseline.cost_bytes < 4 * MB
    # 4:2:0: 1.5 samples per pixel at 2 bytes each, however small the output
    assert 45 * MB < progressive.cost_bytes - baseline.cost_bytes < 50 * MB


@pytest.mark.parametrize(
    ("img", "ext", "per_pixel"),
    [
        (grid(1000, 1000, 1), ".png", 2),
        (grid(1000, 1000, 4, np.uint16), ".png", 16),
        (grid(1000, 1000), ".webp", 6),
        (grid(1000, 1000, 4), ".bmp", 8),
    ],
    ids=["grey-png", "rgba16-png", "lossy-webp", "bgra-bmp"],
)
def test_other_formats_cost_twice_their_decoded_array(img, ext, per_pixel):
    plan = plan_decode(encode(img, ext))
    assert plan.cost_bytes == per_pixel * 1000 * 1000 + MB


def test_decoded_uploads_are_scaled_down_to_what_the_model_can_use():
    rgb = decode_image(encode(grid(1500, 2000, 4, np.uint16), ".png"))
    assert rgb.shape == (MIN_DECODE_SIDE, 640, 3) and rgb.dtype == np.uint8


def test_files_over_the_pixel_limit_are_refused_from_the_header():
    data = encode(grid(8, 8), ".png")
    bomb = data[:16] + (7000).to_bytes(4, "big") + (6000).to_bytes(4, "big") + data[24:]  # IHDR says 7000x6000
    with pytest.raises(ImageTooLarge, match=r"7000x6000 pixels \(limit 40000000\)"):
        decode_image(bomb)


def test_an_image_over_the_whole_budget_is_refused_before_decoding():
    budget = DecodeBudget(64 * MB)
    bomb = encode(grid(6000, 6000), ".png", (cv2.IMWRITE_PNG_COMPRESSION, 1))
    with pytest.raises(ImageTooLarge, match=r"6000x6000 PNG .* more than the decode budget \(http.decode_memory_mb\) 64 MB"):
        budget.decode(bomb)
    assert all_given_back(budget)


def test_decodes_wait_while_others_hold_the_budget_then_proceed():
    budget = DecodeBudget(100 * MB, wait_s=5)
    holding, release, order = threading.Event(), threading.Event(), []

    def first():
        with budget.reserve(70 * MB):
            holding.set()
            release.wait(5)
            order.append("first done")

    def second():
        holding.wait(5)
        with budget.reserve(70 * MB):  # 140 MB would be over: waits for the first
            order.append("second in")

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    holding.wait(5)
    time.sleep(0.3)
    assert order == []
    release.set()
    for t in threads:
        t.join(5)
    assert order == ["first done", "second in"] and all_given_back(budget)


def test_small_decodes_share_the_budget_side_by_side():
    budget = DecodeBudget(100 * MB, wait_s=0.1)
    with (budget.reserve(30 * MB), budget.reserve(30 * MB), budget.reserve(30 * MB),  # 90 MB of 100 held
          pytest.raises(DecoderBusy, match="try again"), budget.reserve(30 * MB)):
        pass
    assert all_given_back(budget)


def test_a_failed_decode_gives_its_reservation_back():
    budget = DecodeBudget(64 * MB)
    truncated = encode(grid(1000, 1000), ".png")[:400]
    with pytest.raises(ImageDecodeError):
        budget.decode(truncated)
    assert all_given_back(budget)


def test_large_decodes_beyond_the_slots_are_turned_away_at_once_small_ones_wait():
    budget = DecodeBudget(64 * MB, max_decodes=2, wait_s=10)
    large = encode(grid(2600, 2600), ".png", (cv2.IMWRITE_PNG_COMPRESSION, 1))  # ~40 MB: over 64 / 2
    small = encode(grid(450, 600), ".jpg")
    assert plan_decode(large).cost_bytes > 32 * MB > plan_decode(small).cost_bytes
    results: list = []
    with budget.reserve(63 * MB):  # the memory is taken: the large decodes hold their slots waiting
        waiting = [threading.Thread(target=lambda: results.append(budget.decode(large).shape)) for _ in range(2)]
        waiting.append(threading.Thread(target=lambda: results.append(budget.decode(small).shape)))
        for t in waiting:
            t.start()
        time.sleep(0.5)
        t0 = time.monotonic()
        with pytest.raises(DecoderBusy, match="2 large images are being decoded already"):
            budget.decode(large)
        assert time.monotonic() - t0 < 0.2 and results == []
    for t in waiting:
        t.join(10)
    assert sorted(results) == [(450, 600, 3), (480, 480, 3), (480, 480, 3)] and all_given_back(budget)


# --- time: repeated progressive scans ---------------------------------------------------------------


def test_an_ordinary_progressive_jpeg_visits_about_five_passes_of_blocks():
    plan = plan_decode(scan_bomb(2000, 2000, 0))  # libjpeg's 10 scans, 4:2:0
    blocks = 2000 * 2000 * 3 // 2 // 64
    assert plan.scan_blocks == pytest.approx(5.33 * blocks, rel=0.01)
    assert decode_image(scan_bomb(2000, 2000, 0)).shape == (MIN_DECODE_SIDE, MIN_DECODE_SIDE, 3)


def test_a_repeated_scan_is_refused_from_its_headers_before_decoding():
    # 150 more passes over a 2000x2000 image: about a second to decode here, refused in milliseconds
    bomb = scan_bomb(2000, 2000, 150)
    budget = DecodeBudget(64 * MB)
    started = time.perf_counter()
    with pytest.raises(ImageTooSlow, match=r"image too slow to decode: its scans visit 9,875,000 8x8 blocks"):
        budget.decode(bomb)
    assert time.perf_counter() - started < 0.5
    assert all_given_back(budget)
    with pytest.raises(ImageTooSlow, match="limit for image files"):  # files (CLI, folder camera) too
        decode_image(scan_bomb(2000, 2000, 600))


def test_more_scans_than_any_encoder_writes_are_refused_even_on_a_tiny_image():
    with pytest.raises(ImageTooSlow, match=f"more than {MAX_JPEG_SCANS} scans"):
        plan_decode(scan_bomb(64, 64, MAX_JPEG_SCANS))
    assert plan_decode(scan_bomb(64, 64, MAX_JPEG_SCANS - 10)).scan_blocks > 0  # 1000 scans are still fine


def test_the_scan_allowance_grows_with_the_memory_budget():
    bomb = scan_bomb(2000, 2000, 150)
    assert DecodeBudget(128 * MB).decode(bomb).shape == (MIN_DECODE_SIDE, MIN_DECODE_SIDE, 3)
