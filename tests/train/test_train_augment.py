"""Training-split augmentation (train/augment.py)."""
from __future__ import annotations

import numpy as np
import pytest

from device.decode import load_image
from device.preprocess import fit_to_input
from train.augment import AugmentConfig, MixConfig, augment_batch, augment_image, mix_batch

OFF = AugmentConfig(flip=False, rotation_deg=0.0, zoom_max=0.0, brightness=0.0, contrast=0.0, hue_deg=0.0)


@pytest.fixture(scope="module")
def image(fixture_dir):
    return fit_to_input(load_image(min((fixture_dir / "images").iterdir())), 48, 64)


def test_augment_keeps_shape_and_dtype_and_changes_pixels(image):
    rng = np.random.default_rng(0)
    for _ in range(5):
        out = augment_image(image, AugmentConfig(), rng)
        assert out.shape == image.shape and out.dtype == np.uint8
        assert np.abs(out.astype(int) - image).mean() > 1.0


def test_augment_is_reproducible_per_seed(image):
    a = augment_image(image, AugmentConfig(), np.random.default_rng(4))
    b = augment_image(image, AugmentConfig(), np.random.default_rng(4))
    np.testing.assert_array_equal(a, b)


def test_everything_off_is_identity(image):
    np.testing.assert_array_equal(augment_image(image, OFF, np.random.default_rng(0)), image)


def test_flips_only_give_one_of_the_four_flips(image):
    cfg = AugmentConfig(flip=True, rotation_deg=0.0, zoom_max=0.0, brightness=0.0, contrast=0.0, hue_deg=0.0)
    flips = [image, image[:, ::-1], image[::-1], image[::-1, ::-1]]
    seen = set()
    rng = np.random.default_rng(1)
    for _ in range(20):
        out = augment_image(image, cfg, rng)
        seen.add(next(i for i, f in enumerate(flips) if np.array_equal(out, f)))
    assert seen == {0, 1, 2, 3}


def test_augment_batch(image):
    batch = np.stack([image, image[::-1], image[:, ::-1]])
    out = augment_batch(batch, AugmentConfig(), np.random.default_rng(0))
    assert out.shape == batch.shape and out.dtype == np.uint8
    assert not np.array_equal(out, batch)


def _two_class_batch(h=30, w=40):
    x = np.zeros((8, h, w, 3), np.uint8)
    x[4:] = 200  # images 4..7 bright, labels 1; the rest dark, labels 0
    y = np.eye(2, dtype=np.float32)[[0, 0, 0, 0, 1, 1, 1, 1]]
    return x, y, np.array([1, 1, 1, 1, 3, 3, 3, 3], np.float32)


@pytest.mark.parametrize("kind", ["mixup", "cutmix"])
def test_mixed_targets_and_weights_follow_the_pixels(kind):
    x, y, w = _two_class_batch()
    mixed = 0
    for seed in range(10):
        mx, my, mw = mix_batch(x, y, w, MixConfig(kind, alpha=1.0, prob=1.0), np.random.default_rng(seed))
        assert mx.shape == x.shape and mx.dtype == np.uint8
        np.testing.assert_allclose(my.sum(axis=1), 1.0, atol=1e-6)
        # Each image's share of bright pixels is its share of class 1, and its weight mixes the same way.
        bright = mx.astype(np.float32).mean(axis=(1, 2, 3)) / 200.0
        np.testing.assert_allclose(my[:, 1], bright, atol=0.01)
        np.testing.assert_allclose(mw, 1.0 + 2.0 * my[:, 1], atol=1e-5)
        mixed += int(np.any((my[:, 1] > 0.01) & (my[:, 1] < 0.99)))
    assert mixed >= 8  # not every permutation pairs a dark image with a bright one, most do


def test_cutmix_pastes_one_box_and_leaves_the_rest():
    x, y, w = _two_class_batch()
    mx, _, _ = mix_batch(x, y, w, MixConfig("cutmix", prob=1.0), np.random.default_rng(3))
    changed = np.any(mx != x, axis=(0, 3))
    rows, cols = np.nonzero(changed)
    assert changed[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()  # one solid rectangle


def test_mix_prob_zero_leaves_the_batch_alone_and_weights_may_be_absent():
    x, y, _ = _two_class_batch()
    mx, my, mw = mix_batch(x, y, None, MixConfig("mixup", prob=0.0), np.random.default_rng(0))
    assert mx is x and my is y and mw is None
    _, _, mw = mix_batch(x, y, None, MixConfig("mixup", prob=1.0), np.random.default_rng(0))
    assert mw is None


@pytest.mark.parametrize("kwargs, field", [({"kind": "blend"}, "mix"), ({"alpha": 0.0}, "mix_alpha"),
                                           ({"prob": 1.5}, "mix_prob")])
def test_bad_mix_config_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        MixConfig(**kwargs)


def test_batches_mix_targets_and_class_weights():
    from train.dataset import Batches

    x, _, _ = _two_class_batch()
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    batches = Batches(x, labels, batch_size=8, mean=[0, 0, 0], std=[1, 1, 1], num_classes=2,
                      class_weight={0: 1.0, 1: 3.0}, mix=MixConfig("mixup", prob=1.0), seed=5)
    _, y, w = batches[0]
    assert np.any((y[:, 1] > 0.01) & (y[:, 1] < 0.99))
    np.testing.assert_allclose(w, 1.0 + 2.0 * y[:, 1], atol=1e-5)


def test_batches_balance_the_colour_of_each_augmented_image_before_normalizing():
    from device.preprocess import normalize
    from train.augment import AugmentConfig, augment_batch
    from train.dataset import Batches

    x, _, _ = _two_class_batch()
    x = (x.astype(np.float32) * [1.0, 0.6, 0.4]).astype(np.uint8)  # a colour cast to remove
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    batches = Batches(x, labels, batch_size=8, mean=[5, 6, 7], std=[2, 3, 4], colour="shades_of_grey", num_classes=2,
                      augment=AugmentConfig(), shuffle=False, seed=1)
    augmented = augment_batch(x, AugmentConfig(), np.random.default_rng([1, 0, 0]))
    expected = normalize(augmented, [5, 6, 7], [2, 3, 4], "shades_of_grey")
    np.testing.assert_array_equal(batches[0][0], expected)
    assert not np.allclose(expected, normalize(augmented, [5, 6, 7], [2, 3, 4]))
