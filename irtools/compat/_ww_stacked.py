"""WeightWatcher 0.7.7's `stacked=True` (its WWStackedLayerIterator): one row, "Stacked Layer" (id 0, type
"stacked"), for every supported layer's matrices at once. Each layer's matrix (a conv's slices side by side)
is centred on its median and divided by its per-column median absolute deviation (in the stored precision, as
WeightWatcher computes it), padded with zeros to the widest, and the matrices stacked; the row's ESD is the
top k eigenvalues of that stack, k the first layer's number of components (WeightWatcher's truncated SVD).
"""

from __future__ import annotations

import numpy as np

from irtools.compat._ww_layers import WWLayer, _ww_mats
from irtools.compat._ww_peft import _low_rank
from irtools.errors import IrtoolsError

STACKED, STACKED_NAME = "stacked", "Stacked Layer"


def _normalised(w: np.ndarray) -> np.ndarray:
    """(W - median(W)) / MAD of each column (scipy's median_abs_deviation, axis 0), in W's dtype."""
    mad = np.median(np.abs(w - np.median(w, axis=0)), axis=0)
    return (w - np.median(w)) / mad


def stacked_entry(layers: list[WWLayer]) -> tuple:
    """(WWLayer, WeightLayer) of the one stacked row of `layers` (the supported ones, in order). The stack is
    built here, whole (as WeightWatcher builds it): every layer's weights are read."""
    if not layers:
        raise IrtoolsError("stacked=True: no supported layer to stack")
    mats = []
    for layer in layers:
        parts = _ww_mats(layer)
        mats.append(np.hstack(parts) if len(parts) > 1 else parts[0])
    first = _ww_mats(layers[0])
    rank = min(first[0].shape) * len(first)  # WeightWatcher's num_components of the first layer
    width = max(w.shape[1] for w in mats)
    stacked = np.vstack([np.pad(_normalised(w), ((0, 0), (0, width - w.shape[1]))) for w in mats])
    stacked = stacked if stacked.shape[0] >= stacked.shape[1] else stacked.T
    row = WWLayer(0, STACKED_NAME, layers[0].longname, STACKED)
    return row, _low_rank("0", STACKED_NAME, tuple(stacked.shape), min(rank, min(stacked.shape)), lambda: stacked)
