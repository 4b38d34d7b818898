"""What every weight-file reader shares: the lazy tensor (`StoredArray`), one-line errors for
what a corrupt file makes a low-level reader raise, zip-entry checks against the memory budget
and zip bombs, the one-handle-per-file opener, and the forward order of stored names."""

from __future__ import annotations

import contextlib
import lzma
import pickle
import struct
import threading
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from irtools import budget
from irtools.errors import IrtoolsError, ModelLoadError, own_words, printable

#: A compressed zip entry, npz member or HDF5 dataset may inflate to at most this many times its
#: stored size once it is over `INFLATE_FREE` bytes (weights compress 1-10x; zip bombs ~1000x).
MAX_RATIO = 256
INFLATE_FREE = 16 << 20


def expands_too_far(declared: float, stored: float) -> bool:
    """Whether `declared` bytes from `stored` bytes is a bomb: past `INFLATE_FREE` and over `MAX_RATIO`x. The one
    rule for every container, per member and for the members of a file together (many members each under the
    free amount are a bomb in all): zip entries, npz members, HDF5 datasets (standalone and in `.keras`)."""
    return declared > max(INFLATE_FREE, stored * MAX_RATIO)


#: Memory one tensor of a weights file may cost as a record, read and analysed (measured ~5 KB a
#: tensor: 10^6 empty tensors were 1.5 GB from a 67 MB file), budgeted per file before the analysis.
RECORD_BYTES = 6 << 10


@dataclass(slots=True)
class StoredArray:
    """A tensor in a weights file: shape and dtype now, values on `load()`. `storage` names the
    stored format of a tensor `load()` dequantizes ("Q4_0", "F8_E4M3 block 128x128", "GPTQ int4"):
    None where the values are read as stored."""

    shape: tuple[int, ...]
    dtype: np.dtype
    load: Callable[[], np.ndarray]
    storage: str | None = None


class WeightSet(dict):
    """{name: StoredArray}, with what the reader found out on the way: `notes` for the user (which
    entry of a checkpoint held the weights), `skipped` tensors that cannot be analysed (dicts with
    name, parameter, op_type, reason), `auxiliary` {tensor: the tensor it belongs to} for the
    scales and zero points a dequantization consumed, `metadata` about the file as a whole."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.notes: list[str] = []
        self.skipped: list[dict] = []
        self.auxiliary: dict[str, str] = {}
        self.metadata: dict = {}

    def take(self, other) -> WeightSet:
        """This set with `other`'s notes, skipped, auxiliary and metadata added."""
        self.notes += list(getattr(other, "notes", ()))
        self.skipped += list(getattr(other, "skipped", ()))
        self.auxiliary.update(getattr(other, "auxiliary", {}))
        self.metadata.update(getattr(other, "metadata", {}))
        return self


#: Low-level exceptions a corrupt file raises in the readers (pickle, zipfile and its
#: decompressors, numpy's header parser, json, h5py's OSError handled below).
CORRUPT = (pickle.UnpicklingError, EOFError, ValueError, KeyError, struct.error, zipfile.BadZipFile,
           zipfile.LargeZipFile, NotImplementedError, TypeError, AttributeError, IndexError, OverflowError,
           RecursionError, UnicodeDecodeError, zlib.error, lzma.LZMAError, RuntimeError)

#: What a low-level exception means in a weights file, for its one-line error.
CAUSES = {pickle.UnpicklingError: "refused pickle", EOFError: "truncated", struct.error: "truncated",
          zipfile.BadZipFile: "corrupt zip archive", UnicodeDecodeError: "text that does not decode",
          RecursionError: "nested too deeply"}


@contextlib.contextmanager
def read_errors(path: str, kind: str):
    """Turn what a corrupt file makes a reader raise into one `ModelLoadError` line naming `kind`."""
    try:
        yield
    except IrtoolsError:
        raise
    except CORRUPT as exc:
        detail = printable(own_words(str(exc).splitlines()[0]) if str(exc) else type(exc).__name__)
        if isinstance(exc, UnicodeDecodeError):  # the bytes and where, not the codec's own wording
            bad = exc.object[exc.start:exc.start + 4] if isinstance(exc.object, (bytes, bytearray)) else b""
            detail = f"not {exc.encoding}: bytes {bad.hex(' ')} at position {exc.start} of a string"
        raise ModelLoadError(f"not a readable {kind} ({CAUSES.get(type(exc), 'corrupt')}: {detail[:200]})",
                             path) from None
    except OSError as exc:
        raise ModelLoadError(f"cannot read the file: {printable(exc.strerror or exc)[:200]}", path) from None


def checked_load(load: Callable[[], np.ndarray], path: str, kind: str) -> Callable[[], np.ndarray]:
    """`load` reporting what goes wrong later (a bad CRC, a file cut short since) like the first read."""
    def checked():
        with read_errors(path, kind):
            return load()

    return checked


def writable_name(name) -> str:
    """A tensor name as text every output can hold: JSON and pickle strings may carry lone
    surrogates (`"\\ud800"`), which no UTF-8 file (CSV, HTML, Parquet) can write; they are kept as
    their escapes."""
    name = str(name)
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return name.encode("utf-8", "backslashreplace").decode("utf-8")
    return name


def ints(x) -> bool:
    """A list of non-negative ints (no bools)."""
    return isinstance(x, list) and all(type(v) is int and v >= 0 for v in x)


# -- zip entries ------------------------------------------------------------------------------
def zip_member(z: zipfile.ZipFile, member: str, path: str, what: str | None = None) -> zipfile.ZipInfo:
    """The entry `member` once its inflated size is within the memory budget and its compression
    ratio is not a zip bomb's."""
    try:
        info = z.getinfo(member)
    except KeyError:
        raise ModelLoadError(f"zip entry '{printable(member)}' is missing", path) from None
    what = what or f"zip entry '{printable(member)}'"
    if info.compress_type != zipfile.ZIP_STORED and expands_too_far(info.file_size, info.compress_size):
        raise ModelLoadError(f"{what} inflates {info.compress_size} bytes to {info.file_size} (over "
                             f"{MAX_RATIO}x: refused as a zip bomb)", path)
    budget.check(info.file_size, what, path)
    return info


def unique_entries(z: zipfile.ZipFile, path: str) -> list[zipfile.ZipInfo]:
    """`z`'s entries once no two share a name: zipfile reads the last entry of a name and other tools
    (Keras' extraction, unzip) the first, so one of the two was dropped without a word. For every
    reader of a zip (npz, torch zips, `.keras` archives)."""
    infos = z.infolist()
    if len({i.filename for i in infos}) != len(infos):
        seen: set[str] = set()
        twice = next(i.filename for i in infos if i.filename in seen or seen.add(i.filename))
        raise ModelLoadError(f"the zip holds two entries named '{printable(twice)}' (which one is meant is a guess: "
                             "refused)", path)
    return infos


def zip_archive(z: zipfile.ZipFile, path: str) -> zipfile.ZipFile:
    """`z` once its entries as a whole are no zip bomb: their stored bytes must fit in the file
    (entries whose bytes overlap repeat one file's bytes as many tensors), and what they inflate
    to in all within `MAX_RATIO` times the file (past `INFLATE_FREE`: many entries each just under
    the free amount are a bomb together); and once no two entries share a name (zipfile reads the
    last of them, so one tensor of the two was dropped without a word)."""
    import os  # noqa: PLC0415

    infos = unique_entries(z, path)
    size = os.path.getsize(path)
    stored = sum(i.compress_size for i in infos)
    if stored > size:
        raise ModelLoadError(f"the zip's {len(infos)} entries hold {stored} bytes in a file of {size} (entries that "
                             "overlap: refused as a zip bomb)", path)
    total = sum(i.file_size for i in infos)
    if expands_too_far(total, size):
        raise ModelLoadError(f"the zip's {len(infos)} entries inflate {size} bytes to {total} in all (over "
                             f"{MAX_RATIO}x: refused as a zip bomb)", path)
    return z


def zip_read(z: zipfile.ZipFile, member: str, path: str, what: str | None = None) -> bytes:
    zip_member(z, member, path, what)
    return z.read(member)


class OpenOnce:
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


# -- the order of rows --------------------------------------------------------------------------
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
    return [(0, int(part), "") if part.isascii() and part.isdigit() and len(part) <= 1000 else  # '²' is a digit
            (1, _FORWARD_ORDER[part], part) if part in _FORWARD_ORDER else
            (3, _LAST[part], part) if part in _LAST else (2, 0, part) for part in name.split(".")]


def checkpoint_order(names: list[str]) -> list[str]:
    """The names in the checkpoint's own order; names stored sorted (no order kept) in forward order."""
    return sorted(names, key=_forward_key) if names == sorted(names) else names
