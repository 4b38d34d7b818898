"""NumPy `.npz` archives: each `.npy` member a tensor, its header parsed without pickle (object
arrays refused), its size checked against the memory budget and the zip's compression ratio.

numpy parses a member's header (a Python dict literal) with `ast.literal_eval`, which warns about an escape
Python does not know (`{'\\q': ...}`: a DeprecationWarning, a SyntaxWarning from Python 3.12 on, printed by
default) as it compiles the file's bytes: both header reads are quiet (`_quiet`), so a file cannot add a second
line beside irtools' one-line error or its output."""

from __future__ import annotations

import contextlib
import math
import warnings
import zipfile

import numpy as np

from irtools import budget
from irtools.errors import ModelLoadError, UnsupportedError, own_words, printable

from .common import OpenOnce, StoredArray, zip_archive, zip_member


def looks_like(head: bytes, path: str) -> bool:
    """An npz from its content: a zip whose entries (the first 64) are all `.npy` arrays (`np.savez`'s
    names), whatever the file is called."""
    if not head.startswith(b"PK\x03\x04"):
        return False
    try:
        with zipfile.ZipFile(path) as z:
            names = [n for n in z.namelist()[:64] if not n.endswith("/")]
    except (zipfile.BadZipFile, OSError, ValueError):
        return False
    return bool(names) and all(n.endswith(".npy") for n in names)


def read(path: str) -> dict[str, StoredArray]:
    out = {}
    archive = OpenOnce(lambda: zipfile.ZipFile(path))
    with zipfile.ZipFile(path) as z:
        zip_archive(z, path)
        for member in z.namelist():
            if member.endswith("/"):
                continue
            name = member[:-4] if member.endswith(".npy") else member
            if name in out:  # `a` and `a.npy`: both numpy's key `a`; one was dropped without a word
                raise ModelLoadError(f"npz members '{printable(name)}' and '{printable(name)}.npy' are both tensor "
                                     f"'{printable(name)}' (which one is meant is a guess: refused)", path)
            info = zip_member(z, member, path, f"npz member '{printable(name)}'")
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
        with _quiet():
            shape, _, dtype = reader(fh)
    except Exception as exc:  # numpy parses the header with tokenize/ast: any of their errors means corrupt
        cause = exc.__cause__ if own_words(exc.__cause__) != str(exc.__cause__) else exc  # numpy quotes the header
        raise ModelLoadError(f"npz member '{printable(name)}' is not a readable .npy array "
                             f"({printable(own_words(cause) or type(cause).__name__)[:200]})", path) from None
    if dtype.hasobject:
        raise UnsupportedError(f"npz member '{printable(name)}' holds Python objects (a pickle): refused", path)
    return tuple(int(d) for d in shape), dtype, fh.tell()


def _npz_loader(archive: OpenOnce, member: str):
    def load():
        with archive().open(member) as fh, _quiet():
            return np.lib.format.read_array(fh, allow_pickle=False)

    return load


@contextlib.contextmanager
def _quiet():
    """No warning about the escapes of a header's text (see the module docstring)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", SyntaxWarning)
        yield
