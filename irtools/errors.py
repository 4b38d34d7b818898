"""Errors irtools reports to its users.

Every error a user can cause (a missing file, a corrupt model, an unknown shape) is an
`IrtoolsError`; the CLI prints it on one line and exits with code 2.
"""

from __future__ import annotations

import os


class IrtoolsError(Exception):
    """A problem with the user's input, reported as one line."""

    def __init__(self, message: str, path: str | os.PathLike | None = None):
        super().__init__(message)
        self.message = message
        self.path = None if path is None else os.fspath(path)

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ModelLoadError(IrtoolsError):
    """The model file cannot be read as a valid ONNX model."""


class ShapeError(IrtoolsError):
    """A static shape that an analysis needs is unknown or contradictory."""


class UnsupportedError(IrtoolsError):
    """The model uses something irtools does not handle (op, dtype, layout)."""
