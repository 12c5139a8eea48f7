"""A pretrained-backbone run end to end on the fixture: two phases, what trains in each, the
weights' provenance in meta.json, a quantization-aware warm restart, and resume."""
from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from quantize.card import build_card
from quantize.convert import convert_int8
from train import backbones, qat
from train.run import TrainingRun
from train.train import main

TINY_MNV2 = ("--arch", "mobilenet_v2", "--backbone-weights", "none", "--height", "32", "--width", "40",
             "--width-mult", "0.35", "--batch-size", "16", "--augment", "false", "--lr-policy", "cosine",
             "--max-lr", "1e-3", "--base-lr", "1e-5", "--freeze-epochs", "1", "--trainable-from", "block_13_expand",
             "--bn-mode", "reestimate", "--workers", "1", "--no-evaluate")


def _weights(model: keras.Model, name: str) -> list[np.ndarray]:
    return [np.array(w) for w in model.get_layer(name).get_weights()]


def test_two_phases_train_what_they_should(tmp_path, fixture_dir):
    dirs = ("--data", str(fixture_dir), "--runs-dir", str(tmp_path / "runs"), "--cache-dir", str(tmp_path / "cache"))
    head_only = main([*dirs, *TINY_MNV2, "--epochs", "1"])
    start = keras.models.load_model(head_only / "last.keras", compile=False)
    meta = json.loads((head_only / "meta.json").read_text())
    assert meta["backbone"]["kind"] == "random" and meta["backbone"]["bn_mode"] == "reestimate"
    assert meta["normalization"] == {"mean": [127.5] * 3, "std": [127.5] * 3, "colour": "none"}
    assert not start.get_layer("block_16_project").trainable and start.get_layer("head").trainable

    both = main(["--resume", str(head_only), "--epochs", "3", "--data", str(fixture_dir)])
    end = keras.models.load_model(both / "last.keras", compile=False)
    assert json.loads((both / "state.json").read_text())["epoch"] == 2

    def changed(name: str) -> bool:
        return any(not np.allclose(a, b) for a, b in zip(_weights(start, name), _weights(end, name), strict=True))

    assert changed("block_16_project") and changed("head")  # after trainable_from: trained
    assert not changed("block_5_project") and not changed("Conv1")  # before it: frozen
    assert end.get_layer("block_16_project").trainable and not end.get_layer("block_5_project").trainable

    restart = main([*dirs, *TINY_MNV2, "--init-from", str(both / "best.keras"), "--qat", "true",
                    "--freeze-epochs", "0", "--epochs", "1", "--lr-policy", "constant", "--max-lr", "1e-4"])
    checkpoint = keras.models.load_model(restart / "best.keras", compile=False)
    assert any(isinstance(layer, qat.FakeQuant) for layer in checkpoint.layers)
    run = TrainingRun.load(restart)
    assert json.loads((restart / "meta.json").read_text())["quantization_aware_training"] is True
    plain = run.load_model("best")
    assert not any(isinstance(layer, qat.FakeQuant) for layer in plain.layers)
    assert plain.output_shape == (None, 7)
    # The float model of a quantization-aware run keeps each kernel on its per-channel int8 grid.
    kernel = plain.get_layer("block_16_project").get_weights()[0]
    levels = kernel / (np.abs(kernel).max(axis=(0, 1, 2), keepdims=True) / 127.0)
    np.testing.assert_allclose(levels, np.round(levels), atol=1e-3)


def test_both_phases_of_one_run_are_in_its_history(tmp_path, fixture_dir):
    dirs = ("--data", str(fixture_dir), "--runs-dir", str(tmp_path / "runs"), "--cache-dir", str(tmp_path / "cache"))
    run_dir = main([*dirs, *TINY_MNV2, "--epochs", "2"])
    rows = (run_dir / "history.csv").read_text().splitlines()
    assert rows[0].startswith("epoch") and [r.split(",")[0] for r in rows[1:]] == ["0", "1"]


def test_affine_bn_mode_trains_with_its_batchnorm_in_the_checkpoint(tmp_path, fixture_dir):
    dirs = ("--data", str(fixture_dir), "--runs-dir", str(tmp_path / "runs"), "--cache-dir", str(tmp_path / "cache"))
    run_dir = main([*dirs, *TINY_MNV2, "--bn-mode", "affine", "--epochs", "2"])
    model = TrainingRun.load(run_dir).load_model("last")
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(bns) == 52 and all(isinstance(bn, backbones.AffineBatchNormalization) for bn in bns)
    assert model.get_layer("block_16_project_BN").trainable  # after trainable_from: its scale and bias train
    assert json.loads((run_dir / "meta.json").read_text())["backbone"]["bn_mode"] == "affine"


def test_a_cut_backbone_survives_a_warm_restart_into_the_card(tmp_path, fixture_dir):
    dirs = ("--data", str(fixture_dir), "--runs-dir", str(tmp_path / "runs"), "--cache-dir", str(tmp_path / "cache"))
    cut = "block_13_expand_relu"
    first = main([*dirs, *TINY_MNV2, "--backbone-cut", cut, "--epochs", "1"])
    assert "out_relu" not in [layer.name for layer in TrainingRun.load(first).load_model("best").layers]
    restart_args = [*dirs, *TINY_MNV2, "--init-from", str(first / "best.keras"), "--qat", "true",
                    "--freeze-epochs", "0", "--epochs", "1", "--lr-policy", "constant", "--max-lr", "1e-4"]
    with pytest.raises(ValueError, match="backbone_cut"):  # a restart keeps its checkpoint's graph
        main([*restart_args, "--backbone-cut", "block_9_expand_relu"])
    run = TrainingRun.load(main(restart_args))
    assert run.meta.backbone["cut"] == cut  # inherited from the first stage's provenance

    int8 = tmp_path / "model_int8.tflite"
    images = np.random.default_rng(0).uniform(-1, 1, (8, 32, 40, 3)).astype(np.float32)
    best = run.load_model("best")
    int8.write_bytes(convert_int8(best, images))
    card = build_card(run, name="tiny-cut", int8_path=int8)
    assert card.architecture["backbone_cut"] == cut
    assert len(backbones.conv_layers(backbones.classifier_from_int8(card, int8))) == len(backbones.conv_layers(best))
