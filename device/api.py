"""HTTP API: a Flask app served by waitress (never Flask's debug server).

Routes (all but /health need ``Authorization: Bearer <token>`` when ``http.token`` is set):

    GET  /health         status and component states for anyone; with the token (or when none
                         is set) also model, fps, uptime, frames and the components' details
    GET  /latest         the newest Result as JSON (404 before the first frame)
    POST /predict        multipart/form-data, file field ``image``  -> Result JSON
    POST /predict_base64 application/json {"image": "<base64>"}    -> Result JSON
    GET  /snapshot.jpg   the newest overlaid frame
    GET  /stream.mjpg    the overlaid frames as MJPEG (multipart/x-mixed-replace)
    GET  /metrics        Prometheus text
    GET  /app/           the browser app, when built (device/webapp.py; no token needed)

and the page's routes (``/``, sign-in, model card, captures: see device.page).

Handlers read :class:`LiveState` or classify an upload through the ``predict`` callable; they
never drive the camera. Every error is JSON ``{"error": reason}``: 400 for a bad image or
body, 401 for a missing or wrong token (or session cookie), 404, 405, 413 when the request body
exceeds ``http.max_upload_mb`` or has too many form parts (the reason says which), 415 for the wrong
content type, 421 for a ``Host`` that does not name this device (device.hosts), 422 for an image that would need more than the decode budget
(``http.decode_memory_mb``, see device/limits.py: its memory, or a JPEG whose repeated scans
would keep the decoder busy), 429 when too many streams are open or a client
sent too many wrong tokens (device.auth.GuessLimiter; with Retry-After), 503 when
other uploads hold the decode budget for too long. Uploads are decoded in memory; nothing from a
request (no file name, no path) is used to touch the filesystem, except inside two folders: the
built browser app (device/webapp.py, send_from_directory) and the captures (device/page.py, by a
validated id).
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException

from device.auth import SESSION_COOKIE, GuessLimiter, Sessions, bearer_matches, count_guess, load_token
from device.config import HttpConfig
from device.decode import ImageDecodeError, ImageTooLarge
from device.hosts import host_allowed, own_names
from device.http_errors import json_error as _error
from device.limits import DecodeBudget, DecoderBusy
from device.page import PUBLIC_ENDPOINTS, Page, page_blueprint
from device.state import LiveState
from device.types import Result
from device.webapp import ENDPOINTS as WEB_APP_ENDPOINTS
from device.webapp import register_web_app

_log = logging.getLogger(__name__)

# Streams beyond this are refused (429), so viewers can never starve the other routes.
MAX_STREAMS = 3
# A stream with no new frame repeats the last one this often, which also notices a gone client.
STREAM_KEEPALIVE_S = 1.0
# Form parts a request may carry: /predict needs one (the image); many tiny fields only cost parsing.
MAX_FORM_PARTS = 32
_BOUNDARY = "frame"
_PUBLIC_ENDPOINTS = frozenset({"health"}) | WEB_APP_ENDPOINTS | PUBLIC_ENDPOINTS


@dataclass
class _Streams:
    """MJPEG bookkeeping shared by the app and the server that stops it."""

    slots: threading.BoundedSemaphore = field(default_factory=lambda: threading.BoundedSemaphore(MAX_STREAMS))
    stop: threading.Event = field(default_factory=threading.Event)


def create_app(cfg: HttpConfig, state: LiveState, predict: Callable[[np.ndarray], Result], *,
               page: Page | None = None) -> Flask:
    """The Flask app for ``cfg``.

    Args:
        cfg: the ``http`` config section (token, upload and decode limits, stream rate; host only
            for the warning). ``http.token_file`` is read here; a bad one raises ConfigError.
        state: what the daemon publishes; read-only here.
        predict: RGB uint8 frame -> Result through the same engine and postprocessing as the
            camera path. Called from several server threads at once, so it must be thread-safe.
        page: what the page at ``/`` needs (model card, captures); None serves the JSON API only.
    """
    app = Flask(__name__, static_folder=None)  # no static route; only the built web app is read from disk
    limit = int(cfg.max_upload_mb * 1024 * 1024)
    app.config.update(MAX_CONTENT_LENGTH=limit, MAX_FORM_MEMORY_SIZE=limit, MAX_FORM_PARTS=MAX_FORM_PARTS,
                      DEBUG=False)
    streams = _Streams()
    app.extensions["dermedge_streams"] = streams
    # Half the server threads may be busy with decodes; the rest keep /health and streams answering.
    budget = DecodeBudget(int(cfg.decode_memory_mb * 1024 * 1024), max_decodes=max(1, cfg.threads // 2))
    token = load_token(cfg)
    if token is None and not _is_loopback(cfg.host):
        _log.warning(
            "HTTP: listening on %s without http.token: anyone on the network can read results and "
            "watch the camera. Set http.token (or http.token_file) or bind to 127.0.0.1.",
            cfg.host,
        )

    sessions = Sessions()
    guesses = GuessLimiter(limit=cfg.wrong_tokens_per_minute, window_s=60.0)
    if page is not None:
        app.register_blueprint(page_blueprint(page, sessions=sessions, token=token, guesses=guesses))
    hosts = own_names((*cfg.allowed_hosts, cfg.host))  # a name the server was told to bind is its own too

    @app.before_request
    def _check_host():  # first: a page that rebound its own name to this device learns nothing
        header = request.environ.get("HTTP_HOST")
        if host_allowed(header, hosts):
            return None
        return _error(421, f"this device does not answer to the host name {header[:100]!r}: use its address, "
                           "localhost or its own name, or add the name to http.allowed_hosts")

    @app.before_request
    def _check_token():
        # g.authorized: the Bearer token, or a session cookie the page's sign-in made from it
        header = request.headers.get("Authorization") if token is not None else None
        bearer = header is not None and bearer_matches(header, token)
        # counted on every route, /health too, which shows more to the token
        if header is not None and (refused := count_guess(guesses, matches=bearer)):
            return refused
        g.authorized = token is None or bearer or sessions.valid(request.cookies.get(SESSION_COOKIE))
        if request.endpoint in _PUBLIC_ENDPOINTS or g.authorized:
            return None
        response = _error(401, "missing or wrong bearer token")
        response.headers["WWW-Authenticate"] = 'Bearer realm="dermedge"'
        return response

    @app.after_request
    def _count(response: Response) -> Response:
        route = request.url_rule.rule if request.url_rule else "unmatched"
        state.count_request(route, response.status_code)
        return response

    @app.errorhandler(HTTPException)
    def _http_error(err: HTTPException):
        if err.code == 413:
            reason = _too_large_reason(cfg.max_upload_mb, limit)
        else:
            reason = err.description if err.code == 400 else (err.name or "error").lower()
        response = _error(err.code or 400, reason)
        for name, value in err.get_headers():
            if name == "Allow":
                response.headers[name] = value
        return response

    @app.errorhandler(Exception)
    def _unexpected(err: Exception):
        _log.exception("HTTP: unhandled error on %s %s", request.method, request.path)
        state.count_error("http")
        return _error(500, "internal error")

    def classify(data: bytes):
        try:
            rgb = budget.decode(data)
        except ImageTooLarge as err:
            return _error(422, f"image: {err}")
        except ImageDecodeError as err:
            return _error(400, f"image: {err}")
        except DecoderBusy as err:
            response = _error(503, f"image: {err}")
            response.headers["Retry-After"] = "1"
            return response
        return jsonify(predict(rgb).to_dict())

    @app.get("/health")
    def health():
        # Strangers learn whether the device is well, not its paths, broker replies or model.
        return jsonify(state.health() if g.authorized else state.public_health())

    @app.get("/latest")
    def latest():
        result = state.latest()
        if result is None:
            return _error(404, "no frame classified yet")
        return jsonify(result.to_dict())

    @app.post("/predict")
    def predict_upload():
        if request.mimetype != "multipart/form-data":
            return _error(415, "expected multipart/form-data with the image in file field 'image'")
        upload = request.files.get("image")
        if upload is None:
            return _error(400, "missing file field 'image'")
        return classify(upload.read())

    @app.post("/predict_base64")
    def predict_base64():
        if not request.is_json:
            return _error(415, 'expected application/json {"image": "<base64>"}')
        try:
            body = json.loads(request.get_data(cache=False))  # the raw body is freed once parsed
        except (ValueError, RecursionError):  # RecursionError: absurdly nested arrays
            return _error(400, "body is not valid JSON")
        if not isinstance(body, dict) or not isinstance(body.get("image"), str):
            return _error(400, 'expected a JSON object {"image": "<base64>"}')
        text = body["image"]
        if text.startswith("data:"):  # accept a data URL as browsers produce it
            text = text.partition(",")[2]
        try:
            data = _b64decode(text)
        except (binascii.Error, ValueError):
            return _error(400, "image: not valid base64")
        return classify(data)

    @app.get("/snapshot.jpg")
    def snapshot():
        jpeg = state.latest_jpeg()
        if jpeg is None:
            return _error(404, "no frame captured yet")
        return Response(jpeg, mimetype="image/jpeg", headers={"Cache-Control": "no-store"})

    @app.get("/stream.mjpg")
    def stream():
        seq, jpeg = state.wait_jpeg(0, timeout=0)
        if jpeg is None:
            return _error(404, "no frame captured yet")
        if not streams.slots.acquire(blocking=False):
            return _error(429, f"too many open streams (limit {MAX_STREAMS})")
        response = Response(
            _mjpeg(state, streams.stop, seq, jpeg, 1.0 / cfg.stream_fps),
            mimetype=f"multipart/x-mixed-replace; boundary={_BOUNDARY}",
            headers={"Cache-Control": "no-store"},
        )
        response.call_on_close(streams.slots.release)  # runs even if the client leaves at once
        return response

    @app.get("/metrics")
    def metrics():
        return Response(state.metrics_text(), content_type="text/plain; version=0.0.4; charset=utf-8")

    register_web_app(app)
    return app


def _mjpeg(state: LiveState, stop: threading.Event, seq: int, jpeg: bytes, interval_s: float):
    """Multipart parts, newest frame first, at most one per ``interval_s``."""
    while not stop.is_set():
        sent = time.monotonic()
        yield (
            f"--{_BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n".encode()
            + jpeg
            + b"\r\n"
        )
        if stop.wait(max(0.0, sent + interval_s - time.monotonic())):
            return
        new_seq, new_jpeg = state.wait_jpeg(seq, timeout=STREAM_KEEPALIVE_S)
        if new_jpeg is not None:
            seq, jpeg = new_seq, new_jpeg


def _b64decode(text: str) -> bytes:
    """Strict base64; line breaks are allowed, and only a text that has them is copied to drop them."""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return base64.b64decode("".join(text.split()), validate=True)


def _too_large_reason(max_upload_mb: float, limit_bytes: int) -> str:
    """Which limit a 413 hit: Werkzeug raises the same error for the body size and the form parts."""
    if request.content_length is None or request.content_length > limit_bytes:
        return f"request body too large (limit {max_upload_mb:g} MB, http.max_upload_mb)"
    return (f"too many form parts: more than {MAX_FORM_PARTS} fields and files "
            "(send the image alone, in file field 'image')")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name other than localhost
        return False
