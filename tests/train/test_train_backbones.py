"""Pretrained backbones: the TFLite import round trip, a mismatched graph refused, BatchNorm
re-estimation that keeps the function, affine-only BN, and the quantization-aware wrapper."""
from __future__ import annotations

from types import SimpleNamespace

import keras
import numpy as np
import pytest

from quantize.convert import convert_int8
from train import backbones, qat

SHAPE = (32, 40, 3)  # keras.applications' MobileNetV2 accepts inputs from 32x32
ALPHA = 0.35


def _random_batchnorm(model: keras.Model, rng: np.random.Generator) -> None:
    """Give every BN non-trivial statistics, so that the conversion really folds something."""
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.gamma.assign(rng.uniform(0.5, 1.5, n).astype(np.float32))
            layer.beta.assign(rng.normal(0, 0.2, n).astype(np.float32))
            layer.moving_mean.assign(rng.normal(0, 0.2, n).astype(np.float32))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, n).astype(np.float32))


@pytest.fixture(scope="module")
def imagenet_like(tmp_path_factory):
    """A small MobileNetV2 classifier with random weights, saved as a per-channel int8 TFLite file
    (as Google's ImageNet file is): ``(keras classifier, tflite path, sample images)``."""
    rng = np.random.default_rng(0)
    base = backbones.backbone("mobilenet_v2", SHAPE, alpha=ALPHA)
    _random_batchnorm(base, rng)
    x = keras.layers.GlobalAveragePooling2D(keepdims=True)(base.output)
    x = keras.layers.Conv2D(11, 1, name="logits_conv")(x)
    classifier = keras.Model(base.input, keras.layers.Flatten()(x))
    images = rng.uniform(-1, 1, (24, *SHAPE)).astype(np.float32)
    path = tmp_path_factory.mktemp("imagenet") / "mobilenet_v2_int8.tflite"
    path.write_bytes(convert_int8(classifier, images))
    return classifier, path, images


def _features(model: keras.Model, images: np.ndarray) -> np.ndarray:
    return keras.ops.convert_to_numpy(keras.ops.mean(model(images, training=False), axis=(1, 2)))


def test_tflite_import_reproduces_the_network(imagenet_like):
    classifier, path, images = imagenet_like
    imported = backbones.backbone("mobilenet_v2", SHAPE, alpha=ALPHA)
    record = backbones.load_weights(imported, str(path))
    assert (record.kind, record.layers) == ("tflite", len(backbones.conv_layers(imported)))
    assert len(record.sha256) == 64
    reference = keras.Model(classifier.input, classifier.get_layer("out_relu").output)
    want, got = _features(reference, images), _features(imported, images)
    # int8 weights through 52 layers: within a few percent of the float network, not bit-exact.
    rel = np.linalg.norm(got - want) / np.linalg.norm(want)
    assert rel < 0.1, rel
    assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.99


def test_the_file_classifier_agrees_with_the_import(imagenet_like):
    _, path, images = imagenet_like
    samples = []
    for i, img in enumerate(images[:4]):
        p = path.parent / f"sample{i}.png"
        import cv2

        cv2.imwrite(str(p), cv2.cvtColor(((img + 1) * 127.5).astype(np.uint8), cv2.COLOR_RGB2BGR))
        samples.append(p)
    rows = backbones.imagenet_self_check(path, samples, name="mobilenet_v2", alpha=ALPHA)
    assert [r["image"] for r in rows] == [p.name for p in samples]
    assert sum(r["agree"] for r in rows) >= 3  # random weights give near ties; an import error agrees on none


def test_a_mismatched_graph_is_refused_naming_the_first_layer(imagenet_like):
    _, path, _ = imagenet_like
    wider = backbones.backbone("mobilenet_v2", SHAPE, alpha=0.75)
    with pytest.raises(backbones.WeightImportError, match="'Conv1'"):
        backbones.load_weights(wider, str(path))


def test_a_cut_backbone_ends_at_the_named_layer_and_rebuilds_from_its_own_int8_file(imagenet_like, tmp_path):
    _, path, images = imagenet_like
    cut = "block_13_expand_relu"
    model, _ = backbones.pretrained_classifier("mobilenet_v2", SHAPE, weights=str(path), num_classes=7,
                                               alpha=ALPHA, cut=cut)
    names = [layer.name for layer in model.layers]
    assert cut in names and "block_13_depthwise" not in names and "out_relu" not in names
    full, _ = backbones.pretrained_classifier("mobilenet_v2", SHAPE, weights=str(path), num_classes=7, alpha=ALPHA)
    # The head pools the cut layer's output, computed by the same imported weights as in the full network.
    pooled = keras.Model(model.input, model.get_layer("pool").output)(images, training=False)
    want = _features(keras.Model(full.input, full.get_layer(cut).output), images)
    np.testing.assert_allclose(np.asarray(pooled).reshape(want.shape), want, rtol=1e-4, atol=1e-5)

    int8 = tmp_path / "cut_int8.tflite"
    int8.write_bytes(convert_int8(model, images))
    card = SimpleNamespace(architecture={"arch": "mobilenet_v2", "width_mult": ALPHA, "backbone_cut": cut},
                           input=SimpleNamespace(height=SHAPE[0], width=SHAPE[1]), labels=[None] * 7)
    rebuilt = backbones.classifier_from_int8(card, int8)
    assert len(backbones.conv_layers(rebuilt)) == len(backbones.conv_layers(model))
    got, ref = (keras.ops.convert_to_numpy(m(images, training=False)) for m in (rebuilt, model))
    assert np.abs(got - ref).max() < 0.1  # int8 weights: close to the float model, not bit-exact
    card.architecture.pop("backbone_cut")  # a card that forgets the cut describes another graph
    with pytest.raises(backbones.WeightImportError):
        backbones.classifier_from_int8(card, int8)


def test_an_unknown_cut_names_the_layer():
    with pytest.raises(ValueError, match="backbone_cut: no layer 'block_99'"):
        backbones.pretrained_classifier("mobilenet_v2", SHAPE, weights="none", num_classes=7, alpha=ALPHA,
                                        cut="block_99")


def test_missing_weights_file_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.tflite"):
        backbones.load_weights(backbones.backbone("mobilenet_v2", SHAPE, alpha=ALPHA), str(tmp_path / "nowhere.tflite"))


def test_unknown_backbone_is_refused():
    with pytest.raises(ValueError, match="resnet9"):
        backbones.backbone("resnet9", SHAPE)


def test_reestimated_batchnorm_keeps_the_function_and_measures_the_data(imagenet_like):
    _, path, images = imagenet_like
    model = backbones.backbone("mobilenet_v2", SHAPE, alpha=ALPHA)
    backbones.load_weights(model, str(path))
    before = _features(model, images)
    assert backbones.reestimate_batchnorm(model, images, batch_size=8) == 52
    np.testing.assert_allclose(_features(model, images), before, rtol=1e-3, atol=1e-3)
    first = model.get_layer("bn_Conv1")
    conv_out = keras.ops.convert_to_numpy(keras.Model(model.input, first.input)(images))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(first.moving_mean), conv_out.mean(axis=(0, 1, 2)),
                               rtol=1e-3, atol=1e-4)
    # In training mode BN now normalises by statistics close to the moving ones.
    train_out = keras.ops.convert_to_numpy(keras.Model(model.input, first.output)(images, training=True))
    infer_out = keras.ops.convert_to_numpy(keras.Model(model.input, first.output)(images, training=False))
    np.testing.assert_allclose(train_out, infer_out, atol=1e-2)


def test_affine_batchnorm_trains_scale_and_bias_never_statistics(tmp_path, imagenet_like):
    _, path, images = imagenet_like
    plain, _ = backbones.pretrained_classifier("mobilenet_v2", SHAPE, weights=str(path), num_classes=7,
                                               alpha=ALPHA)
    model = backbones.affine_batchnorm(plain)
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(bns) == 52 and all(isinstance(bn, backbones.AffineBatchNormalization) for bn in bns)
    want = plain.predict(images, verbose=0)
    np.testing.assert_allclose(model.predict(images, verbose=0), want, atol=1e-6)  # the same function
    # Training mode normalizes by the moving statistics too: no batch statistics to collapse on
    # (the backbone's features: the head's dropout is the one thing training mode should change).
    features = keras.Model(model.input, model.get_layer("out_relu").output)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(features(images, training=True)),
                               keras.ops.convert_to_numpy(features(images, training=False)), atol=1e-6)
    def weights():  # each BN's gamma, beta, moving mean and moving variance
        return [[np.array(w) for w in bn.get_weights()] for bn in bns]

    before = weights()
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="categorical_crossentropy")
    model.fit(images[:16], np.eye(7, dtype=np.float32)[np.arange(16) % 7], epochs=1, batch_size=8, verbose=0)
    after = weights()
    for k in (0, 1):  # gamma and beta trained (where the random network passes a gradient)...
        assert any(not np.allclose(b[k], a[k]) for b, a in zip(before, after, strict=True))
    for b, a in zip(before, after, strict=True):  # ... the statistics never
        np.testing.assert_array_equal(b[2], a[2])
        np.testing.assert_array_equal(b[3], a[3])
    model.save(tmp_path / "affine.keras")
    loaded = keras.models.load_model(tmp_path / "affine.keras", compile=False)
    assert isinstance(loaded.get_layer("bn_Conv1"), backbones.AffineBatchNormalization)
    np.testing.assert_allclose(loaded.predict(images, verbose=0), model.predict(images, verbose=0), atol=1e-6)


def test_kernels_are_fake_quantized_per_channel_by_hand():
    kernel = np.array([[1.0, 0.01], [-0.5, 0.02], [0.3, -0.03]], np.float32)  # 2 output channels
    q = keras.ops.convert_to_numpy(qat.fake_quant_kernel(keras.ops.convert_to_tensor(kernel), axis=(0,)))
    for channel in range(2):
        scale = np.abs(kernel[:, channel]).max() / 127.0  # each channel its own scale
        np.testing.assert_allclose(q[:, channel], np.round(kernel[:, channel] / scale) * scale, rtol=1e-6)
    assert not np.allclose(q, kernel)  # 0.3 is not on channel 0's grid of 1/127


def test_quantization_aware_wrapper_round_trips(tmp_path, imagenet_like):
    _, path, images = imagenet_like
    plain, _ = backbones.pretrained_classifier("mobilenet_v2", SHAPE, weights=str(path), num_classes=7,
                                               alpha=ALPHA)
    wrapped = qat.quantize_aware(plain)
    fakes = [layer for layer in wrapped.layers if isinstance(layer, qat.FakeQuant)]
    adds = [layer for layer in plain.layers if isinstance(layer, keras.layers.Add)]
    assert len(fakes) > len(adds) + 17 * 2  # every add, block outputs, the input and the head at least
    convs = [layer for layer in plain.layers if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D))]
    twins = [layer for layer in wrapped.layers if isinstance(layer, (qat.QuantConv2D, qat.QuantDepthwiseConv2D))]
    assert [layer.name for layer in twins] == [layer.name for layer in convs]  # every kernel as int8 stores it
    wrapped.compile(optimizer="adam", loss="categorical_crossentropy")
    wrapped.fit(images[:16], np.eye(7, dtype=np.float32)[np.arange(16) % 7], epochs=1, verbose=0)
    quantized = keras.ops.convert_to_numpy(
        keras.Model(wrapped.input, wrapped.get_layer("fq_input").output)(images[:2], training=False))
    fq = wrapped.get_layer("fq_input")
    lo, hi = float(keras.ops.convert_to_numpy(fq.range_min)), float(keras.ops.convert_to_numpy(fq.range_max))
    scale = (hi - lo) / 255.0
    levels = quantized / scale + np.round(-lo / scale)
    np.testing.assert_allclose(levels, np.round(levels), atol=1e-2)  # 256 levels, as int8 would
    wrapped.save(tmp_path / "qat.keras")
    loaded = keras.models.load_model(tmp_path / "qat.keras", compile=False)
    np.testing.assert_allclose(loaded.predict(images, verbose=0), wrapped.predict(images, verbose=0), atol=1e-5)
    stripped = qat.strip(loaded)
    assert not any(isinstance(layer, (qat.FakeQuant, qat.QuantConv2D, qat.QuantDepthwiseConv2D))
                   for layer in stripped.layers)
    assert len(stripped.layers) == len(plain.layers)
    # The stripped model is the trained float network: close to the fake-quantized one, not equal.
    diff = np.abs(stripped.predict(images, verbose=0) - loaded.predict(images, verbose=0)).max()
    assert 0 < diff < 0.2
    assert qat.strip(plain) is plain
    # One graph per layer: a sub-model through an inner layer (as Grad-CAM builds) still works.
    inner = keras.Model(stripped.input, [stripped.get_layer("out_relu").output, stripped.output])
    assert inner.predict(images[:2], verbose=0)[0].shape[0] == 2
