"""WeightWatcher 0.7.7's `base_model=` (its WWDeltaLayerIterator: W - W_base per matched layer) and
`distances(m1, m2, method=...)`.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from irtools.compat._ww_layers import DENSE, WWLayer, _ww_mats
from irtools.errors import IrtoolsError
from irtools.frontends.weights_file import StoredArray


def _aligned_delta(w: np.ndarray, wb: np.ndarray) -> np.ndarray:
    """WeightWatcher's W - W_base: as is, W_base transposed, or zeros when the shapes do not fit."""
    w, wb = np.asarray(w), np.asarray(wb)
    if w.shape == wb.shape:
        return w - wb
    if w.shape == wb.T.shape:
        return w - wb.T
    return np.zeros_like(w)


def delta_layers(layers: list[WWLayer], base_layers: list[WWLayer], supported: Callable) -> list[WWLayer]:
    """WeightWatcher's WWDeltaLayerIterator: walk the model's supported layers; when the next supported
    base layer's name contains this layer's name, this layer's weight becomes W - W_base and the base
    walk moves on; otherwise the layer is analysed as it is."""
    right = [x for x in base_layers if supported(x)]
    out, j = [], 0
    for layer in (x for x in layers if supported(x)):
        if j < len(right) and layer.name in right[j].name:
            other = right[j]
            j += 1
            weight = StoredArray(layer.weight.shape, layer.weight.dtype,
                                 lambda a=layer.weight, b=other.weight: _aligned_delta(a.load(), b.load()))
            layer = replace(layer, weight=weight)
        out.append(layer)
    return out


def distance_table(pairs, method: str):
    """The rows of WeightWatcher's `distances` for (layer of model 1, layer of model 2) pairs: (mean delta_W,
    mean delta_b, table indexed by layer_id)."""
    import pandas as pd

    from irtools.finetune import cka

    records = []
    for one, two in pairs:
        row = {"layer_id": one.layer_id, "name": one.name, "longname": one.longname, "method": method}
        if method == "raw":
            w1, w2 = np.asarray(one.weight.load()), np.asarray(two.weight.load())
            if w1.shape != w2.shape:
                raise IrtoolsError(f"distances: {one.name} has shape {w1.shape} in one model, {w2.shape} "
                                   f"in the other")
            row.update(M=int(np.min(w1.shape)), N=int(np.max(w1.shape)), delta_W=float(np.linalg.norm(w1 - w2)))
            b1 = None if one.bias is None else np.asarray(one.bias.load())
            b2 = None if two.bias is None else np.asarray(two.bias.load())
            if one.layer_type != DENSE:  # WeightWatcher 0.7.7 reads no conv bias here
                b1 = b2 = None
            if b1 is not None and b2 is not None and len(b1) == len(b2):  # its b_shape: the tuple's one entry
                row.update(b_shape=int(b1.shape[0]), delta_b=float(np.linalg.norm(b1 - b2)))
            else:
                row.update(b_shape="unknown", delta_b=0)
        else:
            m1, m2 = _ww_mats(one), _ww_mats(two)
            total = 0.0
            for w1, w2 in zip(m1, m2):
                if w1.shape != w2.shape:
                    raise IrtoolsError(f"distances: {one.name} matrices differ in shape: {w1.shape}, {w2.shape}")
                total += float(np.linalg.norm(np.asarray(w1, dtype=np.float64) - w2)) if method == "euclidean" \
                    else cka(w1, w2)
            row.update(M=int(np.min(m1[0].shape)), N=int(np.max(m1[0].shape)), delta_W=total / len(m1),
                       b_shape="unknown", delta_b=0.0)
        records.append(row)
    if not records:
        raise IrtoolsError("distances: no layer to compare")
    table = pd.DataFrame.from_records(records)
    lead = ["method", "layer_id", "name", "delta_W", "delta_b", "M", "N", "b_shape"]
    table = table[lead + [c for c in table.columns if c not in lead]].set_index("layer_id")
    return float(np.mean(table["delta_W"].to_numpy())), float(np.mean(table["delta_b"].to_numpy())), table
