"""Training-split augmentation on uint8 images, in numpy/OpenCV so it is backend-agnostic.

Flips, rotation and centre zoom (up to 33%, as the seeds did) in one affine warp with
reflected borders, then brightness/contrast/hue jitter.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class AugmentConfig:
    flip: bool = True
    rotation_deg: float = 180.0  # lesions have no "up"
    zoom_max: float = 0.33  # centre zoom-in of up to 33%
    brightness: float = 0.15  # +-15% of full range
    contrast: float = 0.2
    hue_deg: float = 8.0


def augment_image(img: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    h, w = img.shape[:2]
    if cfg.flip:
        if rng.random() < 0.5:
            img = img[:, ::-1]
        if rng.random() < 0.5:
            img = img[::-1]
    angle = rng.uniform(-cfg.rotation_deg, cfg.rotation_deg)
    scale = 1.0 + rng.uniform(0.0, cfg.zoom_max)
    if angle or scale != 1.0:
        m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, scale)
        img = cv2.warpAffine(np.ascontiguousarray(img), m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    if cfg.hue_deg:
        hsv = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2HSV)
        shift = round(rng.uniform(-cfg.hue_deg, cfg.hue_deg) / 2)  # OpenCV hue is 0..179
        hsv[..., 0] = ((hsv[..., 0].astype(np.int16) + shift) % 180).astype(np.uint8)
        img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    x = img.astype(np.float32)
    contrast = 1.0 + rng.uniform(-cfg.contrast, cfg.contrast)
    x = (x - x.mean()) * contrast + x.mean() + rng.uniform(-cfg.brightness, cfg.brightness) * 255.0
    return np.clip(x, 0, 255).astype(np.uint8)


def augment_batch(batch: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    return np.stack([augment_image(img, cfg, rng) for img in batch])
