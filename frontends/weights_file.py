"""Weights-only files into analysable layers: safetensors, PyTorch state dicts, .npz.

Model files are untrusted input, so nothing here runs pickle: PyTorch files (the zip format
and the legacy pre-1.6 format) are read with a restricted unpickler that only rebuilds
tensors and ordered dicts, from their raw storages, without importing torch. Anything else
in the pickle is refused unless the caller passes `trust=True` (then torch.load does the
full unpickling). Safetensors are read from their JSON header and memory-mapped, bf16 and
fp8 included. Tensors load lazily, one layer at a time.

Everything a file declares is checked before it is believed: header types, every tensor's
bytes against its dtype and shape, every view's offset, shape and strides against its storage
(`_check_view`), a pickle's depth, expanded size and memo before it is unpickled
(`_scan_pickle`), every zip entry or npz member's size against the memory budget and its
compression ratio (`_zip_member`), HDF5 external or virtual storage (`check_hdf5_storage`);
shards must lie in the model's folder (`irtools.files.model_member`).
"""

from __future__ import annotations

import contextlib
import io
import json
import lzma
import math
import mmap
import os
import pickle
import pickletools
import re
import struct
import threading
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import ml_dtypes
import numpy as np

from irtools import budget
from irtools.errors import IrtoolsError, ModelLoadError, UnsupportedError, printable
from irtools.files import check_input, model_member
from irtools.frontends import require

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
#: A compressed zip entry, npz member or HDF5 dataset may inflate to at most this many times its
#: stored size once it is over `_INFLATE_FREE` bytes (weights compress 1-10x; zip bombs ~1000x).
_MAX_RATIO = 256
_INFLATE_FREE = 16 << 20
#: safetensors headers are at most 100 MB (the format's own limit).
_SAFETENSORS_MAX_HEADER = 100_000_000


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
    """The tensors of a weights file by name (lazy), refusing anything that needs arbitrary code.

    A tensor's bytes are read when its `load()` is called, long after this returns: the file may
    be corrupt there (a bad CRC, a deflate stream or HDF5 chunk that does not decode, a file cut
    short since), so each `load()` reports what goes wrong the way this does (`_read_errors`)."""
    if not os.path.lexists(path):
        raise ModelLoadError("no such file", path)
    try:
        check_input(path, directory=True)
    except IrtoolsError as exc:
        raise ModelLoadError(exc.message, path) from None
    kind = "safetensors folder" if os.path.isdir(path) else _format_name(path.lower())
    with _read_errors(path, kind):
        tensors = _read_any(path, trust)
    out = {_writable_name(name): StoredArray(a.shape, a.dtype, _checked_load(a.load, path, kind))
           for name, a in tensors.items()}
    if len(out) != len(tensors):
        raise ModelLoadError("two tensor names differ only in characters that are not valid text", path)
    return out


def _writable_name(name) -> str:
    """A tensor name as text every output can hold: JSON and pickle strings may carry lone
    surrogates (`"\\ud800"`), which no UTF-8 file (CSV, HTML, Parquet) can write; they are kept as
    their escapes."""
    name = str(name)
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return name.encode("utf-8", "backslashreplace").decode("utf-8")
    return name


def _read_any(path: str, trust: bool) -> dict[str, StoredArray]:
    lower = path.lower()
    if os.path.isdir(path):
        return _read_safetensors_dir(path)
    if lower.endswith(".safetensors"):
        return _read_safetensors(path)
    if lower.endswith(".npz"):
        return _read_npz(path)
    if lower.endswith(_H5_SUFFIXES):
        return _read_h5(path)
    if zipfile.is_zipfile(path):
        return _read_torch_zip(path, trust)
    return _read_torch_legacy(path, trust)


#: Low-level exceptions a corrupt file raises in the readers this module uses (pickle, zipfile and
#: its decompressors, numpy's header parser, json, h5py's OSError handled below).
_CORRUPT = (pickle.UnpicklingError, EOFError, ValueError, KeyError, struct.error, zipfile.BadZipFile,
            zipfile.LargeZipFile, NotImplementedError, TypeError, AttributeError, IndexError, OverflowError,
            RecursionError, UnicodeDecodeError, zlib.error, lzma.LZMAError, RuntimeError)


@contextlib.contextmanager
def _read_errors(path: str, kind: str):
    """Turn what a corrupt file makes a reader raise into one `ModelLoadError` line naming `kind`."""
    try:
        yield
    except IrtoolsError:
        raise
    except _CORRUPT as exc:
        detail = printable(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        raise ModelLoadError(f"not a readable {kind} ({_CAUSES.get(type(exc), 'corrupt')}: {detail[:200]})",
                             path) from None
    except OSError as exc:
        raise ModelLoadError(f"cannot read the file: {printable(exc.strerror or exc)[:200]}", path) from None


def _checked_load(load: Callable[[], np.ndarray], path: str, kind: str) -> Callable[[], np.ndarray]:
    def checked():
        with _read_errors(path, kind):
            return load()

    return checked


#: What a low-level exception means in a weights file, for its one-line error.
_CAUSES = {pickle.UnpicklingError: "refused pickle", EOFError: "truncated", struct.error: "truncated",
           zipfile.BadZipFile: "corrupt zip archive", UnicodeDecodeError: "text that is not valid in the pickle",
           RecursionError: "nested too deeply"}


def _format_name(lower: str) -> str:
    """What kind of weights file a (lower-case) name is, for messages."""
    for suffix, name in ((".safetensors", "safetensors file"), (".npz", "npz archive"), (".h5", "HDF5 file"),
                         (".hdf5", "HDF5 file")):
        if lower.endswith(suffix):
            return name
    return "PyTorch checkpoint"


# -- safetensors ------------------------------------------------------------------------
def _read_safetensors(path: str) -> dict[str, StoredArray]:
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise ModelLoadError("truncated safetensors file (no header length)", path)
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            raise ModelLoadError(f"safetensors header length {n} is longer than the file", path)
        if n > _SAFETENSORS_MAX_HEADER:
            raise ModelLoadError(f"safetensors header of {n} bytes is over the format's 100 MB limit", path)
        header = _safetensors_header(fh.read(n), path)
    base = 8 + n
    out = {}
    spans = []
    for name, info in header.items():
        dtype, shape, (start, end) = _safetensors_entry(name, info, path)
        budget.check_shape(shape, np.dtype(dtype).itemsize, f"tensor '{printable(name)}'", path)
        nbytes = math.prod(shape) * np.dtype(dtype).itemsize
        if base + end > size:
            raise ModelLoadError(f"tensor '{printable(name)}' lies outside the file (ends at byte {base + end} "
                                 f"of {size})", path)
        if end - start != nbytes:
            raise ModelLoadError(f"tensor '{printable(name)}' has {end - start} bytes but its dtype and shape "
                                 f"{list(shape)} need {nbytes} (corrupt file)", path)
        spans.append((start, end, name))
        out[name] = StoredArray(shape, np.dtype(dtype), _memmap_loader(path, dtype, base + start, shape))
    spans.sort()
    for (_, end0, a), (start1, _, b) in zip(spans, spans[1:], strict=False):
        if start1 < end0:
            raise ModelLoadError(f"tensors '{printable(a)}' and '{printable(b)}' overlap in the file "
                                 "(corrupt file)", path)
    return {name: out[name] for name in checkpoint_order([name for _, _, name in spans])}


def _safetensors_header(raw: bytes, path: str) -> dict:
    try:
        header = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ModelLoadError("safetensors header is not UTF-8 text (corrupt file)", path) from None
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"safetensors header is not JSON ({exc.msg} at byte {exc.pos})", path) from None
    except RecursionError:
        raise ModelLoadError("safetensors header is JSON nested too deeply (corrupt file)", path) from None
    if not isinstance(header, dict):
        raise ModelLoadError(f"safetensors header is a JSON {type(header).__name__}, not an object", path)
    header.pop("__metadata__", None)
    return header


def _safetensors_entry(name: str, info, path: str):
    """(numpy dtype, shape, (start, end)) of one header entry, every field checked."""
    label = f"tensor '{printable(name)}'"
    if not isinstance(info, dict):
        raise ModelLoadError(f"{label}: header entry is a {type(info).__name__}, not an object", path)
    code, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if not isinstance(code, str):
        raise ModelLoadError(f"{label}: dtype is missing or not a string", path)
    dtype = _SAFETENSORS_DTYPES.get(code)
    if dtype is None:
        raise UnsupportedError(f"{label} has unsupported dtype {printable(code)}", path)
    if not _ints(shape):
        raise ModelLoadError(f"{label}: shape is not a list of non-negative integers", path)
    if not _ints(offsets) or len(offsets) != 2 or offsets[0] > offsets[1]:
        raise ModelLoadError(f"{label}: data_offsets is not [start, end] with 0 <= start <= end", path)
    return dtype, tuple(shape), tuple(offsets)


def _ints(x) -> bool:
    """A list of non-negative ints (no bools)."""
    return isinstance(x, list) and all(type(v) is int and v >= 0 for v in x)


def _memmap_loader(path, dtype, offset, shape):
    def load():
        count = math.prod(shape)
        if count == 0:
            return np.zeros(shape, dtype)
        return np.array(np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=(count,))).reshape(shape)

    return load


def _read_safetensors_dir(path: str) -> dict[str, StoredArray]:
    index = os.path.join(path, "model.safetensors.index.json")
    weight_map = _read_index(path, model_member(path, "model.safetensors.index.json", "shard index",
                                                ModelLoadError)) if os.path.lexists(index) else None
    files = sorted(set(weight_map.values())) if weight_map is not None else \
        sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
    out: dict[str, StoredArray] = {}
    origin: dict[str, str] = {}
    for f in files:
        full = model_member(path, f, "shard", ModelLoadError)
        for name, array in _read_safetensors(full).items():
            if name in out:
                raise ModelLoadError(f"tensor '{printable(name)}' is in two shards ('{printable(origin[name])}' and "
                                     f"'{printable(f)}')", path)
            out[name], origin[name] = array, f
    for name, f in (weight_map or {}).items():
        if origin.get(name) != f:
            raise ModelLoadError(f"the index puts tensor '{printable(name)}' in shard '{printable(f)}', which does "
                                 "not hold it", path)
    return {name: out[name] for name in checkpoint_order(list(weight_map) if weight_map is not None else list(out))}


# Where a checkpoint keeps no order of its own (transformers sorts the index and each shard by name), rows
# follow the forward pass: numbered blocks numerically, and inside a block the usual order of its parts.
_FORWARD_ORDER = {name: rank for rank, names in enumerate((
    "embed_tokens wte word_embeddings embeddings embed_positions wpe position_embeddings patch_embed",
    "input_layernorm ln_1 layer_norm1 attention_norm norm1 ln1",
    "self_attn attn attention self_attention",
    "q_proj query q wq", "k_proj key k wk", "v_proj value v wv", "qkv_proj c_attn query_key_value Wqkv",
    "o_proj out_proj wo c_proj dense",
    "post_attention_layernorm ln_2 layer_norm2 ffn_norm norm2 ln2",
    "mlp feed_forward ffn block_sparse_moe",
    "gate_proj w1 c_fc fc1 dense_h_to_4h", "up_proj w3", "down_proj w2 fc2 dense_4h_to_h",
)) for name in names.split()}
_LAST = {"norm": 1, "ln_f": 1, "final_layernorm": 1, "final_layer_norm": 1, "lm_head": 2, "score": 2,
         "classifier": 2}


def _forward_key(name: str) -> list[tuple]:
    return [(0, int(part), "") if part.isdigit() else
            (1, _FORWARD_ORDER[part], part) if part in _FORWARD_ORDER else
            (3, _LAST[part], part) if part in _LAST else (2, 0, part) for part in name.split(".")]


def checkpoint_order(names: list[str]) -> list[str]:
    """The names in the checkpoint's own order; names stored sorted (no order kept) in forward order."""
    return sorted(names, key=_forward_key) if names == sorted(names) else names


def _read_index(path: str, index: str) -> dict[str, str]:
    if os.path.getsize(index) > _SAFETENSORS_MAX_HEADER:
        raise ModelLoadError("model.safetensors.index.json is over 100 MB", path)
    with open(index, "rb") as fh:
        raw = fh.read()
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ModelLoadError(f"model.safetensors.index.json is not JSON ({type(exc).__name__})", path) from None
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                   for k, v in weight_map.items()):
        raise ModelLoadError("model.safetensors.index.json has no weight_map of tensor names to shard files", path)
    return weight_map


# -- zip entries and npz members --------------------------------------------------------------
def _zip_member(z: zipfile.ZipFile, member: str, path: str, what: str | None = None) -> zipfile.ZipInfo:
    """The entry `member` once its inflated size is within the memory budget and its compression
    ratio is not a zip bomb's."""
    try:
        info = z.getinfo(member)
    except KeyError:
        raise ModelLoadError(f"zip entry '{printable(member)}' is missing", path) from None
    what = what or f"zip entry '{printable(member)}'"
    if info.compress_type != zipfile.ZIP_STORED and info.file_size > max(_INFLATE_FREE,
                                                                         info.compress_size * _MAX_RATIO):
        raise ModelLoadError(f"{what} inflates {info.compress_size} bytes to {info.file_size} (over "
                             f"{_MAX_RATIO}x: refused as a zip bomb)", path)
    budget.check(info.file_size, what, path)
    return info


def _zip_read(z: zipfile.ZipFile, member: str, path: str, what: str | None = None) -> bytes:
    _zip_member(z, member, path, what)
    return z.read(member)


def _read_npz(path: str) -> dict[str, StoredArray]:
    out = {}
    archive = _OpenOnce(lambda: zipfile.ZipFile(path))
    with zipfile.ZipFile(path) as z:
        for member in z.namelist():
            if member.endswith("/"):
                continue
            name = member[:-4] if member.endswith(".npy") else member
            info = _zip_member(z, member, path, f"npz member '{printable(name)}'")
            with z.open(member) as fh:
                shape, dtype, header = _npy_header(fh, name, path)
            budget.check_shape(shape, dtype.itemsize, f"npz member '{printable(name)}'", path)
            nbytes = math.prod(shape) * dtype.itemsize
            if info.file_size != header + nbytes:
                raise ModelLoadError(f"npz member '{printable(name)}' holds {info.file_size - header} bytes but its "
                                     f"dtype and shape {list(shape)} need {nbytes} (corrupt file)", path)
            out[name] = StoredArray(shape, dtype, _npz_loader(archive, member))
    return out


def _npy_header(fh, name: str, path: str) -> tuple[tuple[int, ...], np.dtype, int]:
    fmt = np.lib.format
    try:
        version = fmt.read_magic(fh)
        reader = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}.get(version)
        if reader is None:
            raise ValueError(f"npy format version {version}")
        shape, _, dtype = reader(fh)
    except Exception as exc:  # numpy parses the header with tokenize/ast: any of their errors means corrupt
        raise ModelLoadError(f"npz member '{printable(name)}' is not a readable .npy array "
                             f"({printable(str(exc) or type(exc).__name__)[:200]})", path) from None
    if dtype.hasobject:
        raise UnsupportedError(f"npz member '{printable(name)}' holds Python objects (a pickle): refused", path)
    return tuple(int(d) for d in shape), dtype, fh.tell()


def _npz_loader(archive: _OpenOnce, member: str):
    def load():
        with archive().open(member) as fh:
            return np.lib.format.read_array(fh, allow_pickle=False)

    return load


class _OpenOnce:
    """One handle on a file for every tensor read from it, opened at the first read and closed
    when the tensors are dropped. Opening a zip parses its whole directory and opening an HDF5
    file walks it (`check_hdf5_storage`): done per tensor, a file of n tensors cost O(n^2)
    (5000 tensors: 84 ms each)."""

    def __init__(self, opener: Callable):
        self._opener, self._handle, self._lock = opener, None, threading.Lock()

    def __call__(self):
        with self._lock:
            if self._handle is None:
                self._handle = self._opener()
            return self._handle

    def __del__(self):
        if self._handle is not None:
            with contextlib.suppress(Exception):
                self._handle.close()


# -- Keras HDF5 weights -------------------------------------------------------------------
def _h5py():
    return require("h5py", missing=_H5_MISSING)


def h5_is_full_model(path: str) -> bool:
    """Whether an HDF5 file is a whole Keras model (it has a `model_config`), not weights only."""
    with _open_h5(path) as f:
        return "model_config" in f.attrs


def _open_h5(path: str):
    """An HDF5 file opened for reading, once `check_hdf5_storage` found nothing in it that
    points at other files."""
    h5py = _h5py()
    try:
        f = h5py.File(check_input(path), "r")
    except OSError as exc:
        raise ModelLoadError(f"not a readable HDF5 file: {printable(exc)}", path) from None
    try:
        check_hdf5_storage(f, path)
    except BaseException:
        f.close()
        raise
    return f


def check_hdf5_storage(h5file, path: str) -> None:
    """Refuse an open HDF5 file that would make h5py read other files: external links, datasets
    with external storage, virtual datasets. For every reader of HDF5 model files (weights here,
    full Keras models in `keras`)."""
    h5py = _h5py()

    def link(name, info):  # h5py's visitors stop at a non-None return (an exception raised in one breaks h5py)
        if isinstance(info, h5py.ExternalLink):
            return f"'{printable(name)}' is an external link to '{printable(info.filename)}' (refused: it reads " \
                   "another file)"
        return None

    def dataset(name, obj):
        if not isinstance(obj, h5py.Dataset):
            return None
        if obj.is_virtual:
            return f"dataset '{printable(name)}' is a virtual dataset (refused: it reads other files)"
        if obj.external:
            return f"dataset '{printable(name)}' has external storage (refused: it reads other files)"
        return None

    try:
        problem = _visit_links(h5py, h5file, link) or h5file.visititems(dataset)
    except (KeyError, RuntimeError, OSError, ValueError) as exc:
        raise ModelLoadError(f"not a readable HDF5 file: {printable(exc)}", path) from None
    if problem:
        raise ModelLoadError(problem, path)


def check_hdf5_file(path: str) -> None:
    """Refuse an HDF5 file (a full-model Keras `.h5`) that would read other files: for
    `frontends.keras` to call before Keras opens it."""
    with _open_h5(path):
        pass


def check_keras_archive(path: str) -> None:
    """Refuse a `.keras` archive (a zip) with an entry that inflates past the memory budget or
    like a zip bomb, or whose HDF5 weights (`model.weights.h5`) would read other files
    (`check_hdf5_storage`). For `frontends.keras` to call before Keras opens the archive."""
    h5py = _h5py()
    try:
        with zipfile.ZipFile(check_input(path)) as z:
            for member in z.namelist():
                _zip_member(z, member, path)
            for member in (n for n in z.namelist() if n.lower().endswith((".h5", ".hdf5"))):
                with z.open(member) as fh, h5py.File(fh, "r") as f:
                    check_hdf5_storage(f, path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as exc:
        raise ModelLoadError(f"not a readable .keras archive ({printable(exc)})", path) from None


def _visit_links(h5py, group, visit, prefix: str = ""):
    """`group.visititems_links(visit)` (h5py >= 3.11), or the same walk by hand on older h5py."""
    if hasattr(group, "visititems_links"):
        return group.visititems_links(visit)
    for key in group:
        info = group.get(key, getlink=True)
        name = f"{prefix}{key}"
        found = visit(name, info)
        if found is None and isinstance(info, h5py.HardLink) and isinstance(group[key], h5py.Group):
            found = _visit_links(h5py, group[key], visit, name + "/")
        if found is not None:
            return found
    return None


def _check_h5_dataset(name: str, obj, path: str) -> None:
    """A dataset's declared bytes against the budget and against what the file stores."""
    budget.check_shape(obj.shape, obj.dtype.itemsize, f"dataset '{printable(name)}'", path)
    nbytes = math.prod(obj.shape) * obj.dtype.itemsize
    stored = obj.id.get_storage_size()
    if nbytes > max(_INFLATE_FREE, stored * _MAX_RATIO):
        raise ModelLoadError(f"dataset '{printable(name)}' declares {nbytes} bytes but the file stores {stored} "
                             f"(over {_MAX_RATIO}x: refused)", path)


def _read_h5(path: str) -> dict[str, StoredArray]:
    """Every float dataset of a Keras weights file, named by its HDF5 path as Keras stored it.

    Keras 3 `.weights.h5`: `layers/<layer>/vars/<i>`; Keras 2 `save_weights("x.h5")`:
    `<layer>/<layer>/kernel:0` (the `:0` is dropped). Optimizer state is left out. Datasets are
    read directly with h5py: no Keras, no code from the file, no other file (`check_hdf5_storage`).
    """
    h5py = _h5py()
    found: dict[str, StoredArray] = {}
    h5file = _OpenOnce(lambda: _open_h5(path))
    with _open_h5(path) as f:
        if "model_config" in f.attrs:
            raise UnsupportedError("a whole Keras model, not a weights file", path)

        def visit(name, obj):
            if not isinstance(obj, h5py.Dataset) or name.split("/")[0] in ("optimizer", "optimizer_weights"):
                return
            if obj.dtype.kind != "f" or obj.ndim == 0:
                return
            datasets.append((name, obj))

        datasets: list = []
        f.visititems(visit)  # collected first: an exception raised inside an h5py visitor breaks h5py
        for name, obj in datasets:
            _check_h5_dataset(name, obj, path)
            key = name[:-2] if name.endswith(":0") else name
            found[key] = StoredArray(tuple(obj.shape), np.dtype(obj.dtype), _h5_loader(h5file, name))
    if not found:
        raise ModelLoadError("the HDF5 file holds no float weights", path)
    return found


def _h5_loader(h5file: _OpenOnce, name: str):
    def load():
        return np.asarray(h5file()[name][()])

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


#: Limits on a pickle before it is unpickled: nesting depth, objects once shared references are
#: expanded (a "billion laughs" shares halves to double its size per level), and memo slots.
PICKLE_MAX_DEPTH = 100
PICKLE_MAX_OBJECTS = 20_000_000
PICKLE_MAX_MEMO = 10_000_000
_MAX_NDIM = 32


def _int_tuple(x, what: str) -> tuple[int, ...]:
    if not isinstance(x, (tuple, list)) or not all(type(v) is int for v in x):
        raise pickle.UnpicklingError(f"tensor {what} is not a tuple of integers")
    return tuple(x)


def _rebuild_tensor(storage, offset, size, stride, *args):
    if not isinstance(storage, _Storage) or type(offset) is not int:
        raise pickle.UnpicklingError("a tensor is rebuilt from something that is not a storage and an offset")
    return _check_view(_TensorRef(storage, offset, _int_tuple(size, "size"), _int_tuple(stride, "stride")))


def _check_view(ref: _TensorRef) -> _TensorRef:
    """Refuse a view that reads outside its storage: negative offset, sizes or strides, shape and
    stride of different lengths, or a last element past the storage's end."""
    shape, stride, st = ref.shape, ref.stride, ref.storage
    if len(shape) != len(stride) or len(shape) > _MAX_NDIM:
        raise pickle.UnpicklingError(f"tensor of size {list(shape)} has strides {list(stride)}")
    if ref.offset < 0 or any(d < 0 for d in shape) or any(s < 0 for s in stride):
        raise pickle.UnpicklingError(f"tensor has a negative offset, size or stride (offset {ref.offset}, size "
                                     f"{list(shape)}, stride {list(stride)})")
    if math.prod(shape) and ref.offset + sum((d - 1) * s for d, s in zip(shape, stride, strict=True)) >= st.numel:
        raise pickle.UnpicklingError(f"tensor of size {list(shape)}, stride {list(stride)} at offset {ref.offset} "
                                     f"reads past the end of its storage of {st.numel} elements")
    return ref


def _rebuild_parameter(data, *args):
    return data


def _scan_pickle(reader, path: str) -> None:
    """Walk one pickle's opcodes (without running it) and refuse one nested deeper than
    PICKLE_MAX_DEPTH, that would build more than PICKLE_MAX_OBJECTS objects once shared
    references are counted as often as they are used, or that sets a memo slot past
    PICKLE_MAX_MEMO. Leaves `reader` where it was."""
    start = reader.tell()
    stack: list = []  # [depth, objects] per stack item; None for a mark
    memo: dict = {}
    in_place = {"APPEND", "APPENDS", "SETITEM", "SETITEMS", "ADDITEMS", "BUILD"}
    for op, arg, _ in pickletools.genops(reader):
        name = op.name
        if name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
            key = len(memo) if name == "MEMOIZE" else int(arg)
            if key > PICKLE_MAX_MEMO:
                raise pickle.UnpicklingError(f"pickle memo slot {key} is out of range (over {PICKLE_MAX_MEMO})")
            if not stack or stack[-1] is None:
                raise pickle.UnpicklingError("pickle memoizes with nothing on the stack")
            memo[key] = stack[-1]
            continue
        if name in ("GET", "BINGET", "LONG_BINGET"):
            if int(arg) not in memo:
                raise pickle.UnpicklingError(f"pickle reads memo slot {arg}, which was never set")
            stack.append(memo[int(arg)])
            continue
        if name == "MARK":
            stack.append(None)
            continue
        if name == "STOP":
            break
        popped = _pop(stack, op)
        if name == "DUP":
            stack.extend(popped * 2)
            continue
        if name in in_place:
            item, children = popped[0], popped[1:]
        else:
            item, children = [0, 1], popped
        if children:
            item[0] = max(item[0], 1 + max(c[0] for c in children))
            item[1] += sum(c[1] for c in children)
        if item[0] > PICKLE_MAX_DEPTH:
            raise pickle.UnpicklingError(f"pickle nests objects more than {PICKLE_MAX_DEPTH} deep")
        if item[1] > PICKLE_MAX_OBJECTS:
            raise pickle.UnpicklingError(f"pickle would build more than {PICKLE_MAX_OBJECTS} objects (shared "
                                         "references expanded): refused")
        if op.stack_after:
            stack.append(item)
    else:
        raise pickle.UnpicklingError("pickle data was truncated (no STOP)")
    reader.seek(start)


def _pop(stack: list, op) -> list:
    """Pop what `op` consumes: items up to the last mark where it takes a stack slice."""
    before = [s.name for s in op.stack_before]
    out: list = []
    if "mark" in before:
        while stack and stack[-1] is not None:
            out.append(stack.pop())
        if not stack:
            raise pickle.UnpicklingError(f"pickle opcode {op.name} without a mark")
        stack.pop()
        out.reverse()
        below = before.index("mark")
    else:
        below = len(before)
    if len(stack) < below or any(x is None for x in stack[len(stack) - below:]):
        raise pickle.UnpicklingError(f"pickle opcode {op.name} on too short a stack")
    head = stack[len(stack) - below:] if below else []
    del stack[len(stack) - below:]
    return head + out


class _MapReader:
    """A read-only file-like view of an mmap for the unpickler: reads past the end return what is
    left (never an allocation of the length a pickle claims)."""

    def __init__(self, buf):
        self.buf, self.pos = buf, 0

    def read(self, n: int = -1) -> bytes:
        end = len(self.buf) if n is None or n < 0 else min(len(self.buf), self.pos + n)
        data = self.buf[self.pos:end]
        self.pos = end
        return data

    def readline(self) -> bytes:
        end = self.buf.find(b"\n", self.pos)
        end = len(self.buf) if end < 0 else end + 1
        data = self.buf[self.pos:end]
        self.pos = end
        return data

    def tell(self) -> int:
        return self.pos

    def seek(self, pos: int, whence: int = 0) -> int:
        self.pos = pos if whence == 0 else self.pos + pos if whence == 1 else len(self.buf) + pos
        return self.pos


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
        raise pickle.UnpicklingError(f"refused to unpickle {printable(module)}.{printable(name)} (pass --trust to "
                                     "allow arbitrary objects)")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"a persistent id that is not a storage: {printable(repr(pid)[:80])}")
        _, storage_type, key, _location, numel = pid[:5]
        dtype = _TORCH_STORAGES.get(storage_type) if isinstance(storage_type, str) else None
        if dtype is None:
            raise pickle.UnpicklingError(f"unsupported storage type {printable(repr(storage_type)[:80])}")
        if type(numel) is not int or numel < 0 or not isinstance(key, (str, int)):
            raise pickle.UnpicklingError(f"storage {printable(repr(key)[:40])} has an invalid size {numel!r}")
        budget.check(numel * np.dtype(dtype).itemsize, f"storage '{printable(key)}'", self.path)
        return _Storage(str(key), np.dtype(dtype), numel)


def _unpickle(reader, path: str):
    """One restricted pickle from `reader`, scanned first (`_scan_pickle`)."""
    _scan_pickle(reader, path)
    return _RestrictedUnpickler(reader, path).load()


def _flatten_state(obj, path: str) -> dict[str, _TensorRef]:
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise UnsupportedError("the file holds no state dict (a dict of tensors)", path)
    out = {}
    for k, v in obj.items():
        if isinstance(v, _TensorRef):
            if not isinstance(k, (str, int)):
                raise ModelLoadError(f"a tensor is stored under a {type(k).__name__} key, not a name", path)
            _check_view_size(str(k), v, path)
            out[str(k)] = v
    return out


def _check_view_size(name: str, ref: _TensorRef, path: str) -> None:
    """A view's bytes against the budget, and against its storage's: zero strides can make a
    one-element storage a tensor of any size (refused over `_MAX_RATIO` times its storage)."""
    item = ref.storage.dtype.itemsize
    budget.check_shape(ref.shape, item, f"tensor '{printable(name)}'", path)
    nbytes, stored = math.prod(ref.shape) * item, ref.storage.numel * item
    if nbytes > max(_INFLATE_FREE, stored * _MAX_RATIO):
        raise ModelLoadError(f"tensor '{printable(name)}' of size {list(ref.shape)} repeats its storage of "
                             f"{ref.storage.numel} elements over {_MAX_RATIO} times (refused)", path)


def _tensor_loader(read_storage: Callable[[_Storage], np.ndarray], ref: _TensorRef):
    def load():
        flat = read_storage(ref.storage)
        if flat.size < ref.storage.numel:
            raise ModelLoadError(f"storage '{printable(ref.storage.key)}' holds {flat.size} elements, fewer than "
                                 f"the {ref.storage.numel} it declares (corrupt file)")
        _check_view(ref)
        if not math.prod(ref.shape):
            return np.zeros(ref.shape, flat.dtype)
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
        swap = _big_endian(z, prefix, path)
        state = _flatten_state(_unpickle(io.BytesIO(_zip_read(z, pkl, path)), path), path)
        for st in {r.storage.key: r.storage for r in state.values()}.values():
            info = _zip_member(z, f"{prefix}data/{st.key}", path, f"storage '{printable(st.key)}'")
            if info.file_size < st.numel * st.dtype.itemsize:
                raise ModelLoadError(f"storage '{printable(st.key)}' holds {info.file_size} bytes, fewer than the "
                                     f"{st.numel * st.dtype.itemsize} it declares (corrupt file)", path)

    archive = _OpenOnce(lambda: zipfile.ZipFile(path))

    def read_storage(st: _Storage) -> np.ndarray:
        raw = archive().read(f"{prefix}data/{st.key}")
        count = min(st.numel, len(raw) // st.dtype.itemsize)
        if swap:  # each element's bytes reversed, whatever the dtype (bfloat16 and float8 included)
            raw = np.frombuffer(raw, np.uint8, count * st.dtype.itemsize).reshape(count, st.dtype.itemsize)[:, ::-1]
            return np.ascontiguousarray(raw).view(st.dtype).reshape(count)
        return np.frombuffer(raw, dtype=st.dtype, count=count)

    return {k: StoredArray(r.shape, r.storage.dtype, _tensor_loader(read_storage, r)) for k, r in state.items()}


def _big_endian(z: zipfile.ZipFile, prefix: str, path: str) -> bool:
    """Whether the archive's storages are big-endian: PyTorch records the byte order of the machine
    that saved it in `byteorder` ("little" or "big"; absent before PyTorch 2.1: little)."""
    member = f"{prefix}byteorder"
    if member not in z.namelist():
        return False
    order = _zip_read(z, member, path)[:16].strip()
    if order not in (b"little", b"big"):
        raise ModelLoadError(f"byteorder record is '{printable(order.decode('latin-1'))}', not little or big", path)
    return order == b"big" and np.little_endian or order == b"little" and not np.little_endian


def _read_torch_legacy(path: str, trust: bool) -> dict[str, StoredArray]:
    with open(path, "rb") as fh:
        if os.fstat(fh.fileno()).st_size == 0:
            raise ModelLoadError("file is empty", path)
        buf = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    with buf:
        return _read_legacy_pickles(_MapReader(buf), len(buf), path, trust)


def _read_legacy_pickles(reader: _MapReader, size: int, path: str, trust: bool) -> dict[str, StoredArray]:
    if _unpickle(reader, path) != _LEGACY_MAGIC:
        raise ModelLoadError("not a PyTorch checkpoint (no zip archive, no legacy magic number)", path)
    _unpickle(reader, path)  # protocol version
    _unpickle(reader, path)  # sys info
    if trust:
        return _read_trusted(path)
    state = _flatten_state(_unpickle(reader, path), path)
    keys = _unpickle(reader, path)
    if not isinstance(keys, (list, tuple)):
        raise ModelLoadError("legacy checkpoint: the storage key list is not a list", path)
    offsets: dict[str, int] = {}
    storages = {r.storage.key: r.storage for r in state.values()}
    for key in keys:
        head = reader.read(8)
        if len(head) < 8:
            raise ModelLoadError("truncated PyTorch checkpoint", path)
        (numel,) = struct.unpack("<q", head)
        st = storages.get(str(key))
        itemsize = st.dtype.itemsize if st is not None else 4
        if numel < 0 or (st is not None and numel != st.numel):
            raise ModelLoadError(f"storage '{printable(key)}' has {numel} elements in the file, the pickle says "
                                 f"{st.numel if st is not None else 'nothing'} (corrupt file)", path)
        offsets[str(key)] = reader.tell()
        reader.seek(numel * itemsize, io.SEEK_CUR)
        if reader.tell() > size:
            raise ModelLoadError("truncated PyTorch checkpoint", path)
    missing = sorted(set(storages) - set(offsets))
    if missing:
        raise ModelLoadError(f"storage '{printable(missing[0])}' of a tensor is not in the file", path)

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
