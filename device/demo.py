"""``make demo`` / ``python -m device demo``: the daemon on the bundled sample images, healthy on a
fresh clone.

The samples are :data:`SAMPLE_IMAGES` (``device/samples/``: one HAM10000 image per class, with
their attribution); the tests use their own fixture.

Each sample is shown for :data:`SECONDS_PER_IMAGE`, long enough to read its result. The model is
checked before anything starts. Captures and other state go to a temporary folder removed
at the end, unless ``--state-dir`` names one to keep. When mosquitto is installed, a private broker
is started on a free loopback port for the demo's lifetime and the command to watch the results is
printed; otherwise MQTT is turned off and ``/health`` reports it as ``disabled`` (not
``degraded``). Nothing here is used by the service itself.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from device.card import ModelCard, verify_model_file
from device.config import CARD_FILE, ModelConfig, check_model_dir, load_config, with_overrides

SAMPLE_IMAGES = str(Path(__file__).with_name("samples"))
SECONDS_PER_IMAGE = 3.0
_MOSQUITTO_PATHS = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")
_BROKER_START_S = 10.0


def check_model(model: ModelConfig) -> None:
    """The model folder, its card and the card's model file exist and agree (errors name them)."""
    folder = check_model_dir(model)
    verify_model_file(ModelCard.load(folder / CARD_FILE), folder)


def find_free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def mosquitto_binary() -> str | None:
    return shutil.which("mosquitto") or next((p for p in _MOSQUITTO_PATHS if Path(p).is_file()), None)


def wait_for_port(host: str, port: int, timeout: float, *, alive=lambda: True) -> None:
    """Poll until ``host:port`` accepts a TCP connection; TimeoutError otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError(f"process serving {host}:{port} exited")
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing accepted connections on {host}:{port} within {timeout} s")


def broker_config(port: int, host: str = "127.0.0.1", *, anonymous: bool = True, extra: str = "") -> str:
    """mosquitto.conf for a throwaway loopback broker; ``extra``: more listener lines (TLS, passwords)."""
    # As root, mosquitto would switch to its own user and could not read a private temp dir.
    user = "user root\n" if os.geteuid() == 0 else ""
    return (f"listener {port} {host}\n{extra}\nallow_anonymous {'true' if anonymous else 'false'}\n"
            f"persistence false\nlog_dest stderr\n{user}")


@contextlib.contextmanager
def demo_broker(binary: str) -> Iterator[int]:
    """A mosquitto on a free loopback port while the block runs; yields the port."""
    port = find_free_port()
    with tempfile.TemporaryDirectory(prefix="dermedge-demo-") as tmp:
        conf = Path(tmp) / "mosquitto.conf"
        conf.write_text(broker_config(port))
        with open(Path(tmp) / "mosquitto.log", "wb") as log:
            # Its own session: Ctrl-C reaches the daemon only, which still publishes "offline"
            # before the broker is stopped here.
            proc = subprocess.Popen([binary, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            try:
                wait_for_port("127.0.0.1", port, _BROKER_START_S, alive=lambda: proc.poll() is None)
                yield port
            finally:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def demo(run, overrides: dict, *, max_frames: int | None = None, state_dir: str | None = None) -> int:
    """Run the daemon (``run(None, overrides, max_frames=...)``) with a private broker if possible;
    state (captures) in ``state_dir``, else in a temporary folder removed afterwards."""
    overrides = {"camera_source": "folder", "camera_path": SAMPLE_IMAGES, "camera_fps": 1.0 / SECONDS_PER_IMAGE,
                 "overlay_mode": "none", **overrides}
    try:  # a bad model is refused before a broker is announced
        check_model(with_overrides(load_config(None), **overrides).model)
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    with contextlib.ExitStack() as stack:
        if state_dir is None:
            state_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="dermedge-demo-state-"))
            kept = "removed when the demo stops; --state-dir DIR keeps them"
        else:
            kept = "kept"
        overrides["captures_dir"] = str(Path(state_dir) / "captures")
        print(f"demo: one sample every {SECONDS_PER_IMAGE:g} s; captures go to {overrides['captures_dir']} ({kept})",
              file=sys.stderr, flush=True)
        binary = mosquitto_binary()
        if binary is None or overrides.get("mqtt_enabled") is False:
            why = "--no-mqtt" if binary else "mosquitto is not installed: apt install mosquitto mosquitto-clients"
            print(f"demo: MQTT is off ({why}); /health reports it as disabled", file=sys.stderr, flush=True)
            return run(None, {**overrides, "mqtt_enabled": False}, max_frames=max_frames)
        port = stack.enter_context(demo_broker(binary))
        print(f"demo: a private mosquitto broker listens on 127.0.0.1:{port}; watch the results with\n"
              f"    mosquitto_sub -h 127.0.0.1 -p {port} -t 'dermedge/#' -v\n"
              "(mosquitto_sub is in the mosquitto-clients package)", file=sys.stderr, flush=True)
        return run(None, {**overrides, "mqtt_host": "127.0.0.1", "mqtt_port": port}, max_frames=max_frames)
