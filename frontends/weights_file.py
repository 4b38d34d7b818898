"""Weights-only files into analysable layers: the source table's `weights` row.

The formats themselves live in `irtools.frontends.formats`, one reader module per format and
one table of them (`formats.FORMATS`); this module is the row's two functions
(`is_weights_file`, `open_weights_file`) and re-exports the names other modules import from
here (`read_weights`, `weight_layers`, `StoredArray`, `checkpoint_order`, the HDF5 checks).

Model files are untrusted input, so nothing here runs pickle: PyTorch files are read with the
restricted unpickler (`formats.unpickler`) unless the caller passes `trust=True`. Everything a
file declares is checked before it is believed (see each reader's docstring).
"""

from __future__ import annotations

import os

from irtools.frontends.formats import (FORMATS, READS, Format, WeightSet, describe, find_format, is_weights_file,
                                       read_weights)
from irtools.frontends.formats.common import StoredArray, checkpoint_order
from irtools.frontends.formats.hdf5 import (check_hdf5_file, check_hdf5_storage, check_keras_archive,
                                            h5_is_full_model)
from irtools.frontends.formats.layers import weight_layers
from irtools.frontends.formats.pytorch import find_weights

__all__ = ["FORMATS", "READS", "Format", "StoredArray", "WeightSet", "check_hdf5_file", "check_hdf5_storage",
           "check_keras_archive", "checkpoint_order", "default_layout", "describe", "find_format", "find_weights",
           "h5_is_full_model", "is_weights_file", "open_weights_file", "read_weights", "weight_layers"]


def default_layout(path: str, layout: str) -> str:
    """Keras HDF5 weights are always in Keras' (k..., in, out) layout."""
    return "keras" if os.fspath(path).lower().endswith((".h5", ".hdf5")) else layout


# -- the source table's row (irtools.frontends.SOURCE_KINDS) -----------------------------------
def open_weights_file(path: str, name: str, options):
    """A weights-only source: its matrices as layers (spectral metrics); no graph. What makes no
    row is in `skipped` with its reason; where the weights were found and what the file is, in
    `notes` and `metadata`."""
    from irtools.frontends import OpenedSource  # noqa: PLC0415

    tensors = read_weights(path, trust=options.trust)
    skipped = list(tensors.skipped)
    layers = weight_layers(tensors, layout=default_layout(path, options.layout), skipped=skipped)
    if not layers and not skipped:
        from irtools.errors import ModelLoadError  # noqa: PLC0415

        raise ModelLoadError(f"no weights found: the file holds {len(tensors)} tensor(s), none a matrix (only "
                             "vectors: biases, norm scales)", path)
    metadata = dict(tensors.metadata)
    metadata["tensors"] = {"rows": len({layer.parameter for layer in layers}), "skipped": len(skipped),
                           "auxiliary": len(tensors.auxiliary),
                           "vectors": sum(1 for t in tensors.values() if len(t.shape) < 2)}
    return OpenedSource(name, "weights", layers=layers, metadata=metadata, notes=list(tensors.notes), skipped=skipped)
