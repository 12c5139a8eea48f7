"""Which ``Host`` headers the HTTP API answers: a guard against DNS rebinding.

A web page from anywhere can point a name of its own at 127.0.0.1 (or at the device's address)
and then read the API from the device's own browser as if it were that site; the browser sends
the page's name as ``Host``. So the API answers only names that mean this device: ``localhost``,
its host name (short, ``.local`` for mDNS, and fully qualified), the names in
``http.allowed_hosts``, and any IP address, which a rebinding page cannot use (the browser would
see it as another origin, the device's own). Others get 421 with the reason. A request without a
``Host`` (HTTP/1.0) does not come from a browser and is answered.
"""
from __future__ import annotations

import ipaddress
import socket

ANY = "*"


def own_names(extra: tuple[str, ...] = (), hostname: str | None = None) -> frozenset[str]:
    """Lower-case names this device answers to: localhost, its host names and ``extra``."""
    hostname = socket.gethostname() if hostname is None else hostname
    short = hostname.split(".")[0]
    names = {"localhost", hostname, short, f"{short}.local", *extra}
    try:
        names.add(socket.getfqdn(hostname))
    except OSError:  # no resolver: the names above still stand
        pass
    return frozenset(_normal(name) for name in names if name)


def host_allowed(header: str | None, names: frozenset[str]) -> bool:
    """Whether a ``Host`` header (with or without a port) names this device."""
    if header is None or ANY in names:
        return True
    host = _strip_port(header.strip())
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return _normal(host) in names


def _strip_port(host: str) -> str:
    if host.startswith("["):  # [IPv6]:port
        return host[1:].partition("]")[0]
    name, colon, port = host.rpartition(":")
    return name if colon and port.isdigit() and ":" not in name else host


def _normal(name: str) -> str:
    return name.lower().rstrip(".")
