"""The training side on the JAX backend: a real two-epoch run on the fixture, calibration, Grad-CAM
and every architecture, in a subprocess with ``KERAS_BACKEND=jax`` (Keras picks its backend once per
process, and this one runs TensorFlow). Its checkpoint is then read back here, under TensorFlow,
and converted to int8 TFLite as ``quantize`` does."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.train.conftest import TINY_SEED_CNN

ROOT = Path(__file__).resolve().parents[2]

# Runs under KERAS_BACKEND=jax; argv: fixture folder, work folder. Prints one JSON line last.
JAX_SCRIPT = r"""
import json, sys
from pathlib import Path
import keras, numpy as np
from train import backbones, data as ds
from train.calibrate import calibrate_run
from train.dataset import predict_probs
from train.gradcam import write_examples
from train.models import ARCHITECTURES, build_model
from train.run import TrainingRun
from train.train import main

fixture, work = Path(sys.argv[1]), Path(sys.argv[2])
run_dir = main(["--data", str(fixture), "--runs-dir", str(work / "runs"), "--cache-dir", str(work / "cache"),
                *sys.argv[3:]])
calibration = calibrate_run(run_dir)
panels = write_examples(run_dir, n=1)
run = TrainingRun.load(run_dir)
test = ds.load_pixels(run.records("test"), *run.input_hw, work / "cache")
np.save(work / "jax_probs.npy", predict_probs(run.load_model("best"), test, *run.normalization))
outputs = {arch: build_model(arch, (56, 72, 3), width=0.25).predict(np.zeros((2, 56, 72, 3), "float32"), verbose=0)
           for arch in ARCHITECTURES}
mnv2, _ = backbones.pretrained_classifier("mobilenet_v2", (64, 64, 3), weights="none", num_classes=7, alpha=0.35)
outputs["mobilenet_v2"] = mnv2.predict(np.zeros((2, 64, 64, 3), "float32"), verbose=0)
print(json.dumps({"backend": keras.backend.backend(), "run": str(run_dir), "temperature": calibration["temperature"],
                  "panels": len(panels), "outputs": {k: v.tolist() for k, v in outputs.items()}}))
"""


def run_under_jax(script: str, *args: str, env: dict | None = None, timeout: float = 600) -> dict:
    """Run ``script`` with KERAS_BACKEND=jax (plus ``env``) from the repository root; its last
    stdout line, as JSON."""
    full_env = {**os.environ, "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT),
                **(env or {})}
    proc = subprocess.run([sys.executable, "-c", script, *args], check=False, cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def jax_run(tmp_path_factory, fixture_dir) -> tuple[dict, Path]:
    pytest.importorskip("jax")
    work = tmp_path_factory.mktemp("jax")
    result = run_under_jax(JAX_SCRIPT, str(fixture_dir), str(work), *TINY_SEED_CNN, "--epochs", "2",
                           "--augment", "true")
    return result, work


def test_training_under_jax_lowers_the_loss(jax_run):
    result, _ = jax_run
    run_dir = Path(result["run"])
    assert result["backend"] == "jax"
    assert json.loads((run_dir / "meta.json").read_text())["backend"] == "jax"
    with open(run_dir / "history.csv", newline="") as fh:
        losses = [float(row["loss"]) for row in csv.DictReader(fh)]
    assert len(losses) == 2 and losses[1] < losses[0] - 0.02, losses
    assert json.loads((run_dir / "eval" / "metrics.json").read_text())["n"] > 0  # evaluated under JAX too


def test_calibration_gradcam_and_every_architecture_run_under_jax(jax_run):
    result, _ = jax_run
    run_dir = Path(result["run"])
    assert (run_dir / "calibrated.keras").is_file() and result["temperature"] > 0
    assert result["panels"] >= 1
    for arch, probs in result["outputs"].items():
        probs = np.asarray(probs)
        assert probs.shape == (2, 7), arch
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-4, err_msg=arch)


def test_a_jax_checkpoint_reloads_under_tensorflow_and_quantizes(jax_run, fixture_dir):
    import keras

    from device.engine import open_interpreter
    from quantize.convert import convert_int8, representative_set
    from train import data as ds
    from train.dataset import predict_probs
    from train.run import TrainingRun

    assert keras.backend.backend() == "tensorflow"
    result, work = jax_run
    run = TrainingRun.load(Path(result["run"]))
    model = run.load_model("best")
    test = ds.load_pixels(run.records("test"), *run.input_hw, work / "cache")
    # The same weights give the same outputs on the other backend.
    np.testing.assert_allclose(predict_probs(model, test, *run.normalization), np.load(work / "jax_probs.npy"),
                               atol=1e-4)
    representative = representative_set(run.records("train"), *run.input_hw, *run.normalization, count=8,
                                        cache_dir=work / "cache")
    int8 = convert_int8(model, representative)
    path = work / "model_int8.tflite"
    path.write_bytes(int8)
    interpreter, _ = open_interpreter(path, num_threads=1)
    detail = interpreter.get_input_details()[0]
    assert tuple(detail["shape"][1:]) == (*run.input_hw, 3) and detail["dtype"] == np.int8
