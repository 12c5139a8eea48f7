"""waitress, sized from the ``http`` config, serving the API on a background thread.

waitress stops accepting altogether once ``connection_limit`` connections are open, and an idle
connection counts until ``channel_timeout`` closes it, so a few hundred idle sockets (no request
line, no authentication needed) used to lock everyone out, ``/health`` included. Here the limit
is well above that (``http.connection_limit``), idle connections go after ``http.idle_timeout_s``,
the idle sweep runs often enough for that timeout to mean what it says, and the process may
open enough files for the limit. Per-client limits belong to the reverse proxy (``install.sh --tls``).

``X-Forwarded-For`` and ``X-Forwarded-Proto`` are believed only from the peers in
``http.trusted_proxies`` (none by default) and dropped from anyone else, so a local process
cannot name itself another client (and dodge or aim the wrong-token limit) nor claim HTTPS.
waitress warns "Task queue depth" once per queued request; here once per burst.
"""
from __future__ import annotations

import ipaddress
import logging
import resource
import threading
import time

import waitress
from flask import Flask
from waitress import wasyncore
from waitress.proxy_headers import proxy_headers_middleware
from waitress.trigger import trigger

from device.config import HttpConfig

_log = logging.getLogger(__name__)

# waitress refuses bodies this many times the app's limit outright (plain-text 413) before
# buffering them; between the two limits the app answers with a JSON 413.
WAITRESS_BODY_FACTOR = 4
# File descriptors beyond the connections: the model, the camera, MQTT, logs, the server itself.
_SPARE_FILES = 128
# The headers a trusted proxy sets (install.sh --tls's nginx): which client, and that it came over HTTPS.
PROXY_HEADERS = frozenset({"x-forwarded-proto", "x-forwarded-for"})
# waitress's "Task queue depth" warning: at most one per this many seconds, with a count of the rest.
QUEUE_WARNING_EVERY_S = 10.0


class HttpServer:
    """Serves a WSGI app with waitress on a background thread.

    ``port`` 0 picks a free port; :attr:`port` gives the real one after :meth:`start`.
    """

    def __init__(self, app: Flask, host: str, port: int, *, threads: int = HttpConfig.threads,
                 connection_limit: int = HttpConfig.connection_limit,
                 idle_timeout_s: int = HttpConfig.idle_timeout_s, trusted_proxies: tuple[str, ...] = ()):
        self._app = app
        self._trusted_proxies = trusted_proxies
        self.host = host
        self.port = port
        self._threads = threads
        self._connection_limit = connection_limit
        self._idle_timeout_s = idle_timeout_s
        self._map: dict = {}  # our own asyncore map, so stop() can close every channel
        self._server = None
        self._trigger: trigger | None = None
        self._thread: threading.Thread | None = None

    @classmethod
    def from_config(cls, app: Flask, cfg: HttpConfig) -> HttpServer:
        return cls(app, cfg.host, cfg.port, threads=cfg.threads, connection_limit=cfg.connection_limit,
                   idle_timeout_s=cfg.idle_timeout_s, trusted_proxies=cfg.trusted_proxies)

    def start(self) -> None:
        """Bind and serve; returns once the socket is listening (raises OSError if it cannot bind)."""
        if self._server is not None:
            return
        _allow_open_files(self._connection_limit + _SPARE_FILES)
        limit = self._app.config.get("MAX_CONTENT_LENGTH") or 0
        body_limit = {"max_request_body_size": limit * WAITRESS_BODY_FACTOR} if limit else {}
        _QUEUE_LOG.addFilter(_ONCE_PER_BURST)
        self._server = waitress.create_server(
            forwarded_only_from(self._app, self._trusted_proxies),
            map=self._map,
            host=self.host,
            port=self.port,
            threads=self._threads,
            ident="dermedge",
            connection_limit=self._connection_limit,
            channel_timeout=self._idle_timeout_s,
            cleanup_interval=max(1, self._idle_timeout_s // 2),
            asyncore_use_poll=True,  # select() cannot watch more than 1024 sockets
            clear_untrusted_proxy_headers=False,  # forwarded_only_from does it, for several proxies
            **body_limit,
        )
        listen = getattr(self._server, "effective_listen", None)
        self.port = int(listen[0][1] if listen else self._server.effective_port)
        self._trigger = trigger(self._map)  # wakes the loop thread to close everything on stop()
        self._thread = threading.Thread(target=self._server.run, name="http", daemon=True)
        self._thread.start()
        _log.info("HTTP: serving on http://%s:%d (%d threads, up to %d connections, idle ones closed after %d s)",
                  self.host, self.port, self._threads, self._connection_limit, self._idle_timeout_s)

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


def forwarded_only_from(app, trusted: tuple[str, ...]):
    """``app`` behind waitress's proxy-header handling, per peer: from a proxy in ``trusted`` the
    last hop of X-Forwarded-For becomes the client's address (and X-Forwarded-Proto the scheme),
    so the page's cookie is Secure behind HTTPS and wrong tokens count per real client; from any
    other peer the headers are removed before the app sees them."""
    untrusted = proxy_headers_middleware(app, trusted_proxy=None, clear_untrusted=True)
    by_peer = {str(ipaddress.ip_address(peer)): proxy_headers_middleware(
        app, trusted_proxy=str(ipaddress.ip_address(peer)), trusted_proxy_count=1,
        trusted_proxy_headers=set(PROXY_HEADERS), clear_untrusted=True) for peer in trusted}

    def dispatch(environ, start_response):
        return by_peer.get(environ.get("REMOTE_ADDR"), untrusted)(environ, start_response)

    return dispatch


class _OncePerBurst(logging.Filter):
    """Lets one record through per ``every_s``; the next one says how many were held back."""

    def __init__(self, every_s: float = QUEUE_WARNING_EVERY_S, clock=time.monotonic):
        super().__init__()
        self._every_s, self._clock = every_s, clock
        self._next = float("-inf")
        self._held = 0
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        with self._lock:
            now = self._clock()
            if now < self._next:
                self._held += 1
                return False
            held, self._held, self._next = self._held, 0, now + self._every_s
        if held:
            record.msg = f"{record.msg} (and {held} more since the last one)"
        return True


_QUEUE_LOG = logging.getLogger("waitress.queue")
_ONCE_PER_BURST = _OncePerBurst()


def _allow_open_files(needed: int) -> None:
    """Raise the soft open-file limit to ``needed`` where the hard limit allows (systemd's soft
    default is 1024); warn when it cannot, since waitress would then fail on accept instead."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < needed:
        _log.warning("HTTP: only %d open files allowed (hard limit); http.connection_limit needs about %d",
                     target, needed)
