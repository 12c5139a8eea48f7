"""Notice when the files of the model folder are replaced, so the daemon reloads them (as SIGHUP does).

The engine runs from a copy of the model in memory, so a file changed under it cannot hurt it;
but a model updated on disk should be picked up, and one that does not check out should be
refused while the running one goes on. A change is reported once the folder has stayed the same
for ``settle_s``: ``cp`` writes a file in pieces, and a card and its model are seldom written in
the same instant. The folder is compared by each entry's inode, size and modification time, read
with one ``stat`` per file (no file is opened), through a symlinked ``model.dir`` as well.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

# How long the folder must stay unchanged before a change is reported.
SETTLE_S = 1.0

_Stamp = frozenset[tuple[str, int, int, int, int]]


def folder_stamp(folder: Path) -> _Stamp:
    """``(name, device, inode, size, mtime_ns)`` of every file directly in ``folder`` (empty if it is gone)."""
    entries = set()
    try:
        with os.scandir(folder) as scan:
            for entry in scan:
                try:
                    if entry.is_file():
                        st = entry.stat()
                        entries.add((entry.name, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
                except OSError:  # removed between the listing and the stat
                    continue
    except OSError:
        pass
    return frozenset(entries)


class ModelWatch:
    """Polled by the daemon's main thread: :meth:`changed` is True once per settled change."""

    def __init__(self, folder: str | Path, *, settle_s: float = SETTLE_S, clock=time.monotonic):
        self.folder = Path(folder)
        self._settle_s = settle_s
        self._clock = clock
        self._seen = folder_stamp(self.folder)
        self._pending: _Stamp | None = None
        self._pending_since = 0.0

    def changed(self) -> bool:
        stamp = folder_stamp(self.folder)
        if stamp == self._seen:
            self._pending = None
            return False
        if stamp != self._pending:  # still being written: wait for it to settle
            self._pending, self._pending_since = stamp, self._clock()
            return False
        if self._clock() - self._pending_since < self._settle_s:
            return False
        self._seen, self._pending = stamp, None
        return True
