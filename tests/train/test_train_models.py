"""Model families: shapes, hand-counted parameters and MACs (train/models.py)."""
from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import layers

from train.models import build_model, count_macs, describe

SEED_BLOCKS = ((32, 64, 64), (64, 128, 128), (128, 256, 256))


def conv(k_h: int, k_w: int, c_in: int, c_out: int, *, bias: bool = False) -> int:
    return k_h * k_w * c_in * c_out + (c_out if bias else 0)


def bn(c: int) -> int:
    return 4 * c  # gamma, beta, moving mean, moving variance


def seed_cnn_sizes(h: int, w: int) -> list[tuple[int, int]]:
    """Output size of each valid 3x3 conv of the seed CNN, then the pooled map before the squeeze."""
    sizes = []
    for _ in SEED_BLOCKS:
        for _ in range(3):
            h, w = h - 2, w - 2
            sizes.append((h, w))
        h, w = h // 2, w // 2
    return sizes + [(h, w)]


def test_seed_cnn_head_and_parameters_at_90x120():
    model = build_model("seed_cnn", (90, 120, 3))
    assert model.output_shape == (None, 7)
    head = model.get_layer("head")
    assert head.kernel_size == (6, 9)
    assert head.input.shape[1:] == (6, 9, 7) and head.output.shape[1:] == (1, 1, 7)
    expected, c_in = 0, 3
    for block in SEED_BLOCKS:
        for c in block:
            expected += conv(3, 3, c_in, c) + bn(c)
            c_in = c
    expected += conv(1, 1, 256, 7) + bn(7)  # squeeze
    expected += conv(6, 9, 7, 7, bias=True)  # head covers the whole 6x9 map
    assert expected == 1_355_353  # the design's "about 1.2-1.4 M"
    assert model.count_params() == expected


def test_seed_cnn_macs_by_hand_at_90x120():
    model = build_model("seed_cnn", (90, 120, 3))
    sizes = seed_cnn_sizes(90, 120)
    assert sizes[-1] == (6, 9)
    channels = [3] + [c for block in SEED_BLOCKS for c in block]
    expected = sum(h * w * 9 * c_in * c_out for (h, w), c_in, c_out in zip(sizes, channels, channels[1:]))
    expected += 6 * 9 * 256 * 7 + 6 * 9 * 7 * 7  # squeeze 1x1, head 6x9
    assert count_macs(model) == expected
    assert 1.2e9 < expected < 1.4e9  # the design's "about 1.3 GMAC"


def test_seed_cnn_head_follows_the_input_size():
    model = build_model("seed_cnn", (100, 140, 3), width=0.25)
    h, w = seed_cnn_sizes(100, 140)[-1]
    assert model.get_layer("head").kernel_size == (h, w)
    assert model.output_shape == (None, 7)


def test_concat_resnet_head_and_parameters():
    model = build_model("concat_resnet", (90, 120, 3))
    assert model.output_shape == (None, 7)
    assert model.get_layer("head").kernel_size == (1, 1)
    assert model.get_layer("head").output.shape[1:] == (90 // 8, 120 // 8, 7)  # three 2x2 pools
    expected = conv(3, 3, 3, 32) + bn(32)  # stem
    for c in (32, 64, 128, 256):
        expected += 2 * (conv(3, 3, c, c) + bn(c))  # two convs at the block's input width
        expected += conv(1, 1, 2 * c, 2 * c) + bn(2 * c)  # transition after concat(input, convs)
    expected += conv(1, 1, 512, 7, bias=True)
    assert model.count_params() == expected
    # Fully convolutional with global pooling: the same weights at any input size.
    assert build_model("concat_resnet", (64, 64, 3)).count_params() == expected


@pytest.mark.parametrize("shape", [(150, 200), (96, 128), (75, 100), (224, 224)])
def test_edgenet_builds_at_other_sizes(shape):
    model = build_model("edgenet", (*shape, 3), width=0.35)
    assert model.output_shape == (None, 7)
    probs = np.asarray(model(np.zeros((2, *shape, 3), np.float32), training=False))
    assert probs.shape == (2, 7)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_edgenet_is_cheaper_than_the_seed_cnn():
    edge = describe(build_model("edgenet", (150, 200, 3)))
    seed = describe(build_model("seed_cnn", (90, 120, 3)))
    assert edge["family"] == "edgenet" and edge["input_shape"] == [150, 200, 3]
    assert edge["macs"] < seed["macs"]


def test_count_macs_matches_hand_computation():
    inputs = keras.Input((8, 10, 3))
    x = layers.Conv2D(4, 3)(inputs)  # valid: 6x8x4, 3x3x3 per output
    x = layers.DepthwiseConv2D(3, padding="same")(x)  # 6x8x4, 3x3 per output
    x = layers.Conv2D(5, 1, strides=2)(x)  # 3x4x5, 4 per output
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(7)(x)  # 5x7
    model = keras.Model(inputs, outputs)
    assert count_macs(model) == 6 * 8 * 4 * 27 + 6 * 8 * 4 * 9 + 3 * 4 * 5 * 4 + 5 * 7


def test_unknown_architecture():
    with pytest.raises(ValueError, match="unknown architecture 'vgg'"):
        build_model("vgg", (90, 120, 3))
