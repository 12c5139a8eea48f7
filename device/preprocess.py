"""The one preprocessing path shared by training, quantization and the device.

Frames are RGB uint8 by contract (capture converts from BGR). A frame of another
aspect ratio is centre-cropped to the model's aspect ratio first, so a lesion in
the middle of the view is never squashed, then resized with area interpolation.
Normalization (per-channel mean/std from the training split, in 0-255 pixel units)
happens here, not inside the model; the model card records the statistics.
"""
from __future__ import annotations

from typing import Literal

import cv2
import numpy as np

from device.card import TTA_MODES

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
    """Encoded JPEG, PNG, WebP or BMP bytes -> HxWx3 uint8 RGB.

    Grey and RGBA images become RGB; 16-bit images are scaled to 8 bits. The header is read
    before decoding and other formats are refused, so a small file that declares huge
    dimensions (a decompression bomb) is turned away without allocating anything. Raises
    :class:`ImageDecodeError` with a reason for empty, unsupported, undecodable or oversized input.
    """
    if not data:
        raise ImageDecodeError("empty image")
    width, height = _declared_size(data)
    if width * height > MAX_DECODE_PIXELS:
        raise ImageDecodeError(f"image too large: {width}x{height} pixels (limit {MAX_DECODE_PIXELS})")
    try:
        img = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as err:  # some codecs raise on corrupt data instead of returning None
        raise ImageDecodeError("not a decodable image") from err
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


def _declared_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the header; refuses formats whose header is not read here."""
    if data.startswith(b"\xff\xd8"):
        return _jpeg_size(data)
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        if len(data) < 24 or data[12:16] != b"IHDR":
            raise ImageDecodeError("corrupt PNG: no IHDR header")
        return _uint(data, 16, 4, "big"), _uint(data, 20, 4, "big")
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp_size(data)
    if data[:2] == b"BM" and len(data) >= 26:
        if _uint(data, 14, 4) == 12:  # OS/2 header: 16-bit dimensions
            return _uint(data, 18, 2), _uint(data, 20, 2)
        width = int.from_bytes(data[18:22], "little", signed=True)
        height = int.from_bytes(data[22:26], "little", signed=True)
        return abs(width), abs(height)  # the height is negative for top-down bitmaps
    raise ImageDecodeError("unsupported image format (expected JPEG, PNG, WebP or BMP)")


def _uint(data: bytes, offset: int, size: int, order: Literal["little", "big"] = "little") -> int:
    return int.from_bytes(data[offset : offset + size], order)


# Start-of-frame markers carry the dimensions; C4, C8 and CC share the range but are not frames.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _jpeg_size(data: bytes) -> tuple[int, int]:
    """Walk the JPEG segments up to the frame header, as the decoder will."""
    i, n = 2, len(data)
    while i < n:
        if data[i] != 0xFF:
            raise ImageDecodeError("corrupt JPEG: bad segment marker")
        while i < n and data[i] == 0xFF:  # any number of fill bytes may precede a marker
            i += 1
        if i >= n:
            break
        marker = data[i]
        i += 1
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # standalone markers have no length
            continue
        if marker in (0xD9, 0xDA):  # end of image or scan data before any frame header
            break
        if i + 7 > n:
            break
        if marker in _JPEG_SOF:
            return _uint(data, i + 5, 2, "big"), _uint(data, i + 3, 2, "big")
        i += _uint(data, i, 2, "big")
    raise ImageDecodeError("truncated or corrupt JPEG: no frame header")


def _webp_size(data: bytes) -> tuple[int, int]:
    if len(data) < 30:
        raise ImageDecodeError("truncated WebP header")
    chunk = data[12:16]
    if chunk == b"VP8 ":  # lossy: 14-bit sizes after the frame tag and start code
        return _uint(data, 26, 2) & 0x3FFF, _uint(data, 28, 2) & 0x3FFF
    if chunk == b"VP8L":  # lossless: 14-bit (size - 1) fields packed after the signature byte
        bits = _uint(data, 21, 4)
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":  # extended: 24-bit (size - 1) canvas fields
        return _uint(data, 24, 3) + 1, _uint(data, 27, 3) + 1
    raise ImageDecodeError(f"unsupported WebP chunk {chunk!r}")


def load_image(path) -> np.ndarray:
    """Read an image file as HxWx3 uint8 RGB; raises ImageDecodeError naming the file."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
        return decode_image(data)
    except ImageDecodeError as err:
        raise ImageDecodeError(f"{path}: {err}") from err
