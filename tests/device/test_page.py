"""The page at / and its routes, and case captures, over HTTP against the real daemon process
(``python -m device run``, waitress, the shipped model with a test referral rule, folder replay)."""
from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import requests

from device.api import create_app
from device.auth import SESSION_COOKIE
from device.captures import CaptureStore
from device.card import ModelCard
from device.config import CapturesConfig, HttpConfig
from device.page import CSP, Page
from device.server import HttpServer
from device.state import LiveState
from tests.deploy.daemon_process import DaemonProcess, daemon_config, wait_for

TOKEN = "page-test-token-0123456789"


@pytest.fixture
def daemon(tmp_path, default_model_dir, fixture_dir):
    """A running daemon with a token, captures in tmp_path/captures (at most 3)."""
    config = daemon_config(default_model_dir, fixture_dir / "images", device_id="page-test",
                           http={"token": TOKEN, "trusted_proxies": ["127.0.0.1"]},  # as behind install.sh --tls
                           captures={"dir": str(tmp_path / "captures"), "max_count": 3, "min_free_mb": 0.0})
    process = DaemonProcess(tmp_path, config).start()
    process.wait_running()
    yield process
    process.stop()


def signed_in(daemon: DaemonProcess) -> requests.Session:
    session = requests.Session()
    response = session.post(daemon.base + "/login", json={"token": TOKEN}, timeout=10)
    assert response.status_code == 200, response.text
    return session


def test_page_is_served_with_a_strict_csp_and_loads_nothing_from_elsewhere(daemon):
    page = requests.get(daemon.base + "/", timeout=10)  # no token: the page must load to ask for it
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert page.headers["Content-Security-Policy"] == CSP and "default-src 'none'" in CSP
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    assert "Screening aid, not a diagnosis" in page.text
    refs = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert refs and all(ref.startswith("/assets/") for ref in refs)  # no CDN, fonts or other hosts
    for ref in refs:
        asset = requests.get(daemon.base + ref, timeout=10)
        assert asset.status_code == 200 and asset.content, ref
        text = asset.text.replace('xmlns="http://www.w3.org/2000/svg"', "")  # a namespace, not a fetch
        assert "http://" not in text and "https://" not in text and "//" + "cdn" not in text, ref
    for probe in ("/assets/..%2Fweb.py", "/assets/index.html", "/assets/%2e%2e%2fcard.py"):  # only named assets
        response = requests.get(daemon.base + probe, headers=daemon.headers(), timeout=10)
        assert response.status_code == 404 and "error" in response.json(), probe


def test_token_login_sets_an_httponly_strict_cookie_that_works_like_the_bearer_header(daemon):
    anonymous = requests.Session()
    assert anonymous.get(daemon.base + "/session", timeout=10).json() == {"token_required": True, "signed_in": False}
    assert anonymous.get(daemon.base + "/latest", timeout=10).status_code == 401
    wrong = anonymous.post(daemon.base + "/login", json={"token": "nope"}, timeout=10)
    assert wrong.status_code == 401 and wrong.json() == {"error": "wrong token"}
    assert SESSION_COOKIE not in wrong.headers.get("Set-Cookie", "")
    assert anonymous.post(daemon.base + "/login", data="token=" + TOKEN, timeout=10).status_code == 400

    response = anonymous.post(daemon.base + "/login", json={"token": TOKEN}, timeout=10)
    cookie = response.headers["Set-Cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}=") and TOKEN not in cookie
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    assert "Secure" not in cookie  # plain HTTP: a Secure cookie would never come back
    behind_tls = requests.post(daemon.base + "/login", json={"token": TOKEN}, timeout=10,
                               headers={"X-Forwarded-Proto": "https"})  # as install.sh --tls's nginx
    assert "; Secure" in behind_tls.headers["Set-Cookie"]  # believed from http.trusted_proxies only
    assert anonymous.get(daemon.base + "/session", timeout=10).json()["signed_in"] is True
    latest = anonymous.get(daemon.base + "/latest", timeout=10)
    assert latest.status_code == 200 and latest.json()["source"].endswith(".jpg")
    assert requests.get(daemon.base + "/latest", cookies={SESSION_COOKIE: "forged"}, timeout=10).status_code == 401
    assert daemon.get("/latest").status_code == 200  # the Bearer header still works

    anonymous.post(daemon.base + "/logout", timeout=10)
    assert anonymous.get(daemon.base + "/latest", timeout=10).status_code == 401
    stale = requests.get(daemon.base + "/latest", cookies={SESSION_COOKIE: cookie.split(";")[0].split("=", 1)[1]},
                         timeout=10)
    assert stale.status_code == 401  # a signed-out session is gone on the server too


def test_sign_in_guesses_are_counted_with_the_bearer_header(daemon):
    limit = HttpConfig().wrong_tokens_per_minute  # the daemon runs with the default
    for _ in range(limit - 1):
        assert requests.post(daemon.base + "/login", json={"token": "guess"}, timeout=10).status_code == 401
    assert requests.get(daemon.base + "/latest", headers={"Authorization": "Bearer guess"}, timeout=10).status_code == 401
    for token in ("guess", TOKEN):  # the count is full: even the right token waits a minute
        refused = requests.post(daemon.base + "/login", json={"token": token}, timeout=10)
        assert refused.status_code == 429 and int(refused.headers["Retry-After"]) > 0, refused.text
        assert SESSION_COOKIE not in refused.headers.get("Set-Cookie", "")


def test_model_card_summary_and_referral_in_results(daemon, default_model_dir):
    session = signed_in(daemon)
    card = session.get(daemon.base + "/model", timeout=10).json()
    shipped = json.loads((default_model_dir / "card.json").read_text())
    assert card["name"] == shipped["name"]
    assert card["metrics"]["balanced_accuracy"] == shipped["metrics"]["int8"]["balanced_accuracy"]
    assert card["test_images"] == sum(shipped["split"]["counts"]["test"].values())
    assert card["intended_use"] and card["limitations"]
    threshold = shipped["referral"]["threshold"]
    assert card["referral"]["threshold"] == threshold and "not a diagnosis" in card["disclaimer"]

    def referral_seen():
        result = session.get(daemon.base + "/latest", timeout=10).json()
        return result if result["refer"] is not None else None

    result = wait_for(referral_seen, 20, "a result with a referral decision")
    score = sum(result["all_probabilities"][c] for c in ("akiec", "bcc", "mel"))
    assert result["referral"]["score"] == pytest.approx(score, abs=1e-5)
    assert result["refer"] is (result["referral"]["score"] >= threshold)
    assert result["referral"]["advice"].startswith("See a dermatologist")


def test_captures_end_to_end_with_retention_and_safe_ids(daemon, tmp_path):
    session = signed_in(daemon)
    assert requests.post(daemon.base + "/capture", timeout=10).status_code == 401
    saved = []
    for _ in range(4):
        before = daemon.health()["frames"]
        wait_for(lambda b=before: daemon.health()["frames"] > b, 10, "a new frame")
        response = session.post(daemon.base + "/capture", timeout=10)
        assert response.status_code == 201, response.text
        saved.append(response.json())
    ids = [c["id"] for c in saved]
    assert len(set(ids)) == 4 and all(re.fullmatch(r"\d{8}T\d{9}Z-\d+(-\d+)?", i) for i in ids)

    listing = session.get(daemon.base + "/captures", timeout=10).json()
    assert [c["id"] for c in listing["captures"]] == ids[::-1][:3]  # newest first, the oldest deleted
    assert sorted(p.name for p in (tmp_path / "captures").iterdir()) == sorted(
        f"{i}.{kind}" for i in ids[1:] for kind in ("jpg", "json"))
    assert session.get(daemon.base + f"/captures/{ids[0]}.jpg", timeout=10).status_code == 404

    newest = saved[-1]
    image = session.get(daemon.base + newest["image"], timeout=10)
    assert image.status_code == 200 and image.headers["Content-Type"] == "image/jpeg"
    frame = cv2.imdecode(np.frombuffer(image.content, np.uint8), cv2.IMREAD_COLOR)
    sidecar = session.get(daemon.base + newest["sidecar"], timeout=10).json()
    assert frame.shape[:2] == (sidecar["image"]["height"], sidecar["image"]["width"])
    assert sidecar["id"] == newest["id"] and sidecar["device_id"] == "page-test"
    shipped = json.loads(Path(daemon.config["model"]["dir"], "card.json").read_text())
    assert sidecar["model"] == {"name": shipped["name"], "file": shipped["model_file"]["path"],
                                "sha256": shipped["model_file"]["sha256"], "dir": daemon.config["model"]["dir"]}
    assert sidecar["result"]["source"] == newest["source"] and sidecar["result"]["refer"] is not None
    assert sidecar["settings"]["camera"]["source"] == "folder" and "min_confidence" in sidecar["settings"]["postprocess"]
    assert "not a diagnosis" in sidecar["disclaimer"]

    for bad in ("..%2F..%2Fdevice%2Fconfig", "%2e%2e", "x" * 30, f"{ids[-1]}%00", "../../etc/passwd"):
        for kind in ("jpg", "json"):
            response = session.get(daemon.base + f"/captures/{bad}.{kind}", timeout=10)
            assert response.status_code == 404 and response.headers["Content-Type"] == "application/json", bad


def test_every_route_but_the_public_ones_needs_the_token_or_a_session(tmp_path):
    """Walks the app's own route table, so a route added later cannot be left open by mistake."""
    card = ModelCard.load(Path(__file__).parents[2] / "experiments" / "dermnet-edge" / "card.json")
    store = CaptureStore(CapturesConfig(dir=str(tmp_path), min_free_mb=0.0))
    page = Page(card=lambda: card, captures=store, save_capture=lambda frame_id=None: None, view=lambda a, t: (0, None, None))
    app = create_app(HttpConfig(port=0, token=TOKEN), LiveState("m"), lambda rgb: None, page=page)
    server = HttpServer(app, "127.0.0.1", 0)
    server.start()
    public = {"/health", "/", "/assets/<name>", "/session", "/login", "/logout",
              "/app/", "/app/<path:name>"}  # the browser app (device/webapp.py): code and model only
    try:
        base = f"http://127.0.0.1:{server.port}"
        rules = [r for r in app.url_map.iter_rules() if r.endpoint != "static"]
        assert {r.rule for r in rules} >= public | {"/capture", "/captures", "/model", "/latest", "/view"}
        for rule in rules:
            path = (rule.rule.replace("<path:name>", "index.html").replace("<name>", "style.css")
                    .replace("<capture_id>", "20260101T000000000Z-1"))
            for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
                response = requests.request(method, base + path, timeout=10)
                if rule.rule in public:
                    assert response.status_code != 401, (method, path)
                else:
                    assert response.status_code == 401, (method, path)
    finally:
        server.stop()


# --- one object from frame to screen: the live view's frame, its result and a capture of it -------


def test_the_live_view_is_a_frame_with_its_own_result_and_a_capture_saves_that_frame(daemon, tmp_path):
    session = signed_in(daemon)
    assert requests.get(daemon.base + "/view", timeout=10).status_code == 401
    assert session.get(daemon.base + "/view?after=x", timeout=10).status_code == 400
    first = session.get(daemon.base + "/view?after=-1", timeout=10).json()
    later = session.get(daemon.base + f"/view?after={first['seq']}", timeout=10).json()  # waits for a newer one
    assert later["seq"] > first["seq"] and later["result"]["frame_id"] > first["result"]["frame_id"]
    # the picture is the replayed file the result names: the folder replay scales it to the frame
    shown = cv2.imdecode(np.frombuffer(base64.b64decode(later["jpeg"]), np.uint8), cv2.IMREAD_COLOR)
    source = cv2.imread(str(Path(daemon.config["camera"]["path"]) / later["result"]["source"]))
    assert shown.shape[1] / shown.shape[0] == pytest.approx(source.shape[1] / source.shape[0], rel=0.02)
    resized = cv2.resize(source, (shown.shape[1], shown.shape[0]), interpolation=cv2.INTER_AREA)
    assert np.abs(shown.astype(int) - resized).mean() < 6  # the whole frame, bare: no screen draws on it here
    corner = (slice(0, shown.shape[0] // 4), slice(0, shown.shape[1] // 3))  # where an overlay's panel would be
    assert np.abs(shown[corner].astype(int) - resized[corner]).mean() < 6

    saved = session.post(daemon.base + "/capture", json={"frame_id": later["result"]["frame_id"]}, timeout=10)
    assert saved.status_code == 201, saved.text
    sidecar = session.get(daemon.base + saved.json()["sidecar"], timeout=10).json()
    assert sidecar["result"] == later["result"]  # the result the page showed, not a newer one
    assert saved.json()["headline"] == later["result"]["headline"]
    gone = session.post(daemon.base + "/capture", json={"frame_id": 0}, timeout=10)
    assert gone.status_code == 409 and gone.json() == {"error": "frame 0 is no longer held; save again"}
    assert session.post(daemon.base + "/capture", json={"frame_id": "7"}, timeout=10).status_code == 400


def test_a_gated_model_says_not_a_lesion_on_the_page_routes_and_predict(tmp_path, gated_model_dir, negative_images,
                                                                        fixture_dir):
    images = tmp_path / "scene"
    images.mkdir()
    for path in negative_images:
        (images / path.name).write_bytes(path.read_bytes())
    config = daemon_config(gated_model_dir, images, device_id="gate-test",
                           captures={"dir": str(tmp_path / "captures"), "min_free_mb": 0.0})
    daemon = DaemonProcess(tmp_path, config).start()
    try:
        daemon.wait_running()
        view = requests.get(daemon.base + "/view", timeout=10).json()
        result = view["result"]
        assert result["state"] == "not_lesion" and result["class_code"] is None and result["refer"] is None
        assert (result["headline"], result["advice"]) == ("Not a skin lesion", "Point the camera at a skin lesion.")
        saved = requests.post(daemon.base + "/capture", json={"frame_id": result["frame_id"]}, timeout=10).json()
        assert (saved["state"], saved["class_code"], saved["confidence"]) == ("not_lesion", None, None)
        listed = requests.get(daemon.base + "/captures", timeout=10).json()["captures"][0]
        assert listed["headline"] == "Not a skin lesion" and listed["advice"] == "Point the camera at a skin lesion."
        card = requests.get(daemon.base + "/model", timeout=10).json()
        assert card["gate"]["threshold"] == 0.5 and card["gate"]["advice"] == "Point the camera at a skin lesion."
        lesion = fixture_dir / "images" / "ISIC_0024475.jpg"
        upload = requests.post(daemon.base + "/predict", files={"image": (lesion.name, lesion.read_bytes())},
                               timeout=30).json()
        assert upload["state"] in ("ok", "uncertain") and upload["lesion_gate"]["score"] < 0.5
        negative = requests.post(daemon.base + "/predict", timeout=30,
                                 files={"image": (negative_images[0].name, negative_images[0].read_bytes())}).json()
        assert negative["state"] == "not_lesion" and negative["top3"] == [] and negative["lesion_gate"]["score"] >= 0.5
    finally:
        daemon.stop()
