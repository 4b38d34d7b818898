"""The one GGUF metadata loop that a file can make long: the strings of a metadata array.

GGUF strings are length-prefixed, so where the n-th string of an array starts depends on every
length before it and the scan cannot be one numpy expression. irtools keeps the first few strings
of an array (gguf_file._KEEP_ITEMS) and needs only the count of the rest (a tokenizer's size), but
it must walk them to find the bytes after the array. A real vocabulary is 32k-262k strings
(a Python loop: well under 0.1 s); a hostile file of 10^8 empty strings (800 MB) took minutes item
by item. `skip_strings` walks them in compiled code (about 1 ns a string), bounds-checked at
every length, so the time is proportional to the file's bytes and small.
"""

from __future__ import annotations

import struct

import numpy as np

#: Strings walked by the Python loop before the compiled one takes over (per file: a real
#: tokenizer's arrays stay in Python and never pay numba's import; a file of many arrays does not
#: stay in Python by keeping each array short).
PY_STRINGS = 1 << 19


def skip_strings_py(buf, pos: int, count: int, big: bool) -> int:
    """The position after `count` length-prefixed strings from `pos`, or -1 where one runs past the end."""
    unpack = struct.Struct(">Q" if big else "<Q").unpack_from
    size = len(buf)
    for _ in range(count):
        if pos > size - 8:
            return -1
        pos += 8 + unpack(buf, pos)[0]
    return pos if pos <= size else -1


def skip_strings(buf, pos: int, count: int, big: bool) -> int:
    """`skip_strings_py` in compiled code (numba, cached on disk by irtools._jit)."""
    return int(_kernel()(np.frombuffer(buf, np.uint8), np.int64(pos), np.int64(count), bool(big)))


_KERNEL = None


def _kernel():
    global _KERNEL
    if _KERNEL is None:
        from irtools._jit import jit  # numba only for files that need it

        _KERNEL = jit(nogil=True)(_walk)
    return _KERNEL


def _walk(buf, pos, count, big):  # pragma: no cover  (compiled by numba; its Python twin is skip_strings_py)
    size = buf.shape[0]
    eight = np.uint64(8)
    for _ in range(count):
        if pos > size - 8:
            return -1
        n = np.uint64(0)
        for k in range(8):
            n = (n << eight) | np.uint64(buf[pos + (k if big else 7 - k)])
        if n > np.uint64(size - pos - 8):
            return -1
        pos += 8 + np.int64(n)
    return pos
