"""The preprocessing shared with the device, seen from training: crop/resize, normalization,
int8 (de)quantization round trips (device/preprocess.py)."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from device.preprocess import (
    SHADES_OF_GREY_POWER,
    center_crop_to_aspect,
    centre_zoom,
    colour_constancy,
    dequantize,
    fit_to_input,
    normalize,
    quantize,
    resize_linear,
    shades_of_grey_levels,
)

RED, GREEN = (255, 0, 0), (0, 255, 0)


def _banded(height: int, width: int, *, axis: int, keep: slice) -> np.ndarray:
    """Red image with a green band ``keep`` along ``axis`` (0 = rows, 1 = columns)."""
    img = np.empty((height, width, 3), np.uint8)
    img[:] = RED
    if axis == 0:
        img[keep] = GREEN
    else:
        img[:, keep] = GREEN
    return img


@pytest.mark.parametrize("shape", [(48, 64), (90, 120), (150, 200), (96, 96)])
def test_fit_to_input_shapes(shape):
    for src in [(150, 200), (480, 640), (720, 1280), (1000, 500), (20, 30)]:
        out = fit_to_input(np.full((*src, 3), 77, np.uint8), *shape)
        assert out.shape == (*shape, 3) and out.dtype == np.uint8
        assert (out == 77).all()


def test_fit_to_input_centre_crops_a_wide_image():
    # 100x300 (3:1) -> 4:3 keeps the centre 133 columns: x0 = (300 - 133) // 2 = 83
    img = _banded(100, 300, axis=1, keep=slice(83, 216))
    crop = center_crop_to_aspect(img, 48, 64)
    assert crop.shape == (100, 133, 3)
    assert (crop == GREEN).all()
    out = fit_to_input(img, 48, 64)
    assert out.shape == (48, 64, 3)
    assert (out == GREEN).all()  # nothing of the red sides survives, nothing is squashed in


def test_fit_to_input_centre_crops_a_tall_image():
    # 300x100 -> 4:3 keeps the centre 75 rows: y0 = (300 - 75) // 2 = 112
    img = _banded(300, 100, axis=0, keep=slice(112, 187))
    assert center_crop_to_aspect(img, 48, 64).shape == (75, 100, 3)
    assert (fit_to_input(img, 48, 64) == GREEN).all()


def test_fit_to_input_keeps_an_image_of_the_right_size():
    img = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    np.testing.assert_array_equal(fit_to_input(img, 48, 64), img)


def test_centre_zoom_enlarges_the_centre_back_to_the_input_size():
    # a green centre band 60% tall in a 100x100 image fills the whole height at zoom 0.6
    img = _banded(100, 100, axis=0, keep=slice(20, 80))
    out = centre_zoom(img, 0.6)
    assert out.shape == img.shape and out.dtype == np.uint8
    assert (out[2:-2] == GREEN).all()
    assert centre_zoom(img, 0.9)[:3].tolist() == [[list(RED)] * 100] * 3  # red still shows at the edges
    assert centre_zoom(img, 1.0) is img


def test_resize_linear_is_opencvs_fixed_point_bilinear_worked_by_hand():
    # 1x2 -> 1x4: source positions -0.25 (clamped), 0.25, 0.75, 1.25 (clamped); weights in 1/2048
    # and a 2048 vertical weight, rounded once: 255 * 512 * 2048 / 2**22 = 63.75 -> 64, 191.25 -> 191
    ramp = np.array([[[0, 0, 0], [255, 255, 255]]], np.uint8)
    assert resize_linear(ramp, 1, 4)[0, :, 0].tolist() == [0, 64, 191, 255]


def test_resize_linear_is_cv2_inter_linear_up_to_its_vector_rounding():
    rng = np.random.default_rng(3)
    for src, dst in [((129, 172), (150, 200)), ((30, 40), (150, 200)), ((5, 3), (11, 7))]:
        img = rng.integers(0, 256, (*src, 3), dtype=np.uint8)
        ours = resize_linear(img, *dst).astype(int)
        theirs = cv2.resize(img, dst[::-1], interpolation=cv2.INTER_LINEAR).astype(int)
        assert ours.shape == theirs.shape
        assert np.abs(ours - theirs).max() <= 1
    same_size = rng.integers(0, 256, (5, 3, 3), dtype=np.uint8)
    np.testing.assert_array_equal(resize_linear(same_size, 5, 3), same_size)


def test_resize_linear_from_several_threads_at_once_gives_each_its_own_result():
    # the work arrays are reused per thread: shared, one thread's image would leak into another's
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(5)
    images = [rng.integers(0, 256, (300, 400, 3), dtype=np.uint8) for _ in range(8)]  # numpy lets go of the GIL
    alone = [resize_linear(img, 450, 600) for img in images]
    with ThreadPoolExecutor(4) as pool:
        for _ in range(5):
            together = list(pool.map(lambda img: resize_linear(img, 450, 600), images))
            for got, want in zip(together, alone, strict=True):
                np.testing.assert_array_equal(got, want)
    assert not np.shares_memory(alone[0], resize_linear(images[0], 450, 600))  # a result is never the work array


def test_fit_to_input_and_centre_zoom_enlarge_with_resize_linear():
    img = np.random.default_rng(4).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    np.testing.assert_array_equal(fit_to_input(img, 48, 64), resize_linear(img, 48, 64))
    np.testing.assert_array_equal(centre_zoom(img, 0.5), resize_linear(img[6:18, 8:24], 24, 32))


def test_fit_to_input_rejects_grey():
    with pytest.raises(ValueError, match="HxWx3"):
        fit_to_input(np.zeros((10, 10), np.uint8), 5, 5)


def test_normalize_per_channel():
    pixels = np.random.default_rng(1).integers(0, 256, (4, 6, 8, 3), dtype=np.uint8)
    mean, std = [180.5, 140.25, 150.0], [30.0, 41.5, 45.75]
    x = normalize(pixels, mean, std)
    assert x.dtype == np.float32
    assert x[1, 2, 3, 1] == pytest.approx((pixels[1, 2, 3, 1] - 140.25) / 41.5)


@pytest.mark.parametrize("dtype,scale,zero_point", [("int8", 0.05, -3), ("uint8", 0.02, 128)])
def test_quantize_dequantize_round_trip_within_one_step(dtype, scale, zero_point):
    info = np.iinfo(dtype)
    lo, hi = (info.min - zero_point) * scale, (info.max - zero_point) * scale
    x = np.random.default_rng(2).uniform(lo, hi, 1000).astype(np.float32)
    q = quantize(x, scale, zero_point, dtype)
    assert q.dtype == np.dtype(dtype)
    back = dequantize(q, scale, zero_point)
    assert np.abs(back - x).max() <= scale / 2 + 1e-6
    # out-of-range values saturate instead of wrapping around
    edges = quantize(np.array([lo - 10, hi + 10], np.float32), scale, zero_point, dtype)
    assert edges.tolist() == [info.min, info.max]


def _p_norms(rgb: np.ndarray) -> np.ndarray:
    return np.mean(rgb.reshape(-1, 3).astype(np.float64) ** SHADES_OF_GREY_POWER, axis=0) ** (1 / SHADES_OF_GREY_POWER)


def test_shades_of_grey_balances_a_colour_cast():
    rng = np.random.default_rng(0)
    scene = rng.integers(40, 200, (60, 80, 1)).repeat(3, axis=2).astype(np.float64)
    cast = np.clip(scene * [1.0, 0.8, 0.55], 0, 255).astype(np.uint8)  # a warm lamp's light
    norms = _p_norms(cast)
    assert norms.max() / norms.min() > 1.6
    balanced = _p_norms(colour_constancy(cast, "shades_of_grey"))
    assert balanced.max() / balanced.min() < 1.01
    # the gains keep the mean of the three norms
    assert balanced.mean() == pytest.approx(norms.mean(), rel=0.01)


def test_shades_of_grey_leaves_grey_images_and_empty_channels_alone():
    grey = np.random.default_rng(1).integers(0, 256, (30, 40, 1), dtype=np.uint8).repeat(3, axis=2)
    np.testing.assert_array_equal(colour_constancy(grey, "shades_of_grey"), grey)
    no_blue = grey.copy()
    no_blue[..., 2] = 0
    levels = shades_of_grey_levels(no_blue)
    np.testing.assert_array_equal(levels[:, 2], np.arange(256))  # nothing to scale: its levels are kept
    assert levels[255, 0] == levels[255, 1] == 170  # the grey is two thirds of theirs: gain 2731 / 4096


def test_shades_of_grey_levels_are_the_gains_in_fixed_point():
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 50  # flat: each norm is its level
    levels = shades_of_grey_levels(rgb).astype(np.int64)
    grey = (200 + 100 + 50) / 3
    for channel, norm in enumerate((200, 100, 50)):
        gain = int(np.floor(grey / norm * 4096 + 0.5))
        assert list(levels[[0, 1, 100, 255], channel]) == [min(255, (v * gain + 2048) >> 12) for v in (0, 1, 100, 255)]
    assert list(levels[[200, 100, 50], [0, 1, 2]]) == [117, 117, 117]


def test_colour_constancy_works_per_image_in_a_batch_and_normalize_applies_it_first():
    rng = np.random.default_rng(2)
    batch = rng.integers(0, 256, (3, 20, 24, 3), dtype=np.uint8)
    batch[1, ..., 0] //= 3
    out = colour_constancy(batch, "shades_of_grey")
    for image, balanced in zip(batch, out):
        np.testing.assert_array_equal(balanced, colour_constancy(image, "shades_of_grey"))
    assert colour_constancy(batch, "none") is batch
    np.testing.assert_array_equal(normalize(batch, [10, 20, 30], [2, 2, 2], "shades_of_grey"),
                                  normalize(out, [10, 20, 30], [2, 2, 2]))
    with pytest.raises(ValueError, match="colour: expected one of"):
        colour_constancy(batch, "grey_world")
