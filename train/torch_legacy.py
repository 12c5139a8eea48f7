"""Read a PyTorch state dict saved in the legacy (pre-1.6, not zip) format, without torch.

The file is five things one after another: three small pickles (a magic number, the protocol
version, a dict of system facts), the state dict itself, whose tensors point at storages by
persistent id, the list of storage keys, and then each storage in that order as an int64 element
count followed by its raw little-endian bytes.

Only the globals such a file needs are allowed (an ``OrderedDict``, torch's tensor rebuilder and
its storage types), each replaced by a plain stand-in: a pickle naming anything else is refused
rather than run, so a weights file cannot execute code.
"""
from __future__ import annotations

import io
import pickle
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001
# torch storage type -> numpy dtype of its elements (little-endian)
STORAGE_DTYPES = {
    "FloatStorage": "<f4", "DoubleStorage": "<f8", "HalfStorage": "<f2", "LongStorage": "<i8",
    "IntStorage": "<i4", "ShortStorage": "<i2", "CharStorage": "i1", "ByteStorage": "u1", "BoolStorage": "?",
}


class LegacyFormatError(ValueError):
    """Not a legacy PyTorch file, or one that needs more than a state dict of tensors."""


@dataclass(frozen=True)
class _StorageType:
    name: str


@dataclass(frozen=True)
class _StorageRef:
    key: str
    dtype: str
    numel: int


@dataclass(frozen=True)
class _TensorRef:
    storage: _StorageRef
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    return _TensorRef(storage, int(storage_offset), tuple(size), tuple(stride))


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        raise LegacyFormatError(f"refusing to load global {module}.{name}: a state dict of tensors needs only "
                                "OrderedDict, torch._utils._rebuild_tensor_v2 and torch storage types")

    def persistent_load(self, pid):
        # ('storage', storage type, key, location, element count[, view metadata])
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType)):
            raise LegacyFormatError(f"unexpected persistent id {pid!r}")
        return _StorageRef(str(pid[2]), STORAGE_DTYPES[pid[1].name], int(pid[4]))


def _load(f: io.BufferedIOBase):
    return _Unpickler(f).load()


def read_state_dict(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of a legacy ``.pth`` state dict as a numpy array (a copy, C-contiguous), by name."""
    path = Path(path)
    with open(path, "rb") as f:
        try:
            magic, version, sys_info = _load(f), _load(f), _load(f)
        except (pickle.UnpicklingError, EOFError) as err:
            raise LegacyFormatError(f"{path}: not a legacy PyTorch file ({err})") from err
        if magic != MAGIC_NUMBER or version != PROTOCOL_VERSION:
            raise LegacyFormatError(f"{path}: magic {magic!r} / protocol {version!r}, expected "
                                    f"{MAGIC_NUMBER:#x} / {PROTOCOL_VERSION} (a zip-format file needs torch.load)")
        if not (isinstance(sys_info, dict) and sys_info.get("little_endian", False)):
            raise LegacyFormatError(f"{path}: written on a big-endian machine; not supported")
        state = _load(f)
        keys = _load(f)
        if not isinstance(state, dict) or not isinstance(keys, list):
            raise LegacyFormatError(f"{path}: expected a state dict and a list of storage keys")
        refs = {t.storage.key: t.storage for t in state.values() if isinstance(t, _TensorRef)}
        storages = {}
        for key in keys:
            count = np.frombuffer(_read_exactly(f, 8, path), "<i8")[0]
            ref = refs.get(key)
            if ref is None:
                raise LegacyFormatError(f"{path}: storage {key!r} is listed but no tensor uses it")
            if count != ref.numel:
                raise LegacyFormatError(f"{path}: storage {key!r} holds {count} elements, its tensor says {ref.numel}")
            dtype = np.dtype(ref.dtype)
            storages[key] = np.frombuffer(_read_exactly(f, int(count) * dtype.itemsize, path), dtype)
    out = {}
    for name, t in state.items():
        if not isinstance(t, _TensorRef):
            raise LegacyFormatError(f"{path}: entry {name!r} is a {type(t).__name__}, not a tensor")
        if t.storage.key not in storages:
            raise LegacyFormatError(f"{path}: tensor {name!r} points at storage {t.storage.key!r}, which the file "
                                    "does not hold")
        out[name] = _view(storages[t.storage.key], t, name, path)
    return out


def _read_exactly(f, n: int, path: Path) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise LegacyFormatError(f"{path}: truncated ({len(data)} of {n} bytes)")
    return data


def _view(storage: np.ndarray, t: _TensorRef, name: str, path: Path) -> np.ndarray:
    """The tensor's elements, following its offset and strides into the storage."""
    if t.size and any(s > 0 for s in t.size):
        last = t.offset + sum((n - 1) * s for n, s in zip(t.size, t.stride, strict=True))
        if t.offset < 0 or last >= storage.size:
            raise LegacyFormatError(f"{path}: tensor {name!r} reaches past its storage ({last} >= {storage.size})")
    item = storage.itemsize
    view = np.lib.stride_tricks.as_strided(storage[t.offset:], shape=t.size,
                                           strides=tuple(s * item for s in t.stride), writeable=False)
    return np.array(view, copy=True)
