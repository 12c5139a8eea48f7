"""The built app in headless Chromium against ``python -m device predict --json`` on the same images.

The page is loaded from a plain static server, every fixture image is picked through the file
input, and the page's result must give the device's class on every image with probabilities
within two int8 output steps. Bad input (a non-image, a huge image, a card whose model file is
missing) must give a clear message and leave the page working; no console errors anywhere.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from device.config import default_model_dir
from tests.web.conftest import REPO, WEB, add_model, run_node

FIXTURES = REPO / "tests" / "fixtures" / "ham10000_mini" / "images"
REFERRAL = {"classes": ["akiec", "bcc", "mel"], "threshold": 0.21, "target_sensitivity": 0.9, "picked_on": "val",
            "sensitivity": 0.91, "specificity": 0.72, "advice": "See a dermatologist: this lesion has features of a skin cancer."}


def drive(url: str, *images: Path) -> dict:
    done = run_node("node", "scripts/drive.mjs", url, *map(str, images))
    return json.loads(done.stdout)


def device_predict(model_dir: Path, *paths: Path) -> dict[str, dict]:
    """``python -m device predict --json``, keyed by file name."""
    done = subprocess.run([sys.executable, "-m", "device", "predict", "--model", str(model_dir), "--json",
                           *map(str, paths)], check=False, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return {Path(row["file"]).name: row for row in rows}


def assert_same_results(page: dict, device: dict[str, dict], card: dict):
    step = card["output"]["scale"]
    assert page["results"], "the page classified nothing"
    for shown in page["results"]:
        name = Path(shown["file"]).name
        assert shown["error"] == "", f"{name}: {shown['error']}"
        got, want = shown["result"], device[name]
        assert got["class_code"] == want["class_code"], name
        assert got["headline"] == want["headline"], name
        assert (got["state"], got["quality"]["reason"]) == (want["state"], want["quality"]["reason"]), name
        worst = max((abs(got["all_probabilities"][c] - p) for c, p in want["all_probabilities"].items()), default=0.0)
        assert worst <= 2 * step + 1e-6, f"{name}: probabilities differ by {worst:.5f} (> 2 steps of {step})"
        assert [t["class_code"] for t in got["top3"]] == [t["class_code"] for t in want["top3"]], name
        assert "Screening aid, not a diagnosis" in shown["disclaimer"]
        assert got["source"] == name


def assert_same_referrals(results: list[dict], device: dict[str, dict], card: dict) -> int:
    """The page applies the card's referral rule as the device does; returns how many it referred."""
    rule = card["referral"]
    margin = 2 * card["output"]["scale"] * len(rule["classes"])  # two int8 steps per summed class
    referred = 0
    for shown in results:
        want, got = device[Path(shown["file"]).name], shown["result"]
        if want["referral"] is None:  # a poor frame: no referral, on both
            assert got["referral"] is None and got["refer"] is None, shown["file"]
            continue
        assert abs(got["referral"]["score"] - want["referral"]["score"]) <= margin, shown["file"]
        if abs(want["referral"]["score"] - rule["threshold"]) > margin:  # clear of the boundary
            assert got["refer"] is want["refer"], shown["file"]
            assert got["advice"] == want["advice"], shown["file"]  # the same words as the device
        assert shown["advice"] == got["advice"]  # what the page shows is the result's one piece of advice
        if got["refer"] and got["state"] == "ok":
            assert got["advice"] == rule["advice"]
        referred += got["refer"] is True
    return referred


def assert_no_console_errors(page: dict):
    assert page["pageErrors"] == []
    assert [m for m in page["console"] if m["type"] == "error"] == []


@pytest.fixture(scope="module")
def card(model_dir) -> dict:
    return json.loads((model_dir / "card.json").read_text())


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory) -> tuple[Path, Path]:
    """A text file named like a photo, and a 8000x8000 PNG (64 MP, over the decode limit) of 70 kB."""
    folder = tmp_path_factory.mktemp("bad")
    text = folder / "notes.jpg"
    text.write_text("not an image at all\n")
    huge = folder / "huge.png"
    width = height = 8000
    raw = zlib.compress(b"".join(b"\0" + bytes(width) for _ in range(height)), 9)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])  # 8-bit grey
    huge.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", raw) + chunk(b"IEND", b""))
    return text, huge


def test_every_fixture_matches_device_predict_and_bad_files_are_refused(static_server, model_dir, card, bad_files):
    images = sorted(FIXTURES.glob("*.jpg"))
    text, huge = bad_files
    page = drive(static_server + "index.html", *images, text, huge, images[0])
    assert page["status"] == "ready" and page["error"] == "", page["statusText"]
    assert page["loadMs"] > 0
    *fixtures, refused_text, refused_huge, again = page["results"]
    assert refused_text["result"] is None and "notes.jpg: not a decodable image" in refused_text["error"]
    assert refused_huge["result"] is None and "image too large: 8000x8000 pixels" in refused_huge["error"]
    assert again["status"] == "ready" and again["result"] is not None  # the page carries on
    device = device_predict(model_dir, FIXTURES)
    assert len(fixtures) == len(device) == len(images)
    assert_same_results({**page, "results": fixtures + [again]}, device, card)
    assert_no_console_errors(page)
    assert assert_same_referrals(fixtures, device, card) > 0  # the shipped card's own rule


def _app_and_device_agree(static_server, web_dist, model_dir, tmp_path, name: str, variant: dict, images):
    """The app's page and the device's results for ``images`` on a variant card with the model's
    file (served to the app, and as a folder the device loads), after checking that they agree."""
    url_path = add_model(web_dist, name, variant)
    folder = tmp_path / name
    folder.mkdir()
    (folder / "card.json").write_text(json.dumps(variant))
    (folder / variant["model_file"]["path"]).symlink_to(model_dir / variant["model_file"]["path"])
    page = drive(f"{static_server}index.html?model={url_path}", *images)
    assert page["status"] == "ready", page["error"]
    device = device_predict(folder, *images)
    assert_same_results(page, device, variant)
    assert_no_console_errors(page)
    return page, device


def test_card_with_flips_and_referral(static_server, web_dist, model_dir, card, tmp_path):
    """A card asking for flip TTA and carrying a referral rule: same as the device on that card."""
    variant = {**card, "preprocessing": {**card["preprocessing"], "tta": "flips"}, "referral": REFERRAL}
    images = sorted(FIXTURES.glob("*.jpg"))[::9]
    page, device = _app_and_device_agree(static_server, web_dist, model_dir, tmp_path, "flips-referral", variant,
                                         images)
    referred = assert_same_referrals(page["results"], device, variant)
    assert 0 < referred < len(images), "the images should fall on both sides of the rule"


def test_card_with_shades_of_grey_colour(static_server, web_dist, model_dir, card, tmp_path):
    """A card asking for colour constancy (normalization.colour): the app balances each image as
    the device does, so both give the same results with it."""
    variant = {**card, "normalization": {**card["normalization"], "colour": "shades_of_grey"}}
    images = sorted(FIXTURES.glob("*.jpg"))[::12]
    _, device = _app_and_device_agree(static_server, web_dist, model_dir, tmp_path, "shades-of-grey", variant, images)
    plain = device_predict(model_dir, *images)  # the colour step changed what the model saw
    assert any(device[p.name]["all_probabilities"] != plain[p.name]["all_probabilities"] for p in images)


def test_missing_model_file_is_named(static_server, web_dist, card):
    url_path = add_model(web_dist, "no-file", card, with_file=False)
    page = drive(f"{static_server}index.html?model={url_path}")
    assert page["status"] == "error"
    assert "model file not found" in page["error"] and f"{url_path}{card['model_file']['path']}" in page["error"]
    assert page["pageErrors"] == []


def test_bad_card_field_is_named(static_server, web_dist, card):
    broken = {**card, "normalization": {"mean": [1, 2], "std": card["normalization"]["std"]}}
    page = drive(f"{static_server}index.html?model={add_model(web_dist, 'bad-card', broken)}")
    assert page["status"] == "error"
    assert "field 'normalization.mean': expected 3 numbers" in page["error"]


def test_build_output_is_self_contained(web_dist):
    """Everything the page loads is in the folder: no CDN, so it works offline once loaded. Its
    model is the device's default."""
    assert {p.name for p in (web_dist / "wasm").iterdir()} >= {"litert_wasm_internal.wasm", "litert_wasm_compat_internal.wasm"}
    for text_file in ("index.html", "app.js"):
        assert "cdn.jsdelivr" not in (web_dist / text_file).read_text()
    assert json.loads((web_dist / "config.json").read_text()) == {"model": f"{default_model_dir()}/"}
    assert (WEB / "package-lock.json").is_file()


def test_a_rotated_phone_photo_reads_the_same_in_the_app_and_on_the_device(static_server, model_dir, card, tmp_path):
    """A JPEG stored sideways with an EXIF orientation tag, as phones write them: the app
    (createImageBitmap) and the device (OpenCV) both turn it upright, so they agree."""
    from device.decode import load_image
    from tests.device.test_orientation import tagged_jpeg

    upright = load_image(FIXTURES / "ISIC_0024475.jpg")
    photos = []
    for orientation, turn in ((6, 1), (8, -1), (3, 2)):
        path = tmp_path / f"phone-{orientation}.jpg"
        path.write_bytes(tagged_jpeg(np.ascontiguousarray(np.rot90(upright, turn)), orientation))
        photos.append(path)
    page = drive(static_server + "index.html", *photos)
    assert page["status"] == "ready", page["error"]
    device = device_predict(model_dir, *photos)
    assert_same_results(page, device, card)
    assert_no_console_errors(page)
    flat = device_predict(model_dir, FIXTURES / "ISIC_0024475.jpg")["ISIC_0024475.jpg"]
    for photo in photos:  # upright on the device too: the class of the untouched photo
        assert device[photo.name]["class_code"] == flat["class_code"], photo.name


def test_a_gated_model_says_not_a_lesion_in_the_app_as_on_the_device(static_server, web_dist, gated_model_dir,
                                                                     negative_images):
    card = json.loads((gated_model_dir / "card.json").read_text())
    folder = web_dist / "models" / "tiny-gated"
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("card.json", card["model_file"]["path"]):
        shutil.copy(gated_model_dir / name, folder / name)
    images = [*negative_images, *sorted(FIXTURES.glob("*.jpg"))[::16]]
    page = drive(f"{static_server}index.html?model=models/tiny-gated/", *images)
    assert page["status"] == "ready", page["error"]
    device = device_predict(gated_model_dir, *images)
    assert_same_results(page, device, card)
    assert_no_console_errors(page)
    states = {Path(shown["file"]).name: shown["result"]["state"] for shown in page["results"]}
    assert all(states[p.name] == "not_lesion" for p in negative_images)
    assert any(state != "not_lesion" for name, state in states.items() if name.startswith("ISIC_"))  # a hand-set gate
    for shown in page["results"][:len(negative_images)]:
        result = shown["result"]
        assert (result["class_code"], result["confidence"], result["refer"], result["top3"]) == (None, None, None, [])
        assert shown["advice"] == "Point the camera at a skin lesion."
        want = device[Path(shown["file"]).name]["lesion_gate"]
        assert abs(result["lesion_gate"]["score"] - want["score"]) <= 2 / 256
