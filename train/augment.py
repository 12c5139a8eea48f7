"""Training-split augmentation on uint8 images, in numpy/OpenCV so it is backend-agnostic.

Flips, rotation and centre zoom (up to 33%, as the seeds did) in one affine warp with
reflected borders, then brightness/contrast/hue jitter. Optionally a whole batch is then mixed
with a shuffled copy of itself (mixup or CutMix), targets and sample weights in the same shares.
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


MIX_KINDS = ("mixup", "cutmix")


@dataclass(frozen=True)
class MixConfig:
    """Mixing of a batch with a permutation of itself, the share ``lam`` drawn from Beta(alpha, alpha).

    mixup (Zhang et al. 2018) blends whole images; CutMix (Yun et al. 2019) pastes a box of the
    other image covering ``1 - lam`` of the area, which keeps each lesion's local texture intact."""
    kind: str = "cutmix"
    alpha: float = 1.0
    prob: float = 0.5  # share of batches that are mixed

    def __post_init__(self):
        if self.kind not in MIX_KINDS:
            raise ValueError(f"mix: unknown {self.kind!r}; choose none or one of {MIX_KINDS}")
        if self.alpha <= 0:
            raise ValueError(f"mix_alpha must be > 0, got {self.alpha}")
        if not 0.0 <= self.prob <= 1.0:
            raise ValueError(f"mix_prob must be in [0, 1], got {self.prob}")


def mix_batch(x: np.ndarray, y: np.ndarray, w: np.ndarray | None, cfg: MixConfig,
              rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Images (uint8), targets and optional sample weights of one batch, mixed as ``cfg`` says."""
    if rng.random() >= cfg.prob:
        return x, y, w
    perm = rng.permutation(len(x))
    lam = rng.beta(cfg.alpha, cfg.alpha)
    if cfg.kind == "mixup":
        x = np.rint(lam * x + (1.0 - lam) * x[perm].astype(np.float32)).astype(np.uint8)
    else:
        h, w_px = x.shape[1:3]
        cut = np.sqrt(1.0 - lam)
        ch, cw = round(h * cut), round(w_px * cut)
        cy, cx = rng.integers(h), rng.integers(w_px)
        y0, y1 = max(cy - ch // 2, 0), min(cy + (ch + 1) // 2, h)
        x0, x1 = max(cx - cw // 2, 0), min(cx + (cw + 1) // 2, w_px)
        x = x.copy()
        x[:, y0:y1, x0:x1] = x[perm, y0:y1, x0:x1]
        lam = 1.0 - (y1 - y0) * (x1 - x0) / (h * w_px)  # the box clipped at the border pastes less
    y = lam * y + (1.0 - lam) * y[perm]
    if w is not None:
        w = lam * w + (1.0 - lam) * w[perm]
    return x, y.astype(np.float32), w
