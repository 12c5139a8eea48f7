"""Training-split augmentation (train/augment.py)."""
from __future__ import annotations

import numpy as np
import pytest

from device.preprocess import fit_to_input, load_image
from train.augment import AugmentConfig, augment_batch, augment_image

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
