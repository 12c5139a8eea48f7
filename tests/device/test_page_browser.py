"""The page in a real browser: Debian's headless Chromium, driven by playwright-core
(tests/browser/check_page.mjs), against the real daemon process on a folder replay.

``.ci/run`` installs Chromium and Node, and the ``web_deps`` fixture the playwright-core that
web/package-lock.json pins, so these tests run there; they fail (not skip) when a piece is
missing, naming the command that installs it.
``DERMEDGE_SCREENSHOT=docs/device-page.png`` (``make screenshot``) also keeps the page's picture.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import requests

from tests.deploy.daemon_process import REPO, DaemonProcess, daemon_config

SCRIPT = REPO / "tests" / "browser" / "check_page.mjs"
TOKEN = "browser-test-token-0123456789"
IMAGE = "ISIC_0024475.jpg"


def chromium() -> str:
    path = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).is_file():
        pytest.fail("Chromium is not installed: apt-get install chromium (.ci/run does it)")
    return path


def run_page_check(options: dict) -> dict:
    node = shutil.which("node")
    if node is None:
        pytest.fail("Node.js is not installed: apt-get install nodejs npm (.ci/run does it)")
    proc = subprocess.run([node, str(SCRIPT), json.dumps({"chromium": chromium(), **options})], cwd=REPO,
                          capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["ok"], report.get("error")
    return report


def start(tmp_path: Path, model: Path, images: Path, **http) -> DaemonProcess:
    config = daemon_config(model, images, device_id="browser-test", http=http,
                           captures={"dir": str(tmp_path / "captures"), "min_free_mb": 0.0})
    daemon = DaemonProcess(tmp_path, config).start()
    daemon.wait_running()
    return daemon


def test_the_page_in_chromium_with_a_token(tmp_path, default_model_dir, fixture_dir, web_deps):
    daemon = start(tmp_path, default_model_dir, fixture_dir / "images", token=TOKEN)
    screenshot = Path(os.environ.get("DERMEDGE_SCREENSHOT") or tmp_path / "page.png")
    try:
        report = run_page_check({"base": daemon.base, "token": TOKEN, "wrong_token": "not-the-token",
                                 "image": str(fixture_dir / "images" / IMAGE), "screenshot": str(screenshot)})
        expected_upload = daemon.post("/predict", files={"image": (IMAGE, (fixture_dir / "images" / IMAGE)
                                                                   .read_bytes())}).json()
    finally:
        daemon.stop()

    assert report["console_errors"] == [] and report["page_errors"] == []
    assert report["requests_elsewhere"] == []  # nothing but the device itself
    assert "default-src 'none'" in report["csp"]
    assert "not a diagnosis" in report["disclaimer_on_load"]
    assert report["disclaimers_visible"] == 1  # said once, in the header that stays in view
    # token flow: asked once, a wrong token is refused and the app stays hidden, the right one works
    assert report["login_shown"] and report["app_hidden_before_login"]
    assert report["wrong_token_message"] == "Wrong token." and report["app_hidden_after_wrong_token"]
    assert all("401" in e for e in report["console_errors_after_wrong_token"])  # only the refusals
    assert TOKEN not in report["url"] and "token" not in report["url"]
    session = [c for c in report["cookies"] if c["name"] == "dermedge_session"]
    assert session == [{"name": "dermedge_session", "httpOnly": True, "sameSite": "Strict"}]
    assert "dermedge_session" not in report["document_cookie"]  # HttpOnly: scripts cannot read it
    assert report["after_logout_latest_status"] == 401
    # the live result fills in and keeps moving; the picture beside it is always its own frame
    assert report["latest_frames"][1] > report["latest_frames"][0]
    assert "source ISIC_" in report["latest_text"]
    assert report["latest_bars"] in (0, 3)  # bars only where the result shows a class
    assert report["stream_size"][0] > 0 and report["stream_size"][1] > 0
    assert all(a == b for a, b in report["frame_pairs"]), report["frame_pairs"]
    assert len({a for a, _ in report["frame_pairs"]}) > 1  # and it moved while we looked
    for component in ("Camera\tok", "Inference\tok", "MQTT\tdisabled"):
        assert component in report["health_text"].replace("\n", "\t")
    assert "Intended use" in report["model_text"] and "Limitations" in report["model_text"]
    assert "Referral rule" in report["model_text"]
    # the upload is classified as the API classifies it, with the referral advice when it refers
    assert expected_upload["class_name"] in report["upload_text"]
    assert f"{100 * expected_upload['confidence']:.1f}%" in report["upload_text"]
    assert ("See a dermatologist: this lesion" in report["upload_text"]) is expected_upload["refer"]
    assert report["capture_status"].startswith("Saved ") and report["captures_listed"] == 1
    saved_frame = int(report["capture_status"].rsplit("-", 1)[1])  # capture ids end in the frame id
    assert report["capture_frames"][0] <= saved_frame <= report["capture_frames"][1]
    assert screenshot.stat().st_size > 20_000


def test_the_page_on_a_phone_without_a_token(tmp_path, fixture_dir, web_deps):
    daemon = start(tmp_path, REPO / "experiments" / "dermnet-edge", fixture_dir / "images")
    try:
        assert requests.get(daemon.base + "/session", timeout=10).json()["signed_in"] is True
        report = run_page_check({"base": daemon.base, "image": str(fixture_dir / "images" / IMAGE),
                                 "viewport": {"width": 390, "height": 844}})
    finally:
        daemon.stop()
    assert report["console_errors"] == [] and report["page_errors"] == []
    assert report["latest_frames"][1] > report["latest_frames"][0]
    assert "Referral rule" not in report["model_text"]  # the shipped card has none
    assert report["upload_text"] and report["captures_listed"] == 1
