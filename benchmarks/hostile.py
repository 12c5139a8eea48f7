"""Worst-case uploads for the daemon's decode budget: small files that decode to a lot of memory.

Each kind comes just under the budget (the largest image the daemon still decodes, so it must
answer 200) and just over it (the smallest it refuses, 422), sized with the daemon's own
estimate (:func:`device.decode.plan_decode`) and then encoded for real, plus the 6000x6000
decompression bombs that used to get through. Content is flat with a sparse grid, so the files
stay a few hundred kB at most.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from device.decode import plan_decode

# The 115 KB PNG that decoded to 6000x6000 and took the daemon from 100 MB to 310 MB.
BOMB_SIDE = 6000
_JPEG_444 = [cv2.IMWRITE_JPEG_QUALITY, 10, cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]


# Rough decode bytes per pixel of the kinds sized to the budget (a baseline JPEG is decoded at
# 1/8 scale and cannot reach a sane budget below WebP's 16383-pixel limit, so only its bomb is sent).
_BYTES_PER_PIXEL = {"png-rgb8": 6, "png-rgba16": 16, "webp-lossless-rgba": 8, "webp-lossy": 6,
                    "jpeg-progressive-444": 6.2}


@dataclass(frozen=True)
class Upload:
    name: str
    data: bytes
    width: int
    height: int
    cost_bytes: int  # the daemon's estimate of the decode's peak memory
    expected: int  # HTTP status the daemon must answer


def _pixels(side: int, channels: int, dtype=np.uint8) -> np.ndarray:
    img = np.zeros((side, side, channels), dtype)
    img[::97, :] = np.iinfo(dtype).max // 2
    img[:, ::89] = np.iinfo(dtype).max // 3
    return img


def _encoders() -> dict[str, Callable[[int], bytes]]:
    def encode(ext: str, img: np.ndarray, params: list[int]) -> bytes:
        ok, buf = cv2.imencode(ext, img, params)
        if not ok:
            raise RuntimeError(f"OpenCV could not encode {ext} {img.shape}")
        return buf.tobytes()

    return {
        "png-rgb8": lambda n: encode(".png", _pixels(n, 3), [cv2.IMWRITE_PNG_COMPRESSION, 1]),
        "png-rgba16": lambda n: encode(".png", _pixels(n, 4, np.uint16), [cv2.IMWRITE_PNG_COMPRESSION, 1]),
        "webp-lossless-rgba": lambda n: encode(".webp", _pixels(n, 4), [cv2.IMWRITE_WEBP_QUALITY, 101]),
        "webp-lossy": lambda n: encode(".webp", _pixels(n, 3), [cv2.IMWRITE_WEBP_QUALITY, 10]),
        # progressive 4:4:4: libjpeg holds every coefficient of the full image, at any output scale
        "jpeg-progressive-444": lambda n: encode(".jpg", _pixels(n, 3), [*_JPEG_444, cv2.IMWRITE_JPEG_PROGRESSIVE, 1]),
        "jpeg-baseline": lambda n: encode(".jpg", _pixels(n, 3), [cv2.IMWRITE_JPEG_QUALITY, 10]),
    }


def _cost(data: bytes) -> int:
    return plan_decode(data).cost_bytes


def _largest_side_within(encode: Callable[[int], bytes], budget_bytes: int, lo: int, hi: int) -> int:
    """The largest square side in [lo, hi) whose encoding's estimated cost fits ``budget_bytes``
    (bisection on real encodings: the cost only grows with the side)."""
    if _cost(encode(lo)) > budget_bytes or _cost(encode(hi)) <= budget_bytes:
        lo, hi = 1, 16383  # the guess missed: search WebP's whole range
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if _cost(encode(mid)) <= budget_bytes else (lo, mid)
    return lo


def boundary_uploads(budget_bytes: int, kinds: tuple[str, ...] = tuple(_BYTES_PER_PIXEL)) -> list[Upload]:
    """Per kind, the largest image within ``budget_bytes`` (200) and one pixel a side more (422)."""
    encoders = _encoders()
    uploads = []
    for kind in kinds:
        guess = math.sqrt(budget_bytes / _BYTES_PER_PIXEL[kind])  # brackets the boundary: few encodings
        side = _largest_side_within(encoders[kind], budget_bytes, int(guess * 0.9), int(guess * 1.1) + 8)
        for name, n, expected in ((f"{kind}-under", side, 200), (f"{kind}-over", side + 1, 422)):
            data = encoders[kind](n)
            uploads.append(Upload(name, data, n, n, _cost(data), expected))
    return uploads


def bombs(budget_bytes: int) -> list[Upload]:
    """The 6000x6000 PNG and its siblings; the baseline JPEG is decoded at 1/8 scale (200)."""
    uploads = []
    for kind in ("png-rgb8", "jpeg-baseline", "jpeg-progressive-444", "webp-lossy"):
        data = _encoders()[kind](BOMB_SIDE)
        cost = _cost(data)
        uploads.append(Upload(f"{kind}-{BOMB_SIDE}", data, BOMB_SIDE, BOMB_SIDE, cost,
                              200 if cost <= budget_bytes else 422))
    return uploads
