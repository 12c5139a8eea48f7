"""Keep the TFLite runtime's own stderr chatter off a user's terminal.

The interpreter's C++ code writes ``INFO: Created TensorFlow Lite XNNPACK delegate for CPU.``
straight to file descriptor 2 when tensors are allocated, past Python's logging. While the
interpreter is built, fd 2 points at a temporary file (a file, not a pipe, so a writer can
never block); afterwards the known informational lines are dropped and anything else is
passed to the log, so a real native warning is still seen.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator

_log = logging.getLogger(__name__)

# Native lines that say nothing a user needs to act on: the XNNPACK notice, and TensorFlow's
# start-up chatter (absl's preamble, INFO lines such as oneDNN's and the CPU feature notice).
QUIET_PREFIXES = ("INFO: Created TensorFlow Lite XNNPACK delegate",
                  "WARNING: All log messages before absl::InitializeLog() is called",
                  "To enable the following instructions:")
_ABSL_INFO = re.compile(r"I\d{4} ")


@contextlib.contextmanager
def native_stderr_to_log() -> Iterator[None]:
    """Capture fd 2 for the duration of the block; unknown lines are logged as warnings."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            text = sink.read().decode(errors="replace")
    for line in text.splitlines():
        if line.strip() and not line.startswith(QUIET_PREFIXES) and not _ABSL_INFO.match(line):
            _log.warning("interpreter: %s", line)
