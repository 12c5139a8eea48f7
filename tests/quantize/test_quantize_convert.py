"""Conversion: the int8 model is full-integer and scores like the float model."""
from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from device.engine import Engine, model_io, open_interpreter
from quantize.card import build_card
from quantize.convert import convert_int8, representative_set
from train.data import load_pixels, load_records, read_split, select
from train.dataset import predict_probs
from train.run import TrainingRun

# int8 softmax output has a step of 1/256; a few steps of drift is normal PTQ error.
PROB_TOLERANCE = 0.03


@pytest.fixture(scope="module")
def fixture_pixels(fixture_dir):
    records = load_records(fixture_dir)
    return load_pixels(records, 48, 64)


def test_int8_model_is_full_integer(tiny_model_dir):
    interpreter, _ = open_interpreter(tiny_model_dir / "model_int8.tflite")
    inp, out = model_io(interpreter)
    assert (inp.dtype, out.dtype) == ("int8", "int8")
    assert inp.scale > 0 and out.scale > 0
    dtypes = {np.dtype(t["dtype"]).name for t in interpreter.get_tensor_details()}
    # int8 weights and activations; int32 only for biases and shape constants.
    assert dtypes <= {"int8", "int32"}, dtypes


def test_float_model_is_float(tiny_model_dir):
    interpreter, _ = open_interpreter(tiny_model_dir / "model_float.tflite")
    inp, out = model_io(interpreter)
    assert (inp.dtype, out.dtype) == ("float32", "float32")


def test_int8_matches_float_on_fixture_images(tiny_model_dir, fixture_pixels):
    int8 = Engine.from_model_dir(tiny_model_dir, num_threads=1)
    flt = Engine.from_model_dir(tiny_model_dir, variant="float", num_threads=1)
    p8 = np.stack([int8.infer_pixels(p) for p in fixture_pixels])
    pf = np.stack([flt.infer_pixels(p) for p in fixture_pixels])
    assert np.abs(p8 - pf).max() < PROB_TOLERANCE
    assert (p8.argmax(axis=1) == pf.argmax(axis=1)).mean() >= 0.9


def test_float_tflite_matches_keras_checkpoint(tiny_model_dir, tiny_run_dir, fixture_pixels):
    """The conversion itself and the engine's preprocessing reproduce the trained model."""
    meta = json.loads((tiny_run_dir / "meta.json").read_text())
    model = keras.models.load_model(tiny_run_dir / "best.keras")
    expected = predict_probs(model, fixture_pixels, meta["normalization"]["mean"], meta["normalization"]["std"])
    flt = Engine.from_model_dir(tiny_model_dir, variant="float", num_threads=1)
    got = np.stack([flt.infer_pixels(p) for p in fixture_pixels])
    np.testing.assert_allclose(got, expected, atol=1e-4)
    # The images differ, so a model that ignores its input would not pass the comparison above.
    assert expected.std(axis=0).max() > 1e-3


def test_uint8_input_variant(tiny_model_dir, tiny_run_dir, fixture_dir, fixture_pixels, tmp_path):
    run = TrainingRun.load(tiny_run_dir)
    records = select(read_split(tiny_run_dir / "split.csv", fixture_dir), "train")
    rep = representative_set(records, 48, 64, *run.normalization, count=16)
    model = keras.models.load_model(tiny_run_dir / "best.keras")
    path = tmp_path / "model_uint8.tflite"
    path.write_bytes(convert_int8(model, rep, input_dtype="uint8"))
    card = build_card(run, name="tiny-uint8", int8_path=path)
    assert (card.input.dtype, card.output.dtype) == ("uint8", "uint8")
    u8 = Engine(path, card, num_threads=1)
    flt = Engine.from_model_dir(tiny_model_dir, variant="float", num_threads=1)
    for pixels in fixture_pixels[:8]:
        np.testing.assert_allclose(u8.infer_pixels(pixels), flt.infer_pixels(pixels), atol=PROB_TOLERANCE)


def test_representative_set_must_fit_the_model():
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(2, 3)])
    with pytest.raises(ValueError, match="representative set: expected shape"):
        convert_int8(model, np.zeros((4, 8, 9, 3), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        convert_int8(model, np.full((4, 8, 8, 3), np.nan, np.float32))
    with pytest.raises(ValueError, match="input_dtype"):
        convert_int8(model, np.zeros((4, 8, 8, 3), np.float32), input_dtype="int16")
