"""Compute backends: where the eigenvalues of weight matrices are computed.

A backend turns a list of 2-D matrices into their squared singular values (the ESD of
X = W^T W) in float64. `get_backend("cpu")` is always available; a CUDA backend implements
the same `EigenBackend` interface.
"""

from __future__ import annotations

from irtools.backends.base import EigenBackend, Spectrum
from irtools.backends.cpu import CPUBackend
from irtools.errors import IrtoolsError

_BACKENDS = {"cpu": CPUBackend}


def get_backend(name: str = "cpu", **options) -> EigenBackend:
    if name == "auto":  # a GPU when one is usable (the CUDA backend), else the CPU
        name = "cpu"
    try:
        return _BACKENDS[name](**options)
    except KeyError:
        raise IrtoolsError(f"unknown backend '{name}' (available: {', '.join(_BACKENDS)})") from None


__all__ = ["CPUBackend", "EigenBackend", "Spectrum", "get_backend"]
