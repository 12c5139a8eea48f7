"""Who may use the HTTP API: the bearer token (where it comes from, how a header is checked),
wrong tokens counted per client, and the browser sessions a correct token opens.

The token is ``http.token`` or the contents of ``http.token_file``, read once at start so the
secret need not live in the YAML. The file must not be readable by other users, nor writable
by its group; its content follows the same rules as ``http.token`` (see
:func:`device.config.token_problem`), bar one trailing newline.

Wrong tokens are counted per client (:class:`GuessLimiter`): a long random token cannot be
guessed anyway, but a script trying at line rate is turned away (429) instead of being answered.
A correct token given to the page's sign-in makes a browser session (:class:`Sessions`), held in
a cookie beside the Bearer header.
"""
from __future__ import annotations

import hmac
import math
import secrets
import stat
import threading
import time
from collections import OrderedDict, deque
from pathlib import Path

from flask import Response, request

from device.config import ConfigError, HttpConfig, token_problem
from device.http_errors import json_error

SESSION_COOKIE = "dermedge_session"
SESSION_TTL_S = 12 * 3600
MAX_SESSIONS = 64  # the oldest session is dropped beyond this


def load_token(cfg: HttpConfig) -> bytes | None:
    """The token as bytes, or None when neither ``http.token`` nor ``http.token_file`` is set.

    Raises :class:`ConfigError` naming ``http.token_file`` for a missing, unsafe or bad file.
    """
    if cfg.token_file is None:
        return cfg.token.encode("ascii") if cfg.token is not None else None
    path = Path(cfg.token_file)
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        raise ConfigError(f"http.token_file: not found: {path}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"http.token_file: {path} holds a non-ASCII token: use printable ASCII") from None
    except OSError as err:
        raise ConfigError(f"http.token_file: cannot read {path} ({err.strerror})") from err
    if not stat.S_ISREG(mode):
        raise ConfigError(f"http.token_file: {path} is not a regular file")
    if mode & (stat.S_IRWXO | stat.S_IWGRP):
        raise ConfigError(f"http.token_file: {path} has mode {stat.S_IMODE(mode):04o}, which lets other users "
                          "read or change it; chmod 600 (or 640 for a root-owned file the service group reads)")
    token = text.removesuffix("\n").removesuffix("\r")
    if problem := token_problem(token):
        raise ConfigError(f"http.token_file: the token in {path} {problem}")
    return token.encode("ascii")


def bearer_matches(authorization: str, token: bytes) -> bool:
    """Whether an ``Authorization`` header carries ``Bearer <token>`` (constant-time compare)."""
    scheme, _, given = authorization.partition(" ")
    try:
        given_bytes = given.strip().encode("ascii")
    except UnicodeEncodeError:  # never equal to a valid token, which is ASCII
        return False
    return scheme.lower() == "bearer" and hmac.compare_digest(given_bytes, token)


class GuessLimiter:
    """At most ``limit`` wrong tokens per client within ``window_s``; beyond that the client waits
    until its oldest failure leaves the window. Only failures count, so a client that signs in
    is never slowed; at most ``max_clients`` are remembered (the least recent is forgotten)."""

    def __init__(self, *, limit: int, window_s: float, max_clients: int = 1024, clock=time.monotonic):
        self._limit, self._window, self._max, self._clock = limit, window_s, max_clients, clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def wait_s(self, client: str) -> float:
        """Seconds before ``client`` may present a token again (0: now)."""
        with self._lock:
            failures = self._recent(self._failures.get(client, deque()))
            if len(failures) < self._limit:
                return 0.0
            return failures[0] + self._window - self._clock()

    def failed(self, client: str) -> None:
        with self._lock:
            failures = self._recent(self._failures.pop(client, deque()))
            failures.append(self._clock())
            self._failures[client] = failures  # now the most recent
            while len(self._failures) > self._max:
                self._failures.popitem(last=False)

    def _recent(self, failures: deque[float]) -> deque[float]:
        while failures and failures[0] <= self._clock() - self._window:
            failures.popleft()
        return failures


def count_guess(guesses: GuessLimiter, *, matches: bool) -> Response | None:
    """A 429 saying when to try again if this request's client is over its count of wrong tokens;
    else None, with a wrong token (``matches`` False) counted, and the caller answers."""
    client = request.remote_addr
    if (wait_s := guesses.wait_s(client)) > 0:
        seconds = math.ceil(wait_s)
        response = json_error(429, f"too many wrong tokens from this address: try again in {seconds} s")
        response.headers["Retry-After"] = str(seconds)
        return response
    if not matches:
        guesses.failed(client)
    return None


class Sessions:
    """Browser sessions made by a correct token; in memory, so a restart signs everyone out."""

    def __init__(self, *, ttl_s: float = SESSION_TTL_S, max_sessions: int = MAX_SESSIONS):
        self._ttl = ttl_s
        self._max = max_sessions
        self._expiry: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def create(self) -> str:
        session = secrets.token_urlsafe(32)
        with self._lock:
            self._expiry[session] = time.monotonic() + self._ttl
            while len(self._expiry) > self._max:
                self._expiry.popitem(last=False)
        return session

    def valid(self, session: str | None) -> bool:
        if not session:
            return False
        with self._lock:
            expiry = self._expiry.get(session)
            if expiry is None:
                return False
            if expiry < time.monotonic():
                del self._expiry[session]
                return False
            return True

    def drop(self, session: str | None) -> None:
        with self._lock:
            self._expiry.pop(session or "", None)
