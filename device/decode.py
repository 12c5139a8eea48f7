"""Bounded decoding of image bytes (uploads, files) into HxWx3 uint8 RGB.

The header is read first (:func:`plan_decode`): format, declared size, the decode's peak memory
and, for a JPEG, the blocks its scans visit. So a small file that declares a huge image, or repeats
a progressive scan thousands of times, is refused before the decoder runs. Large JPEGs are decoded
at a reduced scale and every image is shrunk at once to a short side of :data:`MIN_DECODE_SIDE`;
EXIF orientation is applied as browsers apply it. Uploads share a memory budget
(device.limits.DecodeBudget); files read from disk (:func:`load_image`) have fixed limits. What
becomes of the pixels next is device.preprocess's job.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

# Image files read from disk (the CLI, the folder camera) are refused above this many pixels;
# uploads get the shared memory budget of device.limits.DecodeBudget (http.decode_memory_mb).
MAX_DECODE_PIXELS = 40_000_000
# The model sees a few hundred pixels a side at most: a large JPEG is decoded at 1/2, 1/4 or 1/8
# scale (libjpeg's DCT scaling, so the full image is never in memory) as long as its short side
# stays at least this long, and any decoded image is scaled down to it at once.
MIN_DECODE_SIDE = 480
_JPEG_REDUCED = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
                 8: cv2.IMREAD_REDUCED_COLOR_8}
# Room for the decoder's own row buffers and tables, on top of the pixel estimate.
_DECODE_SLACK_BYTES = 1 << 20
# A progressive JPEG may repeat a scan any number of times, and the decoder passes over the image
# once per scan: one 12-byte scan repeated 600,000 times cost about a minute. Scans are counted
# from their headers before decoding: more than this many are refused outright (encoders write
# about 10), and the blocks all of them visit are bounded by MAX_SCAN_PASSES passes over the
# largest image allowed (device.limits for uploads, :data:`MAX_DECODE_PIXELS` for files).
MAX_JPEG_SCANS = 1000
MAX_SCAN_PASSES = 16


class ImageDecodeError(ValueError):
    """Bytes that are not a decodable image, with the reason in the message."""


class UnsupportedFormat(ImageDecodeError):
    """Bytes that are no JPEG, PNG, WebP or BMP (for a file named as an image, a corrupt one)."""


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")  # what folders are read for
# No image file of the four formats is shorter than this (a BMP header alone is 26 bytes).
_MIN_IMAGE_BYTES = 26


class ImageTooLarge(ImageDecodeError):
    """An image whose decoding would need more memory than allowed."""


class ImageTooSlow(ImageTooLarge):
    """A JPEG whose scans would keep the decoder busy for longer than allowed."""


@dataclass(frozen=True)
class DecodePlan:
    """How an encoded image will be decoded, read from its header before anything is allocated."""

    format: str  # "JPEG", "PNG", "WebP" or "BMP"
    width: int  # as declared in the header
    height: int
    reduce: int  # JPEG DCT scaling 1, 2, 4 or 8; 1 for the other formats
    # Peak memory of the decode. Measured with OpenCV's imdecode: about twice the decoded array
    # (PNG, WebP, BMP, JPEG at any scale alike), plus, for progressive or multi-scan JPEGs,
    # libjpeg's coefficient buffer for the whole image at full size (2 bytes per sample).
    cost_bytes: int
    # 8x8 blocks the decoder visits, summed over the JPEG's scans (the decode's time); 0 for the
    # other formats, whose decoding time follows their size.
    scan_blocks: int = 0

    def describe(self) -> str:
        return f"{self.width}x{self.height} {self.format}"


def decode_image(data: bytes) -> np.ndarray:
    """Encoded JPEG, PNG, WebP or BMP bytes -> HxWx3 uint8 RGB (see :func:`plan_decode` and
    :func:`decode_planned`), refused with :class:`ImageTooLarge` above :data:`MAX_DECODE_PIXELS`."""
    plan = plan_decode(data)
    if plan.width * plan.height > MAX_DECODE_PIXELS:
        raise ImageTooLarge(f"image too large: {plan.width}x{plan.height} pixels (limit {MAX_DECODE_PIXELS})")
    check_scan_time(plan, MAX_SCAN_PASSES * MAX_DECODE_PIXELS * 3 // 64, "the limit for image files")
    return decode_planned(data, plan)


def check_scan_time(plan: DecodePlan, max_blocks: int, setting: str) -> None:
    """Raise :class:`ImageTooSlow` when the JPEG's scans would visit more than ``max_blocks`` blocks."""
    if plan.scan_blocks > max_blocks:
        raise ImageTooSlow(f"image too slow to decode: its scans visit {plan.scan_blocks:,} 8x8 blocks, more "
                           f"than {setting} allows ({max_blocks:,}: {MAX_SCAN_PASSES} passes over the largest image)")


def plan_decode(data: bytes) -> DecodePlan:
    """Read the header and work out the decode's scale and peak memory, allocating nothing.

    Other formats than JPEG, PNG, WebP and BMP are refused here, so a small file that declares
    huge dimensions (a decompression bomb) is turned away before the decoder runs. Raises
    :class:`ImageDecodeError` for empty, unsupported or corrupt headers.
    """
    if not data:
        raise ImageDecodeError("empty image")
    header = _read_header(data)
    w, h = header.width, header.height
    if w <= 0 or h <= 0:
        raise ImageDecodeError(f"corrupt {header.format} header: {w}x{h} pixels")
    reduce = 1
    if header.format == "JPEG":
        reduce = next(r for r in (8, 4, 2, 1) if min(w, h) // r >= MIN_DECODE_SIDE or r == 1)
    decoded = -(-w // reduce) * -(-h // reduce) * header.bytes_per_pixel
    cost = 2 * decoded + header.whole_image_bytes + _DECODE_SLACK_BYTES
    return DecodePlan(header.format, w, h, reduce, cost, header.scan_blocks)


def decode_planned(data: bytes, plan: DecodePlan) -> np.ndarray:
    """Decode as planned -> HxWx3 uint8 RGB whose short side is at most :data:`MIN_DECODE_SIDE`.

    Grey and RGBA images become RGB; 16-bit images are scaled to 8 bits. A JPEG's EXIF orientation
    is applied, as browsers do, so a phone photo is seen upright here and in the web app alike.
    Raises :class:`ImageDecodeError` for undecodable data.
    """
    if plan.format == "JPEG":
        flags = _JPEG_REDUCED[plan.reduce]  # without IMREAD_IGNORE_ORIENTATION: EXIF rotation applied
    else:
        flags = cv2.IMREAD_UNCHANGED
    try:
        img = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags)
    except cv2.error as err:  # some codecs raise on corrupt data instead of returning None
        raise ImageDecodeError("not a decodable image") from err
    if img is None or img.size == 0:
        raise ImageDecodeError("not a decodable image")
    img = _shrink(img)  # before any conversion, so no full-size copy is ever made
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


def _shrink(img: np.ndarray) -> np.ndarray:
    h, w = img.shape[:2]
    if min(h, w) <= MIN_DECODE_SIDE:
        return img
    scale = MIN_DECODE_SIDE / min(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(img, size, interpolation=cv2.INTER_AREA)


@dataclass(frozen=True)
class _Header:
    format: str
    width: int
    height: int
    bytes_per_pixel: int  # of the array OpenCV decodes to
    whole_image_bytes: int = 0  # decoder buffers for the whole image besides the output
    scan_blocks: int = 0  # JPEG: blocks visited over all scans (DecodePlan.scan_blocks)


def _read_header(data: bytes) -> _Header:
    """Format, declared size and decode footprint from the header; other formats are refused."""
    if data.startswith(b"\xff\xd8"):
        return _jpeg_header(data)
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        if len(data) < 26 or data[12:16] != b"IHDR":
            raise ImageDecodeError("corrupt PNG: no IHDR header")
        bit_depth, color_type = data[24], data[25]
        channels = 1 if color_type == 0 else 3 if color_type == 2 else 4  # palette may carry alpha
        return _Header("PNG", _uint(data, 16, 4, "big"), _uint(data, 20, 4, "big"),
                       channels * (2 if bit_depth == 16 else 1))
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp_header(data)
    if data[:2] == b"BM" and len(data) >= 26:
        if _uint(data, 14, 4) == 12:  # OS/2 header: 16-bit dimensions
            return _Header("BMP", _uint(data, 18, 2), _uint(data, 20, 2), 3)
        width = int.from_bytes(data[18:22], "little", signed=True)
        height = int.from_bytes(data[22:26], "little", signed=True)
        # the height is negative for top-down bitmaps; 32 bits per pixel decode to BGRA
        return _Header("BMP", abs(width), abs(height), 4 if _uint(data, 28, 2) == 32 else 3)
    raise UnsupportedFormat("unsupported image format (expected JPEG, PNG, WebP or BMP)")


def _uint(data: bytes, offset: int, size: int, order: Literal["little", "big"] = "little") -> int:
    return int.from_bytes(data[offset : offset + size], order)


# Start-of-frame markers carry the dimensions; C4, C8 and CC share the range but are not frames.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Frames libjpeg decodes scan by scan into a whole-image coefficient buffer (progressive, lossless).
_JPEG_WHOLE_IMAGE_SOF = frozenset({0xC2, 0xC3, 0xC6, 0xC7, 0xCA, 0xCB, 0xCE, 0xCF})


def _jpeg_header(data: bytes) -> _Header:
    """Walk the JPEG segments up to the first scan, as the decoder will."""
    i, n, frame = 2, len(data), None
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
        if marker == 0xD9 or i + 3 > n:  # end of image before any scan
            break
        if marker == 0xDA:  # start of scan: a scan without every component needs whole-image buffers
            if frame is None:
                break
            header = _jpeg_frame_header(frame, scan_components=data[i + 2])
            return dataclasses.replace(header, scan_blocks=_jpeg_scan_blocks(data, i - 2, frame[1]))
        if marker in _JPEG_SOF:
            if i + 8 > n:
                break
            frame = (marker, data[i + 2 : i + _uint(data, i, 2, "big")])
        i += _uint(data, i, 2, "big")
    if frame is not None:  # a frame header but no scan: the size is known, the data is not there
        return _jpeg_frame_header(frame, scan_components=None)
    raise ImageDecodeError("truncated or corrupt JPEG: no frame header")


def _jpeg_frame_header(frame: tuple[int, bytes], *, scan_components: int | None) -> _Header:
    marker, sof = frame
    # precision, height, width, component count, then (id, H << 4 | V sampling, table) per component
    height, width, count = _uint(sof, 1, 2, "big"), _uint(sof, 3, 2, "big"), sof[5] if len(sof) > 5 else 0
    factors = [(b >> 4, b & 0x0F) for b in sof[7 : 6 + 3 * count : 3]]
    whole = 0
    if factors and (marker in _JPEG_WHOLE_IMAGE_SOF or (scan_components or count) < count):
        h_max, v_max = max(f[0] for f in factors) or 1, max(f[1] for f in factors) or 1
        for h_factor, v_factor in factors:  # 8x8 blocks of 2-byte coefficients per component
            blocks_w = -(-width * max(h_factor, 1) // (8 * h_max))
            blocks_h = -(-height * max(v_factor, 1) // (8 * v_max))
            whole += blocks_w * blocks_h * 64 * 2
    return _Header("JPEG", width, height, 3, whole)


def _jpeg_scan_blocks(data: bytes, first_scan: int, sof: bytes) -> int:
    """8x8 blocks visited by all the scans from ``first_scan`` on, read from each scan header
    (component count, then their ids). A scan's coded data never holds the SOS marker (an FF byte
    there is always followed by 00 or a restart marker), so finding the markers finds the scans.
    Raises :class:`ImageTooSlow` past :data:`MAX_JPEG_SCANS` scans."""
    height, width, count = _uint(sof, 1, 2, "big"), _uint(sof, 3, 2, "big"), sof[5] if len(sof) > 5 else 0
    components = [(sof[i], sof[i + 1] >> 4 or 1, sof[i + 1] & 0x0F or 1)  # id, H and V sampling
                  for i in range(6, min(len(sof) - 1, 6 + 3 * count), 3)]
    h_max, v_max = max((c[1] for c in components), default=1), max((c[2] for c in components), default=1)
    blocks = {ident: -(-width * h // (8 * h_max)) * -(-height * v // (8 * v_max)) for ident, h, v in components}
    scans = total = 0
    i = first_scan
    while i != -1:
        scans += 1
        if scans > MAX_JPEG_SCANS:
            raise ImageTooSlow(f"image too slow to decode: more than {MAX_JPEG_SCANS} scans (a JPEG encoder writes "
                               "about 10; repeated scans make the decoder pass over the image again each time)")
        in_scan = data[i + 4 : i + 5 + 2 * data[i + 4]][1::2] if i + 4 < len(data) else b""
        total += sum(blocks.get(ident, 0) for ident in in_scan)
        i = data.find(b"\xff\xda", i + 2)
    return total


def _webp_header(data: bytes) -> _Header:
    if len(data) < 30:
        raise ImageDecodeError("truncated WebP header")
    chunk = data[12:16]
    if chunk == b"VP8 ":  # lossy: 14-bit sizes after the frame tag and start code
        return _Header("WebP", _uint(data, 26, 2) & 0x3FFF, _uint(data, 28, 2) & 0x3FFF, 3)
    if chunk == b"VP8L":  # lossless: 14-bit (size - 1) fields and an alpha bit after the signature
        bits = _uint(data, 21, 4)
        channels = 4 if bits >> 28 & 1 else 3
        return _Header("WebP", (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1, channels)
    if chunk == b"VP8X":  # extended: flags (0x10: alpha), then 24-bit (size - 1) canvas fields
        channels = 4 if data[20] & 0x10 else 3
        return _Header("WebP", _uint(data, 24, 3) + 1, _uint(data, 27, 3) + 1, channels)
    raise ImageDecodeError(f"unsupported WebP chunk {chunk!r}")


def load_image(path) -> np.ndarray:
    """Read an image file as HxWx3 uint8 RGB; raises ImageDecodeError naming the file."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
        return decode_image(data)
    except UnsupportedFormat as err:
        suffix = "." + str(path).rsplit(".", 1)[-1].lower()
        if suffix in IMAGE_SUFFIXES and len(data) < _MIN_IMAGE_BYTES:  # named as an image: damaged, not foreign
            size = f"{len(data)} byte{'' if len(data) == 1 else 's'}"
            raise ImageDecodeError(f"{path}: corrupt image: {size}, too short for any image file") from err
        if suffix in IMAGE_SUFFIXES:
            raise ImageDecodeError(f"{path}: corrupt image: named {suffix} but its bytes are no JPEG, PNG, "
                                   "WebP or BMP") from err
        raise ImageDecodeError(f"{path}: not an image file (expected JPEG, PNG, WebP or BMP)") from err
    except ImageDecodeError as err:
        raise ImageDecodeError(f"{path}: {err}") from err
