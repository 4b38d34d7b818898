"""Errors irtools reports to its users.

Every error a user can cause (a missing file, a corrupt model, an unknown shape) is an
`IrtoolsError`; the CLI prints it on one line and exits with code 2. Names in a message come
from the model file, so `str()` of an error escapes control characters (newlines, terminal
escape sequences): `printable` is the one escaping rule, used by tables too.
"""

from __future__ import annotations

import os
import re

def _escape(c: str) -> str:
    return c if c == " " or c.isprintable() else c.encode("unicode_escape").decode("ascii")


def printable(text) -> str:
    """`text` with every character that is not printable written as an escape (`\\n`, `\\x1b`, `\\u200f`), so
    a name from a model file prints on one line, sends nothing to the terminal and shows what it holds.
    Not printable, by Unicode category (`str.isprintable`): controls (C0, C1, DEL), format characters (bidi
    marks, embeddings, overrides and isolates, zero-width spaces and joiners, the BOM), line and paragraph
    separators, lone surrogates, private-use and unassigned code points, and every space but the ASCII one
    (a no-break space looks like a space but is not one)."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(map(_escape, text))


#: Python's refusal of a decimal number past its digit limit (a JSON integer, a pickle's INT, a `.npy` header's
#: literal): its advice, `use sys.set_int_max_str_digits()`, is for a programmer, not for the user of a file.
_DIGITS = re.compile(r"Exceeds the limit \((\d+) digits\) for integer string conversion(?:: value has (\d+) digits)?"
                     r"(?:; use sys\.set_int_max_str_digits\(\)(?: to increase the limit)?(?: - Consider hexadecimal "
                     r"for huge integer literals to avoid decimal conversion limits\.?)?(?: \(<[^>]*>, line \d+\))?)?")


def own_words(text) -> str:
    """`text` with Python's wording of a number past its digit limit in irtools' own: `a number of 5000
    digits, over the 4300 irtools reads`. Anything else unchanged."""
    text = str(text)
    m = _DIGITS.search(text)
    if m is None:
        return text
    said = f"a number of {m[2]} digits" if m[2] else "a number of too many digits"
    return f"{text[:m.start()]}{said}, over the {m[1]} irtools reads{text[m.end():]}"


def json_problem(exc: BaseException) -> str:
    """Why `json.loads` refused a file's bytes, in a few words for a one-line error (`not JSON (...)`)."""
    import json  # noqa: PLC0415

    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} at byte {exc.pos}"
    if isinstance(exc, UnicodeDecodeError):
        return f"not {exc.encoding} text at byte {exc.start}"
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    text = own_words(exc)
    return printable(text.splitlines()[0])[:200] if text.strip() else type(exc).__name__


class IrtoolsError(Exception):
    """A problem with the user's input, reported as one line."""

    def __init__(self, message: str, path: str | os.PathLike | None = None):
        super().__init__(message)
        self.message = message
        self.path = None if path is None else os.fspath(path)

    def __str__(self) -> str:
        text = f"{self.path}: {self.message}" if self.path else self.message
        return printable(own_words(text))  # a library's wording of a too-long number, quoted in a message


class ModelLoadError(IrtoolsError):
    """The model file cannot be read as a valid ONNX model."""


class ShapeError(IrtoolsError):
    """A static shape that an analysis needs is unknown or contradictory."""


class UnsupportedError(IrtoolsError):
    """The model uses something irtools does not handle (op, dtype, layout)."""
