"""WeightWatcher 0.7.7's `peft=` iteration (its WWPeftLayerIterator): a LoRA lora_A/lora_B pair becomes the
B·A row (unscaled, r eigenvalues), and with peft="with_base" lora_B becomes W + B·A of the layer before.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from irtools.compat._ww_layers import DENSE, WWLayer
from irtools.errors import IrtoolsError


def _top_singular_diag(w: np.ndarray, k: int) -> list[np.ndarray]:
    """WeightWatcher's truncated SVD with num_components = k, as a k x k diagonal matrix whose ESD
    is the k largest eigenvalues of W^T W (what its `svds(W, k)` returns)."""
    sv = np.linalg.svd(np.asarray(w, dtype=np.float64), compute_uv=False)
    return [np.diag(np.sort(sv)[-k:])]


def _lora_product(a_layer: WWLayer, b_layer: WWLayer) -> tuple[Callable, tuple[int, int], int, bool]:
    """(load B·A, its shape, lora rank, transposed) as WeightWatcher's `update_peft_layers` forms it:
    A transposed when it is taller than wide, B when it does not line up; the product in the stored
    precision (float32), unscaled (WeightWatcher applies no lora_alpha / r)."""
    a_shape, b_shape = tuple(a_layer.weight.shape), tuple(b_layer.weight.shape)
    transpose = a_shape[0] > a_shape[1]
    a_rows = a_shape[1] if transpose else a_shape[0]
    b_t = b_shape[1] != a_rows
    shape = ((b_shape[1] if b_t else b_shape[0]), (a_shape[0] if transpose else a_shape[1]))

    def load():
        a, b = np.asarray(a_layer.weight.load()), np.asarray(b_layer.weight.load())
        a = a.T if transpose else a
        b = b.T if b_t else b
        if b.shape[1] != a.shape[0]:
            raise IrtoolsError(f"LoRA matrices of {a_layer.longname} cannot be aligned: {b.shape} x {a.shape}"[:300])
        return np.dot(b, a)

    return load, shape, min(a_shape), transpose


def _low_rank(node: str, name: str, shape: tuple[int, int], rank: int, load: Callable):
    from irtools.frontends.peft import LowRankLayer

    return LowRankLayer(name, node, "LoRA", DENSE, name, shape, max(shape), min(shape), 1, 1.0,
                        loader=lambda: _top_singular_diag(load(), rank), rank=rank)


def peft_entries(layers: list[WWLayer], with_base: bool, supported: Callable) -> list[tuple]:
    """WeightWatcher's peft iteration over the supported layers: (WWLayer, WeightLayer, peft flag) per row.
    A lora_A/lora_B pair (dense, in this order) becomes the B·A row (named ..lora_BA, r eigenvalues);
    with peft="with_base" the other layers are rows too and lora_B becomes W + B·A of the layer before
    (..lora_W_plus_AB, its r largest eigenvalues), listed before the B·A row."""
    out, last, a_layer = [], None, None
    for layer in (x for x in layers if supported(x)):
        if layer.layer_type == DENSE and "lora_" in layer.longname:
            if "lora_A" in layer.longname:
                a_layer = layer
            elif "lora_B" in layer.longname and a_layer is not None:
                if not with_base:
                    last = None
                load, shape, rank, transpose = _lora_product(a_layer, layer)
                ba = WWLayer(a_layer.layer_id, a_layer.name.replace("lora_A", "lora_BA"),
                             a_layer.longname.replace("lora_A", "lora_BA"), DENSE)
                rows = [(ba, _low_rank(str(a_layer.layer_id), ba.name, shape, rank, load), True)]
                if last is not None:
                    def plus(last=last, load=load, transpose=transpose):
                        d = load()
                        return np.asarray(last.weight.load()) + (d.T if transpose else d)

                    w_shape, d_shape = tuple(last.weight.shape), (shape[::-1] if transpose else shape)
                    if w_shape != d_shape:  # seen from the shapes, before anything is loaded (describe too)
                        raise IrtoolsError(f"peft='with_base': {layer.longname}: the layer before ({last.longname}, "
                                           f"{w_shape}) is not the base of B·A {d_shape} (WeightWatcher 0.7.7 "
                                           f"fails here too)"[:300])
                    wb = WWLayer(layer.layer_id, layer.name.replace("lora_B", "lora_W_plus_AB"),
                                 layer.longname.replace("lora_B", "lora_W_plus_AB"), DENSE)
                    rows.insert(0, (wb, _low_rank(str(layer.layer_id), wb.name, w_shape, rank, plus), True))
                out.extend(rows)
        else:
            last = layer
            if with_base:
                out.append((layer, None, False))
    return out
