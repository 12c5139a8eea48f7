"""HAM10000 loader, lesion-grouped split, split CSV and the decoded-pixel cache (train/data.py)."""
from __future__ import annotations

import csv
import random
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from train import data as ds


def _rows(fixture_dir: Path) -> list[dict]:
    with open(fixture_dir / ds.METADATA_NAME, newline="") as fh:
        return list(csv.DictReader(fh))


def _write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _copy_images(fixture_dir: Path, dest: Path, names: list[str] | None = None) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for src in sorted((fixture_dir / "images").iterdir()):
        if names is None or src.stem in names:
            shutil.copy(src, dest / src.name)


# --- loader -----------------------------------------------------------------------


def test_loads_fixture(fixture_dir):
    records = ds.load_records(fixture_dir)
    rows = _rows(fixture_dir)
    assert [r.image_id for r in records] == [row["image_id"] for row in rows]
    assert all(r.path.is_file() and r.path.stem == r.image_id for r in records)
    assert {r.dx for r in records} == set(ds.CLASS_CODES)
    assert all(ds.CLASS_CODES[r.label] == r.dx for r in records)


def test_finds_images_in_official_nested_layout(fixture_dir, tmp_path):
    rows = _rows(fixture_dir)
    ids = [row["image_id"] for row in rows]
    part1, part2 = set(ids[: len(ids) // 2]), set(ids[len(ids) // 2 :])
    _copy_images(fixture_dir, tmp_path / "HAM10000_images_part_1", part1)
    _copy_images(fixture_dir, tmp_path / "HAM10000_images_part_2" / "nested", part2)
    shutil.copy(fixture_dir / ds.METADATA_NAME, tmp_path / ds.METADATA_NAME)
    records = ds.load_records(tmp_path)
    assert len(records) == len(rows)
    for r in records:
        expected = "HAM10000_images_part_1" if r.image_id in part1 else "HAM10000_images_part_2"
        assert r.path.relative_to(tmp_path).parts[0] == expected


def test_missing_csv_is_named(tmp_path):
    with pytest.raises(ds.DatasetError, match="metadata CSV not found.*HAM10000_metadata.csv"):
        ds.load_records(tmp_path)


def test_missing_images_are_counted_and_listed(fixture_dir, tmp_path):
    rows = _rows(fixture_dir)
    kept = [row["image_id"] for row in rows[:50]]
    missing = [row["image_id"] for row in rows[50:]]
    _copy_images(fixture_dir, tmp_path / "images", set(kept))
    shutil.copy(fixture_dir / ds.METADATA_NAME, tmp_path / ds.METADATA_NAME)
    with pytest.raises(ds.DatasetError) as err:
        ds.load_records(tmp_path)
    message = str(err.value)
    assert f"{len(missing)} of {len(rows)} images" in message
    assert all(image_id in message for image_id in missing[:5])
    assert missing[5] not in message  # only the first few are listed


def test_unknown_dx_code_is_named(fixture_dir, tmp_path):
    rows = _rows(fixture_dir)
    rows[3] = {**rows[3], "dx": "melanoma"}
    _write_csv(tmp_path / ds.METADATA_NAME, rows)
    _copy_images(fixture_dir, tmp_path / "images")
    with pytest.raises(ds.DatasetError, match="unknown dx codes.*melanoma"):
        ds.load_records(tmp_path)


def test_missing_columns_are_named(tmp_path):
    (tmp_path / ds.METADATA_NAME).write_text("image,diagnosis\nISIC_1,nv\n")
    with pytest.raises(ds.DatasetError, match="expected columns"):
        ds.load_records(tmp_path)


# --- split ------------------------------------------------------------------------


def _synthetic_records(seed: int = 0) -> list[ds.Record]:
    """A skewed, HAM10000-like set: 1-4 images per lesion, classes from 3 to 400 lesions."""
    lesions_per_class = {"akiec": 40, "bcc": 60, "bkl": 90, "df": 3, "mel": 100, "nv": 400, "vasc": 7}
    rng = random.Random(seed)
    records = []
    for dx, n_lesions in lesions_per_class.items():
        for lesion in range(n_lesions):
            for image in range(rng.randint(1, 4)):
                image_id = f"{dx}_{lesion}_{image}"
                records.append(ds.Record(image_id, f"L_{dx}_{lesion}", dx, Path(f"{image_id}.jpg")))
    return records


def _lesion_splits(records: list[ds.Record]) -> dict[str, set[str]]:
    splits = defaultdict(set)
    for r in records:
        splits[r.lesion_id].add(r.split)
    return splits


@pytest.mark.parametrize("source", ["fixture", "synthetic"])
def test_no_lesion_in_two_splits(source, fixture_dir):
    records = ds.load_records(fixture_dir) if source == "fixture" else _synthetic_records()
    split = ds.split_records(records, seed=3)
    assert {r.split for r in split} == set(ds.SPLITS)
    assert [r.image_id for r in split] == [r.image_id for r in records]
    leaks = {lesion: s for lesion, s in _lesion_splits(split).items() if len(s) > 1}
    assert not leaks


def test_split_is_class_stratified_near_70_15_15():
    split = ds.split_records(_synthetic_records(), seed=11)
    lesions_by_class = defaultdict(lambda: defaultdict(set))
    for r in split:
        lesions_by_class[r.dx][r.split].add(r.lesion_id)
    for dx, by_split in lesions_by_class.items():
        n = sum(len(v) for v in by_split.values())
        assert n >= 3
        assert all(by_split[s] for s in ds.SPLITS), f"{dx} ({n} lesions) missing from a split"
        if n >= 40:  # proportions are only meaningful with enough lesions
            for s, target in zip(ds.SPLITS, (0.70, 0.15, 0.15)):
                assert abs(len(by_split[s]) / n - target) <= 0.03, (dx, s)
    total = defaultdict(int)
    for by_split in lesions_by_class.values():
        for s, lesions in by_split.items():
            total[s] += len(lesions)
    n_lesions = sum(total.values())
    for s, target in zip(ds.SPLITS, (0.70, 0.15, 0.15)):
        assert abs(total[s] / n_lesions - target) <= 0.02


def test_split_on_fixture_puts_every_class_in_every_split(fixture_dir):
    counts = ds.split_counts(ds.split_records(ds.load_records(fixture_dir)))
    assert all(counts[s][dx] > 0 for s in ds.SPLITS for dx in ds.CLASS_CODES)


def test_split_is_reproducible_and_seeded():
    records = _synthetic_records()
    first = [r.split for r in ds.split_records(records, seed=5)]
    assert first == [r.split for r in ds.split_records(records, seed=5)]
    assert first != [r.split for r in ds.split_records(records, seed=6)]


def test_random_split_is_image_level():
    records = _synthetic_records()
    split = ds.split_records(records, method="random", seed=2)
    assert {r.split for r in split} == set(ds.SPLITS)
    # Images of one lesion land in different splits: the leaky protocol, kept for comparison only.
    assert any(len(s) > 1 for s in _lesion_splits(split).values())
    n = len(split)
    assert abs(sum(r.split == "train" for r in split) / n - 0.70) <= 0.02


def test_split_rejects_bad_arguments():
    records = _synthetic_records()
    with pytest.raises(ValueError, match="unknown split method 'patient'"):
        ds.split_records(records, method="patient")
    with pytest.raises(ValueError, match="sum to 1"):
        ds.split_records(records, fractions=(0.8, 0.15, 0.15))


def test_split_csv_round_trip(fixture_dir, tmp_path):
    split = ds.split_records(ds.load_records(fixture_dir), seed=9)
    ds.write_split(split, tmp_path / "split.csv")
    assert ds.read_split(tmp_path / "split.csv", fixture_dir) == split


def test_read_split_errors(fixture_dir, tmp_path):
    with pytest.raises(ds.DatasetError, match="split file not found"):
        ds.read_split(tmp_path / "nope.csv", fixture_dir)
    split = ds.split_records(ds.load_records(fixture_dir))
    ds.write_split(split, tmp_path / "split.csv")
    with pytest.raises(ds.DatasetError, match=f"{len(split)} images of .*split.csv not under"):
        ds.read_split(tmp_path / "split.csv", tmp_path)


# --- pixels and statistics --------------------------------------------------------


def test_load_pixels_decodes_once_into_cache(fixture_dir, tmp_path):
    records = ds.load_records(fixture_dir)[:6]
    pixels = ds.load_pixels(records, 48, 64, tmp_path)
    assert pixels.shape == (6, 48, 64, 3) and pixels.dtype == np.uint8
    cached = list(tmp_path.glob("pixels-48x64-*.npy"))
    assert len(cached) == 1
    again = ds.load_pixels(records, 48, 64, tmp_path)
    assert isinstance(again, np.memmap)  # served from the cache, not decoded again
    np.testing.assert_array_equal(again, pixels)


def test_channel_stats_by_hand():
    pixels = np.zeros((2, 1, 2, 3), dtype=np.uint8)
    pixels[..., 0] = [[[10, 30]], [[10, 30]]]
    pixels[..., 1] = 200
    mean, std = ds.channel_stats(pixels)
    assert mean == [20.0, 200.0, 0.0]
    assert std == [10.0, 0.0, 0.0]


def test_class_weights_by_hand():
    # counts 3 and 1 out of 7 classes: raw n/(k*count) = 4/21 and 12/21, rescaled to mean 1 per sample
    weights = ds.class_weights(np.array([0, 0, 0, 1]))
    assert weights[0] == pytest.approx(2 / 3)
    assert weights[1] == pytest.approx(2.0)
    assert all(weights[i] == 0.0 for i in range(2, 7))


def test_a_cards_split_is_redrawn_and_checked_against_its_counts(fixture_dir):
    records = ds.split_records(ds.load_records(fixture_dir), seed=7)
    card_split = {"method": "lesion", "seed": 7, "counts": ds.split_counts(records)}
    assert ds.redraw_split(card_split, fixture_dir, owner="m") == records
    with pytest.raises(ValueError, match="does not reproduce the split in the card of m"):
        ds.redraw_split({**card_split, "seed": 8}, fixture_dir, owner="m")


def test_masks_beside_images_are_not_taken_for_images(fixture_dir, tmp_path):
    # The shared copy ships masks/ISIC_*.png named like images/ISIC_*.jpg: sorted after images/,
    # they used to replace every image by its black-and-white mask.
    shutil.copytree(fixture_dir / "images", tmp_path / "images")
    shutil.copy(fixture_dir / ds.METADATA_NAME, tmp_path / ds.METADATA_NAME)
    (tmp_path / ds.MASKS_DIR).mkdir()
    for image in (tmp_path / "images").iterdir():
        (tmp_path / ds.MASKS_DIR / f"{image.stem}.png").write_bytes(b"not the image")
    records = ds.load_records(tmp_path)
    assert records and all(r.path.parent.name == "images" for r in records)
