"""Signed models: an Ed25519 signature over the card and the model file, checked before loading.

The card's sha256 catches a damaged ``.tflite``, not a changed one: whoever swaps the model can
re-hash the card too. ``models/<name>/card.sig`` (written by ``python -m quantize.sign sign``)
holds a signature over the exact bytes of ``card.json`` and the sha256 of the model file itself,
so changing either, or re-hashing the card, breaks it. The device checks it against the keys in
``model.public_keys``; with ``model.require_signature`` an unsigned model is refused as well.
A refusal is a :class:`SignatureError` (a CardError), so the daemon exits with code 2 at start
and keeps the running model on reload, like any other model it cannot use.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
from collections.abc import Iterable
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from device.card import CardError, ModelCard, sha256_file
from device.config import CARD_FILE, ConfigError, ModelConfig

_log = logging.getLogger(__name__)

SIGNATURE_FILE = "card.sig"
ALGORITHM = "ed25519"
# Bound into every signed message, so a signature made for anything else never verifies here.
_CONTEXT = b"dermedge model signature v1\n"


class SignatureError(CardError):
    """A model whose signature is missing (when required), unknown, malformed or wrong."""


def signed_message(card_bytes: bytes, model_sha256: str) -> bytes:
    """What is signed: the card's exact bytes (by their sha256) and the model file's sha256."""
    return _CONTEXT + f"card {hashlib.sha256(card_bytes).hexdigest()}\nmodel {model_sha256}\n".encode()


def key_id(public_key: Ed25519PublicKey) -> str:
    """Short name of a key: the first 16 hex digits of the sha256 of its raw 32 bytes."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def load_public_keys(paths: Iterable[str]) -> dict[str, Ed25519PublicKey]:
    """``{key id: key}`` from PEM files; raises ConfigError naming ``model.public_keys``."""
    keys = {}
    for path in map(Path, paths):
        try:
            key = serialization.load_pem_public_key(path.read_bytes())
        except OSError as err:
            raise ConfigError(f"model.public_keys: cannot read {path} ({err.strerror})") from err
        except ValueError as err:
            raise ConfigError(f"model.public_keys: {path} is not a PEM public key ({err})") from err
        if not isinstance(key, Ed25519PublicKey):
            raise ConfigError(f"model.public_keys: {path} is not an Ed25519 key")
        keys[key_id(key)] = key
    return keys


def signature_record(card_bytes: bytes, model_sha256: str, signer_key_id: str, signature: bytes) -> dict:
    """The content of ``card.sig``."""
    return {"algorithm": ALGORITHM, "key_id": signer_key_id, "signature": base64.b64encode(signature).decode(),
            "card_sha256": hashlib.sha256(card_bytes).hexdigest(), "model_sha256": model_sha256}


def verify_signature(folder: Path, keys: dict[str, Ed25519PublicKey], *, card_bytes: bytes | None = None,
                     model_path: Path | None = None, model_sha256: str | None = None) -> str:
    """Check ``folder/card.sig`` against the card and model file; returns the key id.

    The card's bytes, the model file and the sha256 of its bytes are read here, or given by a
    caller that loads exactly those bytes (``Engine.from_model_dir``), so a file replaced between
    the check and the load can never run. Raises :class:`SignatureError` naming the file when it
    is missing, malformed, made by a key not in ``keys`` or does not match.
    """
    folder = Path(folder)
    sig_path, card_path = folder / SIGNATURE_FILE, folder / CARD_FILE
    if not sig_path.is_file():
        raise SignatureError(f"{sig_path}: model is not signed")
    try:
        record = json.loads(sig_path.read_text())
        signer, signature = record["key_id"], base64.b64decode(record["signature"], validate=True)
        if record.get("algorithm") != ALGORITHM:
            raise ValueError(f"algorithm {record.get('algorithm')!r} is not {ALGORITHM}")
    except (ValueError, KeyError, TypeError, binascii.Error) as err:
        raise SignatureError(f"{sig_path}: not a valid signature file ({err})") from err
    if signer not in keys:
        raise SignatureError(f"{sig_path}: signed by key {signer}, which is not in model.public_keys")
    if card_bytes is None or model_path is None or model_sha256 is None:
        model_path = folder / ModelCard.load(card_path).model_file.path
        card_bytes = card_path.read_bytes()
        if not model_path.is_file():
            raise SignatureError(f"model file not found: {model_path}")
        model_sha256 = sha256_file(model_path)
    try:
        keys[signer].verify(signature, signed_message(card_bytes, model_sha256))
    except InvalidSignature:
        raise SignatureError(f"{sig_path}: signature does not match {card_path} and {model_path} "
                             "(changed since they were signed)") from None
    return signer


def check_model_signature(folder: Path, model: ModelConfig, **loaded) -> str:
    """Apply the ``model`` section's signature policy to ``folder``; returns what was found.

    No keys configured: nothing is checked. Keys configured: a present signature must verify,
    and a missing one is refused when ``require_signature`` is on (else logged as a warning).
    ``loaded``: the bytes to check instead of the files (see :func:`verify_signature`).
    """
    if not model.public_keys:
        return "signature not checked (model.public_keys is empty)"
    keys = load_public_keys(model.public_keys)
    if not (Path(folder) / SIGNATURE_FILE).is_file() and not model.require_signature:
        _log.warning("model %s is not signed (model.require_signature is off, so it is loaded)", folder)
        return "unsigned (allowed: model.require_signature is off)"
    return f"signed by key {verify_signature(folder, keys, **loaded)}"
