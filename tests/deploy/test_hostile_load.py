"""The running daemon (a real ``python -m device run``) under decompression bombs and idle sockets.

Memory is the kernel's high-water mark of the daemon process itself (VmHWM), read before and
after eight copies of each upload arrive at once. Before the decode budget one 6000x6000 PNG
(115 KB) took the daemon from 100 MB to 310 MB, and six at once to 1.24 GB; 100 idle TCP
connections stopped waitress accepting anything, /health included, for ~31 s.
"""
from __future__ import annotations

import math
import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from benchmarks.hostile import bombs
from benchmarks.memory import high_water_mark_kb
from device.config import HttpConfig
from tests.deploy.daemon_process import TIMEOUT, daemon_config

MB = 2**20
BUDGET_MB = HttpConfig.decode_memory_mb
CONCURRENCY = 8
# Python objects, response buffers, the upload bodies in flight: what the RSS may grow besides the budget.
SLACK_MB = 40


def png_just_under_budget() -> bytes:
    """The largest 8-bit RGB PNG the budget still decodes (each costs twice its 3 bytes a pixel)."""
    import cv2
    import numpy as np

    side = math.isqrt((int(BUDGET_MB * MB) - MB) // 6)
    img = np.zeros((side, side, 3), np.uint8)
    img[::50] = 200
    ok, buf = cv2.imencode(".png", img, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    assert ok
    return buf.tobytes()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory, tiny_model_dir, fixture_dir):
    from tests.deploy.daemon_process import DaemonProcess

    config = daemon_config(tiny_model_dir, fixture_dir / "images", device_id=f"hostile-{os.getpid()}")
    proc = DaemonProcess(tmp_path_factory.mktemp("hostile"), config).start()
    try:
        proc.wait_running()
        yield proc
    finally:
        proc.kill()


def peak_mb(daemon) -> float:
    return high_water_mark_kb(daemon.proc.pid) / 1024


def post_at_once(daemon, data: bytes, n: int = CONCURRENCY) -> list[requests.Response]:
    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(lambda _: daemon.post("/predict", files={"image": ("x", data)}), range(n)))


def test_bombs_and_images_at_the_budget_keep_the_daemon_within_it(daemon, fixture_dir):
    jpeg = min((fixture_dir / "images").iterdir()).read_bytes()
    assert all(r.status_code == 200 for r in post_at_once(daemon, jpeg))  # warm the ordinary path
    before = peak_mb(daemon)
    uploads = sorted(bombs(int(BUDGET_MB * MB)), key=lambda u: u.expected, reverse=True)  # refused first
    for upload in uploads:
        responses = post_at_once(daemon, upload.data)
        codes = {r.status_code for r in responses}
        if upload.expected == 422:
            assert codes == {422}, upload.name
            assert all("too large" in r.json()["error"] for r in responses)
            refused_peak = peak_mb(daemon)
        else:  # the baseline JPEG, decoded at 1/8 scale
            assert codes == {200}, upload.name
    at_budget = post_at_once(daemon, png_just_under_budget())
    codes = {r.status_code for r in at_budget}
    assert 200 in codes and codes <= {200, 503}  # 503: beyond the large-decode slots, try again
    after = peak_mb(daemon)
    print(f"daemon peak RSS: {before:.0f} MB before, {refused_peak:.0f} MB after the refused bombs, "
          f"{after:.0f} MB after the 6000x6000 JPEG and {CONCURRENCY} PNGs at the budget")
    assert refused_peak - before < SLACK_MB / 2, "a refused bomb must not be decoded"
    assert after - before < BUDGET_MB + SLACK_MB
    assert daemon.health()["status"] == "ok"


def test_200_idle_connections_do_not_make_health_wait(daemon):
    socks = [socket.create_connection(("127.0.0.1", daemon.port), timeout=5) for _ in range(200)]
    try:
        time.sleep(0.5)  # the server has accepted them all by now
        t0 = time.monotonic()
        response = requests.get(daemon.base + "/health", timeout=TIMEOUT)
        waited = time.monotonic() - t0
    finally:
        for sock in socks:
            sock.close()
    assert response.status_code == 200 and waited < 1.0, f"/health took {waited:.2f} s"


def test_idle_connections_beyond_the_limit_are_closed_after_the_idle_timeout(
    tiny_model_dir, fixture_dir, start_daemon
):
    limit, idle_s = 32, 2
    daemon = start_daemon(daemon_config(tiny_model_dir, fixture_dir / "images", device_id=f"idle-{os.getpid()}",
                                        http={"connection_limit": limit, "idle_timeout_s": idle_s}))
    daemon.wait_running()
    socks = [socket.create_connection(("127.0.0.1", daemon.port), timeout=5) for _ in range(limit + 20)]
    try:
        t0 = time.monotonic()
        response = requests.get(daemon.base + "/health", timeout=TIMEOUT)
        waited = time.monotonic() - t0
        closed = sum(1 for sock in socks if sock.recv(1) == b"")  # the server hung up on the idle ones
    finally:
        for sock in socks:
            sock.close()
    assert response.status_code == 200
    # over the limit nothing is accepted until the idle sweep (every idle_s / 2) closes them
    assert waited < idle_s * 2 + 1, f"/health took {waited:.2f} s"
    assert closed >= limit - 4
