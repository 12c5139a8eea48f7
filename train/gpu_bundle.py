"""Training on a lent GPU machine: pack what it needs here, train there under JAX within a time budget.

The machine reaches no registry (it has JAX with CUDA, numpy, OpenCV and Pillow, but no Keras) and
gets a copy of the working tree of at most 64 MiB, bundle included. So ``pack`` writes a git-ignored
folder that travels with the tree:

    wheels/          Keras and the dependencies that machine lacks (pip download, CPython 3.12 manylinux)
    data/            HAM10000_metadata.csv + every image centre-cropped and resized to the recipe's input
                     (as train.data.load_pixels does), saved as WebP at the highest quality that fits
    backbone.weights.h5  a pretrained recipe's backbone, imported here from its TFLite file
    config.yaml      the recipe; bundle.json: what was packed, the quality, every size

    python -m train.gpu_bundle pack --config train/configs/edgenet.yaml --data ../shared/data/ham10000
    python -m train.gpu_bundle train --bundle .gpu-bundle --minutes 6 --out "$OUT"   # there, via make train-gpu

``train`` measures the pipeline (train.throughput), trains the recipe data-parallel over every device
for as many epochs as fit in ``--minutes`` (TrainConfig.time_budget), evaluates, and packs the run
folder as one ``<run>.tar.gz`` into ``--out``.
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import cv2
import numpy as np
import yaml
from tqdm import tqdm

from device.decode import load_image
from device.preprocess import fit_to_input
from train import data as ds
from train.config import TrainConfig

_log = logging.getLogger(__name__)

MIB = 1 << 20
TREE_LIMIT = 64 * MIB  # what one call to the lent machine carries: tracked + untracked files + the bundle
MARGIN = 3 * MIB  # the tree grows between packing and the call
QUALITIES = (95, 90, 85, 80, 75, 70, 60, 50)
# Keras' requirements the GPU machine lacks (it has absl-py, h5py, ml-dtypes, numpy, packaging, rich)
WHEELS = ("keras", "namex", "optree")
MACHINE_PYTHON = "3.12"
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")
UNPACKED = ("data", "split_file", "init_from", "teacher", "extra_data")  # config keys naming files not packed


class BundleError(RuntimeError):
    """The recipe cannot be packed as asked; the message says why and what to do."""


# --- here: packing ----------------------------------------------------------------


def tree_bytes(repo: Path, exclude: Path) -> int:
    """Bytes of what travels to the lent machine besides the bundle: tracked files and untracked ones
    git does not ignore."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=repo,
                            capture_output=True, check=True).stdout.decode().split("\0")
    exclude = exclude.resolve()
    total = 0
    for name in filter(None, listed):
        path = repo / name
        if path.is_file() and exclude not in path.resolve().parents:
            total += path.stat().st_size
    return total


def download_wheels(out: Path) -> list[Path]:
    """The WHEELS at the versions installed here, for the machine's Python, into ``out``."""
    from importlib.metadata import version

    out.mkdir(parents=True, exist_ok=True)
    pins = [f"{name}=={version(name)}" for name in WHEELS]
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    "--python-version", MACHINE_PYTHON, "--implementation", "cp", *platforms, "-d", str(out),
                    *pins], check=True)
    return sorted(out.glob("*.whl"))


def encode(rgb: np.ndarray, quality: int) -> bytes:
    ok, buf = cv2.imencode(".webp", np.ascontiguousarray(rgb[..., ::-1]), [cv2.IMWRITE_WEBP_QUALITY, quality])
    if not ok:
        raise BundleError("OpenCV could not encode WebP")
    return buf.tobytes()


def choose_quality(records: list[ds.Record], height: int, width: int, budget: int, *, sample: int = 200) -> int:
    """The highest WebP quality whose estimated total (from ``sample`` images spread over the set)
    fits ``budget`` bytes."""
    step = max(1, len(records) // sample)
    fitted = [fit_to_input(load_image(r.path), height, width) for r in records[::step]]
    for quality in QUALITIES:
        estimate = 1.05 * len(records) * np.mean([len(encode(p, quality)) for p in fitted])
        if estimate <= budget:
            return quality
    raise BundleError(f"the images need about {estimate / MIB:.1f} MiB even at WebP quality {QUALITIES[-1]}, but "
                      f"only {budget / MIB:.1f} MiB are left beside the tree; pack a subset (--data) or a "
                      "smaller input")


def pack(config: Path, data: Path, out: Path, *, repo: Path = Path("."), wheels: bool = True,
         limit: int = TREE_LIMIT, backbone_weights: str = "") -> dict:
    """Write the bundle for recipe ``config`` on HAM10000 copy ``data`` into ``out``; returns bundle.json.
    ``backbone_weights`` overrides the recipe's (a pretrained recipe's TFLite or .h5 file)."""
    recipe = yaml.safe_load(Path(config).read_text()) or {}
    if backbone_weights:
        recipe["backbone_weights"] = backbone_weights
    packed_paths = sorted(k for k in UNPACKED if recipe.get(k))
    if packed_paths:
        raise BundleError(f"{config}: {packed_paths} name files the bundle does not carry; the GPU run draws its "
                          "split from the bundled metadata and starts from scratch or a bundled backbone")
    cfg = TrainConfig(**recipe)
    height, width = cfg.input_hw()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    budget = limit - MARGIN - tree_bytes(repo, out)
    if cfg.pretrained:
        recipe.update(_pack_backbone(cfg, out))
    (out / "config.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    packed_wheels = download_wheels(out / "wheels") if wheels else []
    budget -= sum(p.stat().st_size for p in out.rglob("*") if p.is_file())

    records = ds.load_records(Path(data))
    quality = choose_quality(records, height, width, budget)
    images = out / "data" / "images"
    images.mkdir(parents=True)
    for r in tqdm(records, desc=f"WebP q{quality} {height}x{width}", unit="img"):
        (images / f"{r.image_id}.webp").write_bytes(encode(fit_to_input(load_image(r.path), height, width), quality))
    with open(out / "data" / ds.METADATA_NAME, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["lesion_id", "image_id", "dx"])
        writer.writerows((r.lesion_id, r.image_id, r.dx) for r in records)
    sizes = {part: sum(p.stat().st_size for p in (out / part).rglob("*") if p.is_file())
             for part in ("wheels", "data") if (out / part).exists()}
    summary = {"config": str(config), "source": str(data), "images": len(records), "input": [height, width],
               "format": f"WebP quality {quality}, centre-cropped and resized to the input", "quality": quality,
               "wheels": [p.name for p in packed_wheels], "bytes": sizes,
               "bundle_bytes": sum(p.stat().st_size for p in out.rglob("*") if p.is_file()),
               "tree_bytes": tree_bytes(repo, out), "limit_bytes": limit, "created": time.strftime("%Y-%m-%d %H:%M")}
    (out / "bundle.json").write_text(json.dumps(summary, indent=2))
    _log.info("bundle %s: %.1f MiB (tree %.1f MiB beside it, limit %.0f MiB), %d images at WebP q%d", out,
              summary["bundle_bytes"] / MIB, summary["tree_bytes"] / MIB, limit / MIB, len(records), quality)
    return summary


def _pack_backbone(cfg: TrainConfig, out: Path) -> dict:
    """A pretrained recipe's backbone as a Keras weights file (the machine has neither the internet
    for ``imagenet`` nor a TFLite interpreter to import a ``.tflite``); the recipe keys that change."""
    from train import backbones

    if cfg.backbone_weights in ("", "none"):
        return {}
    if cfg.backbone_weights == "imagenet":
        raise BundleError("backbone_weights: imagenet is downloaded by Keras, which the GPU machine cannot do; "
                          "give the TFLite or .h5 file (--backbone-weights in the recipe)")
    model = backbones.backbone(cfg.arch, (*cfg.input_hw(), 3), alpha=cfg.width_mult)
    imported = backbones.load_weights(model, cfg.backbone_weights, name=cfg.arch)
    model.save_weights(out / "backbone.weights.h5")
    _log.info("backbone %s: %d conv layers from %s", cfg.arch, imported.layers, cfg.backbone_weights)
    # Relative to the bundle; ``train`` points it at the bundle it runs from.
    return {"backbone_weights": "backbone.weights.h5", "self_check_images": "", "imagenet_labels": ""}


# --- there: training ----------------------------------------------------------------


def train(bundle: Path, *, minutes: float, out: Path | None, runs_dir: Path, workers: int,
          throughput: tuple[int, int] = (1024, 20)) -> Path:
    """Measure the pipeline, train the bundled recipe over every device within ``minutes``, evaluate,
    and pack the run folder (and throughput.json) into ``out``; returns the run folder."""
    import keras

    from train import throughput as tp
    from train.train import main

    recipe = yaml.safe_load((bundle / "config.yaml").read_text())
    if recipe.get("backbone_weights") == "backbone.weights.h5":
        recipe["backbone_weights"] = str(bundle / "backbone.weights.h5")
    config = runs_dir / "gpu-recipe.yaml"
    runs_dir.mkdir(parents=True, exist_ok=True)
    config.write_text(yaml.safe_dump(recipe, sort_keys=False))
    cache = Path(os.environ.get("TMPDIR", "/tmp")) / "dermedge-cache"
    _log.info("backend %s, devices %s", keras.backend.backend(), keras.distribution.list_devices())

    cfg = TrainConfig(**{**recipe, "data": str(bundle / "data"), "devices": 0, "cache_dir": str(cache)})
    rates = tp.measure(cfg, images=throughput[0], steps=throughput[1])
    _log.info("throughput: %s", rates)
    run_dir = main(["--config", str(config), "--data", str(bundle / "data"), "--runs-dir", str(runs_dir),
                    "--cache-dir", str(cache), "--devices", "0", "--time-budget", str(minutes),
                    "--workers", str(workers)])
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "throughput.json").write_text(json.dumps(rates, indent=2))
        with tarfile.open(out / f"{run_dir.name}.tar.gz", "w:gz") as tar:
            tar.add(run_dir, arcname=run_dir.name)
        _log.info("run folder packed: %s", out / f"{run_dir.name}.tar.gz")
    return run_dir


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m train.gpu_bundle", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="here: write the bundle")
    p.add_argument("--config", type=Path, default=Path("train/configs/edgenet.yaml"))
    p.add_argument("--data", type=Path, required=True, help="HAM10000 root")
    p.add_argument("--out", type=Path, default=Path(".gpu-bundle"))
    p.add_argument("--backbone-weights", default="", help="a pretrained recipe's weights file (TFLite or .h5)")
    p.add_argument("--no-wheels", action="store_true", help="leave Keras out (a machine that has it)")
    t = sub.add_parser("train", help="there: train the bundled recipe (after its wheels are installed)")
    t.add_argument("--bundle", type=Path, default=Path(".gpu-bundle"))
    t.add_argument("--minutes", type=float, default=6.0, help="training time budget (TrainConfig.time_budget)")
    t.add_argument("--out", type=Path, help="where <run>.tar.gz and throughput.json go (the machine's $OUT)")
    t.add_argument("--runs-dir", type=Path, default=Path("runs"))
    t.add_argument("--workers", type=int, default=min(12, max(2, (os.cpu_count() or 4) - 2)))
    t.add_argument("--throughput", type=int, nargs=2, default=(1024, 20), metavar=("IMAGES", "STEPS"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "pack":
        pack(args.config, args.data, args.out, wheels=not args.no_wheels, backbone_weights=args.backbone_weights)
    else:
        train(args.bundle, minutes=args.minutes, out=args.out, runs_dir=args.runs_dir, workers=args.workers,
              throughput=tuple(args.throughput))


if __name__ == "__main__":
    main()
