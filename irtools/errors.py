"""Errors irtools reports to its users.

Every error a user can cause (a missing file, a corrupt model, an unknown shape) is an
`IrtoolsError`; the CLI prints it on one line and exits with code 2. Names in a message come
from the model file, so `str()` of an error escapes control characters (newlines, terminal
escape sequences): `printable` is the one escaping rule, used by tables too.
"""

from __future__ import annotations

import os
import re

#: C0 and C1 control characters, DEL, the Unicode line/paragraph separators, bidi controls and lone
#: surrogates (which no terminal encoding can write).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def printable(text) -> str:
    """`text` with every control character written as an escape (`\\n`, `\\x1b`, `\\u2028`), so a
    name from a model file prints on one line and sends nothing to the terminal."""
    text = str(text)
    if not _CONTROL.search(text):
        return text
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


class IrtoolsError(Exception):
    """A problem with the user's input, reported as one line."""

    def __init__(self, message: str, path: str | os.PathLike | None = None):
        super().__init__(message)
        self.message = message
        self.path = None if path is None else os.fspath(path)

    def __str__(self) -> str:
        text = f"{self.path}: {self.message}" if self.path else self.message
        return printable(text)


class ModelLoadError(IrtoolsError):
    """The model file cannot be read as a valid ONNX model."""


class ShapeError(IrtoolsError):
    """A static shape that an analysis needs is unknown or contradictory."""


class UnsupportedError(IrtoolsError):
    """The model uses something irtools does not handle (op, dtype, layout)."""
