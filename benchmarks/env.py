"""The machine a benchmark ran on: CPU, cores, OS, Python and library versions, load."""
from __future__ import annotations

import os
import platform
import socket
from importlib import metadata
from pathlib import Path

# Distribution names as pip knows them; absent ones are recorded as None.
LIBRARIES = ("numpy", "ai-edge-litert", "tflite-runtime", "tensorflow", "tensorflow-cpu", "keras",
             "opencv-python", "opencv-python-headless", "paho-mqtt", "flask", "waitress")
_CPUINFO = Path("/proc/cpuinfo")
_PI_MODEL = Path("/proc/device-tree/model")


def cpu_model() -> str:
    """The CPU's marketing name; on a Raspberry Pi, the board model as well."""
    fields = {}
    if _CPUINFO.is_file():
        for line in _CPUINFO.read_text(errors="replace").splitlines():
            key, sep, value = line.partition(":")
            if sep:
                fields.setdefault(key.strip(), value.strip())
    name = fields.get("model name") or fields.get("Hardware") or platform.processor() or platform.machine()
    if _PI_MODEL.is_file():  # ARM cpuinfo has no model name; the device tree names the board
        name = f"{_PI_MODEL.read_text(errors='replace').strip(chr(0)).strip()} ({name})"
    return name


def library_versions() -> dict[str, str | None]:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages: other work on the machine skews every timing."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def environment() -> dict:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "host": socket.gethostname(),
        "cpu": cpu_model(),
        "machine": platform.machine(),
        "cores": os.cpu_count(),
        "cores_usable": usable,
        "os": platform.platform(),
        "python": platform.python_version(),
        "libraries": library_versions(),
        "load_average_start": load_average(),
    }
