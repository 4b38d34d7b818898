"""Safetensors: one file, a folder of them (sharded with `model.safetensors.index.json`, or not),
or the index file itself. Read from the JSON header and memory-mapped; every header entry is
checked (dtype, shape, offsets inside the file, bytes equal to dtype x shape, no overlaps) before a
tensor is believed; shards must lie in the model's folder (`irtools.files.model_member`)."""

from __future__ import annotations

import json
import math
import os
import struct

import ml_dtypes
import numpy as np

from irtools import budget
from irtools.errors import ModelLoadError, UnsupportedError, json_problem, printable
from irtools.files import model_member

from .common import RECORD_BYTES, StoredArray, checkpoint_order, ints

DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2, "I64": np.int64, "I32": np.int32,
    "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_, "U16": np.uint16, "U32": np.uint32,
    "U64": np.uint64, "F8_E8M0": ml_dtypes.float8_e8m0fnu,
}
#: safetensors headers are at most 100 MB (the format's own limit).
MAX_HEADER = 100_000_000
INDEX = "model.safetensors.index.json"


def looks_like(head: bytes) -> bool:
    """A safetensors file's first bytes: a little-endian header length, then a JSON object."""
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return 2 <= n <= MAX_HEADER and head[8:9] == b"{"


def read_file(path: str) -> dict[str, StoredArray]:
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise ModelLoadError("truncated safetensors file (no header length)", path)
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            raise ModelLoadError(f"safetensors header length {n} is longer than the file", path)
        if n > MAX_HEADER:
            raise ModelLoadError(f"safetensors header of {n} bytes is over the format's 100 MB limit", path)
        raw = fh.read(n)
        # every record costs ~1.6 KB to read and ~5 KB through an analysis: a 67 MB header of 10^6
        # empty tensors took 1.5 GB; its objects (a brace each) are budgeted before the JSON is parsed
        budget.check(raw.count(b"{") * RECORD_BYTES, "the safetensors header's tensor records", path)
        header = _header(raw, path)
    base = 8 + n
    out = {}
    spans = []
    for name, info in header.items():
        dtype, shape, (start, end) = _entry(name, info, path)
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
        if start1 > end0:  # the format's rule, which safetensors enforces: no holes (no polyglot files)
            raise ModelLoadError(f"{start1 - end0} bytes between tensors '{printable(a)}' and '{printable(b)}' "
                                 "belong to no tensor (safetensors refuses a file with holes)", path)
    first, last = (spans[0][0], spans[-1][1]) if spans else (0, 0)
    if first or base + last != size:
        raise ModelLoadError(f"{first or size - base - last} bytes of the data {'before' if first else 'after'} "
                             "the tensors belong to no tensor (safetensors refuses a file with holes)", path)
    return {name: out[name] for name in checkpoint_order([name for _, _, name in spans])}


def _header(raw: bytes, path: str) -> dict:
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_unique_keys)
    except _DuplicateKey as exc:
        raise ModelLoadError(f"safetensors header names {exc.args[0]} twice (which one is meant is a guess: "
                             "refused)", path) from None
    except UnicodeDecodeError:
        raise ModelLoadError("safetensors header is not UTF-8 text (corrupt file)", path) from None
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"safetensors header is not JSON ({exc.msg} at byte {exc.pos})", path) from None
    except RecursionError:
        raise ModelLoadError("safetensors header is JSON nested too deeply (corrupt file)", path) from None
    except ValueError as exc:  # a number of 5000 digits: Python's own advice is no message for a file's user
        raise ModelLoadError(f"safetensors header is not readable JSON ({json_problem(exc)})", path) from None
    if not isinstance(header, dict):
        raise ModelLoadError(f"safetensors header is a JSON {type(header).__name__}, not an object", path)
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise ModelLoadError("safetensors header's __metadata__ is not an object of strings (safetensors refuses "
                             "the file)", path)
    return header


class _DuplicateKey(Exception):
    pass


def _unique_keys(pairs: list) -> dict:
    """A JSON object's pairs as a dict, refused where a key comes twice: `json` keeps the last,
    safetensors (serde) the last of a tensor but refuses a field given twice; a file saying two
    things is read as neither."""
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set = set()
        key = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise _DuplicateKey(f"'{printable(key)}'")
    return out


def _entry(name: str, info, path: str):
    """(numpy dtype, shape, (start, end)) of one header entry, every field checked."""
    label = f"tensor '{printable(name)}'"
    if not isinstance(info, dict):
        raise ModelLoadError(f"{label}: header entry is a {type(info).__name__}, not an object", path)
    code, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if not isinstance(code, str):
        raise ModelLoadError(f"{label}: dtype is missing or not a string", path)
    dtype = DTYPES.get(code)
    if dtype is None:
        raise UnsupportedError(f"{label} has unsupported dtype {printable(code)}", path)
    if not ints(shape):
        raise ModelLoadError(f"{label}: shape is not a list of non-negative integers", path)
    if not ints(offsets) or len(offsets) != 2 or offsets[0] > offsets[1]:
        raise ModelLoadError(f"{label}: data_offsets is not [start, end] with 0 <= start <= end", path)
    return dtype, tuple(shape), tuple(offsets)


def _memmap_loader(path, dtype, offset, shape):
    def load():
        count = math.prod(shape)
        if count == 0:
            return np.zeros(shape, dtype)
        # read, not mapped: a mapped copy would count the file's pages in resident memory on top of
        # the array (a 128256 x 2048 bf16 embedding pair: 1.65 GB peak mapped, 1.32 GB read)
        with open(path, "rb") as fh:
            fh.seek(offset)
            got = np.fromfile(fh, dtype=dtype, count=count)
        if got.size != count:
            raise ModelLoadError(f"the file ends inside a tensor ({got.size} of {count} values; truncated file)", path)
        return got.reshape(shape)

    return load


def is_folder(path: str, names: list[str]) -> bool:
    return any(f.endswith(".safetensors") for f in names)


def read_folder(path: str) -> dict[str, StoredArray]:
    """Every shard of a folder: the index's (`model.safetensors.index.json`) where there is one,
    else every `*.safetensors` in it."""
    index = os.path.join(path, INDEX)
    weight_map = read_index(path, model_member(path, INDEX, "shard index", ModelLoadError)) \
        if os.path.lexists(index) else None
    return _read_shards(path, weight_map)


def read_index_file(path: str) -> dict[str, StoredArray]:
    """`model.safetensors.index.json` (or any `*.safetensors.index.json`) given directly: the sharded
    set it names, in its folder."""
    folder = os.path.dirname(os.path.abspath(path))
    return _read_shards(folder, read_index(folder, path), origin=path)


def _read_shards(path: str, weight_map: dict[str, str] | None, origin: str | None = None) -> dict[str, StoredArray]:
    files = sorted(set(weight_map.values())) if weight_map is not None else \
        sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
    out: dict[str, StoredArray] = {}
    where: dict[str, str] = {}
    label = origin or path
    for f in files:
        full = model_member(path, f, "shard", ModelLoadError)
        for name, array in read_file(full).items():
            if name in out:
                raise ModelLoadError(f"tensor '{printable(name)}' is in two shards ('{printable(where[name])}' and "
                                     f"'{printable(f)}')", label)
            out[name], where[name] = array, f
    for name, f in (weight_map or {}).items():
        if where.get(name) != f:
            raise ModelLoadError(f"the index puts tensor '{printable(name)}' in shard '{printable(f)}', which does "
                                 "not hold it", label)
    return {name: out[name] for name in checkpoint_order(list(weight_map) if weight_map is not None else list(out))}


def read_index(path: str, index: str) -> dict[str, str]:
    """The `weight_map` of a shard index: {tensor name: shard file name}."""
    name = os.path.basename(index)
    if os.path.getsize(index) > MAX_HEADER:
        raise ModelLoadError(f"{name} is over 100 MB", path)
    with open(index, "rb") as fh:
        raw = fh.read()
    try:
        data = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # not UTF-8, not JSON, a number past Python's digit limit
        raise ModelLoadError(f"{name} is not JSON ({json_problem(exc)})", path) from None
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                   for k, v in weight_map.items()):
        raise ModelLoadError(f"{name} has no weight_map of tensor names to shard files", path)
    return weight_map
