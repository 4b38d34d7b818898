"""Weight-file formats as rows: one table (`FORMATS`) says, for each format, its name, the file
suffixes or first bytes (or folder contents) that mark it, the label its messages use and the
reader that opens it. Every decision about what a file is reads this table: `find_format`
(which reader), `is_weights_file` (does the weights row of the source table take it),
`label` (what messages call it) and `describe` (what an unknown file looks like).

One reader module per format: `safetensors` (files, folders, shard indexes), `pytorch` (torch
zip, legacy, `pytorch_model.bin` folders, torch.distributed.checkpoint folders), `npz`, `hdf5`
(Keras weights), `gguf_file`; `unpickler` is the restricted unpickler, alone for review;
`quantized` turns the quantized layouts of safetensors checkpoints into float tensors;
`layers` makes rows of the tensors.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass

from irtools import budget
from irtools.errors import IrtoolsError, ModelLoadError
from irtools.files import check_input

from . import gguf_file, hdf5, npz, pytorch, safetensors
from .common import RECORD_BYTES, StoredArray, WeightSet, checked_load, checkpoint_order, read_errors, writable_name


@dataclass(frozen=True)
class Format:
    """One weight-file format: how it is recognised and which reader opens it.

    A file is this format when `magic(first 64 bytes, path)` says so, else (no row's magic
    matching) when its lower-case name ends with one of `suffixes` (the longest match); a folder
    when `folder(path, names in it)` does. `reader` is `"module:function"` in this package, called as
    `function(path, trust)` where `trusts`, else `function(path)`."""

    name: str
    label: str
    reader: str
    suffixes: tuple[str, ...] = ()
    magic: Callable[[bytes, str], bool] | None = None
    folder: Callable[[str, list[str]], bool] | None = None
    trusts: bool = False

    def read(self, path: str, trust: bool) -> dict[str, StoredArray]:
        module, _, function = self.reader.partition(":")
        fn = getattr(importlib.import_module(f"{__name__}.{module}"), function)
        return fn(path, trust) if self.trusts else fn(path)


#: The formats, in the order they are tried (folders: the first row whose contents match).
FORMATS: tuple[Format, ...] = (
    Format("gguf", "GGUF file", "gguf_file:read", (".gguf",), lambda head, _: gguf_file.looks_like(head)),
    Format("safetensors-index", "safetensors shard index", "safetensors:read_index_file", (".safetensors.index.json",)),
    Format("safetensors", "safetensors file", "safetensors:read_file", (".safetensors",),
           lambda head, _: safetensors.looks_like(head)),
    Format("npz", "npz archive", "npz:read", (".npz",), npz.looks_like),
    Format("hdf5", "HDF5 file", "hdf5:read", (".weights.h5", *hdf5.SUFFIXES), lambda head, _: hdf5.looks_like(head)),
    Format("pytorch", "PyTorch checkpoint", "pytorch:read", pytorch.SUFFIXES, pytorch.looks_like, trusts=True),
    Format("dcp-folder", "torch.distributed.checkpoint folder", "pytorch:read_dcp", folder=pytorch.is_dcp_folder,
           trusts=True),
    Format("safetensors-folder", "safetensors folder", "safetensors:read_folder", folder=safetensors.is_folder),
    Format("pytorch-folder", "PyTorch checkpoint folder", "pytorch:read_folder", folder=pytorch.is_folder,
           trusts=True),
)

#: What irtools reads, for the message about a file it does not.
READS = ("ONNX (.onnx), safetensors (a file, a folder, a shard index), PyTorch checkpoints (.pt .pth .bin .ckpt, "
         "pytorch_model.bin folders, DeepSpeed ZeRO checkpoint folders), GGUF, .npz, Keras (.keras, .h5, .weights.h5), "
         ".pt2 programs")


def _head(path: str, n: int = 64) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read(n)
    except OSError:
        return b""


def find_format(path: str) -> Format | None:
    """The row of `FORMATS` a path is, or None."""
    if os.path.isdir(path):
        try:
            names = os.listdir(path)
        except OSError:
            return None
        return next((f for f in FORMATS if f.folder is not None and f.folder(path, names)), None)
    if os.path.isfile(path):  # first bytes that say what a file is win over its name (a GGUF saved as .bin)
        head = _head(path)
        found = next((f for f in FORMATS if f.magic is not None and f.magic(head, path)), None)
        if found is not None:
            return found
    lower = os.fspath(path).lower()
    by_suffix = [(len(s), f) for f in FORMATS for s in f.suffixes if lower.endswith(s)]
    return max(by_suffix, key=lambda x: x[0])[1] if by_suffix else None


def named_as(path: str) -> tuple[str, str] | None:
    """(suffix, label) of what a file's name says it is (`.safetensors`: "safetensors file", `.onnx`: "ONNX
    model"), by its longest known suffix; None for a name no format claims (`model.dat`)."""
    lower = os.fspath(path).lower()
    claims = [(s, f.label) for f in FORMATS for s in f.suffixes] + list(_OTHER_NAMES.items())
    found = [(s, what) for s, what in claims if lower.endswith(s)]
    return max(found, key=lambda x: len(x[0])) if found else None


#: Suffixes of the files other routes read, for the note on a file whose content is not what its name says.
_OTHER_NAMES = {".onnx": "ONNX model", ".keras": "Keras archive", ".pt2": ".pt2 program"}


def content_note(path: str, label: str) -> str | None:
    """The note for a file read as `label` (what its first bytes are) whose name says it is something else
    (a torch zip named `.safetensors`, a GGUF named `.bin`), else None."""
    claim = named_as(path) if os.path.isfile(path) else None
    if claim is None or claim[1] == label:
        return None
    return f"its name says {_a(claim[1])} ({claim[0]}) but the file holds {_a(label)}: read as what it holds"


def _a(label: str) -> str:
    return f"{'an' if label[:1] in 'aeiouHNOn' else 'a'} {label}"


def looks_like_onnx(head: bytes) -> bool:
    """A serialized ONNX ModelProto's first bytes: field 1 (ir_version, a one-byte varint) then the tag of one
    of the fields that follow it (producer_name ... graph, opset_import, metadata_props): what no pickle, zip,
    safetensors header, GGUF or HDF5 file starts with."""
    return len(head) >= 3 and head[0] == 0x08 and 1 <= head[1] < 0x80 and head[2] in _ONNX_NEXT


_ONNX_NEXT = (0x12, 0x1A, 0x22, 0x28, 0x32, 0x3A, 0x42, 0x72)


def is_weights_file(path) -> bool:
    """Whether `path` is a weights-only source: a format of `FORMATS` (a Keras `.h5` only when it
    holds weights alone), or a file whose first bytes say it is a container irtools recognises
    but does not read (a zip, a pickle), which then gets `describe`'s one-line error. A file named
    as a weights file (`.pt`, `.safetensors`) whose first bytes are an ONNX model's is not: the ONNX
    row reads it (before, the pickle reader said `opcode b'\\x08' unknown`)."""
    if not isinstance(path, str):
        return False
    fmt = find_format(path)
    if fmt is not None and fmt.folder is None and os.path.isfile(path) and looks_like_onnx(_head(path)) \
            and not (fmt.magic is not None and fmt.magic(_head(path), path)):
        return False
    if fmt is not None and fmt.name == "hdf5":
        lower = path.lower()
        return lower.endswith(".weights.h5") or (os.path.isfile(path) and not hdf5.h5_is_full_model(path))
    if fmt is not None:
        return True
    return os.path.isfile(path) and _looks(_head(path)) in _CLAIMED


#: What a file's first bytes may say that no ONNX protobuf starts with (so no later row would read it).
_CLAIMED = ("a zip archive", "a pickle", "JSON text", "a gzip stream", "a NumPy .npy array")


def label(path: str) -> str:
    """What messages call the file at `path` ("safetensors file", ...)."""
    fmt = find_format(path)
    return fmt.label if fmt is not None else "weights file"


def _looks(head: bytes) -> str | None:
    if head.startswith(b"GGUF"):
        return "a GGUF file"
    if safetensors.looks_like(head):
        return "a safetensors file"
    if head.startswith(hdf5.MAGIC):
        return "an HDF5 file"
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "a zip archive"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "a pickle"
    if head.startswith(b"\x93NUMPY"):
        return "a NumPy .npy array"
    if head.startswith(b"\x1f\x8b"):
        return "a gzip stream"
    if head.lstrip()[:1] in (b"{", b"["):
        return "JSON text"
    if head[:1] == b"\x08":
        return "protobuf (but no ONNX model)"
    return None


def describe(path: str) -> str:
    """One line for a file irtools does not read: what its first bytes say it is, and what irtools reads."""
    looks = _looks(_head(path))
    what = f"looks like {looks}" if looks else "is no format irtools recognises"
    return f"this file {what}; irtools reads {READS}"


def read_weights(path: str, trust: bool = False, *, dequantize: bool = True) -> WeightSet:
    """The tensors of a weights file by name (lazy), refusing anything that needs arbitrary code.

    A tensor's bytes are read when its `load()` is called, long after this returns: the file may
    be corrupt there (a bad CRC, a deflate stream or HDF5 chunk that does not decode, a file cut
    short since), so each `load()` reports what goes wrong the way this does (`read_errors`).
    Quantized layouts (FP8 with scales, MXFP4, GPTQ/AWQ, bitsandbytes, MLX) are dequantized on
    `load()` (`quantized.dequantized`) unless `dequantize=False`. The result's `notes`,
    `skipped`, `auxiliary` and `metadata` say what the reader found on the way."""
    if not os.path.lexists(path):
        raise ModelLoadError("no such file", path)
    try:
        check_input(path, directory=True)
    except IrtoolsError as exc:
        raise ModelLoadError(exc.message, path) from None
    fmt = find_format(path)
    if fmt is None:
        raise ModelLoadError(describe(path) if os.path.isfile(path) else
                             "a folder with no weights file irtools reads (safetensors, pytorch_model.bin, "
                             "torch.distributed.checkpoint, DeepSpeed ZeRO)", path)
    with read_errors(path, fmt.label):
        tensors = fmt.read(path, trust)
    budget.check(len(tensors) * RECORD_BYTES, f"the records of the file's {len(tensors)} tensors", path)
    out = WeightSet({writable_name(name): StoredArray(a.shape, a.dtype, checked_load(a.load, path, fmt.label),
                                                      a.storage)
                     for name, a in tensors.items()}).take(tensors)
    if len(out) != len(tensors):
        raise ModelLoadError("two tensor names differ only in characters that are not valid text", path)
    out.metadata.setdefault("format", fmt.name)
    note = content_note(path, fmt.label)
    if note is not None:
        out.notes.append(note)
    if dequantize:
        from .quantized import dequantized  # noqa: PLC0415

        with read_errors(path, fmt.label):
            out = dequantized(out, path)
    if not out and not out.skipped:
        raise ModelLoadError(f"no weights found: the {fmt.label} holds no tensor", path)
    return out


__all__ = ["FORMATS", "Format", "READS", "StoredArray", "WeightSet", "checkpoint_order", "describe", "find_format",
           "is_weights_file", "label", "read_weights"]
