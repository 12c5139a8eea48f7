"""A second data set (ISIC 2017's layout: labels.csv image_id,dx,split + images) joining training:
the loader on a synthetic fixture made here, the 4:3 unsquash, prior-preserving class weights, and
a tiny run that trains on both and reports the extra test split."""
from __future__ import annotations

import csv
import json

import cv2
import numpy as np
import pytest

from train import data as ds
from train.evaluate import evaluate_extra, extra_report
from train.train import main

# (image_id, dx, split, height, width): squashed squares as in the 256x256 copy, one full-size 4:3
ROWS = [("ISIC_0000001", "mel", "train", 64, 64), ("ISIC_0000002", "nv", "train", 64, 64),
        ("ISIC_0000003", "bkl", "train", 64, 64), ("ISIC_0000004", "nv", "train", 60, 80),
        ("ISIC_0000005", "mel", "val", 64, 64), ("ISIC_0000006", "nv", "val", 64, 64),
        ("ISIC_0000007", "mel", "test", 64, 64), ("ISIC_0000008", "bkl", "test", 64, 64),
        ("ISIC_0000009", "nv", "test", 64, 64)]


def make_extra(root, rows=ROWS):
    """Synthetic images (a dark disc on a light square, so a squash is visible) and labels.csv."""
    (root / "images").mkdir(parents=True)
    for image_id, _, _, h, w in rows:
        img = np.full((h, w, 3), 200, np.uint8)
        cv2.circle(img, (w // 2, h // 2), min(h, w) // 3, (60, 40, 30), -1)
        cv2.imwrite(str(root / "images" / f"{image_id}.jpg"), img)
    with open(root / "labels.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image_id", "dx", "split"])
        writer.writerows(r[:3] for r in rows)
    return root


def test_loader_reads_labels_and_splits_each_image_its_own_lesion(tmp_path):
    records = ds.load_extra_records(make_extra(tmp_path / "isic"))
    assert [r.image_id for r in records] == [r[0] for r in ROWS]
    assert all(r.lesion_id == r.image_id for r in records)
    assert [r.split for r in records] == [r[2] for r in ROWS]
    fit = ds.extra_fit_records(tmp_path / "isic")
    assert [len(fit["train"]), len(fit["val"])] == [4, 2] and "test" not in fit
    refit = ds.extra_fit_records(tmp_path / "isic", refit=True)
    assert [len(refit["train"]), len(refit["val"])] == [6, 0]  # a refit learns from val too


@pytest.mark.parametrize(("change", "message"), [
    (lambda rows: [(*rows[0][:1], "melanoma", *rows[0][2:]), *rows[1:]], "unknown dx codes"),
    (lambda rows: [(*rows[0][:2], "holdout", *rows[0][3:]), *rows[1:]], "unknown split values"),
])
def test_bad_labels_are_refused_naming_the_problem(tmp_path, change, message):
    root = make_extra(tmp_path / "isic", change(ROWS))
    with pytest.raises(ds.DatasetError, match=message):
        ds.load_extra_records(root)


def test_missing_images_and_csv_are_named(tmp_path):
    root = make_extra(tmp_path / "isic")
    (root / "images" / "ISIC_0000003.jpg").unlink()
    with pytest.raises(ds.DatasetError, match="ISIC_0000003"):
        ds.load_extra_records(root)
    with pytest.raises(ds.DatasetError, match="labels.csv"):
        ds.load_extra_records(tmp_path / "nowhere")


def test_square_images_are_unsquashed_to_4_3_and_others_left_alone():
    square = np.zeros((256, 256, 3), np.uint8)
    assert ds.unsquash_square(square, ds.SQUASHED_ASPECT).shape == (192, 256, 3)
    assert ds.unsquash_square(square, 0).shape == (256, 256, 3)
    full_size = np.zeros((767, 1022, 3), np.uint8)
    assert ds.unsquash_square(full_size, ds.SQUASHED_ASPECT) is full_size


def test_unsquashed_disc_comes_back_round(tmp_path):
    """A circle squashed 4:3 -> square, restored and fitted to 150x200, is round again; kept square
    and centre-cropped it would stay an ellipse."""
    original = np.full((300, 400, 3), 255, np.uint8)
    cv2.circle(original, (200, 150), 90, (0, 0, 0), -1)
    squashed = cv2.resize(original, (256, 256), interpolation=cv2.INTER_AREA)
    path = tmp_path / "sq.png"
    cv2.imwrite(str(path), squashed)
    record = ds.Record("sq", "sq", "nv", path, "train")

    def aspect(pixels: np.ndarray) -> float:
        ys, xs = np.nonzero(pixels[..., 0] < 128)
        return (xs.max() - xs.min()) / (ys.max() - ys.min())

    assert aspect(ds.load_pixels([record], 150, 200, unsquash=ds.SQUASHED_ASPECT)[0]) == pytest.approx(1.0, abs=0.05)
    assert aspect(ds.load_pixels([record], 150, 200)[0]) == pytest.approx(0.75, abs=0.05)


def test_weights_keep_each_classs_share_of_the_loss_as_ham_alone():
    ham = np.repeat(np.arange(7), [30, 50, 100, 10, 100, 600, 15])
    extra = np.repeat(np.array([ds.CLASS_CODES.index(c) for c in ("mel", "bkl", "nv")]), [374, 254, 1372])
    power = 0.8
    alone = ds.class_weights(ham, power)
    both = ds.prior_preserving_weights(ham, extra, power)
    everyone = np.concatenate([ham, extra])
    share_alone = np.bincount(ham, weights=[alone[c] for c in ham], minlength=7)
    share_both = np.bincount(everyone, weights=[both[c] for c in everyone], minlength=7)
    np.testing.assert_allclose(share_both / share_both.sum(), share_alone / share_alone.sum(), rtol=1e-9)
    assert np.mean([both[c] for c in everyone]) == pytest.approx(1.0)
    # Plain inverse frequency on the union would have raised melanoma's share.
    naive = ds.class_weights(everyone, power)
    share_naive = np.bincount(everyone, weights=[naive[c] for c in everyone], minlength=7)
    mel = ds.CLASS_CODES.index("mel")
    assert share_naive[mel] / share_naive.sum() > share_alone[mel] / share_alone.sum()


def test_extra_report_scores_the_three_classes():
    labels = np.array([ds.CLASS_CODES.index(c) for c in ("mel", "mel", "nv", "nv", "bkl")])
    probs = np.full((5, 7), 0.01)
    probs[[0, 1, 2, 3, 4], [4, 5, 5, 5, 2]] = 0.9  # one melanoma missed
    probs[1, 4] = 0.5  # ... but ranked above both nevi
    report = extra_report(probs / probs.sum(axis=1, keepdims=True), labels)
    assert report["recall"] == {"mel": 0.5, "bkl": 1.0, "nv": 1.0}
    assert report["auc"]["mel"] == pytest.approx(1.0)
    assert report["support"] == {"mel": 2, "bkl": 1, "nv": 2}


def test_a_run_trains_on_both_and_reports_the_extra_test(tmp_path, tiny_argv):
    root = make_extra(tmp_path / "isic")
    run_dir = main(tiny_argv(tmp_path, "--epochs", "1", "--no-evaluate", "--extra-data", str(root)))
    meta = json.loads((run_dir / "meta.json").read_text())
    extra = meta["dataset"]["extra"]
    assert extra["counts"] == {"train": {"mel": 1, "nv": 2, "bkl": 1}, "val": {"mel": 1, "nv": 1}}
    assert "4:3" in extra["resize"] or "1.333" in extra["resize"]
    assert "ISIC_0000001" not in (run_dir / "split.csv").read_text()  # HAM's split stays HAM's
    ham = ds.read_split(run_dir / "split.csv", tiny_argv(tmp_path)[1])
    n_train, n_val = len(ds.select(ham, "train")) + 4, len(ds.select(ham, "val")) + 2
    assert f"train/val {n_train}/{n_val}" in (run_dir / "train.log").read_text()  # both sets train and score
    report = evaluate_extra(run_dir)
    assert report["n"] == 3 and report["support"] == {"mel": 1, "bkl": 1, "nv": 1}
    written = json.loads((run_dir / "eval-extra-test-best" / "metrics.json").read_text())
    assert written["recall"].keys() == {"mel", "bkl", "nv"}
