"""The built browser app served by the device at /app/, over real HTTP (waitress on loopback)."""
from __future__ import annotations

import numpy as np
import pytest
import requests

from device import webapp
from device.api import create_app
from device.config import HttpConfig
from device.server import HttpServer
from device.state import LiveState

TIMEOUT = 30


@pytest.fixture
def served(tmp_path, monkeypatch):
    """A server whose web app folder is ``tmp_path / "dist"`` (created by each test as it needs)."""
    monkeypatch.setattr(webapp, "WEB_APP_DIR", tmp_path / "dist")

    def predict(rgb: np.ndarray):
        raise AssertionError("no upload in these tests")

    app = create_app(HttpConfig(host="127.0.0.1", port=0, token="secret"), LiveState("m"),
                     predict)
    server = HttpServer(app, "127.0.0.1", 0)
    server.start()
    yield f"http://127.0.0.1:{server.port}", tmp_path / "dist"
    server.stop()


def test_app_files_are_served_without_the_token(served):
    base, dist = served
    (dist / "wasm").mkdir(parents=True)
    (dist / "index.html").write_text("<!doctype html><title>DermEdge</title>")
    (dist / "wasm" / "runtime.wasm").write_bytes(b"\0asm\1\0\0\0")
    page = requests.get(f"{base}/app/", timeout=TIMEOUT)
    assert page.status_code == 200 and "DermEdge" in page.text
    assert page.headers["Content-Type"].startswith("text/html")
    wasm = requests.get(f"{base}/app/wasm/runtime.wasm", timeout=TIMEOUT)
    assert wasm.status_code == 200 and wasm.content == b"\0asm\1\0\0\0"
    assert wasm.headers["Content-Type"] == "application/wasm"  # streaming compilation needs it
    assert requests.get(f"{base}/latest", timeout=TIMEOUT).status_code == 401  # the rest stays guarded


def test_paths_outside_the_folder_and_missing_files_are_404(served):
    base, dist = served
    dist.mkdir()
    (dist / "index.html").write_text("ok")
    (dist.parent / "secret.txt").write_text("not for the web")
    # requests folds "/app/../x" to "/x", an unknown route behind the token (401)
    for path, status in (("/app/../secret.txt", 401), ("/app/%2e%2e/secret.txt", 404), ("/app/nope.js", 404)):
        response = requests.get(base + path, timeout=TIMEOUT)
        assert response.status_code == status, path
        assert "not for the web" not in response.text


def test_unbuilt_app_says_how_to_build_it(served):
    base, dist = served
    response = requests.get(f"{base}/app/", timeout=TIMEOUT)
    assert response.status_code == 404
    assert "make web" in response.json()["error"]
    assert str(dist.parent) not in response.text and "/" not in response.json()["error"]  # a public route: no paths
