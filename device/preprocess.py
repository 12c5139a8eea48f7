"""The one preprocessing path shared by training, quantization and the device.

Frames are RGB uint8 by contract (capture converts from BGR). A frame of another
aspect ratio is centre-cropped to the model's aspect ratio first, so a lesion in
the middle of the view is never squashed, then resized with area interpolation.
Normalization (per-channel mean/std from the training split, in 0-255 pixel units, after the
card's optional per-image colour constancy) happens here, not inside the model; the model card
records the statistics. The web app mirrors
this module (web/src/preprocess.js); bytes become frames in device.decode.
"""
from __future__ import annotations

import collections
import functools
import math
import operator
import threading

import cv2
import numpy as np

from device.card import COLOUR_MODES, TTA_MODES, valid_zoom


def center_crop_to_aspect(rgb: np.ndarray, height: int, width: int) -> np.ndarray:
    """Largest centred crop of ``rgb`` whose aspect ratio is ``width / height``."""
    h, w = rgb.shape[:2]
    target = width / height
    if w / h > target:  # too wide: trim the sides
        new_w = max(1, round(h * target))
        x0 = (w - new_w) // 2
        return rgb[:, x0 : x0 + new_w]
    new_h = max(1, round(w / target))
    y0 = (h - new_h) // 2
    return rgb[y0 : y0 + new_h, :]


def fit_to_input(rgb: np.ndarray, height: int, width: int) -> np.ndarray:
    """Centre-crop to the model's aspect ratio, then resize to ``height x width`` (uint8 RGB)."""
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 RGB image, got shape {rgb.shape}")
    crop = center_crop_to_aspect(rgb, height, width)
    if crop.shape[:2] == (height, width):
        return np.ascontiguousarray(crop, dtype=np.uint8)
    if crop.shape[0] >= height:  # shrinking
        return cv2.resize(crop, (width, height), interpolation=cv2.INTER_AREA).astype(np.uint8, copy=False)
    return resize_linear(crop, height, width)


# OpenCV's INTER_LINEAR for uint8 keeps its weights in 11 fractional bits.
_COEF_BITS = 11


@functools.lru_cache(maxsize=16)  # a camera's frames share their sizes: computed once, not per frame
def _linear_taps(src_size: int, dst_size: int,
                 lanes: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per output value along one axis: the two source indices and their fixed-point weights,
    computed as OpenCV computes them (float32 positions, half-to-even rounding, edges clamped).
    With ``lanes`` interleaved values per position (a row's channels), the indices address the
    flattened row and each weight repeats per lane.
    Read-only: the cache hands the same arrays to every caller."""
    pos = ((np.arange(dst_size) + 0.5) * (1.0 / (dst_size / src_size)) - 0.5).astype(np.float32)
    first = np.floor(pos).astype(np.int64)
    frac = pos - first.astype(np.float32)
    clamped = (first < 0) | (first >= src_size - 1)
    frac[clamped] = 0
    first = np.clip(first, 0, src_size - 1)
    one = np.float32(1 << _COEF_BITS)
    offsets = np.arange(lanes)
    indices = [(index[:, None] * lanes + offsets).ravel() for index in (first, np.minimum(first + 1, src_size - 1))]
    weights = [np.repeat(np.rint(weight * one).astype(np.int32), lanes) for weight in (np.float32(1) - frac, frac)]
    taps = (*indices, *weights)
    for array in taps:
        array.setflags(write=False)
    return taps


class _Scratch(threading.local):
    """Each thread's int32 work arrays for :func:`resize_linear`, kept for the last few sizes. A
    frame's arrays are 0.3 MB each: allocated per call they are mapped and unmapped every frame
    (glibc, under the daemon's ``device.limits`` threshold), and the page faults made the zoom's
    resize take 5x longer than the arithmetic."""

    def __init__(self):
        self.arrays: collections.OrderedDict = collections.OrderedDict()

    def get(self, rows: int, src_row: int, dst_row: int) -> tuple[np.ndarray, ...]:
        key = (rows, src_row, dst_row)
        if key not in self.arrays:
            self.arrays[key] = (np.empty((rows, src_row), np.int32), np.empty((rows, src_row), np.int32),
                                np.empty((rows, dst_row), np.int32), np.empty((rows, dst_row), np.int32))
            if len(self.arrays) > 4:
                self.arrays.popitem(last=False)
        self.arrays.move_to_end(key)
        return self.arrays[key]


_scratch = _Scratch()


def resize_linear(rgb: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of (H, W, C) uint8 with OpenCV INTER_LINEAR's fixed-point arithmetic, in
    integers, so every machine gets the same bytes. cv2.resize's vectorised rows round about one
    value in eight differently, and differently per instruction set (SSE, AVX, NEON); one step in a
    few input pixels moves an int8 network's output by several steps. The browser app
    (web/src/preprocess.js ``resizeLinear``) computes the same formula, so it and the device agree."""
    src_h, src_w, channels = rgb.shape
    x0, x1, a0, a1 = _linear_taps(src_w, width, channels)
    y0, y1, b0, b1 = _linear_taps(src_h, height)
    src = rgb.reshape(src_h, src_w * channels)
    cols, below, out, right = _scratch.get(height, src_w * channels, width * channels)
    # Every sum is an exact integer (at most 255 * 2048 * 2048 < 2**31), so the vertical pass may come
    # first: it gathers whole rows, the fast direction.
    np.multiply(src[y0], b0[:, None], out=cols)
    np.multiply(src[y1], b1[:, None], out=below)
    cols += below
    np.take(cols, x0, axis=1, out=out, mode="clip")  # "raise" would buffer out: a 0.3 MB copy
    out *= a0
    np.take(cols, x1, axis=1, out=right, mode="clip")
    right *= a1
    out += right
    out += 1 << (2 * _COEF_BITS - 1)
    out >>= 2 * _COEF_BITS
    np.minimum(out, 255, out=out)
    return out.astype(np.uint8).reshape(height, width, channels)


def centre_share(rgb: np.ndarray, share: float) -> np.ndarray:
    """The centred ``share`` of each side of ``rgb`` (a view, no copy)."""
    h, w = rgb.shape[:2]
    ch, cw = max(1, round(h * share)), max(1, round(w * share))
    top, left = (h - ch) // 2, (w - cw) // 2
    return rgb[top : top + ch, left : left + cw]


def centre_zoom(pixels: np.ndarray, zoom: float) -> np.ndarray:
    """A fitted (H, W, 3) image zoomed in on its centre: the centred ``zoom`` share of each side,
    enlarged back to H x W (the card's ``preprocessing.zoom``; 1.0 returns ``pixels``)."""
    if valid_zoom(zoom) == 1.0:
        return pixels
    h, w = pixels.shape[:2]
    return resize_linear(centre_share(pixels, zoom), h, w)


def tta_views(pixels: np.ndarray, mode: str) -> list[np.ndarray]:
    """The views of ``pixels`` (``(..., H, W, C)``: one image or a batch) whose outputs the card's
    test-time augmentation ``mode`` averages. "flips": the image and its horizontal, vertical and
    double flips (dermoscopy has no up or left, so each is a lesion the model could have seen)."""
    if mode == "none":
        return [pixels]
    if mode == "flips":
        by_width = pixels[..., ::-1, :]
        return [pixels, by_width, pixels[..., ::-1, :, :], by_width[..., ::-1, :, :]]
    raise ValueError(f"tta: expected one of {TTA_MODES}, got {mode!r}")


# Shades of grey (Finlayson & Trezzi 2004): each channel's illuminant is its Minkowski p-norm mean,
# and each channel is scaled so the three agree. p = 6 is what cross-clinic dermoscopy work uses
# (Barata et al. 2015). The gains are kept in fixed point and the norms summed as exact integers,
# so the browser app (web/src/preprocess.js ``shadesOfGreyLevels``) gets the same bytes.
SHADES_OF_GREY_POWER = 6
_GAIN_BITS = 12
_POWERS = [level**SHADES_OF_GREY_POWER for level in range(256)]


def shades_of_grey_levels(rgb: np.ndarray) -> np.ndarray:
    """(256, 3) uint8: what each level of each channel of ``rgb`` (H, W, 3) becomes under
    shades-of-grey colour constancy. A channel that is all zero keeps its levels."""
    flat = rgb.reshape(-1, 3)
    if not len(flat):
        raise ValueError("shades of grey: empty image")
    norms = []
    for channel in range(3):
        counts = np.bincount(flat[:, channel], minlength=256).tolist()
        total = sum(map(operator.mul, counts, _POWERS))  # exact: a Python int
        norms.append((float(total) / len(flat)) ** (1 / SHADES_OF_GREY_POWER))
    grey = (norms[0] + norms[1] + norms[2]) / 3
    one = 1 << _GAIN_BITS
    gains = np.array([math.floor(grey / norm * one + 0.5) if norm > 0 else one for norm in norms], np.int64)
    levels = (np.arange(256, dtype=np.int64)[:, None] * gains + (one >> 1)) >> _GAIN_BITS
    return np.minimum(levels, 255).astype(np.uint8)


def colour_levels(rgb: np.ndarray, mode: str) -> np.ndarray | None:
    """(256, 3) uint8: what each level of each channel of ``rgb`` (H, W, 3) becomes under the
    colour constancy ``mode`` (the card's ``normalization.colour``); None for "none". The one place
    a mode is dispatched: :func:`colour_constancy` applies the levels, the device engine folds them
    into its input table."""
    if mode == "none":
        return None
    if mode == "shades_of_grey":
        return shades_of_grey_levels(rgb)
    raise ValueError(f"colour: expected one of {COLOUR_MODES}, got {mode!r}")


def colour_constancy(pixels: np.ndarray, mode: str) -> np.ndarray:
    """uint8 ``pixels`` (one image (H, W, 3) or a batch) with each image's colours balanced by
    ``mode`` (:func:`colour_levels`); "none" returns ``pixels``."""
    if mode == "none":
        return pixels
    images = np.ascontiguousarray(pixels).reshape(-1, *pixels.shape[-3:])
    out = np.empty_like(images)
    for i, image in enumerate(images):
        out[i] = cv2.LUT(image, colour_levels(image, mode)[np.newaxis])
    return out.reshape(pixels.shape)


def normalize(pixels: np.ndarray, mean, std, colour: str = "none") -> np.ndarray:
    """uint8 pixels (..., H, W, 3) -> float32 ``(x - mean) / std`` per channel, after the
    per-image ``colour`` constancy (:func:`colour_constancy`)."""
    pixels = colour_constancy(pixels, colour)
    mean = np.asarray(mean, dtype=np.float32)
    std = np.asarray(std, dtype=np.float32)
    return (pixels.astype(np.float32) - mean) / std


def quantize(x: np.ndarray, scale: float, zero_point: int, dtype: str) -> np.ndarray:
    """Float tensor -> integer tensor with the interpreter's input quantization."""
    info = np.iinfo(dtype)
    q = np.rint(x / scale) + zero_point
    return np.clip(q, info.min, info.max).astype(dtype)


def input_table(mean, std, input_dtype: str = "float32", scale: float = 1.0, zero_point: int = 0) -> np.ndarray:
    """:func:`normalize` (then :func:`quantize` for an integer input) of every uint8 level of each
    channel, as a (1, 256, 3) table for ``cv2.LUT``: the same values for a tenth of the time, since
    both steps act on each value alone."""
    levels = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1)
    table = normalize(levels, mean, std)
    if input_dtype != "float32":
        table = quantize(table, scale, zero_point, input_dtype)
    return np.ascontiguousarray(table.reshape(1, 256, 3))


def dequantize(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """Integer tensor -> float32 with the tensor's own scale and zero point."""
    return (q.astype(np.float32) - zero_point) * np.float32(scale)
