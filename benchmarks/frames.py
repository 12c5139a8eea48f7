"""The images every timing runs on: real lesion photos, fitted to a model input or to a camera frame."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from device.decode import load_image
from device.preprocess import fit_to_input

FRAME_HEIGHT, FRAME_WIDTH = 480, 640  # the daemon's default camera frame
_SUFFIXES = (".jpg", ".jpeg", ".png")


def load_images(folder: Path, limit: int) -> list[np.ndarray]:
    """Up to ``limit`` RGB images of ``folder`` in name order."""
    folder = Path(folder)
    paths = sorted(p for p in folder.glob("*") if p.suffix.lower() in _SUFFIXES)[:limit]
    if not paths:
        raise FileNotFoundError(f"no images ({', '.join(_SUFFIXES)}) in {folder}")
    return [load_image(p) for p in paths]


def camera_frames(images: list[np.ndarray]) -> list[np.ndarray]:
    """The images as 640x480 camera frames (centre-cropped to 4:3, then resized)."""
    return [fit_to_input(rgb, FRAME_HEIGHT, FRAME_WIDTH) for rgb in images]


def write_replay_frames(frames: list[np.ndarray], path: Path) -> Path:
    """The frames as one (N, H, W, 3) uint8 ``.npy`` that the daemon's memory camera replays."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, np.stack(frames), allow_pickle=False)
    return path
