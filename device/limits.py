"""The memory budget for decoding uploads, enforced across every server thread at once.

A decode reserves its peak memory (read from the image header by
:func:`device.decode.plan_decode`) before the decoder runs, and gives it back when the
decoded image has been scaled down. Decodes run side by side only while their reservations fit
in the budget (``http.decode_memory_mb``); the others wait their turn, briefly. An image that
alone needs more than the whole budget is refused before anything is allocated, so the worst
case the uploads can cost the daemon is the budget itself, however many arrive together.
The budget bounds time as well: a JPEG whose scans would visit more 8x8 blocks than
MAX_SCAN_PASSES passes over the largest image the budget admits is refused (422) before decoding
(device.decode counts the scans), so repeated progressive scans cannot hold a thread for a minute.
A large decode (more than 1/``max_decodes`` of the budget, so they cannot all run side by side)
also needs one of ``max_decodes`` slots; when they are all taken it is turned away (503) at once
instead of queueing, so large uploads waiting their turn never hold every server thread and
/health and the other routes keep answering. Ordinary photos (a 4000x3000 JPEG is decoded at
1/4 scale, about 6 MB) are small and only ever wait for memory.

Memory given back must also leave the process: glibc keeps freed blocks of up to 32 MB in a
per-thread arena, so eight server threads that each decoded a large image once would keep
eight budgets' worth of RSS. :func:`return_freed_memory` fixes that for the whole daemon.
"""
from __future__ import annotations

import ctypes
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from device.decode import MAX_SCAN_PASSES, ImageTooLarge, check_scan_time, decode_planned, plan_decode

_log = logging.getLogger(__name__)

# How long an upload waits for other decodes to give memory back before it is turned away.
DEFAULT_WAIT_S = 10.0
# glibc mallopt(): blocks this large or larger are mmapped and unmapped on free (decoded images,
# frames); a fixed threshold also stops glibc raising it to 32 MB after the first large free.
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 256 * 1024


def return_freed_memory() -> bool:
    """Make large freed blocks go back to the system at once (glibc only; False elsewhere)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS): their allocators differ
        _log.info("mallopt not available: large freed blocks may stay in the process")
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))


class DecoderBusy(RuntimeError):
    """Too many uploads are decoding already, or the budget stayed taken for longer than the wait."""


class DecodeBudget:
    """Bytes of decoder memory that uploads may hold at once.

    Args:
        total_bytes: the budget.
        max_decodes: large decodes (over total_bytes / max_decodes each) decoding or waiting at
            once; more get :class:`DecoderBusy`.
        wait_s: how long :meth:`reserve` waits for room before raising :class:`DecoderBusy`.
        setting: the limit as refusals name it.
    """

    def __init__(self, total_bytes: int, *, max_decodes: int = 2, wait_s: float = DEFAULT_WAIT_S,
                 setting: str = "the decode budget (http.decode_memory_mb)"):
        if total_bytes <= 0:
            raise ValueError(f"total_bytes: must be > 0, got {total_bytes}")
        self.total_bytes = total_bytes
        self.wait_s = wait_s
        self.setting = setting
        self._free = total_bytes
        self._room = threading.Condition()
        self.max_decodes = max_decodes
        self._slots = threading.BoundedSemaphore(max_decodes)
        # the largest progressive JPEG the budget admits holds 128 bytes of coefficients per block
        self.max_scan_blocks = MAX_SCAN_PASSES * (total_bytes // 128)

    @contextmanager
    def reserve(self, nbytes: int) -> Iterator[None]:
        """Hold ``nbytes`` of the budget for the ``with`` block (waits while others hold it)."""
        if nbytes > self.total_bytes:
            raise ValueError(f"cannot reserve {nbytes} bytes of a {self.total_bytes}-byte budget")
        with self._room:
            if not self._room.wait_for(lambda: self._free >= nbytes, timeout=self.wait_s):
                raise DecoderBusy(f"other uploads are being decoded; try again (waited {self.wait_s:g} s)")
            self._free -= nbytes
        try:
            yield
        finally:
            with self._room:
                self._free += nbytes
                self._room.notify_all()

    def decode(self, data: bytes) -> np.ndarray:
        """Encoded upload -> HxWx3 uint8 RGB within the budget.

        Raises :class:`ImageTooLarge` (an ImageDecodeError) when the image alone is over the
        budget or its scans would take too long (ImageTooSlow), :class:`DecoderBusy` when no room
        came free in time, ImageDecodeError otherwise.
        """
        plan = plan_decode(data)
        if plan.cost_bytes > self.total_bytes:
            raise ImageTooLarge(f"image too large: {plan.describe()} needs about {_mb(plan.cost_bytes)} to "
                                f"decode, more than {self.setting} {_mb(self.total_bytes)}")
        check_scan_time(plan, self.max_scan_blocks, self.setting)
        large = plan.cost_bytes > self.total_bytes // self.max_decodes
        if large and not self._slots.acquire(blocking=False):
            raise DecoderBusy(f"{self.max_decodes} large images are being decoded already; try again")
        try:
            with self.reserve(plan.cost_bytes):
                return decode_planned(data, plan)
        finally:
            if large:
                self._slots.release()


def _mb(nbytes: int) -> str:
    return f"{nbytes / 2**20:.0f} MB"
