"""Compute backends: where the eigenvalues of weight matrices are computed.

A backend turns a list of 2-D matrices into their squared singular values (the ESD of
X = W^T W) in float64. `get_backend("cpu")` is always available; `"cuda"` (every visible GPU)
and `"cuda:N"` are the CUDA backend (`irtools.backends.cuda`, PyTorch imported only then), with
the same numbers; `"auto"` is the CUDA backend when a GPU is usable, else the CPU.
"""

from __future__ import annotations

from irtools.backends.base import EigenBackend, Spectrum
from irtools.backends.cpu import CPUBackend
from irtools.errors import IrtoolsError

_BACKENDS = {"cpu": CPUBackend}


def get_backend(name: str = "cpu", **options) -> EigenBackend:
    if name == "auto":  # a GPU when one is usable (the CUDA backend), else the CPU, silently
        from irtools.backends.cuda import usable

        name = "cuda" if usable() else "cpu"
    if name == "cuda" or name.startswith("cuda:"):
        from irtools.backends.cuda import CUDABackend

        return CUDABackend(device=name, **options)
    try:
        return _BACKENDS[name](**options)
    except KeyError:
        raise IrtoolsError(f"unknown device '{name}' (use auto, cpu, cuda or cuda:N)") from None


__all__ = ["CPUBackend", "EigenBackend", "Spectrum", "get_backend"]
