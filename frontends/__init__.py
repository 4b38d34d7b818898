"""Frontends: one module per source framework, each turning a model into the ONNX-derived IR.

`onnx_file` reads ONNX files, `weights_file` weights-only files (safetensors, PyTorch state
dicts, npz, Keras HDF5 weights), `torch` exports PyTorch modules, `keras` converts Keras models
and `jax` Flax ones; framework frontends import their framework only when used (`require`).
"""

import importlib


def require(*modules: str, missing: str):
    """Import optional modules (a framework and its exporter), or raise the one-line `missing`
    hint (e.g. "PyTorch is not installed: pip install irtools[torch]") instead of an ImportError."""
    from irtools.errors import IrtoolsError

    try:
        imported = [importlib.import_module(m) for m in modules]
    except ImportError:
        raise IrtoolsError(missing) from None
    return imported[0] if len(imported) == 1 else tuple(imported)
