"""The page people use, at ``/``, and the routes it needs beside the JSON API.

    GET  /                 the page (HTML; its script and style under /assets/)
    GET  /session          {"token_required", "signed_in"}: whether the page must ask for the token
    POST /login            {"token": "..."} -> sets an HttpOnly, SameSite=Strict session cookie
    POST /logout           forgets the session
    GET  /model            the loaded model card's summary
    GET  /view?after=SEQ   the next frame after SEQ and its own Result, together:
                           {"seq", "result", "jpeg": base64}; 204 when none came within VIEW_WAIT_S
    POST /capture          saves the shown frame and its Result (201), see device.captures;
                           {"frame_id": N} saves that frame, the one the page shows
    GET  /captures         the stored captures, newest first, and why none can be saved now
    GET  /captures/<id>.jpg | .json

The page shows one object from frame to screen: its live view is the frames of ``/view``, each
with its own Result, so the picture, the result beside it and a capture of it are always the same
frame (an MJPEG stream beside a polled result showed different lesions at once). The picture is
the bare frame unless a screen drew the overlay on it; the page writes the result beside it.

The device is offline, so the page is plain HTML, CSS and JavaScript shipped in
``device/static/``, read once when the app is built and served from memory by name (no request
path ever reaches the disk). Its Content-Security-Policy allows nothing but this origin. With
``http.token`` set the session cookie is accepted beside the Bearer header (``api.py`` asks
:class:`device.auth.Sessions`); the token itself is only ever sent in a POST body, never in a URL.
"""
from __future__ import annotations

import base64
import hmac
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from flask import Blueprint, Response, jsonify, request, send_file

from device.auth import SESSION_COOKIE, SESSION_TTL_S, GuessLimiter, Sessions, count_guess
from device.captures import (
    CaptureError,
    CaptureStore,
    DiskFullError,
    NothingToCaptureError,
    StorageUnavailable,
)
from device.card import ModelCard
from device.http_errors import json_error

STATIC_DIR = Path(__file__).with_name("static")
ASSETS = {"app.js": "text/javascript", "style.css": "text/css", "icon.svg": "image/svg+xml"}
VIEW_WAIT_S = 5.0  # how long GET /view waits for a new frame
# Endpoints that answer without a token: the page must load to ask for it.
PUBLIC_ENDPOINTS = frozenset({"page.index", "page.asset", "page.session", "page.login", "page.logout"})
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; connect-src 'self'; "
       "form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
INTENDED_USE = ("A screening aid for dermatoscopic photographs of pigmented skin lesions: it suggests which of "
                "seven HAM10000 classes a lesion resembles. It does not diagnose; a dermatologist does.")
LIMITATIONS = (
    ("Trained and tested on HAM10000 dermatoscopic images only (mostly lighter skin, from two centres); "
     "phone photos, other skin types and lesions outside the seven classes are not covered."),
    "Balanced accuracy is well below overall accuracy: rare classes are recognised less often.",
    "A poor-quality or uncertain result says nothing about the lesion.",
)


@dataclass(frozen=True)
class Page:
    """What the page needs from the daemon."""

    card: Callable[[], ModelCard]  # the loaded model's card (it changes on reload)
    captures: CaptureStore | None = None  # None: captures turned off
    # (frame_id or None: the shown frame) -> CaptureInfo; raises CaptureError
    save_capture: Callable[..., object] | None = None
    # LiveState.wait_view: (after_seq, timeout) -> (seq, Result | None, JPEG | None)
    view: Callable[[int, float], tuple] | None = None


def card_summary(card: ModelCard) -> dict:
    """The model card as the page shows it: name, test metrics, intended use, limitations, referral,
    the not-a-lesion gate."""
    test = card.split.get("counts", {}).get("test", {})
    return {
        "name": card.name,
        "description": card.description,
        "labels": [{"code": label.code, "name": label.name} for label in card.labels],
        "metrics": {k: v for k, v in card.metrics.get("int8", {}).items() if k != "per_class"},
        "test_images": sum(test.values()) if isinstance(test, dict) else None,
        "split": card.split.get("method", ""),
        "dataset": card.dataset.get("name", ""),
        "intended_use": INTENDED_USE,
        "limitations": list(LIMITATIONS),
        "referral": asdict(card.referral) if card.referral else None,
        "gate": ({k: v for k, v in asdict(card.gate).items() if k != "output"} if card.gate else None),
        "disclaimer": card.disclaimer,
    }


def page_blueprint(page: Page, *, sessions: Sessions, token: bytes | None, guesses: GuessLimiter) -> Blueprint:
    """The page's routes; ``token`` is ``http.token`` (None: no sign-in needed); wrong ones count
    in ``guesses``, shared with the Bearer header's check."""
    bp = Blueprint("page", __name__)
    assets = {name: (STATIC_DIR / name).read_bytes() for name in ASSETS}
    index_html = (STATIC_DIR / "index.html").read_bytes()

    @bp.after_request
    def _headers(response: Response) -> Response:
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        return response

    @bp.get("/")
    def index():
        return Response(index_html, mimetype="text/html", headers={"Cache-Control": "no-cache"})

    @bp.get("/assets/<name>")
    def asset(name: str):
        if name not in assets:
            return json_error(404, "not found")
        return Response(assets[name], mimetype=ASSETS[name], headers={"Cache-Control": "no-cache"})

    @bp.get("/session")
    def session():
        return jsonify({"token_required": token is not None,
                        "signed_in": token is None or sessions.valid(request.cookies.get(SESSION_COOKIE))})

    @bp.post("/login")
    def login():
        body = request.get_json(silent=True)
        given = body.get("token") if isinstance(body, dict) else None
        if not isinstance(given, str):
            return json_error(400, 'expected application/json {"token": "..."}')
        if token is None:
            return jsonify({"signed_in": True})
        matches = hmac.compare_digest(given.encode(), token)
        if refused := count_guess(guesses, matches=matches):
            return refused
        if not matches:
            return json_error(401, "wrong token")
        response = jsonify({"signed_in": True})
        response.set_cookie(SESSION_COOKIE, sessions.create(), max_age=SESSION_TTL_S, httponly=True,
                            samesite="Strict", secure=request.is_secure, path="/")
        return response

    @bp.post("/logout")
    def logout():
        sessions.drop(request.cookies.get(SESSION_COOKIE))
        response = jsonify({"signed_in": False})
        response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="Strict")
        return response

    @bp.get("/model")
    def model():
        return jsonify(card_summary(page.card()))

    @bp.get("/view")
    def view():
        if page.view is None:
            return json_error(404, "no live view on this device")
        after = request.args.get("after", "-1")
        try:
            after_seq = int(after)
        except ValueError:
            return json_error(400, f"after: expected an integer, got {after!r}")
        seq, result, jpeg = page.view(after_seq, VIEW_WAIT_S)
        if result is None or jpeg is None:
            return Response(status=204, headers={"Cache-Control": "no-store"})
        response = jsonify({"seq": seq, "result": result.to_dict(), "jpeg": base64.b64encode(jpeg).decode()})
        response.headers["Cache-Control"] = "no-store"
        return response

    if page.captures is None or page.save_capture is None:
        return bp
    store, save = page.captures, page.save_capture

    @bp.post("/capture")
    def capture():
        body = request.get_json(silent=True) if request.content_length else None
        frame_id = body.get("frame_id") if isinstance(body, dict) else None
        if frame_id is not None and (not isinstance(frame_id, int) or isinstance(frame_id, bool)):
            return json_error(400, f"frame_id: expected an integer, got {frame_id!r}")
        try:
            info = save(frame_id)
        except DiskFullError as err:
            return json_error(507, str(err))
        except StorageUnavailable as err:  # a read-only or failing disk
            return json_error(503, f"captures unavailable: {err}")
        except NothingToCaptureError as err:
            return json_error(409, str(err))
        except CaptureError as err:
            return json_error(500, f"capture not saved: {err}")
        return jsonify(info.to_dict()), 201

    @bp.get("/captures")
    def captures():
        items = [info.to_dict() for info in store.list()]
        return jsonify({"captures": items, "count": len(items), "max_count": store.max_count,
                        "unavailable": store.unavailable()})  # why none can be saved now, or null

    def stored(capture_id: str, kind: str, mimetype: str):
        path = store.path(capture_id, kind)
        if path is None:
            return json_error(404, f"no capture {capture_id!r}")
        return send_file(path, mimetype=mimetype, max_age=0, conditional=False)

    @bp.get("/captures/<capture_id>.jpg")
    def capture_image(capture_id: str):
        return stored(capture_id, "jpg", "image/jpeg")

    @bp.get("/captures/<capture_id>.json")
    def capture_sidecar(capture_id: str):
        return stored(capture_id, "json", "application/json")

    return bp
