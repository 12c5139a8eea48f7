"""The one preprocessing path shared by training, quantization and the device.

Frames are RGB uint8 by contract (capture converts from BGR). A frame of another
aspect ratio is centre-cropped to the model's aspect ratio first, so a lesion in
the middle of the view is never squashed, then resized with area interpolation.
Normalization (per-channel mean/std from the training split, in 0-255 pixel units)
happens here, not inside the model; the model card records the statistics.
"""
from __future__ import annotations

import cv2
import numpy as np

# Decoding refuses images above this many pixels (decompression bombs).
MAX_DECODE_PIXELS = 40_000_000


class ImageDecodeError(ValueError):
    """Bytes that are not a decodable image, with the reason in the message."""


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
    shrinking = crop.shape[0] >= height
    interp = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(crop, (width, height), interpolation=interp).astype(np.uint8, copy=False)


def normalize(pixels: np.ndarray, mean, std) -> np.ndarray:
    """uint8 pixels (..., 3) -> float32 ``(x - mean) / std`` per channel."""
    mean = np.asarray(mean, dtype=np.float32)
    std = np.asarray(std, dtype=np.float32)
    return (pixels.astype(np.float32) - mean) / std


def denormalize(x: np.ndarray, mean, std) -> np.ndarray:
    """Inverse of :func:`normalize`, back to uint8 pixels (for plots and Grad-CAM)."""
    pixels = x * np.asarray(std, np.float32) + np.asarray(mean, np.float32)
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def quantize(x: np.ndarray, scale: float, zero_point: int, dtype: str) -> np.ndarray:
    """Float tensor -> integer tensor with the interpreter's input quantization."""
    info = np.iinfo(dtype)
    q = np.rint(x / scale) + zero_point
    return np.clip(q, info.min, info.max).astype(dtype)


def dequantize(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """Integer tensor -> float32 with the tensor's own scale and zero point."""
    return (q.astype(np.float32) - zero_point) * np.float32(scale)


def decode_image(data: bytes) -> np.ndarray:
    """Encoded image bytes (JPEG, PNG, BMP, ...) -> HxWx3 uint8 RGB.

    Grey and RGBA images become RGB; 16-bit images are scaled to 8 bits. Raises
    :class:`ImageDecodeError` with a reason for empty, undecodable or oversized input.
    """
    if not data:
        raise ImageDecodeError("empty image")
    buf = np.frombuffer(data, dtype=np.uint8)
    _check_header_size(data)
    img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if img is None or img.size == 0:
        raise ImageDecodeError("not a decodable image")
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise ImageDecodeError(f"unsupported pixel type {img.dtype}")
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    if img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    if img.shape[2] == 3:
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    raise ImageDecodeError(f"unsupported channel count {img.shape[2]}")


def _check_header_size(data: bytes) -> None:
    """Refuse huge declared dimensions before decoding, so a small file cannot claim gigabytes."""
    size = _declared_size(data)
    if size and size[0] * size[1] > MAX_DECODE_PIXELS:
        raise ImageDecodeError(
            f"image too large: {size[0]}x{size[1]} pixels (limit {MAX_DECODE_PIXELS})"
        )


def _declared_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG or JPEG header, or None when unknown."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if data[:2] == b"\xff\xd8":
        i = 2
        while i + 9 < len(data):
            if data[i] != 0xFF:
                return None
            marker = data[i + 1]
            length = int.from_bytes(data[i + 2 : i + 4], "big")
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                h = int.from_bytes(data[i + 5 : i + 7], "big")
                w = int.from_bytes(data[i + 7 : i + 9], "big")
                return w, h
            i += 2 + length
    return None


def load_image(path) -> np.ndarray:
    """Read an image file as HxWx3 uint8 RGB; raises ImageDecodeError naming the file."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
        return decode_image(data)
    except ImageDecodeError as err:
        raise ImageDecodeError(f"{path}: {err}") from err
