"""Signed models: signing with quantize.sign, verifying on the device (device/signature.py), the
policy at start and on reload, and the tampering the card's sha256 alone cannot catch."""
from __future__ import annotations

import json
import os
import shutil

import pytest

import device.predict as predict_module
from device.card import sha256_file
from device.config import ConfigError, config_from_dict
from device.daemon import Daemon
from device.predict import load_model
from device.signature import (
    SIGNATURE_FILE,
    SignatureError,
    check_model_signature,
    load_public_keys,
    verify_signature,
)
from quantize.sign import keygen, load_private_key
from quantize.sign import main as sign_cli
from quantize.sign import sign as sign_model
from tests.helpers import wait_for


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """Two key pairs: the release key and another one."""
    root = tmp_path_factory.mktemp("keys")
    return {name: keygen(root / name) for name in ("release", "other")}


@pytest.fixture
def signed_model(tmp_path, tiny_model_dir, keys):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    sign_model(folder, load_private_key(keys["release"][0]))
    return folder


def model_cfg(folder, keys, *names, require=True, **sections):
    return config_from_dict({"model": {"dir": str(folder), "threads": 1, "require_signature": require,
                                       "public_keys": [str(keys[n][1]) for n in names]}, **sections})


def daemon_sections(images) -> dict:
    return {"camera": {"source": "folder", "path": str(images), "fps": 50.0}, "mqtt": {"enabled": False},
            "http": {"port": 0}}


def tamper_and_rehash(folder) -> None:
    """Change the model's bytes and write the new sha256 and size into the card, as an attacker
    who can write the model folder would: the card's own check passes again."""
    model = folder / "model_int8.tflite"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    card = json.loads((folder / "card.json").read_text())
    card["model_file"]["sha256"], card["model_file"]["size_bytes"] = sha256_file(model), len(data)
    (folder / "card.json").write_text(json.dumps(card, indent=2) + "\n")


def test_keygen_keeps_the_private_key_private_and_out_of_the_repository(tmp_path, keys):
    private, public = keys["release"]
    assert private.stat().st_mode & 0o777 == 0o600 and public.read_text().startswith("-----BEGIN PUBLIC KEY")
    repo = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
    with pytest.raises(ValueError, match="inside the repository"):
        keygen(os.path.join(repo, "models", "keys"))
    with pytest.raises(ValueError, match="exists"):
        keygen(private.parent)


def test_a_signed_model_loads_and_says_who_signed_it(signed_model, keys):
    cfg = model_cfg(signed_model, keys, "other", "release")
    assert check_model_signature(signed_model, cfg.model).startswith("signed by key ")
    assert load_model(cfg).engine.card.name == "tiny"


def test_a_tampered_but_rehashed_model_is_refused_when_signatures_are_required(signed_model, keys):
    tamper_and_rehash(signed_model)
    unsigned_cfg = config_from_dict({"model": {"dir": str(signed_model), "threads": 1}})
    load_model(unsigned_cfg)  # without signatures the re-hashed card checks out: the old hole
    with pytest.raises(SignatureError, match=r"card.sig: signature does not match .*card.json"):
        load_model(model_cfg(signed_model, keys, "release"))


def test_files_swapped_right_after_the_signature_check_are_never_loaded(signed_model, keys, monkeypatch):
    # The daemon reloads by itself when the folder changes (device.model_watch), so someone who can
    # write the folder can time a swap to land between the signature check and the load. The
    # engine runs the bytes the signature was checked on, whatever the files say by then.
    signed_sha = json.loads((signed_model / "card.json").read_text())["model_file"]["sha256"]
    real_check = predict_module.check_model_signature

    def check_then_swap(*args, **kwargs):
        found = real_check(*args, **kwargs)
        tamper_and_rehash(signed_model)  # an unsigned pair that passes the card's own sha256
        return found

    monkeypatch.setattr(predict_module, "check_model_signature", check_then_swap)
    engine = load_model(model_cfg(signed_model, keys, "release")).engine
    assert engine.card.model_file.sha256 == signed_sha != sha256_file(signed_model / "model_int8.tflite")
    monkeypatch.undo()
    with pytest.raises(SignatureError, match="signature does not match"):  # as the next reload sees it
        load_model(model_cfg(signed_model, keys, "release"))


@pytest.mark.parametrize("change", ["card-field", "card-whitespace", "model-only"])
def test_any_change_to_card_or_model_breaks_the_signature(signed_model, keys, change):
    card_path = signed_model / "card.json"
    if change == "card-field":
        card = json.loads(card_path.read_text())
        card["description"] = "a better model, trust me"
        card_path.write_text(json.dumps(card, indent=2) + "\n")
    elif change == "card-whitespace":
        card_path.write_text(card_path.read_text() + "\n")
    else:
        (signed_model / "model_int8.tflite").write_bytes(b"\0" * 64)
    with pytest.raises(SignatureError, match="does not match"):
        verify_signature(signed_model, load_public_keys([str(keys["release"][1])]))


def test_unsigned_and_foreign_signed_models_are_refused_when_required(signed_model, keys):
    with pytest.raises(SignatureError, match="signed by key .* not in model.public_keys"):
        load_model(model_cfg(signed_model, keys, "other"))
    (signed_model / SIGNATURE_FILE).unlink()
    with pytest.raises(SignatureError, match="card.sig: model is not signed"):
        load_model(model_cfg(signed_model, keys, "release"))
    # not required: an unsigned model loads (with a warning); a present but wrong one never does
    assert check_model_signature(signed_model, model_cfg(signed_model, keys, "release", require=False).model) \
        .startswith("unsigned")


def test_a_garbled_signature_file_is_refused_naming_it(signed_model, keys):
    (signed_model / SIGNATURE_FILE).write_text('{"algorithm": "ed25519", "key_id": "x", "signature": "@@"}')
    with pytest.raises(SignatureError, match="card.sig: not a valid signature file"):
        load_model(model_cfg(signed_model, keys, "release", require=False))


def test_signature_config_rules(tmp_path, keys):
    with pytest.raises(ConfigError, match="model.require_signature: needs at least one key"):
        config_from_dict({"model": {"require_signature": True}})
    with pytest.raises(ConfigError, match="model.public_keys: expected a list"):
        config_from_dict({"model": {"public_keys": "one.pub"}})
    not_a_key = tmp_path / "x.pub"
    not_a_key.write_text("hello")
    with pytest.raises(ConfigError, match="model.public_keys: .*x.pub is not a PEM public key"):
        check_model_signature(tmp_path, config_from_dict({"model": {"public_keys": [str(not_a_key)]}}).model)


def test_reload_refuses_a_tampered_model_and_keeps_the_running_one(signed_model, keys, fixture_dir):
    daemon = Daemon(model_cfg(signed_model, keys, "release", **daemon_sections(fixture_dir / "images")))
    daemon.start()
    try:
        wait_for(lambda: daemon.frames >= 3, what="frames")
        running = daemon._model
        tamper_and_rehash(signed_model)
        assert daemon.reload() is False
        assert daemon._model is running
        before = daemon.frames
        wait_for(lambda: daemon.frames >= before + 3, what="frames after the refused reload")
        assert 'dermedge_errors_total{kind="reload"} 1' in daemon.state.metrics_text()
    finally:
        daemon.stop()


def test_the_daemon_refuses_to_start_on_an_unsigned_model(tmp_path, tiny_model_dir, keys, fixture_dir):
    cfg = model_cfg(tiny_model_dir, keys, "release", **daemon_sections(fixture_dir / "images"))
    with pytest.raises(SignatureError, match="model is not signed"):
        Daemon(cfg).start()


def test_sign_cli_round_trip_and_exit_codes(signed_model, keys, capsys):
    release_pub, other_pub = str(keys["release"][1]), str(keys["other"][1])
    assert sign_cli(["verify", str(signed_model), "--public-key", other_pub, "--public-key", release_pub]) == 0
    assert "signed by key" in capsys.readouterr().out
    assert sign_cli(["verify", str(signed_model), "--public-key", other_pub]) == 1
    assert sign_cli(["sign", str(signed_model), "--key", release_pub]) == 2  # a public key cannot sign
    assert "not an unencrypted PEM private key" in capsys.readouterr().err
    tamper_and_rehash(signed_model)
    assert sign_cli(["verify", str(signed_model), "--public-key", release_pub]) == 1
    assert sign_cli(["sign", str(signed_model), "--key", str(keys["release"][0])]) == 0  # re-signed by the owner
    assert sign_cli(["verify", str(signed_model), "--public-key", release_pub]) == 0
