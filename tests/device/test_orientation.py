"""EXIF orientation: a phone photo tagged as rotated is decoded upright, as browsers show it."""
from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from device.decode import decode_image, load_image

# EXIF orientation -> what a viewer does to the stored pixels to show them upright.
UPRIGHT = {1: lambda a: a, 3: lambda a: np.rot90(a, 2), 6: lambda a: np.rot90(a, -1), 8: lambda a: np.rot90(a, 1)}


def tagged_jpeg(rgb: np.ndarray, orientation: int) -> bytes:
    image = Image.fromarray(rgb)
    exif = image.getexif()
    exif[0x0112] = orientation  # Orientation
    out = io.BytesIO()
    image.save(out, "JPEG", quality=95, exif=exif.tobytes())
    return out.getvalue()


def stored_pixels(data: bytes) -> np.ndarray:
    """The JPEG's pixels as stored, orientation ignored (what the device decoded before)."""
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


@pytest.mark.parametrize("orientation", sorted(UPRIGHT))
def test_the_exif_orientation_is_applied(orientation):
    rgb = np.zeros((60, 80, 3), np.uint8)
    rgb[:20, :30] = (250, 30, 30)  # a red block in the stored top-left corner
    data = tagged_jpeg(rgb, orientation)
    decoded = decode_image(data)
    np.testing.assert_array_equal(decoded, UPRIGHT[orientation](stored_pixels(data)))
    if orientation in (6, 8):
        assert decoded.shape[:2] == (80, 60)  # a landscape sensor held upright: a portrait photo


def test_a_rotated_phone_photo_of_a_lesion_reads_upright(fixture_dir, tmp_path):
    upright = load_image(fixture_dir / "images" / "ISIC_0024475.jpg")
    stored = np.ascontiguousarray(np.rot90(upright, 1))  # a phone held sideways stores it turned
    path = tmp_path / "phone.jpg"
    path.write_bytes(tagged_jpeg(stored, 6))
    decoded = load_image(path)
    assert decoded.shape == upright.shape
    assert np.abs(decoded.astype(int) - upright).mean() < 3  # only the JPEG re-encoding differs
