"""python -m device: predict on fixture images (subprocess, the tiny int8 model), config and model errors."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import yaml

from device.__main__ import main
from device.decode import load_image
from device.demo import SAMPLE_IMAGES
from device.engine import Engine

REPO = Path(__file__).parents[2]


def cli(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, "-m", "device", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)


def test_predict_json_lines_on_fixture_images(tiny_model_dir, fixture_dir, tmp_path):
    images = sorted((fixture_dir / "images").glob("*.jpg"))
    folder = tmp_path / "some"
    folder.mkdir()
    for image in images[:4]:
        shutil.copy(image, folder / image.name)
    proc = cli("predict", "--model", str(tiny_model_dir), "--json", str(folder), str(images[10]))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 5
    rows = [json.loads(line) for line in lines]
    assert [Path(r["file"]).name for r in rows] == [p.name for p in images[:4]] + [images[10].name]

    engine = Engine.from_model_dir(tiny_model_dir, num_threads=1)
    codes = engine.card.codes
    for row in rows:
        assert row["model"] == "tiny" and row["state"] in ("ok", "uncertain", "poor_quality")
        assert list(row["all_probabilities"]) == list(codes)
        assert sum(row["all_probabilities"].values()) == pytest.approx(1.0, abs=1e-3)
        assert "not a diagnosis" in row["disclaimer"]
        # Same answer as the engine on the same file (the CLI adds no preprocessing of its own).
        probs = engine.infer(load_image(row["file"])).probabilities
        assert row["class_code"] == codes[int(np.argmax(probs))]
        np.testing.assert_allclose(list(row["all_probabilities"].values()), probs / probs.sum(), atol=1e-5)


def test_predict_text_output_and_a_bad_file(tiny_model_dir, fixture_dir, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff not a jpeg")
    good = fixture_dir / "images" / "ISIC_0024475.jpg"
    proc = cli("predict", "--model", str(tiny_model_dir), str(broken), str(good))
    assert proc.returncode == 1  # one file could not be read
    assert f"error: {broken}" in proc.stderr
    out = proc.stdout.splitlines()
    assert out[0].startswith(f"{good}: ") and "top-3:" in out[0]
    assert "not a diagnosis" in out[-1]


def test_predict_missing_model_names_the_path(tmp_path, fixture_dir, capsys):
    missing = tmp_path / "no-model"
    assert main(["predict", "--model", str(missing), str(fixture_dir / "images")]) == 2
    assert f"model folder not found: {missing}" in capsys.readouterr().err


def test_predict_missing_model_file_names_the_file(tmp_path, tiny_model_dir, fixture_dir, capsys):
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    (model_dir / "model_int8.tflite").unlink()
    assert main(["predict", "--model", str(model_dir), str(fixture_dir / "images")]) == 2
    assert f"model file not found: {model_dir / 'model_int8.tflite'}" in capsys.readouterr().err


def test_predict_missing_image_names_it(tiny_model_dir, tmp_path, capsys):
    assert main(["predict", "--model", str(tiny_model_dir), str(tmp_path / "nope.jpg")]) == 2
    assert f"no such image file or folder: {tmp_path / 'nope.jpg'}" in capsys.readouterr().err


def test_bad_config_exits_non_zero_naming_the_key(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"mqtt": {"port": "eighteen"}}))
    assert main(["check-config", str(bad)]) == 2
    assert "mqtt.port: expected int, got str" in capsys.readouterr().err
    typo = tmp_path / "typo.yaml"
    typo.write_text(yaml.safe_dump({"camera": {"sorce": "folder"}}))
    proc = cli("run", "--config", str(typo), timeout=60)
    assert proc.returncode == 2
    assert "camera.sorce: unknown key" in proc.stderr


def test_check_config_verifies_the_model(tmp_path, tiny_model_dir, capsys):
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    config = tmp_path / "device.yaml"
    config.write_text(yaml.safe_dump({"model": {"dir": str(model_dir)}}))
    assert main(["check-config", str(config)]) == 0
    assert "ok:" in capsys.readouterr().out
    with open(model_dir / "model_int8.tflite", "ab") as fh:
        fh.write(b"tampered")
    assert main(["check-config", str(config)]) == 2
    assert f"{model_dir / 'model_int8.tflite'}: sha256" in capsys.readouterr().err


def test_run_with_missing_model_names_the_path(tmp_path, fixture_dir, capsys):
    missing = tmp_path / "absent"
    code = main(["run", "--model", str(missing), "--source", "folder", "--path", str(fixture_dir / "images"),
                 "--no-mqtt", "--http-port", "0"])
    assert code == 2
    assert f"model.dir: model folder not found: {missing}" in capsys.readouterr().err


@pytest.mark.parametrize(("source", "kind"), [("folder", "image folder"), ("opencv", "video file")])
def test_run_with_a_missing_replay_path_exits_2_naming_it_once(tmp_path, source, kind):
    missing = tmp_path / ("absent" if source == "folder" else "absent.mp4")
    proc = cli("run", "--model", "experiments/dermnet-edge", "--source", source, "--path", str(missing), "--no-mqtt",
               "--http-port", "0", timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: camera.path: {kind} not found: {missing}"  # nothing else, once


def test_the_interpreter_info_line_stays_off_the_terminal(fixture_dir):
    image = min((fixture_dir / "images").glob("*.jpg"))
    env = {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}
    proc = subprocess.run([sys.executable, "-m", "device", "predict", "--model", "experiments/dermnet-edge", str(image)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0 and image.name in proc.stdout
    assert proc.stderr == ""  # the runtime prints "INFO: Created TensorFlow Lite XNNPACK delegate" here


def test_native_stderr_other_than_the_info_line_still_reaches_the_log(caplog):
    from device.native_stderr import native_stderr_to_log

    with caplog.at_level("WARNING", logger="device.native_stderr"), native_stderr_to_log():
        os.write(2, b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\nERROR: something real\n")
    assert [r.getMessage() for r in caplog.records] == ["interpreter: ERROR: something real"]


def test_demo_comes_up_healthy_with_a_private_broker(tmp_path, free_port):
    """``make demo`` as the README runs it (setup skipped: the venv exists), stopped with Ctrl-C."""
    if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
        pytest.fail("mosquitto is not installed: apt-get install mosquitto (.ci/run does it)")
    port = free_port()
    log = tmp_path / "demo.log"
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "state")}
    with open(log, "wb") as out:
        proc = subprocess.Popen(["make", "-s", "-o", "setup-device", "demo", f"DEMO_PORT={port}",
                                 f"PY={sys.executable}"], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline, health = time.monotonic() + 60, {}
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                health = requests.get(f"http://127.0.0.1:{port}/health", timeout=2).json()
            except requests.RequestException:
                health = {}
            if health.get("frames", 0) >= 2 and health.get("mqtt") == "connected":
                break
            time.sleep(0.2)
        assert health.get("status") == "ok", f"{health}\n{log.read_text()}"
        assert (health["camera"], health["inference"], health["mqtt"]) == ("ok", "ok", "connected")
        assert requests.get(f"http://127.0.0.1:{port}/", timeout=5).status_code == 200
        latest = requests.get(f"http://127.0.0.1:{port}/latest", timeout=5).json()
        assert (Path(SAMPLE_IMAGES) / latest["source"]).is_file()  # says which sample it classified
        saved = requests.post(f"http://127.0.0.1:{port}/capture", timeout=10)
        assert saved.status_code == 201, saved.text
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches make and the daemon, not the broker
        proc.wait(30)
    text = log.read_text()
    assert "mosquitto_sub -h 127.0.0.1 -p" in text
    assert "XNNPACK" not in text and " WARNING " not in text and "Traceback" not in text, text
    assert proc.returncode in (0, 2, -signal.SIGINT)  # make's view of Ctrl-C; the daemon's is below
    assert "SIGINT received, stopping" in text and "HTTP: stopped" in text
    # the demo's captures went to a temporary folder, removed at the end; none to the user's state
    state = Path(text.split("captures go to ", 1)[1].split(" (removed", 1)[0])
    assert state.name == "captures" and state.parent.name.startswith("dermedge-demo-state-")
    assert not state.parent.exists() and not (tmp_path / "state").exists()
    assert "one sample every 3 s" in text


# --- what a person reads: the result's one message, and each error named plainly -----------------


def test_predict_text_says_the_advice_and_the_gate(gated_model_dir, fixture_dir, negative_images):
    from device.config import PostprocessConfig
    from device.postprocess import Postprocessor

    engine = Engine.from_model_dir(gated_model_dir, num_threads=1)
    post = Postprocessor(engine.card, PostprocessConfig())
    referred = next(p for p in sorted((fixture_dir / "images").glob("*.jpg"))
                    if post.process(engine.infer(rgb := load_image(p)), rgb=rgb, frame_id=1, timestamp=0.0,
                                    t_start=time.monotonic()).refer)
    proc = cli("predict", "--model", str(gated_model_dir), str(referred), str(negative_images[0]))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith(f"{referred}: ") and "top-3:" in lines[0]
    assert lines[1] == "  -> See a dermatologist: this lesion has features of a skin cancer."
    assert lines[2] == f"{negative_images[0]}: Not a skin lesion [not_lesion]"  # no class, no confidence
    assert lines[3] == "  -> Point the camera at a skin lesion."
    assert "not a diagnosis" in lines[-1]
    rows = [json.loads(line) for line in cli("predict", "--model", str(gated_model_dir), "--json",
                                             str(negative_images[0])).stdout.splitlines()]
    assert rows[0]["state"] == "not_lesion" and rows[0]["class_code"] is None and rows[0]["refer"] is None
    assert rows[0]["lesion_gate"]["score"] >= rows[0]["lesion_gate"]["threshold"] == 0.5
    assert rows[0]["advice"] == "Point the camera at a skin lesion."


def test_predict_errors_read_as_a_user_wants(tiny_model_dir, tmp_path, capsys):
    text = tmp_path / "README.md"
    text.write_text("# not an image\n")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"x")
    assert main(["predict", "--model", str(tiny_model_dir), str(text), str(broken)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == [f"error: {text}: not an image file (expected JPEG, PNG, WebP or BMP)",  # the path once
                   f"error: {broken}: corrupt image: 1 byte, too short for any image file"]
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(b"GIF89a" + bytes(64))
    assert main(["predict", "--model", str(tiny_model_dir), str(truncated)]) == 1
    assert "corrupt image: named .jpg but its bytes are no JPEG, PNG, WebP or BMP" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["predict", "--model", str(tiny_model_dir), str(empty)]) == 2
    assert capsys.readouterr().err == f"error: no images (.jpg, .jpeg, .png, .bmp, .webp) in folder {empty}\n"


def test_a_model_name_without_models_gets_a_hint(tmp_path, tiny_model_dir, fixture_dir, monkeypatch, capsys):
    shutil.copytree(tiny_model_dir, tmp_path / "models" / "tiny")
    monkeypatch.chdir(tmp_path)
    assert main(["predict", "--model", "tiny", str(fixture_dir / "images")]) == 2
    assert "model folder not found: tiny (did you mean models/tiny?)" in capsys.readouterr().err
    assert main(["predict", "--model", "elsewhere", str(fixture_dir / "images")]) == 2
    assert capsys.readouterr().err.strip().endswith("model folder not found: elsewhere")


def test_demo_with_a_bad_model_fails_before_announcing_anything(tmp_path, capsys):
    assert main(["demo", "--model", str(tmp_path / "bad"), "--no-mqtt"]) == 2
    err = capsys.readouterr().err
    assert err == f"error: model.dir: model folder not found: {tmp_path / 'bad'}\n"  # no broker, no demo lines


def test_train_help_comes_before_any_tensorflow_logging():
    done = subprocess.run([sys.executable, "-m", "train", "--help"], cwd=REPO, capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0 and done.stdout.startswith("usage: python -m train")
    assert done.stderr == ""  # no absl preamble, oneDNN or CPU-feature notices


def test_the_web_install_has_no_unreviewed_install_scripts(tmp_path, web_deps):
    """npm 11 warned at every `make web` that esbuild's install script was not covered by allowScripts."""
    for name in ("package.json", "package-lock.json"):
        shutil.copy(REPO / "web" / name, tmp_path / name)
    done = subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--prefer-offline"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr
    assert "install-scripts" not in done.stderr and "allowScripts" not in done.stderr, done.stderr
