"""Keras model -> TFLite bytes: full-integer int8 (post-training) and float32.

The model is exported as a SavedModel with a fixed batch-1 signature, the shape the
device runs, and converted from there; that is the path TF 2.21's converter handles
for Keras 3 models, and the static batch keeps shape arithmetic out of the graph.
The representative set is normalized float32 NHWC drawn from the training split
through ``device.preprocess``, exactly what the model saw in training.
"""
from __future__ import annotations

import logging
import random
import tempfile
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from device.preprocess import normalize
from train.data import Record, load_pixels

_log = logging.getLogger(__name__)

INPUT_DTYPES = {"int8": tf.int8, "uint8": tf.uint8}


def representative_set(records: list[Record], height: int, width: int, mean, std, colour: str = "none", *,
                       count: int = 300, seed: int = 0, cache_dir: Path | None = None) -> np.ndarray:
    """``count`` images drawn at random (seeded) from ``records``, fitted and normalized -> float32 NHWC."""
    if not records:
        raise ValueError("representative set: no training images to draw from")
    chosen = sorted(random.Random(seed).sample(records, min(count, len(records))), key=lambda r: r.image_id)
    return normalize(load_pixels(chosen, height, width, cache_dir), mean, std, colour)


def convert_int8(model: keras.Model, representative: np.ndarray, *, input_dtype: str = "int8") -> bytes:
    """Full-integer TFLite model: int8 weights and activations, ``input_dtype`` input and output,
    builtin int8 kernels only (conversion fails rather than fall back to float ops)."""
    if input_dtype not in INPUT_DTYPES:
        raise ValueError(f"input_dtype: expected one of {sorted(INPUT_DTYPES)}, got {input_dtype!r}")
    _check_representative(model, representative)

    def samples():
        for x in tqdm(representative, desc="calibrate", unit="img", leave=False):
            yield [x[np.newaxis].astype(np.float32)]

    with tempfile.TemporaryDirectory(prefix="dermedge-export-") as tmp:
        converter = _converter(model, Path(tmp))
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = samples
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = INPUT_DTYPES[input_dtype]
        converter.inference_output_type = INPUT_DTYPES[input_dtype]
        _log.info("calibrating int8 on %d representative images", len(representative))
        return converter.convert()


def convert_float(model: keras.Model) -> bytes:
    """Float32 TFLite model (the reference the int8 model is gated against)."""
    with tempfile.TemporaryDirectory(prefix="dermedge-export-") as tmp:
        return _converter(model, Path(tmp)).convert()


def _converter(model: keras.Model, workdir: Path) -> tf.lite.TFLiteConverter:
    shape = (1, *model.input_shape[1:])
    if any(d is None for d in shape):
        raise ValueError(f"model input must have a fixed size to convert, got {model.input_shape}")
    path = workdir / "saved_model"
    model.export(str(path), format="tf_saved_model", verbose=False,
                 input_signature=[keras.InputSpec(shape=shape, dtype="float32")])
    return tf.lite.TFLiteConverter.from_saved_model(str(path))


def _check_representative(model: keras.Model, representative: np.ndarray) -> None:
    expected = tuple(model.input_shape[1:])
    if representative.ndim != 4 or tuple(representative.shape[1:]) != expected:
        raise ValueError(f"representative set: expected shape (N, {', '.join(map(str, expected))}), "
                         f"got {representative.shape}")
    if len(representative) == 0:
        raise ValueError("representative set is empty")
    if not np.isfinite(representative).all():
        raise ValueError("representative set contains NaN or infinite values")
