"""Model families: the design's two seed networks and the project's edge network.

All are fully convolutional Keras 3 functional models (no ``tf.*``), take a
normalized float image (H, W, 3) and end in a softmax over the 7 classes. Only ops
with TFLite int8 kernels are used (Conv2D, DepthwiseConv2D, ReLU/ReLU6, MaxPool, Mean, Add, Concat).
"""
from __future__ import annotations

import keras
from keras import layers

NUM_CLASSES = 7
# Keras' default 0.99 lets the moving statistics lag weights that change fast under a
# cyclic LR; from scratch that collapsed edgenet's inference-mode output to one class.
BN_MOMENTUM = 0.9


def _ch(n: int, width: float) -> int:
    """Channel count scaled by the width multiplier, rounded to a multiple of 8 (SIMD friendly)."""
    return max(8, int(n * width + 4) // 8 * 8)


def _conv_bn(x, filters, kernel=3, *, stride=1, padding="same", act="relu", l2=0.0, name=None):
    reg = keras.regularizers.L2(l2) if l2 else None
    x = layers.Conv2D(filters, kernel, strides=stride, padding=padding, use_bias=False,
                      kernel_regularizer=reg, name=f"{name}_conv" if name else None)(x)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn" if name else None)(x)
    if act == "relu6":
        return layers.ReLU(6.0, name=f"{name}_relu6" if name else None)(x)
    if act == "relu":
        return layers.ReLU(name=f"{name}_relu" if name else None)(x)
    return x


def seed_cnn(input_shape=(90, 120, 3), width: float = 1.0, num_classes: int = NUM_CLASSES) -> keras.Model:
    """The design's compact FCN: 3 blocks of 3 valid 3x3 Conv+BN+ReLU, MaxPool, Dropout(0.2),
    then Conv(7, 1x1)+BN+ReLU and a conv whose kernel covers the whole remaining map (6x9 at 90x120)."""
    inputs = keras.Input(input_shape, name="image")
    x = inputs
    for b, filters in enumerate([(32, 64, 64), (64, 128, 128), (128, 256, 256)], start=1):
        for i, f in enumerate(filters, start=1):
            x = _conv_bn(x, _ch(f, width), padding="valid", name=f"block{b}_{i}")
        x = layers.MaxPooling2D(2, name=f"block{b}_pool")(x)
        x = layers.Dropout(0.2, name=f"block{b}_drop")(x)
    x = _conv_bn(x, num_classes, 1, name="squeeze")
    x = layers.Conv2D(num_classes, tuple(x.shape[1:3]), padding="valid", name="head")(x)
    x = layers.Flatten(name="logits")(x)
    outputs = layers.Softmax(name="probs")(x)
    return keras.Model(inputs, outputs, name="seed_cnn")


def concat_resnet(input_shape=(90, 120, 3), width: float = 1.0, num_classes: int = NUM_CLASSES,
                  l2: float = 1e-3) -> keras.Model:
    """The design's concat-ResNet. A block (in -> 2*in) runs two 3x3 Conv+BN+ReLU at ``in``
    channels, concatenates them with its input (giving 2*in) and mixes with a 1x1 transition
    Conv+BN+ReLU; the first three blocks end in MaxPool. Conv(7, 1x1), global average pool."""
    inputs = keras.Input(input_shape, name="image")
    x = _conv_bn(inputs, _ch(32, width), l2=l2, name="stem")
    for b, pool in enumerate([True, True, True, False], start=1):
        c = x.shape[-1]
        y = _conv_bn(x, c, l2=l2, name=f"res{b}_a")
        y = _conv_bn(y, c, l2=l2, name=f"res{b}_b")
        x = layers.Concatenate(name=f"res{b}_concat")([x, y])
        x = _conv_bn(x, 2 * c, 1, l2=l2, name=f"res{b}_transition")
        if pool:
            x = layers.MaxPooling2D(2, name=f"res{b}_pool")(x)
    x = layers.Conv2D(num_classes, 1, kernel_regularizer=keras.regularizers.L2(l2), name="head")(x)
    x = layers.GlobalAveragePooling2D(name="logits")(x)
    outputs = layers.Softmax(name="probs")(x)
    return keras.Model(inputs, outputs, name="concat_resnet")


# (expansion, channels, repeats, first stride) per stage of the edge network.
EDGE_STAGES = ((1, 16, 1, 1), (4, 24, 2, 2), (4, 32, 3, 2), (4, 64, 3, 2), (4, 96, 2, 1), (4, 160, 2, 2))


def _inverted_residual(x, expansion, filters, stride, name):
    c_in = x.shape[-1]
    y = x
    if expansion != 1:
        y = _conv_bn(y, c_in * expansion, 1, act="relu6", name=f"{name}_expand")
    y = layers.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False, name=f"{name}_dw")(y)
    y = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_dw_bn")(y)
    y = layers.ReLU(6.0, name=f"{name}_dw_relu6")(y)
    y = _conv_bn(y, filters, 1, act=None, name=f"{name}_project")
    if stride == 1 and c_in == filters:
        y = layers.Add(name=f"{name}_add")([x, y])
    return y


def edgenet(input_shape=(150, 200, 3), width: float = 1.0, num_classes: int = NUM_CLASSES,
            dropout: float = 0.2) -> keras.Model:
    """DermEdge's edge network: MobileNetV2-style inverted residuals (ReLU6, linear
    bottlenecks), fully convolutional, int8-friendly. At 150x200 and width 1.0 it runs
    at the dataset's native resolution for about 1/5 of the seed CNN's MACs."""
    inputs = keras.Input(input_shape, name="image")
    x = _conv_bn(inputs, _ch(32, width), 3, stride=2, act="relu6", name="stem")
    for s, (t, c, n, stride) in enumerate(EDGE_STAGES, start=1):
        for i in range(n):
            x = _inverted_residual(x, t, _ch(c, width), stride if i == 0 else 1, name=f"s{s}_{i}")
    x = _conv_bn(x, _ch(640, width), 1, act="relu6", name="top")
    return keras.Model(inputs, pooled_head(x, num_classes, dropout=dropout), name="edgenet")


def pooled_head(features, num_classes: int, *, dropout: float):
    """Global average pool -> dropout -> 1x1 conv ``head`` -> ``logits`` -> ``probs``: the one
    classifier head of edgenet and every pretrained backbone. Calibration folds its temperature
    into the ``head`` conv, and the ensemble reads ``logits``, so the names are the contract."""
    x = layers.GlobalAveragePooling2D(keepdims=True, name="pool")(features)
    x = layers.Dropout(dropout, name="drop")(x)
    x = layers.Conv2D(num_classes, 1, name="head")(x)
    x = layers.Flatten(name="logits")(x)
    return layers.Softmax(name="probs")(x)


ARCHITECTURES = {"seed_cnn": seed_cnn, "concat_resnet": concat_resnet, "edgenet": edgenet}


def build_model(arch: str, input_shape, width: float = 1.0, num_classes: int = NUM_CLASSES) -> keras.Model:
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose from {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[arch](tuple(input_shape), width=width, num_classes=num_classes)


def count_macs(model: keras.Model) -> int:
    """Multiply-accumulates per frame of the conv and dense layers (BN folds into convs)."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.Model):  # a nested model, e.g. an ensemble's member
            total += count_macs(layer)
        elif isinstance(layer, layers.DepthwiseConv2D):
            _, h, w, c = layer.output.shape
            kh, kw = layer.kernel_size
            total += h * w * c * kh * kw
        elif isinstance(layer, layers.Conv2D):
            _, h, w, c = layer.output.shape
            kh, kw = layer.kernel_size
            total += h * w * c * kh * kw * layer.input.shape[-1] // layer.groups
        elif isinstance(layer, layers.Dense):
            total += layer.input.shape[-1] * layer.units
    return int(total)


def describe(model: keras.Model) -> dict:
    return {"family": model.name, "params": int(model.count_params()), "macs": count_macs(model),
            "input_shape": list(model.input_shape[1:])}
