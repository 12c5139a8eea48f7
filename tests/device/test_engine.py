"""The inference engine: backend choice, the card check at load, and one call per frame."""
from __future__ import annotations

import dataclasses
import sys

import cv2
import numpy as np
import pytest

from device.card import CardError, ModelCard
from device.decode import load_image
from device.engine import BACKENDS, Engine, interpreter_class
from device.preprocess import centre_zoom, fit_to_input, normalize, quantize, tta_views
from device.types import Inference


@pytest.fixture(scope="module")
def engine(tiny_model_dir) -> Engine:
    return Engine.from_model_dir(tiny_model_dir, num_threads=1)


@pytest.fixture(scope="module")
def frame(fixture_dir) -> np.ndarray:
    """A fixture image blown up to a 640x480 camera-sized frame."""
    rgb = load_image(min((fixture_dir / "images").glob("*.jpg")))
    return cv2.resize(rgb, (640, 480), interpolation=cv2.INTER_LINEAR)


def test_prefers_ai_edge_litert_here(engine):
    assert engine.backend == "ai_edge_litert"
    assert interpreter_class()[0] == "ai_edge_litert"


def test_falls_back_in_order():
    missing = ("missing", "dermedge_no_such_module", "Interpreter")
    name, cls = interpreter_class((missing, BACKENDS[0]))
    assert name == "ai_edge_litert" and cls.__name__ == "Interpreter"
    with pytest.raises(ImportError, match="install ai-edge-litert"):
        interpreter_class((missing,))


@pytest.mark.filterwarnings(r"ignore:\s*Warning. tf.lite.Interpreter is deprecated:UserWarning")  # expected here
def test_falls_back_to_tensorflow_with_the_same_scores(tiny_model_dir, engine, frame, monkeypatch):
    # None in sys.modules makes the import fail, as if the package were not installed.
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    monkeypatch.setitem(sys.modules, "tflite_runtime.interpreter", None)
    fallback = Engine.from_model_dir(tiny_model_dir, num_threads=1)
    assert fallback.backend == "tensorflow"
    np.testing.assert_allclose(fallback.infer(frame).probabilities, engine.infer(frame).probabilities,
                               atol=1.5 / 256)


def test_infer_any_size_frame(engine, frame):
    result = engine.infer(frame)
    assert isinstance(result, Inference)
    assert result.probabilities.shape == (7,) and result.probabilities.dtype == np.float32
    # int8 softmax output: each probability is off by at most half a step of 1/256
    assert abs(result.probabilities.sum() - 1.0) < 7 / 256
    assert result.preprocess_ms >= 0 and result.inference_ms > 0
    fitted = fit_to_input(frame, 48, 64)
    np.testing.assert_array_equal(result.probabilities, engine.infer_pixels(fitted))


def test_scores_depend_on_the_image(engine, fixture_dir):
    paths = sorted((fixture_dir / "images").glob("*.jpg"))[::7]
    probs = np.stack([engine.infer(load_image(p)).probabilities for p in paths])
    assert probs.std(axis=0).max() > 1 / 256


def test_infer_pixels_needs_fitted_pixels(engine, frame):
    with pytest.raises(ValueError, match=r"\(48, 64, 3\)"):
        engine.infer_pixels(frame)


def _card(tiny_model_dir) -> ModelCard:
    return ModelCard.load(tiny_model_dir / "card.json")


MISMATCHES = {
    "input": lambda c: {"input": dataclasses.replace(c.input, height=c.input.height + 2)},
    "input.dtype": lambda c: {"input": dataclasses.replace(c.input, dtype="uint8")},
    "input.scale": lambda c: {"input": dataclasses.replace(c.input, scale=c.input.scale * 2)},
    "input.zero_point": lambda c: {"input": dataclasses.replace(c.input, zero_point=c.input.zero_point + 1)},
    "output.dtype": lambda c: {"output": dataclasses.replace(c.output, dtype="uint8")},
    "output.scale": lambda c: {"output": dataclasses.replace(c.output, scale=c.output.scale * 1.01)},
    "labels": lambda c: {"labels": c.labels[:-1]},
}


@pytest.mark.parametrize("field", sorted(MISMATCHES))
def test_refuses_a_card_that_does_not_match_the_model(field, tiny_model_dir):
    card = _card(tiny_model_dir)
    bad = dataclasses.replace(card, **MISMATCHES[field](card))
    with pytest.raises(CardError, match=rf"field '{field}'"):
        Engine(tiny_model_dir / "model_int8.tflite", bad, num_threads=1)


def test_float_variant_refuses_an_int8_file(tiny_model_dir):
    with pytest.raises(CardError, match="float variant expects float32 input"):
        Engine(tiny_model_dir / "model_int8.tflite", _card(tiny_model_dir), variant="float")


def test_refuses_a_file_that_is_not_a_model(tiny_model_dir, tmp_path):
    path = tmp_path / "model_int8.tflite"
    path.write_bytes(b"not a flatbuffer" * 64)
    with pytest.raises(CardError, match="not a loadable TFLite model"):
        Engine(path, _card(tiny_model_dir))


def test_unknown_variant(tiny_model_dir):
    with pytest.raises(ValueError, match="variant"):
        Engine.from_model_dir(tiny_model_dir, variant="int4")


def test_flips_tta_averages_the_four_flipped_views(tiny_model_dir, engine, frame):
    card = _card(tiny_model_dir)
    flips = Engine(tiny_model_dir / "model_int8.tflite",
                   dataclasses.replace(card, preprocessing=dataclasses.replace(card.preprocessing, tta="flips")),
                   num_threads=1)
    fitted = fit_to_input(frame, 48, 64)
    views = tta_views(fitted, "flips")
    assert len(views) == flips.card.inferences_per_frame == 4 and not np.array_equal(views[1], fitted)
    np.testing.assert_array_equal(views[3], fitted[::-1, ::-1])
    expected = np.mean([engine.infer_pixels(np.ascontiguousarray(v)) for v in views], axis=0)
    np.testing.assert_allclose(flips.infer(frame).probabilities, expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(flips.infer_pixels(fitted), expected, rtol=0, atol=1e-6)


def test_the_input_table_gives_normalize_and_quantize_of_every_level(engine):
    # every uint8 level of each channel, in one 16 x 16 image per channel, plus a strided (flipped) view
    levels = np.repeat(np.arange(256, dtype=np.uint8).reshape(16, 16, 1), 3, axis=2)
    levels[..., 1] = levels[..., 1].T
    card, (_, scale, zero_point, dtype) = engine.card, _input_quantization(engine)
    for pixels in (levels, levels[:, ::-1]):
        expected = quantize(normalize(pixels, card.normalization.mean, card.normalization.std), scale, zero_point,
                            dtype)
        np.testing.assert_array_equal(engine._to_input(pixels)[0], expected)


def test_a_shades_of_grey_card_balances_each_zoomed_view_before_the_table(tiny_model_dir, engine, frame):
    card = _card(tiny_model_dir)
    balanced = Engine(tiny_model_dir / "model_int8.tflite",
                      dataclasses.replace(card, normalization=dataclasses.replace(card.normalization,
                                                                                  colour="shades_of_grey"),
                                          preprocessing=dataclasses.replace(card.preprocessing, zoom=0.8, tta="flips")),
                      num_threads=1)
    cast = np.clip(frame * np.array([1.0, 0.7, 0.5]), 0, 255).astype(np.uint8)
    view = centre_zoom(fit_to_input(cast, 48, 64), 0.8)  # zoomed first: the colour is balanced on what the model sees
    _, scale, zero_point, dtype = _input_quantization(engine)
    norm = card.normalization
    tensors = balanced.prepare(cast).tensors
    for tensor, flipped in zip(tensors, tta_views(view, "flips")):
        expected = quantize(normalize(np.ascontiguousarray(flipped), norm.mean, norm.std, "shades_of_grey"),
                            scale, zero_point, dtype)
        np.testing.assert_array_equal(tensor[0], expected)
    plain = quantize(normalize(view, norm.mean, norm.std), scale, zero_point, dtype)
    assert not np.array_equal(tensors[0][0], plain)


def test_prepare_then_run_is_infer_and_prepare_leaves_the_interpreter_alone(engine, frame):
    prepared = engine.prepare(frame)
    assert len(prepared.tensors) == 1 and prepared.tensors[0].shape == (1, 48, 64, 3) and prepared.preprocess_ms > 0
    other = engine.prepare(frame[::-1].copy())  # preparing another frame meanwhile changes nothing
    np.testing.assert_array_equal(engine.run(prepared).probabilities, engine.infer(frame).probabilities)
    assert not np.array_equal(engine.run(other).probabilities, engine.run(prepared).probabilities)


def test_the_cards_zoom_is_applied_to_every_frame(tiny_model_dir, engine, frame):
    card = _card(tiny_model_dir)
    zoomed = Engine(tiny_model_dir / "model_int8.tflite",
                    dataclasses.replace(card, preprocessing=dataclasses.replace(card.preprocessing, zoom=0.8)),
                    num_threads=1)
    fitted = fit_to_input(frame, 48, 64)
    expected = engine.infer_pixels(centre_zoom(fitted, 0.8))
    assert not np.allclose(expected, engine.infer_pixels(fitted), atol=1e-3)
    np.testing.assert_array_equal(zoomed.infer(frame).probabilities, expected)
    np.testing.assert_array_equal(zoomed.infer_pixels(fitted), expected)


# --- the not-a-lesion gate: a second (1, 1) output, told apart by shape ------------------------


@pytest.fixture(scope="module")
def gated(gated_model_dir) -> Engine:
    return Engine.from_model_dir(gated_model_dir, num_threads=1)


def test_a_gated_model_gives_the_not_lesion_score_beside_the_probabilities(gated, fixture_dir, negative_images):
    lesion = gated.infer(load_image(min((fixture_dir / "images").glob("*.jpg"))))
    assert lesion.probabilities.shape == (7,) and abs(lesion.probabilities.sum() - 1.0) < 7 / 256
    assert 0.0 <= lesion.not_lesion < 0.5
    for path in negative_images:
        assert gated.infer(load_image(path)).not_lesion >= 0.5, path.name
    # dequantized with the gate output's own scale: a multiple of 1/256 from the int8 sigmoid
    assert (lesion.not_lesion * 256) == pytest.approx(round(lesion.not_lesion * 256), abs=1e-3)


def test_the_gate_score_is_averaged_over_the_flipped_views(gated_model_dir, gated, negative_images):
    card = gated.card
    flips = Engine(gated_model_dir / "model_int8.tflite",
                   dataclasses.replace(card, preprocessing=dataclasses.replace(card.preprocessing, tta="flips")),
                   num_threads=1)
    fitted = fit_to_input(load_image(negative_images[0]), 48, 64)
    views = [gated._run(gated._to_input(np.ascontiguousarray(v)))[1] for v in tta_views(fitted, "flips")]
    assert flips.infer(fitted).not_lesion == pytest.approx(np.mean(views, dtype=np.float32), abs=1e-6)


def test_a_card_without_a_gate_refuses_a_gated_model(gated_model_dir, gated):
    with pytest.raises(CardError, match="not-a-lesion output, the card no field 'gate'"):
        Engine(gated_model_dir / "model_int8.tflite", dataclasses.replace(gated.card, gate=None), num_threads=1)


def test_a_card_with_a_gate_refuses_a_model_without_the_output(tiny_model_dir, gated):
    card = dataclasses.replace(_card(tiny_model_dir), gate=gated.card.gate)
    with pytest.raises(CardError, match=r"field 'gate' needs a \(1, 1\) not-a-lesion output, the model has none"):
        Engine(tiny_model_dir / "model_int8.tflite", card, num_threads=1)


@pytest.mark.parametrize(("field", "change"), [
    ("gate.output.scale", lambda o: dataclasses.replace(o, scale=o.scale * 2)),
    ("gate.output.zero_point", lambda o: dataclasses.replace(o, zero_point=o.zero_point + 1)),
    ("gate.output.dtype", lambda o: dataclasses.replace(o, dtype="uint8")),
])
def test_a_gate_output_unlike_the_card_is_refused_by_name(gated_model_dir, gated, field, change):
    gate = dataclasses.replace(gated.card.gate, output=change(gated.card.gate.output))
    with pytest.raises(CardError, match=rf"field '{field}'"):
        Engine(gated_model_dir / "model_int8.tflite", dataclasses.replace(gated.card, gate=gate), num_threads=1)


def _input_quantization(engine: Engine) -> tuple[tuple, float, int, str]:
    info = engine._input
    return info.shape, info.scale, info.zero_point, info.dtype
