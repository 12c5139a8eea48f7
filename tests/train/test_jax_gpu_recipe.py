"""The GPU recipe on CPU: ``train.gpu_bundle pack`` on the fixture, then ``train/gpu_train.sh`` (what
``make train-gpu`` runs on the lent machine) under JAX with TensorFlow made unimportable, as on that
machine, and a time budget that ends the run early. The packed run folder reloads here."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from train import data as ds
from train import gpu_bundle

ROOT = Path(__file__).resolve().parents[2]
TINY_RECIPE = {"arch": "seed_cnn", "name": "gpu-tiny", "height": 56, "width": 72, "width_mult": 0.25,
               "epochs": 3, "batch_size": 16, "augment": False, "optimizer": "adam", "lr_policy": "constant",
               "max_lr": 0.003}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, fixture_dir) -> Path:
    work = tmp_path_factory.mktemp("bundle")
    config = work / "recipe.yaml"
    config.write_text(yaml.safe_dump(TINY_RECIPE))
    gpu_bundle.pack(config, fixture_dir, work / "bundle", repo=ROOT, wheels=False)
    return work / "bundle"


def test_the_bundle_holds_every_image_at_the_recipe_input(bundle, fixture_dir):
    summary = json.loads((bundle / "bundle.json").read_text())
    assert summary["images"] == 63 and summary["input"] == [56, 72]
    assert summary["bundle_bytes"] + summary["tree_bytes"] <= summary["limit_bytes"]
    records = ds.load_records(bundle / "data")
    assert [r.image_id for r in records] == [r.image_id for r in ds.load_records(fixture_dir)]
    assert {r.path.suffix for r in records} == {".webp"}
    pixels = ds.load_pixels(records[:5], 56, 72)
    originals = ds.load_pixels(ds.load_records(fixture_dir)[:5], 56, 72)
    assert pixels.shape == (5, 56, 72, 3)
    assert np.abs(pixels.astype(int) - originals).mean() < 6  # re-encoding keeps the picture


def test_quality_follows_the_space_left(fixture_dir):
    records = ds.load_records(fixture_dir)
    roomy = gpu_bundle.choose_quality(records, 56, 72, budget=10 * gpu_bundle.MIB)
    tight_budget = len(records) * len(gpu_bundle.encode(ds.load_pixels(records[:1], 56, 72)[0], 60))
    tight = gpu_bundle.choose_quality(records, 56, 72, budget=tight_budget)
    assert roomy == gpu_bundle.QUALITIES[0] and tight < roomy
    with pytest.raises(gpu_bundle.BundleError, match="MiB"):
        gpu_bundle.choose_quality(records, 56, 72, budget=1000)


def test_a_recipe_naming_unpacked_files_is_refused(tmp_path, fixture_dir):
    config = tmp_path / "recipe.yaml"
    config.write_text(yaml.safe_dump({**TINY_RECIPE, "init_from": "runs/x/best.keras"}))
    with pytest.raises(gpu_bundle.BundleError, match="init_from"):
        gpu_bundle.pack(config, fixture_dir, tmp_path / "bundle", repo=ROOT, wheels=False)


def test_train_gpu_without_tensorflow_stops_at_its_budget_and_packs_the_run(bundle, tmp_path):
    pytest.importorskip("jax")
    blocker = tmp_path / "no-tf" / "tensorflow"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('no TensorFlow on the GPU machine')\n")
    env = {**os.environ, "PYTHONPATH": f"{blocker.parent}:{ROOT}", "TMPDIR": str(tmp_path), "OUT": "",
           "PYTHON": sys.executable}
    out = tmp_path / "out"
    # 0.02 minutes: the first epoch (decoding and compiling included) already overruns it.
    proc = subprocess.run([str(ROOT / "train" / "gpu_train.sh"), str(bundle), "0.02", str(out),
                           "--runs-dir", str(tmp_path / "runs"), "--throughput", "32", "2", "--workers", "1"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "time budget of 0.02 min spent after epoch 1" in proc.stderr
    rates = json.loads((out / "throughput.json").read_text())
    assert rates["backend"] == "jax" and min(rates["decode_per_core"], rates["augment_per_worker"], rates["step"]) > 0
    (archive,) = out.glob("*.tar.gz")
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path / "back", filter="data")
    (run_dir,) = (tmp_path / "back").iterdir()
    assert json.loads((run_dir / "state.json").read_text())["epoch"] == 0  # one epoch of three, resumable
    assert json.loads((run_dir / "meta.json").read_text())["backend"] == "jax"
    assert (run_dir / "eval" / "metrics.json").is_file()
    from train.run import TrainingRun

    model = TrainingRun.load(run_dir).load_model("best")  # under TensorFlow, here
    assert model.output_shape == (None, 7)
