"""The memory budget for decoding uploads, enforced across every server thread at once.

A decode reserves its peak memory (read from the image header by
:func:`device.preprocess.plan_decode`) before the decoder runs, and gives it back when the
decoded image has been scaled down. Decodes run side by side only while their reservations fit
in the budget (``http.decode_memory_mb``); the others wait their turn, briefly. An image that
alone needs more than the whole budget is refused before anything is allocated, so the worst
case the uploads can cost the daemon is the budget itself, however many arrive together.
"""
from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from device.preprocess import check_decode_cost, decode_planned, plan_decode

# How long an upload waits for other decodes to give memory back before it is turned away.
DEFAULT_WAIT_S = 10.0


class DecoderBusy(RuntimeError):
    """The budget stayed taken by other decodes for longer than the wait allows."""


class DecodeBudget:
    """Bytes of decoder memory that uploads may hold at once.

    Args:
        total_bytes: the budget.
        wait_s: how long :meth:`reserve` waits for room before raising :class:`DecoderBusy`.
        setting: the limit as refusals name it.
    """

    def __init__(self, total_bytes: int, *, wait_s: float = DEFAULT_WAIT_S, setting: str = "the decode budget (http.decode_memory_mb)"):
        if total_bytes <= 0:
            raise ValueError(f"total_bytes: must be > 0, got {total_bytes}")
        self.total_bytes = total_bytes
        self.wait_s = wait_s
        self.setting = setting
        self._free = total_bytes
        self._room = threading.Condition()

    @property
    def in_use(self) -> int:
        with self._room:
            return self.total_bytes - self._free

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
        budget, :class:`DecoderBusy` when no room came free in time, ImageDecodeError otherwise.
        """
        plan = plan_decode(data)
        check_decode_cost(plan, self.total_bytes, self.setting)
        with self.reserve(plan.cost_bytes):
            return decode_planned(data, plan)
