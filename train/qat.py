"""Quantization-aware fine-tuning for the int8 export, in plain Keras 3 (any backend).

TensorFlow Model Optimization's QAT does not support Keras 3, so this simulates what the
int8 TFLite graph does to activations: every tensor the converter quantizes (each conv's
output after its fused BatchNorm/ReLU6, each residual add, the logits) goes through a
``FakeQuant`` that rounds to 256 levels of a per-tensor range, with straight-through
gradients. The range is a moving average of batch min/max, as the converter's calibration
takes min/max over the representative set. Conv kernels are fake-quantized too, as the converter
stores them: symmetric int8 (-127..127) per output channel. That part matters most after
fine-tuning with BatchNorm frozen: weights alone flipped 7% of the default model's test predictions.

``quantize_aware`` and ``strip`` add or remove the FakeQuant layers and swap each conv for its
weight-quantizing twin and back. ``strip`` leaves each kernel on its int8 grid (the values the
network trained with), so the float model that evaluation, calibration and the int8 gate compare
against computes what was trained, and the converter's own per-channel rounding of it is exact.
FakeQuant holds no weight the int8 graph needs: the converter calibrates its own ranges.
"""
from __future__ import annotations

import keras
from keras import layers, ops


@keras.saving.register_keras_serializable(package="dermedge")
class FakeQuant(layers.Layer):
    """Quantize-dequantize to uint8 levels over a moving [min, max] range (always containing 0)."""

    def __init__(self, momentum: float = 0.99, **kwargs):
        super().__init__(**kwargs)
        self.momentum = momentum

    def build(self, input_shape):
        self.range_min = self.add_weight(name="range_min", shape=(), initializer="zeros", trainable=False)
        self.range_max = self.add_weight(name="range_max", shape=(), initializer="zeros", trainable=False)
        self.seen = self.add_weight(name="seen", shape=(), initializer="zeros", trainable=False)

    def call(self, x, training=False):
        if training:
            lo, hi = ops.minimum(ops.min(x), 0.0), ops.maximum(ops.max(x), 0.0)
            # The first batch sets the range; later ones move it by (1 - momentum).
            m = ops.where(self.seen > 0, self.momentum, 0.0)
            self.range_min.assign(m * self.range_min + (1.0 - m) * ops.stop_gradient(lo))
            self.range_max.assign(m * self.range_max + (1.0 - m) * ops.stop_gradient(hi))
            self.seen.assign(1.0)
        lo, hi = self.range_min, self.range_max
        scale = ops.maximum((hi - lo) / 255.0, 1e-8)
        zero = ops.round(-lo / scale)
        q = (ops.clip(ops.round(x / scale) + zero, 0.0, 255.0) - zero) * scale
        return x + ops.stop_gradient(q - x)

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum}


def fake_quant_kernel(kernel, axis: tuple[int, ...]):
    """Symmetric per-channel int8 quantize-dequantize of ``kernel`` (reduced over ``axis``), with
    straight-through gradients."""
    scale = ops.maximum(ops.max(ops.abs(kernel), axis=axis, keepdims=True) / 127.0, 1e-12)
    q = ops.clip(ops.round(kernel / scale), -127.0, 127.0) * scale
    return kernel + ops.stop_gradient(q - kernel)


@keras.saving.register_keras_serializable(package="dermedge")
class QuantConv2D(layers.Conv2D):
    """Conv2D whose kernel is fake-quantized per output channel (the last kernel axis)."""

    KERNEL_AXES = (0, 1, 2)  # reduced over: all but the output channel

    def convolution_op(self, inputs, kernel):
        return super().convolution_op(inputs, fake_quant_kernel(kernel, axis=self.KERNEL_AXES))


@keras.saving.register_keras_serializable(package="dermedge")
class QuantDepthwiseConv2D(layers.DepthwiseConv2D):
    """DepthwiseConv2D whose kernel is fake-quantized per channel; as MobileNetV2's, without bias or
    activation (BatchNorm follows)."""

    KERNEL_AXES = (0, 1, 3)  # kernel (h, w, channels, multiplier): all but the channel

    def build(self, input_shape):
        if self.use_bias or self.activation not in (None, keras.activations.linear):
            raise ValueError(f"{self.name}: quantization-aware depthwise convs take no bias or activation")
        super().build(input_shape)

    def call(self, inputs):
        return ops.depthwise_conv(inputs, fake_quant_kernel(self.kernel, axis=self.KERNEL_AXES), strides=self.strides,
                                  padding=self.padding, dilation_rate=self.dilation_rate,
                                  data_format=self.data_format)


# plain conv class -> its weight-quantizing twin
_QUANT_CONVS = {layers.Conv2D: QuantConv2D, layers.DepthwiseConv2D: QuantDepthwiseConv2D}


def _swap_conv(layer: layers.Layer, *, insert: bool) -> layers.Layer:
    """``layer``'s weight-quantizing twin (``insert``) or plain class, same config and weights; other
    layers as they are."""
    pairs = _QUANT_CONVS.items() if insert else ((q, p) for p, q in _QUANT_CONVS.items())
    target = next((new for old, new in pairs if type(layer) is old), None)
    if target is None or (insert and isinstance(layer, layers.DepthwiseConv2D) and layer.use_bias):
        return layer
    twin = target.from_config(layer.get_config())
    twin.build(layer.input.shape)
    weights = layer.get_weights()
    if not insert:  # the kernel the network trained with (and int8 stores), so float == what was trained
        weights[0] = keras.ops.convert_to_numpy(fake_quant_kernel(layer.kernel, axis=layer.KERNEL_AXES))
    twin.set_weights(weights)
    return twin


def _quantized_by_converter(layer: layers.Layer, consumers: list[layers.Layer]) -> bool:
    """True where the int8 graph has a quantized tensor: BN outputs not fused into a following
    ReLU, ReLU outputs, adds, the pooled features and the logits."""
    if isinstance(layer, layers.BatchNormalization):
        return not any(isinstance(c, layers.ReLU) for c in consumers)
    return isinstance(layer, (layers.ReLU, layers.Add, layers.GlobalAveragePooling2D)) or layer.name == "head"


def quantize_aware(model: keras.Model) -> keras.Model:
    """``model`` with a FakeQuant after every tensor the converter quantizes (input included)."""
    return _rebuild(strip(model), insert=True)


def strip(model: keras.Model) -> keras.Model:
    """The model without its FakeQuant layers, same weights; a model without any is returned as is."""
    if not any(isinstance(layer, (FakeQuant, *_QUANT_CONVS.values())) for layer in model.layers):
        return model
    return _rebuild(model, insert=False)


def _rebuild(model: keras.Model, *, insert: bool) -> keras.Model:
    """Walk a private copy of ``model`` layer by layer (a copy, so every layer has exactly one
    inbound node to follow), calling each layer anew with FakeQuant inserted or skipped."""
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    consumers: dict[int, list] = {}
    for layer in copy.layers:
        for t in _inputs(layer):
            consumers.setdefault(id(t), []).append(layer)
    inputs = keras.Input(copy.input_shape[1:], name=copy.inputs[0].name)
    tensors = {id(copy.inputs[0]): FakeQuant(name="fq_input")(inputs) if insert else inputs}
    for layer in copy.layers:
        if isinstance(layer, layers.InputLayer):
            continue
        args = [tensors[id(t)] for t in _inputs(layer)]
        source = layer.output  # read before calling: a second call makes .output ambiguous
        if isinstance(layer, FakeQuant):
            out = layer(args[0]) if insert else args[0]
        else:
            out = _swap_conv(layer, insert=insert)(args if len(args) > 1 else args[0])
        if insert and _quantized_by_converter(layer, consumers.get(id(source), [])):
            out = FakeQuant(name=f"fq_{layer.name}")(out)
        tensors[id(source)] = out
    rebuilt = keras.Model(inputs, tensors[id(copy.outputs[0])], name=model.name)
    # Its layers also belong to the walked copy's graph; a last clone leaves one graph per layer, so
    # tools that follow ``layer.output`` (Grad-CAM, a later rebuild) see only this model.
    clean = keras.models.clone_model(rebuilt)
    clean.set_weights(rebuilt.get_weights())
    return clean


def _inputs(layer: layers.Layer) -> list:
    x = layer.input
    return list(x) if isinstance(x, (list, tuple)) else [x]
