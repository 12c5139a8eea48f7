"""Peak resident memory of device processes, from the kernel's per-process high-water mark.

``VmHWM`` in ``/proc/<pid>/status`` only ever grows, so reading it late in a child's life gives
its peak without sampling gaps. (``ru_maxrss`` from ``wait4`` would be wrong here: the kernel
folds the forking parent's footprint into the child's at exec, so every child would appear to be
at least as large as this benchmark process.) Linux only; elsewhere the peak is None.
"""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Self

_log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
_POLL_S = 0.02


@dataclass(frozen=True)
class Finished:
    returncode: int
    peak_rss_mb: float | None
    seconds: float
    stderr_tail: str


def high_water_mark_kb(pid: int) -> int | None:
    """``VmHWM`` of a live process in kB; None once it has exited (or without /proc)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None  # a zombie keeps its status file but no memory lines


class DeviceProcess:
    """``python -m device ...`` as a child process, run from the repository root.

    As a context manager it is stopped with SIGTERM on exit (as systemd stops the service).
    stderr goes to a temporary file: a pipe nobody reads could fill up and stall the child.
    """

    def __init__(self, args: list[str]):
        self.args = [sys.executable, "-m", "device", *args]
        self.finished: Finished | None = None
        self._peak_kb: int | None = None
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the child; closed in wait()
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")
        self._started = time.monotonic()
        self.proc = subprocess.Popen(self.args, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=self._stderr)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def running(self) -> bool:
        return self.proc.poll() is None

    def sample_peak(self) -> None:
        """Read the high-water mark; only while the child is unreaped, so its pid cannot be reused."""
        if self.proc.returncode is None:
            kb = high_water_mark_kb(self.proc.pid)
            if kb is not None:
                self._peak_kb = max(kb, self._peak_kb or 0)

    def stop(self, timeout: float = 30.0) -> Finished:
        """SIGTERM (if still running), then :meth:`wait`."""
        self.sample_peak()
        if self.running():
            self.proc.terminate()
        return self.wait(timeout)

    def wait(self, timeout: float) -> Finished:
        """Wait for the child to exit (killing it after ``timeout`` seconds), sampling its peak meanwhile."""
        if self.finished is not None:
            return self.finished
        deadline = time.monotonic() + timeout
        while True:
            self.sample_peak()
            if self.proc.poll() is not None:
                break
            if time.monotonic() > deadline:
                _log.warning("%s still running after %.0f s; killing it", " ".join(self.args[2:4]), timeout)
                self.proc.kill()
                self.proc.wait()
                break
            time.sleep(_POLL_S)
        self._stderr.seek(0)
        tail = self._stderr.read()[-2000:].decode(errors="replace")
        self._stderr.close()
        self.finished = Finished(returncode=self.proc.returncode,
                                 peak_rss_mb=None if self._peak_kb is None else self._peak_kb / 1024,
                                 seconds=time.monotonic() - self._started, stderr_tail=tail)
        return self.finished


def predict_memory(model_dir: Path, images: Path, *, timeout: float = 300.0) -> dict:
    """Peak RSS of ``python -m device predict`` classifying a folder of images once."""
    finished = DeviceProcess(["predict", "--model", str(model_dir), "--json", str(images)]).wait(timeout)
    if finished.returncode != 0:
        raise RuntimeError(f"device predict exited with {finished.returncode}: {finished.stderr_tail}")
    return {"peak_rss_mb": finished.peak_rss_mb, "seconds": finished.seconds,
            "images": sum(1 for p in Path(images).iterdir() if p.is_file())}
