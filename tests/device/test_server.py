"""device.server: which peers' forwarded headers are believed, and waitress's queue warning once per burst."""
from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import requests
from flask import Flask, jsonify, request

from device.server import _ONCE_PER_BURST, HttpServer, _OncePerBurst, forwarded_only_from

TIMEOUT = 30


def seen_by_app(trusted: tuple[str, ...], peer: str, headers: dict[str, str]) -> dict:
    """What the app sees of one request from ``peer`` with ``headers`` (a WSGI call, no socket)."""
    seen = {}

    def app(environ, start_response):
        seen.update(addr=environ["REMOTE_ADDR"], scheme=environ["wsgi.url_scheme"],
                    forwarded=environ.get("HTTP_X_FORWARDED_FOR"))
        start_response("200 OK", [])
        return [b""]

    environ = {"REMOTE_ADDR": peer, "wsgi.url_scheme": "http", "REQUEST_METHOD": "GET", "PATH_INFO": "/",
               **{"HTTP_" + name.upper().replace("-", "_"): value for name, value in headers.items()}}
    forwarded_only_from(app, trusted)(environ, lambda *a: None)
    return seen


def test_forwarded_headers_are_believed_from_a_trusted_proxy_only():
    headers = {"X-Forwarded-For": "203.0.113.9, 198.51.100.4", "X-Forwarded-Proto": "https"}
    assert seen_by_app((), "127.0.0.1", headers) == {"addr": "127.0.0.1", "scheme": "http", "forwarded": None}
    assert seen_by_app(("10.0.0.2",), "127.0.0.1", headers)["addr"] == "127.0.0.1"
    trusted = seen_by_app(("10.0.0.2", "127.0.0.1"), "127.0.0.1", headers)
    assert (trusted["addr"], trusted["scheme"]) == ("198.51.100.4", "https")  # the hop nginx added
    assert seen_by_app(("0:0::1",), "::1", headers)["addr"] == "198.51.100.4"  # addresses compared as addresses


def test_the_queue_warning_is_let_through_once_per_interval_with_a_count_of_the_rest():
    now = [0.0]
    gate = _OncePerBurst(every_s=10.0, clock=lambda: now[0])
    records = [logging.LogRecord("waitress.queue", logging.WARNING, "", 0, "Task queue depth is %d", (n,), None)
               for n in range(6)]
    passed = []
    for record in records[:5]:
        if gate.filter(record):
            passed.append(record.getMessage())
        now[0] += 1.0
    now[0] = 12.0
    if gate.filter(records[5]):
        passed.append(records[5].getMessage())
    assert passed == ["Task queue depth is 0", "Task queue depth is 5 (and 4 more since the last one)"]


def test_a_burst_of_queued_requests_logs_one_queue_warning_not_one_per_request(caplog, monkeypatch):
    monkeypatch.setattr(_ONCE_PER_BURST, "_next", float("-inf"))  # no earlier test's warning holds this one back
    app = Flask(__name__)
    release = threading.Event()

    @app.get("/slow")
    def slow():
        release.wait(TIMEOUT)
        return jsonify(peer=request.remote_addr)

    server = HttpServer(app, "127.0.0.1", 0, threads=2)
    server.start()
    try:
        with caplog.at_level(logging.WARNING, logger="waitress.queue"), ThreadPoolExecutor(40) as pool:
            calls = [pool.submit(requests.get, f"http://127.0.0.1:{server.port}/slow", timeout=TIMEOUT)
                     for _ in range(40)]
            time.sleep(1.5)  # every request has arrived and queued behind the two threads
            release.set()
            assert all(call.result().status_code == 200 for call in calls)
    finally:
        server.stop()
    warnings = [r for r in caplog.records if r.name == "waitress.queue"]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
