"""Grad-CAM heatmaps and overlays (train/gradcam.py)."""
from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import layers

from device.preprocess import normalize
from train.evaluate import load_run
from train.gradcam import GradCAM, find_target_layer, gradcam, main, overlay_heatmap
from train.models import build_model


def _channel_model() -> keras.Model:
    """Class c's score is the spatial mean of input channel c: its Grad-CAM is ReLU(channel c)."""
    inputs = keras.Input((8, 10, 3))
    feat = layers.Conv2D(2, 1, use_bias=False, name="feat")(inputs)
    logits = layers.Dense(2, use_bias=False, name="mix")(layers.GlobalAveragePooling2D()(feat))
    model = keras.Model(inputs, layers.Softmax()(logits))
    model.get_layer("feat").set_weights([np.eye(3, 2, dtype=np.float32)[None, None]])
    model.get_layer("mix").set_weights([np.eye(2, dtype=np.float32)])
    return model


def test_gradcam_matches_the_hand_solution():
    x = np.random.default_rng(0).normal(size=(8, 10, 3)).astype(np.float32)
    model = _channel_model()
    assert find_target_layer(model) == "feat"
    for c in (0, 1):
        expected = np.maximum(x[..., c], 0) / np.maximum(x[..., c], 0).max()
        np.testing.assert_allclose(gradcam(model, x, c), expected, atol=1e-5)


@pytest.mark.parametrize("arch,shape,layer", [
    ("seed_cnn", (56, 72), "squeeze_conv"),
    ("concat_resnet", (48, 64), "head"),
    ("edgenet", (48, 64), "top_conv"),
])
def test_every_model_gives_a_heatmap_at_input_size(arch, shape, layer):
    model = build_model(arch, (*shape, 3), width=0.25)
    assert find_target_layer(model) == layer
    x = np.random.default_rng(1).normal(size=(*shape, 3)).astype(np.float32)
    heat = gradcam(model, x, 4)
    assert heat.shape == shape and heat.dtype == np.float32
    assert heat.min() >= 0.0 and heat.max() <= 1.0


def test_trained_model_heatmap(trained_run):
    run = load_run(trained_run, split="test")
    cam = GradCAM(run.model)
    heat = cam(normalize(np.asarray(run.pixels[0]), run.mean, run.std), 0)
    assert heat.shape == (56, 72)
    assert heat.min() >= 0.0 and heat.max() == pytest.approx(1.0)


def test_bad_layers_and_inputs_are_refused():
    model = build_model("edgenet", (48, 64, 3), width=0.25)
    with pytest.raises(ValueError, match="'nope' not in model"):
        GradCAM(model, "nope")
    with pytest.raises(ValueError, match="skip connection"):
        GradCAM(model, "s3_1_project_conv")  # inside a residual block
    cam = GradCAM(model, "s3_1_add")  # after the block's Add the graph is cut cleanly
    with pytest.raises(ValueError, match="class_index 7"):
        cam(np.zeros((48, 64, 3), np.float32), 7)
    with pytest.raises(ValueError, match="one normalized image"):
        cam(np.zeros((1, 48, 64, 3), np.float32), 0)


def test_overlay_heatmap():
    rgb = np.full((30, 40, 3), 128, np.uint8)
    heat = np.zeros((15, 20), np.float32)
    heat[:, 10:] = 1.0  # hot right half, at half resolution
    out = overlay_heatmap(rgb, heat)
    assert out.shape == rgb.shape and out.dtype == np.uint8
    left, right = out[:, :15].reshape(-1, 3).mean(0), out[:, 25:].reshape(-1, 3).mean(0)
    assert right[0] > left[0] and left[2] > right[2]  # JET: hot is red, cold is blue


def test_cli_writes_correct_and_wrong_panels(trained_run):
    written = main([str(trained_run), "--n", "2"])
    folder = trained_run / "eval" / "gradcam"
    assert sorted(written) == sorted(folder.glob("*.png"))
    kinds = {"correct": 0, "wrong": 0}
    for path in written:
        kind, _, rest = path.stem.partition("_")
        true = rest.split("_true-")[1].split("_pred-")[0]
        pred = rest.split("_pred-")[1]
        assert (true == pred) == (kind == "correct")
        kinds[kind] += 1
    assert 2 <= len(written) <= 4 and all(n <= 2 for n in kinds.values())
