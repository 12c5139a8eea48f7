"""Load a model for classifying, and classify image files once with no camera, broker or server.

``load_model`` is shared by the daemon (camera frames and HTTP uploads) and ``python -m device predict``.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from device.config import Config, check_model_dir
from device.decode import IMAGE_SUFFIXES, ImageDecodeError, load_image
from device.engine import Engine
from device.postprocess import Postprocessor
from device.signature import check_model_signature
from device.types import Result

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedModel:
    """An engine and its postprocessors, swapped as one when the daemon reloads."""

    engine: Any  # device.engine.Engine, or anything with its .card, .infer, .prepare and .run
    stream: Postprocessor  # camera frames, with temporal smoothing
    upload: Postprocessor  # single images (files, HTTP uploads): no smoothing


def load_model(cfg: Config) -> LoadedModel:
    """Check the model folder and its signature, build the engine (once) and its postprocessors.

    The signature is checked before the interpreter ever parses the model file, on the very bytes
    the engine then runs (the folder is read once: a file swapped meanwhile is never loaded).
    """
    folder = check_model_dir(cfg.model)

    def check_signature(card_bytes: bytes, model_path: Path, model_sha256: str) -> None:
        found = check_model_signature(folder, cfg.model, card_bytes=card_bytes, model_path=model_path,
                                      model_sha256=model_sha256)
        _log.info("model %s: %s", folder, found)

    return model_for(Engine.from_model_dir(folder, num_threads=cfg.model.threads, check=check_signature), cfg)


def model_for(engine: Any, cfg: Config) -> LoadedModel:
    return LoadedModel(engine, Postprocessor(engine.card, cfg.postprocess),
                       Postprocessor(engine.card, cfg.postprocess, smoothing=1))


def expand_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given, folders as their images in name order; a missing path or a folder without
    images is an error naming it."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in folder {path}")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"no such image file or folder: {path}")
    return files


def predict_files(engine, post: Postprocessor, files: Iterable[Path]
                  ) -> Iterator[tuple[Path, Result | ImageDecodeError]]:
    """``(file, Result)`` per image, or ``(file, error)`` for a file that is not a decodable image."""
    for index, path in enumerate(files, start=1):
        t_start, timestamp = time.monotonic(), time.time()
        try:
            rgb = load_image(path)
        except ImageDecodeError as err:
            yield path, err
            continue
        inference = engine.infer(rgb)
        yield path, post.process(inference, rgb=rgb, frame_id=index, timestamp=timestamp, t_start=t_start,
                                 source=path.name)
