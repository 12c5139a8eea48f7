"""Sign model folders with Ed25519, so a device can tell a released model from a changed one.

    python -m quantize.sign keygen --out ~/.config/dermedge/signing
    python -m quantize.sign sign experiments/dermnet-edge --key ~/.config/dermedge/signing/dermedge-signing.key
    python -m quantize.sign verify experiments/dermnet-edge --public-key device-keys/release.pub

``keygen`` writes ``dermedge-signing.key`` (the private key, mode 0600) and
``dermedge-signing.pub`` (the public key, for ``model.public_keys`` on the device). It refuses to
write inside this repository: the private key must never be committed. ``sign`` writes
``card.sig`` beside ``card.json``; sign again after any change to the card or the model.
``verify`` checks a folder the way the device does (device/signature.py).
Exit codes: 0 success, 1 a signature that does not verify, 2 bad arguments or files.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from device.card import CardError, ModelCard, sha256_file
from device.config import CARD_FILE
from device.signature import (
    SIGNATURE_FILE,
    SignatureError,
    key_id,
    load_public_keys,
    signature_record,
    signed_message,
    verify_signature,
)

REPO = Path(__file__).resolve().parents[1]
PRIVATE_NAME, PUBLIC_NAME = "dermedge-signing.key", "dermedge-signing.pub"
EXIT_OK, EXIT_BAD_SIGNATURE, EXIT_BAD_INPUT = 0, 1, 2


def keygen(out_dir: Path) -> tuple[Path, Path]:
    """A new key pair in ``out_dir`` (created 0700); refuses the repository and existing keys."""
    out_dir = Path(out_dir).expanduser().resolve()
    if out_dir == REPO or REPO in out_dir.parents:
        raise ValueError(f"--out: {out_dir} is inside the repository; keep the private key outside it")
    private_path, public_path = out_dir / PRIVATE_NAME, out_dir / PUBLIC_NAME
    if private_path.exists():
        raise ValueError(f"--out: {private_path} exists; move it away to make a new key pair")
    out_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # never readable by others
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    public_path.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                          serialization.PublicFormat.SubjectPublicKeyInfo))
    return private_path, public_path


def load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except OSError as err:
        raise ValueError(f"--key: cannot read {path} ({err.strerror})") from err
    except (ValueError, TypeError) as err:
        raise ValueError(f"--key: {path} is not an unencrypted PEM private key ({err})") from err
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"--key: {path} is not an Ed25519 key")  # noqa: TRY004 - a bad file, not a bug
    return key


def sign(model_dir: Path, key: Ed25519PrivateKey) -> Path:
    """Write ``model_dir/card.sig`` over the card as it is and the model file it names."""
    model_dir = Path(model_dir)
    card_path = model_dir / CARD_FILE
    card = ModelCard.load(card_path)
    model_path = model_dir / card.model_file.path
    if not model_path.is_file():
        raise CardError(f"model file not found: {model_path}")
    card_bytes, model_sha256 = card_path.read_bytes(), sha256_file(model_path)
    if model_sha256 != card.model_file.sha256:
        raise CardError(f"{model_path}: sha256 does not match the card's model_file.sha256; not signing")
    signature = key.sign(signed_message(card_bytes, model_sha256))
    record = signature_record(card_bytes, model_sha256, key_id(key.public_key()), signature)
    out = model_dir / SIGNATURE_FILE
    out.write_text(json.dumps(record, indent=2) + "\n")
    return out


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m quantize.sign", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_keygen = sub.add_parser("keygen", help="make a signing key pair (outside the repository)")
    p_keygen.add_argument("--out", type=Path, required=True, help="folder for the key pair")
    p_sign = sub.add_parser("sign", help="write MODEL_DIR/card.sig")
    p_sign.add_argument("model_dir", type=Path)
    p_sign.add_argument("--key", type=Path, required=True, help="private key from keygen")
    p_verify = sub.add_parser("verify", help="check MODEL_DIR/card.sig as the device does")
    p_verify.add_argument("model_dir", type=Path)
    p_verify.add_argument("--public-key", type=Path, action="append", required=True,
                          help="public key file (repeat for several)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "keygen":
            private_path, public_path = keygen(args.out)
            print(f"private key: {private_path} (mode 0600; keep it off the device and out of git)")
            print(f"public key:  {public_path} (list it in model.public_keys on the device)")
        elif args.command == "sign":
            key = load_private_key(args.key)
            print(f"signed: {sign(args.model_dir, key)} (key {key_id(key.public_key())})")
        else:
            keys = load_public_keys(str(p) for p in args.public_key)
            print(f"ok: {args.model_dir} signed by key {verify_signature(args.model_dir, keys)}")
    except SignatureError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_SIGNATURE
    except (ValueError, OSError) as err:  # ConfigError and CardError are ValueErrors
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
