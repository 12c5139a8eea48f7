"""The HTTP bearer token: where it comes from and how a request's header is checked.

The token is ``http.token`` or the contents of ``http.token_file``, read once at start so the
secret need not live in the YAML. The file must not be readable by other users, nor writable
by its group; its content follows the same rules as ``http.token`` (see
:func:`device.config.token_problem`), bar one trailing newline.
"""
from __future__ import annotations

import hmac
import stat
from pathlib import Path

from device.config import ConfigError, HttpConfig, token_problem


def load_token(cfg: HttpConfig) -> bytes | None:
    """The token as bytes, or None when neither ``http.token`` nor ``http.token_file`` is set.

    Raises :class:`ConfigError` naming ``http.token_file`` for a missing, unsafe or bad file.
    """
    if cfg.token_file is None:
        return cfg.token.encode("ascii") if cfg.token is not None else None
    path = Path(cfg.token_file)
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        raise ConfigError(f"http.token_file: not found: {path}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"http.token_file: {path} holds a non-ASCII token: use printable ASCII") from None
    except OSError as err:
        raise ConfigError(f"http.token_file: cannot read {path} ({err.strerror})") from err
    if not stat.S_ISREG(mode):
        raise ConfigError(f"http.token_file: {path} is not a regular file")
    if mode & (stat.S_IRWXO | stat.S_IWGRP):
        raise ConfigError(f"http.token_file: {path} has mode {stat.S_IMODE(mode):04o}, which lets other users "
                          "read or change it; chmod 600 (or 640 for a root-owned file the service group reads)")
    token = text.removesuffix("\n").removesuffix("\r")
    if problem := token_problem(token):
        raise ConfigError(f"http.token_file: the token in {path} {problem}")
    return token.encode("ascii")


def bearer_matches(authorization: str, token: bytes) -> bool:
    """Whether an ``Authorization`` header carries ``Bearer <token>`` (constant-time compare)."""
    scheme, _, given = authorization.partition(" ")
    try:
        given_bytes = given.strip().encode("ascii")
    except UnicodeEncodeError:  # never equal to a valid token, which is ASCII
        return False
    return scheme.lower() == "bearer" and hmac.compare_digest(given_bytes, token)
