"""HAM10000 loading, lesion-grouped splitting and the decoded-image cache.

The loader accepts the official layout (``HAM10000_images_part_1/2``) and any copy
that keeps ``HAM10000_metadata.csv`` and the images somewhere under one root: images
are found by ``image_id`` anywhere below it.
"""
from __future__ import annotations

import csv
import hashlib
import logging
import random
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from device.decode import load_image
from device.preprocess import fit_to_input

_log = logging.getLogger(__name__)

# Output order of every model: the original predictor's (alphabetical) order.
CLASSES: tuple[tuple[str, str], ...] = (
    ("akiec", "Actinic keratoses / intraepithelial carcinoma"),
    ("bcc", "Basal cell carcinoma"),
    ("bkl", "Benign keratosis-like lesion"),
    ("df", "Dermatofibroma"),
    ("mel", "Melanoma"),
    ("nv", "Melanocytic nevus"),
    ("vasc", "Vascular lesion"),
)
CLASS_CODES = tuple(code for code, _ in CLASSES)
METADATA_NAME = "HAM10000_metadata.csv"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")  # .webp: the GPU bundle's re-encoded copy (train.gpu_bundle)
MASKS_DIR = "masks"  # lesion segmentations (white = lesion), named like their images
SPLITS = ("train", "val", "test")
REFIT_SPLITS = ("train", "val")  # what a refit learns from (train --refit)
CITATION = (
    "Tschandl, P., Rosendahl, C. & Kittler, H. The HAM10000 dataset, a large collection of "
    "multi-source dermatoscopic images of common pigmented skin lesions. Sci. Data 5, 180161 "
    "(2018). https://doi.org/10.1038/sdata.2018.161"
)
LICENSE = "CC BY-NC-SA 4.0"


class DatasetError(RuntimeError):
    """The dataset folder or metadata is not usable; the message says what is wrong."""


@dataclass(frozen=True)
class Record:
    image_id: str
    lesion_id: str
    dx: str
    path: Path
    split: str = ""

    @property
    def label(self) -> int:
        return CLASS_CODES.index(self.dx)


def load_records(root: Path, metadata: Path | None = None) -> list[Record]:
    """All metadata rows of ``root`` with the path of each image.

    Raises DatasetError for a missing CSV, missing images (how many, first few) or
    unknown ``dx`` codes.
    """
    root = Path(root)
    csv_path = Path(metadata) if metadata else root / METADATA_NAME
    if not csv_path.is_file():
        raise DatasetError(f"metadata CSV not found: {csv_path}")
    rows, paths = _labelled_images(csv_path, {"lesion_id", "image_id", "dx"}, root)
    return [Record(r["image_id"], r["lesion_id"], r["dx"], paths[r["image_id"]]) for r in rows]


def _labelled_images(csv_path: Path, needed: set[str], root: Path) -> tuple[list[dict], dict[str, Path]]:
    """The rows of a labels CSV and the image file of each under ``root``; DatasetError when a column
    of ``needed`` is missing, a ``dx`` code is not ours or an image is not found (how many, first few)."""
    with open(csv_path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or not needed <= set(rows[0]):
        raise DatasetError(f"{csv_path}: expected columns {sorted(needed)}")
    unknown = sorted({r["dx"] for r in rows} - set(CLASS_CODES))
    if unknown:
        raise DatasetError(f"{csv_path}: unknown dx codes {unknown}; expected {list(CLASS_CODES)}")
    paths = _index_images(root)
    missing = [r["image_id"] for r in rows if r["image_id"] not in paths]
    if missing:
        raise DatasetError(f"{len(missing)} of {len(rows)} images listed in {csv_path.name} were not found "
                           f"under {root}; first: {', '.join(missing[:5])}")
    return rows, paths


def _index_images(root: Path) -> dict[str, Path]:
    """image_id -> image file anywhere under ``root``, except under a ``masks`` folder: a copy that
    ships the lesion masks beside the images names each mask like its image (``masks/ISIC_*.png``)."""
    return {
        p.stem: p
        for p in sorted(root.rglob("*"))
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and MASKS_DIR not in p.relative_to(root).parts
    }


# --- splitting --------------------------------------------------------------------


def split_records(
    records: list[Record],
    *,
    fractions: tuple[float, float, float] = (0.70, 0.15, 0.15),
    seed: int = 42,
    method: str = "lesion",
) -> list[Record]:
    """Assign train/val/test to every record.

    ``lesion`` (default) keeps all images of a lesion in one split and stratifies
    lesions by class. ``random`` is the seeds' leaky image-level split, kept only to
    compare with their published numbers.
    """
    if abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"split fractions must sum to 1, got {fractions}")
    if method == "random":
        groups = {r.image_id: [r] for r in records}
    elif method == "lesion":
        groups = defaultdict(list)
        for r in records:
            groups[r.lesion_id].append(r)
    else:
        raise ValueError(f"unknown split method {method!r}; use 'lesion' or 'random'")

    by_class: dict[str, list[str]] = defaultdict(list)
    for key, members in groups.items():
        # A lesion's class is its majority diagnosis (HAM10000 has one per lesion).
        by_class[Counter(m.dx for m in members).most_common(1)[0][0]].append(key)
    rng = random.Random(seed)
    assignment: dict[str, str] = {}
    for dx in sorted(by_class):
        keys = sorted(by_class[dx])
        rng.shuffle(keys)
        n_val = round(len(keys) * fractions[1])
        n_test = round(len(keys) * fractions[2])
        if len(keys) >= 3:  # a rare class with only a few lesions still reaches val and test
            n_val, n_test = max(n_val, int(fractions[1] > 0)), max(n_test, int(fractions[2] > 0))
        for i, key in enumerate(keys):
            assignment[key] = "test" if i < n_test else "val" if i < n_test + n_val else "train"
    return [
        Record(r.image_id, r.lesion_id, r.dx, r.path, assignment[r.image_id if method == "random" else r.lesion_id])
        for r in records
    ]


def redraw_split(split: dict, root: Path, *, owner: str) -> list[Record]:
    """Every record under ``root`` in the split a model card records (``method``, ``seed``), refused
    when its per-class counts differ from the card's ``counts``: then ``root`` is not the data
    ``owner`` was trained on, and scoring it could mean scoring images the model has seen."""
    records = split_records(load_records(Path(root)), method=split["method"], seed=int(split["seed"]))
    expected = split.get("counts")
    if expected and split_counts(records) != expected:
        raise ValueError(f"{root} does not reproduce the split in the card of {owner}: "
                         f"counts {split_counts(records)['test']} vs the card's {expected.get('test')} (test)")
    return records


def write_split(records: list[Record], path: Path) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image_id", "lesion_id", "dx", "split"])
        for r in records:
            writer.writerow([r.image_id, r.lesion_id, r.dx, r.split])


def read_split(path: Path, root: Path) -> list[Record]:
    """Records of a split CSV written by :func:`write_split`, with image paths under ``root``."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"split file not found: {path}")
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    paths = _index_images(Path(root))
    missing = [r["image_id"] for r in rows if r["image_id"] not in paths]
    if missing:
        raise DatasetError(f"{len(missing)} images of {path} not under {root}; first: {', '.join(missing[:5])}")
    return [Record(r["image_id"], r["lesion_id"], r["dx"], paths[r["image_id"]], r["split"]) for r in rows]


def select(records: list[Record], split: str) -> list[Record]:
    return [r for r in records if r.split == split]


def learned_from_val(split: dict) -> bool:
    """Whether the model a card's or run's ``split`` describes was refitted on val: then nothing may
    be fitted or picked on val for it, and its val figures are in-sample."""
    return "val" in split.get("fit_on", ())


def refuse_val_fit(split: dict, owner: str, what: str, given: str) -> None:
    """Raise when ``owner`` learned from val (:func:`learned_from_val`), so that ``what`` cannot be
    fitted on it; ``given`` names the flags that take its validated model's values instead."""
    if learned_from_val(split):
        raise ValueError(f"{owner} was refitted on train + val, so its val split cannot {what}; give {given} "
                         "(the values its validated model picked)")


def split_counts(records: list[Record]) -> dict[str, dict[str, int]]:
    counts = {s: dict(Counter(r.dx for r in records if r.split == s)) for s in SPLITS}
    return {s: {c: counts[s].get(c, 0) for c in CLASS_CODES} for s in SPLITS}


# --- decoded images ---------------------------------------------------------------


def load_pixels(
    records: list[Record], height: int, width: int, cache_dir: Path | None = None, *, unsquash: float = 0.0
) -> np.ndarray:
    """Decode, crop and resize every record once -> uint8 array (N, H, W, 3).

    With ``cache_dir`` the array is kept as ``.npy`` keyed by image ids and size, so
    later runs (and quantization, benchmarks) skip decoding. ``unsquash`` > 0 first stretches
    square images back to that aspect (width / height): see :func:`unsquash_square`.
    """
    cache_path = None
    if cache_dir is not None:
        key = hashlib.sha1("\n".join(str(r.path) for r in records).encode()
                           + (f"|unsquash={unsquash}".encode() if unsquash else b"")).hexdigest()[:16]
        cache_path = Path(cache_dir) / f"pixels-{height}x{width}-{key}.npy"
        if cache_path.is_file():
            return np.load(cache_path, mmap_mode="r")
    out = np.empty((len(records), height, width, 3), dtype=np.uint8)
    for i, r in enumerate(tqdm(records, desc=f"decode {height}x{width}", unit="img", leave=False)):
        out[i] = fit_to_input(unsquash_square(load_image(r.path), unsquash), height, width)
    if cache_path is not None:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_path.with_suffix(".tmp.npy")
        np.save(tmp, out)
        tmp.replace(cache_path)
    return out


def channel_stats(pixels: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std (0-255 units) of a uint8 image array."""
    flat = np.asarray(pixels, dtype=np.float64).reshape(-1, 3)
    return flat.mean(axis=0).round(4).tolist(), flat.std(axis=0).round(4).tolist()


def class_weights(labels: np.ndarray, power: float = 1.0) -> dict[int, float]:
    """Inverse-frequency weights ``(n / (k * count)) ** power``, normalised to mean 1 over samples."""
    counts = np.bincount(labels, minlength=len(CLASS_CODES)).astype(np.float64)
    raw = np.where(counts > 0, (counts.sum() / (len(counts) * np.maximum(counts, 1))) ** power, 0.0)
    raw /= (raw[labels]).mean()
    return {i: float(w) for i, w in enumerate(raw)}


# --- extra training data (ISIC 2017) ------------------------------------------------

EXTRA_LABELS_NAME = "labels.csv"
# ISIC 2017's reduced copy squashed mostly-4:3 originals to 256 x 256; HAM10000 and the camera are 4:3.
SQUASHED_ASPECT = 4 / 3
ISIC2017 = {
    "name": "ISIC 2017 (part 3)",
    "citation": ("Codella N. et al., Skin Lesion Analysis Toward Melanoma Detection: A Challenge at the 2017 "
                 "International Symposium on Biomedical Imaging (ISBI), Hosted by the International Skin "
                 "Imaging Collaboration (ISIC). ISBI 2018."),
    "license": "CC BY-NC (ISIC Archive terms)",
}


def load_extra_records(root: Path) -> list[Record]:
    """An extra data set laid out as ``labels.csv`` (``image_id,dx,split``) with the images anywhere
    under ``root`` (the 256 x 256 copy or the full-size originals alike). It has no lesion ids, so
    each image is its own lesion; its split is the one the file gives (the challenge's own)."""
    root = Path(root)
    csv_path = root / EXTRA_LABELS_NAME
    if not csv_path.is_file():
        raise DatasetError(f"extra_data: {csv_path} not found (expected image_id,dx,split)")
    rows, paths = _labelled_images(csv_path, {"image_id", "dx", "split"}, root)
    bad_splits = sorted({r["split"] for r in rows} - set(SPLITS))
    if bad_splits:
        raise DatasetError(f"{csv_path}: unknown split values {bad_splits}; expected {list(SPLITS)}")
    return [Record(r["image_id"], r["image_id"], r["dx"], paths[r["image_id"]], r["split"]) for r in rows]


def unsquash_square(rgb: np.ndarray, aspect: float) -> np.ndarray:
    """A square image stretched back to ``aspect`` (width / height) by shrinking its height; other
    images, and any image when ``aspect`` is 0, unchanged. Full-size originals are not square, so the
    same loader serves them untouched."""
    h, w = rgb.shape[:2]
    if not aspect or h != w:
        return rgb
    return cv2.resize(rgb, (w, max(1, round(w / aspect))), interpolation=cv2.INTER_AREA)


def prior_preserving_weights(labels: np.ndarray, extra_labels: np.ndarray, power: float) -> dict[int, float]:
    """Class weights for HAM10000's training images plus an extra set's, keeping HAM10000's prior.

    Each class gets HAM10000's own weight (:func:`class_weights` of ``labels``) times
    ``n_ham / (n_ham + n_extra)``, so a class's total weight, and with it the class prior the loss
    teaches, is what HAM10000 alone gives: ISIC 2017's three-class mix (half of it nevi) adds variety
    within mel, bkl and nv, not frequency. Normalised to mean 1 over all the images, so a step's
    gradient scale stays as without the extra set. ``power`` 0 gives HAM10000's plain prior."""
    k = len(CLASS_CODES)
    base = np.array([class_weights(labels, power)[c] for c in range(k)])
    ham = np.bincount(labels, minlength=k).astype(np.float64)
    extra = np.bincount(extra_labels, minlength=k).astype(np.float64)
    scaled = np.where(ham > 0, base * ham / np.maximum(ham + extra, 1), 0.0)
    everyone = np.concatenate([labels, extra_labels])
    scaled /= scaled[everyone].mean()
    return {c: float(scaled[c]) for c in range(k)}


def extra_fit_records(root: Path, *, refit: bool = False, limit: int = 0) -> dict[str, list[Record]]:
    """The extra set's images that join HAM10000's ``train`` and ``val`` (a refit learns from both, so
    its val joins train); its test split stays out, for :func:`train.evaluate.evaluate_extra`."""
    records = load_extra_records(root)
    by_split = {s: select(records, s)[: limit or None] for s in REFIT_SPLITS}
    if refit:
        return {"train": by_split["train"] + by_split["val"], "val": []}
    return by_split


def extra_summary(by_split: dict[str, list[Record]], unsquash: float) -> dict:
    """What the run and the card say about the extra set: source, counts and the resize policy."""
    policy = (f"square (squashed) images restored to width/height {unsquash:.4g} by shrinking their height, "
              "then the usual centre crop and resize, at train and test alike" if unsquash else
              "images centre-cropped and resized as they are, at train and test alike")
    return {**ISIC2017, "counts": {s: dict(Counter(r.dx for r in recs)) for s, recs in by_split.items()},
            "resize": policy, "class_weighting": "prior-preserving (train.data.prior_preserving_weights)"}
