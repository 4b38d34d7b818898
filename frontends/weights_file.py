"""Weights-only files into analysable layers: safetensors, PyTorch state dicts, .npz.

Model files are untrusted input, so nothing here runs pickle: PyTorch files (the zip format
and the legacy pre-1.6 format) are read with a restricted unpickler that only rebuilds
tensors and ordered dicts, from their raw storages, without importing torch. Anything else
in the pickle is refused unless the caller passes `trust=True` (then torch.load does the
full unpickling). Safetensors are read from their JSON header and memory-mapped, bf16 and
fp8 included. Tensors load lazily, one layer at a time.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import struct
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import ml_dtypes
import numpy as np

from irtools.frontends import require
from irtools.errors import IrtoolsError, ModelLoadError, UnsupportedError

_SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2, "I64": np.int64, "I32": np.int32,
    "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}
_TORCH_STORAGES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".npz", ".ckpt", ".weights.h5")
_H5_SUFFIXES = (".h5", ".hdf5")
_H5_MISSING = "reading HDF5 weights needs h5py: pip install h5py"


@dataclass(slots=True)
class StoredArray:
    """A tensor in a weights file: shape and dtype now, values on `load()`."""

    shape: tuple[int, ...]
    dtype: np.dtype
    load: Callable[[], np.ndarray]


def is_weights_file(path: str) -> bool:
    """Whether `path` is a weights-only source (by suffix, or a directory of safetensors)."""
    if not isinstance(path, str):
        return False
    if os.path.isdir(path):
        return any(f.endswith(".safetensors") for f in os.listdir(path))
    lower = path.lower()
    if lower.endswith(_H5_SUFFIXES) and not lower.endswith(".weights.h5"):
        return os.path.isfile(path) and not h5_is_full_model(path)  # Keras 2 `save_weights("x.h5")`
    return lower.endswith(WEIGHT_SUFFIXES)


def default_layout(path: str, layout: str) -> str:
    """Keras HDF5 weights are always in Keras' (k..., in, out) layout."""
    return "keras" if os.fspath(path).lower().endswith(_H5_SUFFIXES) else layout


def read_weights(path: str, trust: bool = False) -> dict[str, StoredArray]:
    """The tensors of a weights file by name (lazy), refusing anything that needs arbitrary code."""
    if not os.path.exists(path):
        raise ModelLoadError("no such file", path)
    if os.path.isdir(path):
        return _read_safetensors_dir(path)
    lower = path.lower()
    try:
        if lower.endswith(".safetensors"):
            return _read_safetensors(path)
        if lower.endswith(".npz"):
            return _read_npz(path)
        if lower.endswith(_H5_SUFFIXES):
            return _read_h5(path)
        if zipfile.is_zipfile(path):
            return _read_torch_zip(path, trust)
        return _read_torch_legacy(path, trust)
    except IrtoolsError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, KeyError, struct.error, zipfile.BadZipFile) as exc:
        raise ModelLoadError(f"not a readable weights file: {exc}", path) from exc


# -- safetensors ------------------------------------------------------------------------
def _read_safetensors(path: str) -> dict[str, StoredArray]:
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise ModelLoadError("truncated safetensors file", path)
        (n,) = struct.unpack("<Q", head)
        if n > os.path.getsize(path) - 8:
            raise ModelLoadError("safetensors header is longer than the file", path)
        header = json.loads(fh.read(n))
    header.pop("__metadata__", None)
    base = 8 + n
    size = os.path.getsize(path)
    out = {}
    for name, info in header.items():
        dtype = _SAFETENSORS_DTYPES.get(info["dtype"])
        if dtype is None:
            raise UnsupportedError(f"tensor '{name}' has unsupported dtype {info['dtype']}", path)
        start, end = info["data_offsets"]
        shape = tuple(info["shape"])
        if base + end > size or end - start != int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize:
            raise ModelLoadError(f"tensor '{name}' lies outside the file or has the wrong size", path)
        out[name] = StoredArray(shape, np.dtype(dtype), _memmap_loader(path, dtype, base + start, shape))
    return out


def _memmap_loader(path, dtype, offset, shape):
    def load():
        count = int(np.prod(shape, dtype=np.int64))
        return np.array(np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=(count,))).reshape(shape)

    return load


def _read_safetensors_dir(path: str) -> dict[str, StoredArray]:
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as fh:
            files = sorted(set(json.load(fh)["weight_map"].values()))
    else:
        files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
    out: dict[str, StoredArray] = {}
    for f in files:
        full = os.path.join(path, f)
        if not os.path.isfile(full):
            raise ModelLoadError(f"shard '{f}' named by the index is missing", path)
        out.update(_read_safetensors(full))
    return out


def _read_npz(path: str) -> dict[str, StoredArray]:
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    return {k: StoredArray(v.shape, v.dtype, (lambda v=v: v)) for k, v in arrays.items()}


# -- Keras HDF5 weights -------------------------------------------------------------------
def _h5py():
    return require("h5py", missing=_H5_MISSING)


def h5_is_full_model(path: str) -> bool:
    """Whether an HDF5 file is a whole Keras model (it has a `model_config`), not weights only."""
    h5py = _h5py()
    try:
        with h5py.File(path, "r") as f:
            return "model_config" in f.attrs
    except OSError as exc:
        raise ModelLoadError(f"not a readable HDF5 file: {exc}", path) from exc


def _read_h5(path: str) -> dict[str, StoredArray]:
    """Every float dataset of a Keras weights file, named by its HDF5 path as Keras stored it.

    Keras 3 `.weights.h5`: `layers/<layer>/vars/<i>`; Keras 2 `save_weights("x.h5")`:
    `<layer>/<layer>/kernel:0` (the `:0` is dropped). Optimizer state is left out. Datasets are
    read directly with h5py: no Keras, no code from the file.
    """
    h5py = _h5py()
    found: dict[str, StoredArray] = {}
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise ModelLoadError(f"not a readable HDF5 file: {exc}", path) from exc
    with f:
        if "model_config" in f.attrs:
            raise UnsupportedError("a whole Keras model, not a weights file", path)

        def visit(name, obj):
            if not isinstance(obj, h5py.Dataset) or name.split("/")[0] in ("optimizer", "optimizer_weights"):
                return
            if obj.dtype.kind != "f" or obj.ndim == 0:
                return
            key = name[:-2] if name.endswith(":0") else name
            found[key] = StoredArray(tuple(obj.shape), np.dtype(obj.dtype), _h5_loader(path, name))

        f.visititems(visit)
    if not found:
        raise ModelLoadError("the HDF5 file holds no float weights", path)
    return found


def _h5_loader(path: str, name: str):
    def load():
        with _h5py().File(path, "r") as f:
            return np.asarray(f[name][()])

    return load


# -- PyTorch: restricted unpickling -------------------------------------------------------
@dataclass(slots=True)
class _Storage:
    key: str
    dtype: np.dtype
    numel: int


@dataclass(slots=True)
class _TensorRef:
    storage: _Storage
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor(storage, offset, size, stride, *args):
    return _TensorRef(storage, int(offset), tuple(int(s) for s in size), tuple(int(s) for s in stride))


def _rebuild_parameter(data, *args):
    return data


class _RestrictedUnpickler(pickle.Unpickler):
    """Rebuilds tensors and dicts only; every other global is refused."""

    ALLOWED = {
        ("collections", "OrderedDict"): OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    }

    def __init__(self, fh, path):
        super().__init__(fh)
        self.path = path

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return self.ALLOWED[(module, name)]
        if module == "torch" and name in _TORCH_STORAGES:
            return name  # a storage type tag, used in persistent ids
        raise pickle.UnpicklingError(f"refused to unpickle {module}.{name} (pass --trust to allow arbitrary objects)")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        _, storage_type, key, _location, numel = pid[:5]
        dtype = _TORCH_STORAGES.get(storage_type if isinstance(storage_type, str) else str(storage_type))
        if dtype is None:
            raise pickle.UnpicklingError(f"unsupported storage type {storage_type!r}")
        return _Storage(str(key), np.dtype(dtype), int(numel))


def _flatten_state(obj, path: str) -> dict[str, _TensorRef]:
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise UnsupportedError("the file holds no state dict (a dict of tensors)", path)
    return {str(k): v for k, v in obj.items() if isinstance(v, _TensorRef)}


def _tensor_loader(read_storage: Callable[[_Storage], np.ndarray], ref: _TensorRef):
    def load():
        flat = read_storage(ref.storage)
        item = flat.dtype.itemsize
        return np.lib.stride_tricks.as_strided(
            flat[ref.offset:], shape=ref.shape, strides=tuple(s * item for s in ref.stride)).copy()

    return load


def _read_torch_zip(path: str, trust: bool) -> dict[str, StoredArray]:
    if trust:
        return _read_trusted(path)
    with zipfile.ZipFile(path) as z:
        pkl = next((n for n in z.namelist() if n.endswith("data.pkl")), None)
        if pkl is None:
            raise ModelLoadError("zip file without data.pkl: not a PyTorch checkpoint", path)
        prefix = pkl[: -len("data.pkl")]
        state = _flatten_state(_RestrictedUnpickler(io.BytesIO(z.read(pkl)), path).load(), path)

    def read_storage(st: _Storage) -> np.ndarray:
        with zipfile.ZipFile(path) as z:
            raw = z.read(f"{prefix}data/{st.key}")
        return np.frombuffer(raw, dtype=st.dtype, count=st.numel)

    return {k: StoredArray(r.shape, r.storage.dtype, _tensor_loader(read_storage, r)) for k, r in state.items()}


def _read_torch_legacy(path: str, trust: bool) -> dict[str, StoredArray]:
    with open(path, "rb") as fh:
        magic = _RestrictedUnpickler(fh, path).load()
        if magic != _LEGACY_MAGIC:
            raise ModelLoadError("not a PyTorch checkpoint (no zip archive, no legacy magic number)", path)
        _RestrictedUnpickler(fh, path).load()  # protocol version
        _RestrictedUnpickler(fh, path).load()  # sys info
        if trust:
            return _read_trusted(path)
        state = _flatten_state(_RestrictedUnpickler(fh, path).load(), path)
        keys = _RestrictedUnpickler(fh, path).load()
        offsets: dict[str, int] = {}
        storages = {r.storage.key: r.storage for r in state.values()}
        for key in keys:
            (numel,) = struct.unpack("<q", fh.read(8))
            offsets[str(key)] = fh.tell()
            st = storages.get(str(key))
            itemsize = st.dtype.itemsize if st is not None else 4
            fh.seek(numel * itemsize, io.SEEK_CUR)
        if fh.tell() > os.path.getsize(path):
            raise ModelLoadError("truncated PyTorch checkpoint", path)

    def read_storage(st: _Storage) -> np.ndarray:
        return np.fromfile(path, dtype=st.dtype, count=st.numel, offset=offsets[st.key])

    return {k: StoredArray(r.shape, r.storage.dtype, _tensor_loader(read_storage, r)) for k, r in state.items()}


def _read_trusted(path: str) -> dict[str, StoredArray]:
    torch = require("torch", missing="--trust needs PyTorch to unpickle the file: pip install irtools[torch]")
    obj = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(obj, torch.nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    arrays = {k: v.detach().float().numpy() if v.dtype == torch.bfloat16 else v.detach().numpy()
              for k, v in obj.items() if isinstance(v, torch.Tensor)}
    return {k: StoredArray(v.shape, v.dtype, (lambda v=v: v)) for k, v in arrays.items()}


# -- layers ------------------------------------------------------------------------------
_GATES = re.compile(r"(weight_ih|weight_hh)(_l\d+(_reverse)?)?$")


def weight_layers(tensors: dict[str, StoredArray], layout: str = "torch"):
    """`WeightLayer`s of the matrix-like tensors: 2-D dense/embedding, 3-5-D convolutions,
    PyTorch LSTM/GRU weights split per gate. `layout` is "torch" (out, in, k...) or "keras"
    ((k..., in, out) kernels)."""
    from irtools.ir.layers import WeightLayer

    layers: list[WeightLayer] = []
    for name, t in tensors.items():
        if not np.issubdtype(t.dtype, np.floating) and t.dtype not in (ml_dtypes.bfloat16,):
            continue
        shape, nd = t.shape, len(t.shape)
        base = re.sub(r"[./](weight|kernel|embeddings|w)$", "", name)

        def f64(t=t):  # stored precision; the backend forms Gram matrices in float64
            return np.asarray(t.load())

        if nd == 2 and _GATES.search(name):
            gates = 4 if shape[0] % 4 == 0 else 3  # LSTM i,f,g,o / GRU r,z,n (PyTorch order)
            hidden = shape[0] // gates
            labels = "ifgo" if gates == 4 else "rzn"
            for g in range(gates):
                layers.append(WeightLayer(f"{name}.{labels[g]}", name, "state_dict", "lstm" if gates == 4 else "gru",
                                          name, shape, max(hidden, shape[1]), min(hidden, shape[1]), 1, 1.0,
                                          loader=(lambda g=g, f=f64: [f()[g * hidden:(g + 1) * hidden]])))
        elif nd == 2:
            kind = "embedding" if "embed" in name.lower() else "dense"
            layers.append(WeightLayer(base, name, "state_dict", kind, name, shape, max(shape), min(shape), 1, 1.0,
                                      loader=(lambda f=f64: [f()])))
        elif 3 <= nd <= 5:
            if layout == "keras":  # (k..., in, out) -> slices (in, out) per kernel position
                spatial, n_, m_ = shape[:-2], shape[-2], shape[-1]

                def slices(f=f64, spatial=spatial):
                    w = f()
                    return [w[pos] for pos in np.ndindex(*spatial)]
            else:
                spatial, n_, m_ = shape[2:], shape[0], shape[1]

                def slices(f=f64, spatial=spatial):
                    w = f()
                    return [w[(slice(None), slice(None), *pos)] for pos in np.ndindex(*spatial)]
            rf = int(np.prod(spatial))
            layers.append(WeightLayer(base, name, "state_dict", f"conv{len(spatial)}d", name, shape, max(n_, m_),
                                      min(n_, m_), rf, 0.5, loader=slices))
    return layers


# -- the source table's row (irtools.frontends.SOURCE_KINDS) -----------------------------------
def open_weights_file(path: str, name: str, options):
    """A weights-only source: its matrices as layers (spectral metrics); no graph."""
    from irtools.frontends import OpenedSource  # noqa: PLC0415

    layers = weight_layers(read_weights(path, trust=options.trust), layout=default_layout(path, options.layout))
    return OpenedSource(name, "weights", layers=layers)
