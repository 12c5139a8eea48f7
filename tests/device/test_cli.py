"""python -m device: predict on fixture images (subprocess, the tiny int8 model), config and model errors."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from device.__main__ import main
from device.engine import Engine
from device.preprocess import load_image

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
