"""HTTP API: a Flask app served by waitress (never Flask's debug server).

Routes (all but /health need ``Authorization: Bearer <token>`` when ``http.token`` is set):

    GET  /health         status, model, fps, components, uptime (no token needed)
    GET  /latest         the newest Result as JSON (404 before the first frame)
    POST /predict        multipart/form-data, file field ``image``  -> Result JSON
    POST /predict_base64 application/json {"image": "<base64>"}    -> Result JSON
    GET  /snapshot.jpg   the newest overlaid frame
    GET  /stream.mjpg    the overlaid frames as MJPEG (multipart/x-mixed-replace)
    GET  /metrics        Prometheus text
    GET  /app/           the browser app, when built (device/webapp.py; no token needed)

Handlers read :class:`LiveState` or classify an upload through the ``predict`` callable; they
never drive the camera. Every error is JSON ``{"error": reason}``: 400 for a bad image or
body, 401 for a missing or wrong token, 404, 405, 413 when the request body exceeds
``http.max_upload_mb``, 415 for the wrong content type, 429 when too many streams are open.
Uploads are decoded in memory; nothing from a request (no file name, no path) is used to
touch the filesystem; the one folder read from disk is the built browser app (device/webapp.py).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import waitress
from flask import Flask, Response, jsonify, request
from waitress import wasyncore
from waitress.trigger import trigger
from werkzeug.exceptions import HTTPException

from device.config import HttpConfig
from device.preprocess import ImageDecodeError, decode_image
from device.state import LiveState
from device.types import Result
from device.webapp import ENDPOINTS as WEB_APP_ENDPOINTS
from device.webapp import register_web_app

_log = logging.getLogger(__name__)

# waitress worker threads; each open MJPEG stream holds one for as long as it is watched.
SERVER_THREADS = 6
# Streams beyond this are refused (429), so viewers can never starve the other routes.
MAX_STREAMS = 3
# A stream with no new frame repeats the last one this often, which also notices a gone client.
STREAM_KEEPALIVE_S = 1.0
# waitress refuses bodies this many times the app's limit outright (plain-text 413) before
# buffering them; between the two limits the app answers with a JSON 413.
WAITRESS_BODY_FACTOR = 4
_BOUNDARY = "frame"
_PUBLIC_ENDPOINTS = frozenset({"health"}) | WEB_APP_ENDPOINTS


@dataclass
class _Streams:
    """MJPEG bookkeeping shared by the app and the server that stops it."""

    slots: threading.BoundedSemaphore = field(default_factory=lambda: threading.BoundedSemaphore(MAX_STREAMS))
    stop: threading.Event = field(default_factory=threading.Event)


def create_app(cfg: HttpConfig, state: LiveState, predict: Callable[[np.ndarray], Result]) -> Flask:
    """The Flask app for ``cfg``.

    Args:
        cfg: the ``http`` config section (token, upload limit, stream rate; host only for the warning).
        state: what the daemon publishes; read-only here.
        predict: RGB uint8 frame -> Result through the same engine and postprocessing as the
            camera path. Called from several server threads at once, so it must be thread-safe.
    """
    app = Flask(__name__, static_folder=None)  # no static route; only the built web app is read from disk
    limit = int(cfg.max_upload_mb * 1024 * 1024)
    app.config.update(MAX_CONTENT_LENGTH=limit, MAX_FORM_MEMORY_SIZE=limit, DEBUG=False)
    streams = _Streams()
    app.extensions["dermedge_streams"] = streams
    token = cfg.token.encode() if cfg.token else None
    if token is None and not _is_loopback(cfg.host):
        _log.warning(
            "HTTP: listening on %s without http.token: anyone on the network can read results and "
            "watch the camera. Set http.token or bind to 127.0.0.1.",
            cfg.host,
        )

    @app.before_request
    def _check_token():
        if token is None or request.endpoint in _PUBLIC_ENDPOINTS:
            return None
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token):
            response = _error(401, "missing or wrong bearer token")
            response.headers["WWW-Authenticate"] = 'Bearer realm="dermedge"'
            return response
        return None

    @app.after_request
    def _count(response: Response) -> Response:
        route = request.url_rule.rule if request.url_rule else "unmatched"
        state.count_request(route, response.status_code)
        return response

    @app.errorhandler(HTTPException)
    def _http_error(err: HTTPException):
        if err.code == 413:
            reason = f"request body too large (limit {cfg.max_upload_mb:g} MB)"
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
            rgb = decode_image(data)
        except ImageDecodeError as err:
            return _error(400, f"image: {err}")
        return jsonify(predict(rgb).to_dict())

    @app.get("/health")
    def health():
        return jsonify(state.health())

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
            body = json.loads(request.get_data())
        except (ValueError, RecursionError):  # RecursionError: absurdly nested arrays
            return _error(400, "body is not valid JSON")
        if not isinstance(body, dict) or not isinstance(body.get("image"), str):
            return _error(400, 'expected a JSON object {"image": "<base64>"}')
        text = body["image"]
        if text.startswith("data:"):  # accept a data URL as browsers produce it
            text = text.partition(",")[2]
        try:
            data = base64.b64decode("".join(text.split()), validate=True)
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


def _error(code: int, reason: str) -> Response:
    response = jsonify({"error": reason})
    response.status_code = code
    return response


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name other than localhost
        return False


class HttpServer:
    """Serves a WSGI app with waitress on a background thread.

    ``port`` 0 picks a free port; :attr:`port` gives the real one after :meth:`start`.
    """

    def __init__(self, app: Flask, host: str, port: int, *, threads: int = SERVER_THREADS):
        self._app = app
        self.host = host
        self.port = port
        self._threads = threads
        self._map: dict = {}  # our own asyncore map, so stop() can close every channel
        self._server = None
        self._trigger: trigger | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Bind and serve; returns once the socket is listening (raises OSError if it cannot bind)."""
        if self._server is not None:
            return
        limit = self._app.config.get("MAX_CONTENT_LENGTH") or 0
        body_limit = {"max_request_body_size": limit * WAITRESS_BODY_FACTOR} if limit else {}
        self._server = waitress.create_server(
            self._app,
            map=self._map,
            host=self.host,
            port=self.port,
            threads=self._threads,
            ident="dermedge",
            channel_timeout=30,
            asyncore_use_poll=True,
            **body_limit,
        )
        listen = getattr(self._server, "effective_listen", None)
        self.port = int(listen[0][1] if listen else self._server.effective_port)
        self._trigger = trigger(self._map)  # wakes the loop thread to close everything on stop()
        self._thread = threading.Thread(target=self._server.run, name="http", daemon=True)
        self._thread.start()
        _log.info("HTTP: serving on http://%s:%d", self.host, self.port)

    def stop(self, timeout: float = 3.0) -> None:
        """End open streams, let running requests finish (up to ``timeout``), close every connection."""
        server, self._server = self._server, None
        if server is None:
            return
        streams = self._app.extensions.get("dermedge_streams")
        if streams is not None:
            streams.stop.set()
        server.task_dispatcher.shutdown(timeout=timeout)
        # asyncore is not thread-safe: close the sockets from the loop thread itself
        self._trigger.pull_trigger(lambda: wasyncore.close_all(self._map))
        self._thread.join(timeout)
        _log.info("HTTP: stopped")
