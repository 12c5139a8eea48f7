"""systemd's notify protocol (sd_notify) over ``$NOTIFY_SOCKET``, with no extra dependency.

systemd passes a unix datagram socket in ``NOTIFY_SOCKET`` (a path, or ``@name`` for the
abstract namespace) and, with ``WatchdogSec=``, the interval in ``WATCHDOG_USEC``. The daemon
sends ``READY=1`` once the first frame is classified and ``WATCHDOG=1`` from the inference
loop itself, so a stalled loop stops feeding the watchdog and systemd restarts the service.
Outside systemd (no ``NOTIFY_SOCKET``) every call is a no-op.
"""
from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

_log = logging.getLogger(__name__)


class Notifier:
    """Sends sd_notify messages; never raises into the caller."""

    def __init__(self, environ: Mapping[str, str] | None = None):
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        self.address = "\0" + address[1:] if address.startswith("@") else address
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        owned = not pid or pid == str(os.getpid())  # the watchdog may be meant for another process
        self.watchdog_interval_s = int(usec) / 1e6 if usec.isdigit() and owned else 0.0
        # Feed well within the interval; without WatchdogSec, once a second is plenty.
        self._feed_every = self.watchdog_interval_s / 4 if self.watchdog_interval_s else 1.0
        self._last_feed = float("-inf")
        self._warned = False

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def notify(self, *lines: str) -> bool:
        """Send ``KEY=value`` lines as one datagram; False if not under systemd or the send failed."""
        if not self.address:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto("\n".join(lines).encode(), self.address)
            return True
        except OSError as err:
            if not self._warned:  # one warning; a missing socket would otherwise flood the log
                _log.warning("sd_notify to %r failed: %s", self.address, err)
                self._warned = True
            return False

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")

    def reloading(self) -> bool:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    def feed(self) -> bool:
        """``WATCHDOG=1``, sent at most every interval/4; call it once per processed frame."""
        now = time.monotonic()
        if now - self._last_feed < self._feed_every:
            return False
        self._last_feed = now
        return self.notify("WATCHDOG=1")
