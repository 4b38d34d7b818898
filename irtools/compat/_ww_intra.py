"""WeightWatcher 0.7.7's `intra=True` with sparsify=False (its WWIntraLayerIterator): one row per pair of
consecutive supported layers whose first matrices share a dimension, named "<id0> X <id1> " (its trailing
space kept), for X = W0 · W1 / (||W0||_F ||W1||_F) aligned along the shared dimension; the row is the second
layer's (id, long name, type, rf) with X's N and M and an `Xflag` column. Its "eigenvalues" are X's singular
values themselves (WeightWatcher's intra ESD is not squared), the largest k of them, k the second layer's
number of components. A conv's first kernel slice stands for it and its X is scaled by sqrt(1/2) as
WeightWatcher scales a pooled conv (conv2d_norm). sparsify=True (the default) multiplies by an unseeded random
0/1 matrix: refused (`_ww_options.analyze_flags`).
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from irtools.compat._ww_layers import CONV2D, WWLayer, _ww_mats


def _aligned(w0: np.ndarray, w1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """WeightWatcher's align_mats: transpose each so that w0's columns meet w1's rows on the shared dimension
    (the largest size the two shapes have in common); unchanged when they share none."""
    shapes = [w0.shape[0], w0.shape[1], w1.shape[0], w1.shape[1]]
    for x in np.unique(shapes):
        shapes.remove(x)
    if shapes:
        shared = max(shapes)
        w0 = w0 if w0.shape[1] == shared else w0.T
        w1 = w1 if w1.shape[0] == shared else w1.T
    return w0, w1


def intra_entries(layers: list[WWLayer], conv2d_norm: bool = True) -> list[tuple]:
    """(WWLayer, WeightLayer) per intra row of the supported `layers`, in order."""
    from irtools.frontends.peft import LowRankLayer

    out = []
    for prev, layer in zip(layers, layers[1:]):
        first0, first1 = _ww_mats(prev)[0], _ww_mats(layer)[0]
        w0, w1 = _aligned(first0, first1)
        if w0.shape[1] != w1.shape[0]:
            continue
        shape = (w0.shape[0], w1.shape[1])
        n, m = max(shape), min(shape)
        mats1 = _ww_mats(layer)
        n_comp = min(mats1[0].shape) * len(mats1)  # the second layer's num_components
        scale = math.sqrt(0.5) if conv2d_norm and layer.layer_type == CONV2D else 1.0

        def load(prev=prev, layer=layer, k=min(n_comp, m), scale=scale):
            a, b = _aligned(_ww_mats(prev)[0], _ww_mats(layer)[0])  # the product in the stored precision
            x = (np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)) * scale).astype(np.float64)
            sv = np.sort(np.linalg.svd(x, compute_uv=False))[-k:]
            return [np.diag(np.sqrt(sv))]  # its ESD: the singular values themselves

        name = f"{prev.layer_id} X {layer.layer_id} "
        row = replace(layer, name=name, weight=None)
        wl = LowRankLayer(name, str(layer.layer_id), "intra", layer.layer_type, name, shape, n, m, 1, 1.0,
                          loader=load, rank=min(n_comp, m))
        out.append((row, wl))
    return out
