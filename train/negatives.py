"""What a camera sees when it is not held over a lesion: the negatives of the not-a-lesion gate.

Three kinds, each assigned to a part (``fit`` the head, ``pick`` its threshold, ``report`` its rates)
so that no image is scored by a part it was chosen on:

- ``everyday``: photos of anything else (a folder such as ``../shared/data/not-lesion/images``),
  parted by a hash of the file name, so a file keeps its part whatever else is in the folder;
- ``bare_skin``: lesion-free skin cut from dermoscopy images with the dataset's lesion masks
  (``<root>/masks/<image_id>.png``, white = lesion), in the part of the lesion split the image belongs
  to (train -> fit, val -> pick, test -> report): the scope's dark rim and hair come with them;
- ``made``: frames made here from the other two: blank, blurred, over- and under-exposed frames, paper,
  and bare skin with drawn hair or ink marks.

Every image is an RGB uint8 array of any size; the caller fits it to the model's input the way the
device does.
"""
from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from device.decode import load_image
from train.data import IMAGE_SUFFIXES, MASKS_DIR, Record

_log = logging.getLogger(__name__)

PARTS = ("fit", "pick", "report")
PART_OF_SPLIT = {"train": "fit", "val": "pick", "test": "report"}
KINDS = ("everyday", "bare_skin", "made")
# A skin band must be at least this share of the image side it runs along, and hold no lesion pixel
# within MASK_MARGIN pixels (the masks are drawn tight; a rim of lesion would teach the gate to reject lesions).
MIN_BAND = 0.25
MASK_MARGIN = 6
# Which shares of the everyday photos go to fit / pick / report.
EVERYDAY_SHARES = (0.5, 0.25, 0.25)


@dataclass(frozen=True)
class Negative:
    rgb: np.ndarray  # HxWx3 uint8
    kind: str  # one of KINDS
    part: str  # one of PARTS
    source: str  # file it came from, and how it was made


def part_of_name(name: str, shares=EVERYDAY_SHARES) -> str:
    """A stable part for a file name: its sha1 read as a number in [0, 1)."""
    u = int(hashlib.sha1(name.encode()).hexdigest()[:8], 16) / 16**8
    edges = np.cumsum(shares)
    return PARTS[int(np.searchsorted(edges, u, side="right"))]


def everyday(folder: Path) -> Iterator[Negative]:
    files = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise FileNotFoundError(f"negatives: no images under {folder}")
    for path in files:
        yield Negative(load_image(path), "everyday", part_of_name(path.name), path.name)


def mask_path(record: Record, root: Path) -> Path:
    return Path(root) / MASKS_DIR / f"{record.image_id}.png"


def skin_band(rgb: np.ndarray, mask: np.ndarray, *, min_band: float = MIN_BAND) -> np.ndarray | None:
    """The widest lesion-free band along one side of a dermoscopy image, cut to at most 4:3 (or 3:4),
    or None when no side leaves ``min_band`` of the image free of lesion."""
    lesion = cv2.dilate((mask > 127).astype(np.uint8), np.ones((2 * MASK_MARGIN + 1,) * 2, np.uint8)) > 0
    if not lesion.any():
        return None
    h, w = lesion.shape
    cols, rows = np.flatnonzero(lesion.any(axis=0)), np.flatnonzero(lesion.any(axis=1))
    bands = {  # side -> (free share of the side, slice of the image)
        "left": (cols[0] / w, np.s_[:, : cols[0]]),
        "right": ((w - 1 - cols[-1]) / w, np.s_[:, cols[-1] + 1 :]),
        "top": (rows[0] / h, np.s_[: rows[0], :]),
        "bottom": ((h - 1 - rows[-1]) / h, np.s_[rows[-1] + 1 :, :]),
    }
    share, where = max(bands.values(), key=lambda band: band[0])
    if share < min_band:
        return None
    band = rgb[where]
    bh, bw = band.shape[:2]
    # A long thin band becomes its middle 4:3 (or 3:4) piece: what a camera held near skin shows.
    if bw > bh * 4 / 3:
        x0 = (bw - round(bh * 4 / 3)) // 2
        band = band[:, x0 : x0 + round(bh * 4 / 3)]
    elif bh > bw * 4 / 3:
        y0 = (bh - round(bw * 4 / 3)) // 2
        band = band[y0 : y0 + round(bw * 4 / 3)]
    return np.ascontiguousarray(band)


def bare_skin(records: list[Record], root: Path) -> Iterator[Negative]:
    """One skin band per image that has one; images without a mask file are skipped (counted)."""
    missing = 0
    for record in records:
        path = mask_path(record, root)
        mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if mask is None:
            missing += 1
            continue
        rgb = load_image(record.path)
        if mask.shape != rgb.shape[:2]:
            mask = cv2.resize(mask, (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_NEAREST)
        band = skin_band(rgb, mask)
        if band is not None:
            yield Negative(band, "bare_skin", PART_OF_SPLIT[record.split], record.image_id)
    if missing:
        _log.warning("bare skin: %d of %d images have no mask under %s", missing, len(records),
                     Path(root) / MASKS_DIR)


def made(everyday_images: list[Negative], skin: list[Negative], *, seed: int = 0) -> Iterator[Negative]:
    """Frames made from the others, each in its source's part, one per source and rule."""
    rng = np.random.default_rng(seed)
    for neg in everyday_images:
        rule = ("blurred", "overexposed", "underexposed")[int(rng.integers(3))]
        yield Negative(_exposed(neg.rgb, rule, rng), "made", neg.part, f"{neg.source} {rule}")
    for neg in skin:
        rule = ("hair", "ink")[int(rng.integers(2))]
        yield Negative(_drawn_on(neg.rgb, rule, rng), "made", neg.part, f"{neg.source} {rule}")
    for part, count in zip(PARTS, (60, 30, 30), strict=True):
        for i in range(count):
            rule = ("blank", "paper")[i % 2]
            yield Negative(_plain(rule, rng), "made", part, f"{rule} {part} {i}")


def _exposed(rgb: np.ndarray, rule: str, rng: np.random.Generator) -> np.ndarray:
    if rule == "blurred":
        k = int(rng.integers(5, 12)) * 2 + 1
        return cv2.GaussianBlur(rgb, (k, k), 0)
    gain = rng.uniform(2.0, 3.5) if rule == "overexposed" else rng.uniform(0.1, 0.3)
    return np.clip(rgb.astype(np.float32) * gain, 0, 255).astype(np.uint8)


def _drawn_on(rgb: np.ndarray, rule: str, rng: np.random.Generator) -> np.ndarray:
    out = rgb.copy()
    h, w = out.shape[:2]
    if rule == "hair":
        for _ in range(int(rng.integers(3, 15))):  # thin, gently curving strands
            angle = rng.uniform(0, 2 * np.pi) + np.cumsum(rng.normal(0, 0.08, size=40))
            steps = np.stack([np.cos(angle), np.sin(angle)], axis=1) * max(h, w) / 40
            points = np.cumsum(steps, axis=0) + rng.uniform(0, (w, h))
            shade = int(rng.integers(10, 70))
            cv2.polylines(out, [points.astype(np.int32)], False, (shade, shade // 2, shade // 3),
                          thickness=1, lineType=cv2.LINE_AA)
    else:  # a surgical marker's ring or stroke
        colour = tuple(int(c) for c in rng.choice([(80, 40, 140), (40, 50, 150), (20, 20, 20)]))
        centre = (int(rng.uniform(0.2, 0.8) * w), int(rng.uniform(0.2, 0.8) * h))
        cv2.ellipse(out, centre, (int(w * rng.uniform(0.1, 0.35)), int(h * rng.uniform(0.1, 0.35))), 0, 0,
                    int(rng.uniform(180, 360)), colour, thickness=int(rng.integers(2, 5)), lineType=cv2.LINE_AA)
    return out


def _plain(rule: str, rng: np.random.Generator) -> np.ndarray:
    h, w = 240, 320
    if rule == "blank":
        colour = rng.uniform(0, 255, size=3)
    else:  # paper: near white, a little warm or cold
        colour = 235 + rng.uniform(-15, 15, size=3)
    noise = rng.normal(0, rng.uniform(1, 8), size=(h, w, 1))
    ramp = np.linspace(-1, 1, w)[None, :, None] * rng.uniform(0, 25)
    return np.clip(colour + noise + ramp, 0, 255).astype(np.uint8)


def collect(*, everyday_dir: Path | None, skin_records: list[Record], skin_root: Path | None,
            seed: int = 0) -> list[Negative]:
    """All negatives of the three kinds (a kind whose source is not given is left out)."""
    daily = list(everyday(everyday_dir)) if everyday_dir else []
    skin = list(bare_skin(skin_records, skin_root)) if skin_root else []
    return daily + skin + list(made(daily, skin, seed=seed))
