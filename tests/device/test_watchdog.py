"""device.watchdog: sd_notify datagrams arrive on a unix socket the test owns, as systemd's would."""
import os
import socket

import pytest

from device.watchdog import Notifier


@pytest.fixture
def notify_socket(tmp_path):
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2.0)
    yield path, sock
    sock.close()


def receive(sock) -> list[str]:
    return sock.recv(4096).decode().split("\n")


def test_messages_reach_the_socket(notify_socket):
    path, sock = notify_socket
    notifier = Notifier({"NOTIFY_SOCKET": str(path)})
    assert notifier.enabled
    assert notifier.ready("classifying")
    assert receive(sock) == ["READY=1", "STATUS=classifying"]
    assert notifier.status("10 fps")
    assert receive(sock) == ["STATUS=10 fps"]
    assert notifier.feed()
    assert receive(sock) == ["WATCHDOG=1"]
    assert notifier.reloading()
    lines = receive(sock)
    assert lines[0] == "RELOADING=1" and lines[1].startswith("MONOTONIC_USEC=")
    assert notifier.stopping()
    assert receive(sock) == ["STOPPING=1"]


def test_watchdog_is_fed_at_most_every_quarter_interval(notify_socket):
    path, sock = notify_socket
    notifier = Notifier({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "20000000", "WATCHDOG_PID": str(os.getpid())})
    assert notifier.watchdog_interval_s == 20.0
    assert notifier.feed()
    assert not notifier.feed()  # 5 s have not passed
    assert receive(sock) == ["WATCHDOG=1"]
    other = Notifier({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "20000000", "WATCHDOG_PID": "1"})
    assert other.watchdog_interval_s == 0.0  # meant for another process


def test_abstract_socket_address():
    name = f"dermedge-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(2.0)
    try:
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).ready()
        assert receive(sock) == ["READY=1"]
    finally:
        sock.close()


def test_no_socket_means_no_op(tmp_path):
    quiet = Notifier({})
    assert not quiet.enabled and not quiet.ready() and not quiet.feed()
    gone = Notifier({"NOTIFY_SOCKET": str(tmp_path / "missing.sock")})
    assert not gone.ready()  # logged once, never raised
    assert not gone.notify("STATUS=x")
