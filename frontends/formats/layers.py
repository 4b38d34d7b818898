"""A weights file's tensors as analysable layers (`WeightLayer`s), and what is not one.

Every tensor of a file ends up in one of four places: a row (a 2-D dense or embedding matrix,
a 3-5-D convolution, a PyTorch LSTM/GRU weight split per gate, a 3-D stack of experts' matrices
one row per expert, a fused gate/up projection as its gate and up matrices: `split_fused`), a `skipped` entry with its
reason (a tensor of two or more dims that is no float matrix: integers, bools, a packed
quantized layout no format here recognised, more than 5 dims), an auxiliary of another tensor
(a scale or zero point its dequantization consumed: `WeightSet.auxiliary`), or a vector (0-D
and 1-D: biases, norm scales, counters), which is no matrix on any route and makes no row.
"""

from __future__ import annotations

import re

import ml_dtypes
import numpy as np

from irtools.ir.fused import (KERAS_GATES, fused_gate_up, gate_block, gate_up_part,  # noqa: F401 (re-exported)
                              split_fused)

from .common import StoredArray

_GATES = re.compile(r"(weight_ih|weight_hh)(_l\d+(_reverse)?)?$")
#: A Keras LSTM / GRU cell's kernels, in Keras' (in, gates x units) layout and gate order (`frontends.keras`'
#: `_KERAS_GATES`, the graph route's): by Keras' default cell names (an LSTM's cell is `lstm_cell`:
#: `lstm/lstm_cell/kernel`; a layer the user named otherwise is a matrix), and in a Keras 3 `.weights.h5`, whose
#: paths name no class, every recurrent layer's `.../cell/vars/0` and `1` (kernel, recurrent kernel), the gate count
#: read from the recurrent kernel's (units, gates x units): 4 an LSTM, 3 a GRU (`_keras_cell_gates`).
_KERAS_CELL = re.compile(r"(^|/)(lstm|gru)(_cell)?(_\d+)?/(recurrent_)?kernel(:0)?$")
_KERAS_CELL_VARS = re.compile(r"(^|/)cell/vars/[01]$")


def _keras_cell_gates(name: str, shapes: dict) -> tuple[str, str] | None:
    """(kind, gate letters) of a Keras recurrent cell's 2-D kernel `name` (--layout keras), or None."""
    cell = _KERAS_CELL.search(name)
    if cell:
        return cell[2], KERAS_GATES[cell[2]]
    if _KERAS_CELL_VARS.search(name):
        recurrent = shapes.get(name[:-1] + "1")
        if recurrent is not None and len(recurrent) == 2 and recurrent[0] > 0:
            kind = {4 * recurrent[0]: "lstm", 3 * recurrent[0]: "gru"}.get(recurrent[1])
            if kind is not None:
                return kind, KERAS_GATES[kind]
    return None


def _gate_layers(name: str, shape, kind: str, letters: str, axis: int, load, extra: dict) -> list:
    """One row per gate of a recurrent tensor whose `axis` holds its gates side by side in `letters`' order
    (PyTorch's (gates x hidden, in) on axis 0, Keras' (in, gates x units) on axis 1), named `{name}.{letter}`."""
    from irtools.ir.layers import WeightLayer

    units, other = shape[axis] // len(letters), shape[1 - axis]
    return [WeightLayer(f"{name}.{letter}", name, "state_dict", kind, name, shape, max(units, other),
                        min(units, other), 1, 1.0, loader=(lambda g=g: [gate_block(load(), g, axis, units)]),
                        extra=dict(extra)) for g, letter in enumerate(letters)]


#: Float types a row may hold as stored (float8 without a scale is its own values).
_FLOAT8 = (ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e5m2, ml_dtypes.float8_e8m0fnu, ml_dtypes.float4_e2m1fn)
_FLOAT8_DTYPES = tuple(map(np.dtype, _FLOAT8))


#: A 3-D tensor of stacked experts' matrices (transformers' fused `experts.gate_up_proj`, GGUF's `*_exps`).
_EXPERTS = re.compile(r"(^|[._])(experts?|exps)([._]|$)", re.IGNORECASE)


#: A checkpoint's expert stored one module per expert (`block_sparse_moe.experts.3.w1.weight`): group 1 the index.
_STORED_EXPERT = re.compile(r"(?:^|\.)experts\.(\d+)\.")
#: A tensor of a unit first dim that is a table by name (`[1, positions, hidden]` position embeddings, a
#: `[1, 1, hidden]` class token), not a convolution's kernel.
_TABLE = re.compile(r"embed|token|position", re.IGNORECASE)
#: 2-D tensors that are embedding tables by name (GPT-2's `wte` / `wpe`, T5's `shared` hold no "embed").
_EMBEDDING = re.compile(r"embed|(^|\.)(wte|wpe|shared|relative_attention_bias)(\.|$)", re.IGNORECASE)


def _expert_name(base: str, e: int) -> str:
    """`mlp.experts.gate_up_proj`, expert 3 -> `mlp.experts.gate_up_proj[3]`: the name the graph route and the
    module route give the same expert (the stored tensor's path and the index along its first axis), so a
    checkpoint's rows line up whichever route read it."""
    return f"{base}[{e}]"


def is_float(dtype) -> bool:
    dtype = np.dtype(dtype)
    return np.issubdtype(dtype, np.floating) or dtype == ml_dtypes.bfloat16 or dtype in _FLOAT8_DTYPES


#: A weight-normalised weight's stored parts (torch's `parametrizations.weight.original0/1` and the older
#: `weight_g`/`weight_v`): magnitude g and direction v of W = g * v / ||v||.
_WEIGHT_NORM = (re.compile(r"(?P<path>.+)\.parametrizations\.(?P<attr>[A-Za-z_]\w*)\.original(?P<k>[01])"),
                re.compile(r"(?P<path>.+)\.(?P<attr>[A-Za-z_]\w*)_(?P<k>[gv])"))


def weight_normed(tensors: dict) -> dict:
    """`tensors` with each weight-normalised pair (g, v) replaced by the weight the module computes with,
    W = g * v / ||v|| (the norm over the axes along which g has length 1, as torch's `weight_norm`), named
    `{path}.{attr}` as the module and graph routes name it; in float32, as torch computes it. A pair whose
    shapes do not fit each other is left as it is."""
    pairs: dict[str, dict[str, str]] = {}
    for name in tensors:
        for pattern in _WEIGHT_NORM:
            m = pattern.fullmatch(name)
            if m:
                pairs.setdefault(f"{m['path']}.{m['attr']}", {})[{"0": "g", "1": "v"}.get(m["k"], m["k"])] = name
                break
    computed: dict[str, StoredArray] = {}  # target -> the weight W
    owner: dict[str, str] = {}  # a stored part -> its target
    for target, parts in pairs.items():
        if set(parts) != {"g", "v"} or target in tensors:
            continue
        g, v = tensors[parts["g"]], tensors[parts["v"]]
        if len(g.shape) != len(v.shape) or any(a not in (1, b) for a, b in zip(g.shape, v.shape, strict=True)):
            continue

        def load(g=g, v=v):
            gv, vv = np.asarray(g.load(), dtype=np.float32), np.asarray(v.load(), dtype=np.float32)
            axes = tuple(i for i, d in enumerate(gv.shape) if d == 1)
            return vv * (gv / np.sqrt(np.sum(vv * vv, axis=axes, keepdims=True)))

        computed[target] = StoredArray(tuple(v.shape), np.dtype(np.float32), load)
        owner.update(dict.fromkeys(parts.values(), target))
    out: dict = {}
    for name, t in tensors.items():  # the computed weight where its first part was, the parts gone
        if name in owner:
            out.setdefault(owner[name], computed[owner[name]])
        else:
            out[name] = t
    return out


#: The most matrices one tensor splits into (experts of a stack, kernel positions of a convolution):
#: the largest MoE stacks hold hundreds of experts, the largest kernels hundreds of positions.
MAX_PIECES = 65536


def weight_layers(tensors: dict[str, StoredArray], layout: str = "torch", skipped: list | None = None,
                  model_type: str | None = None, split_gate_up: bool = True):
    """`WeightLayer`s of the matrix-like tensors: 2-D dense/embedding, 3-5-D convolutions,
    PyTorch LSTM/GRU weights split per gate; with `split_gate_up`, fused gate/up projections split in
    their gate and up matrices (`split_fused`; `model_type`, the config's, where known, tells gpt-oss's
    layout: off by default until the module route splits them too, so that every route names alike). `layout`
    is "torch" (out, in, k...) or "keras" ((k..., in, out) kernels). A tensor of two or more dims that
    makes no row is appended to `skipped` (when given) with its reason; a dequantized tensor's row says
    its storage format (`extra["storage"]`)."""
    from irtools.ir.layers import WeightLayer

    layers: list[WeightLayer] = []
    stored_shapes = {n: tuple(t.shape) for n, t in tensors.items()} if layout == "keras" else {}
    for name, t in weight_normed(tensors).items():
        shape, nd = t.shape, len(t.shape)
        if nd < 2:
            continue  # a vector: no matrix
        if not is_float(t.dtype) or nd > 5:
            if skipped is not None:
                what = f"{np.dtype(t.dtype).name} tensor of shape {list(shape)}"
                reason = f"{what}: not a float weight matrix (no quantized format recognised it)" \
                    if not is_float(t.dtype) else f"{what}: no weight-matrix rule for {nd} dims"
                skipped.append({"name": name, "node": name, "op_type": "state_dict", "parameter": name,
                                "reason": reason})
            continue
        pieces = shape[0] if nd == 3 and _EXPERTS.search(name) else \
            int(np.prod(shape[:-2] if layout == "keras" else shape[2:], dtype=object)) if nd > 2 else 1
        if pieces > MAX_PIECES:  # each expert or kernel position a matrix: an 8 MB tensor of 2*10^6 1x1 experts
            if skipped is not None:  # made 2*10^6 rows (3.3 GB, over 5 minutes)
                what = "experts' matrices" if nd == 3 and _EXPERTS.search(name) else "kernel positions"
                skipped.append({"name": name, "node": name, "op_type": "state_dict", "parameter": name,
                                "reason": f"tensor of shape {list(shape)}: {pieces} {what}, over the {MAX_PIECES} "
                                          "one tensor may split into"})
            continue
        base = re.sub(r"[./](weight|kernel|embeddings|w)$", "", name)
        storage = getattr(t, "storage", None)
        if storage is None and np.dtype(t.dtype) in _FLOAT8_DTYPES:
            storage = np.dtype(t.dtype).name
        extra = {"storage": storage} if storage else {}

        def f64(t=t):  # stored precision; the backend forms Gram matrices in float64
            w = np.asarray(t.load())
            return w.astype(np.float32) if w.dtype in _FLOAT8_DTYPES else w

        big = tuple(d for d in shape if d > 1)
        if nd >= 3 and shape[0] == 1 and len(big) <= 2 and _TABLE.search(name):
            if len(big) == 2:  # a [1, positions, hidden] table (ViT's position_embeddings): the matrix it is
                layers.append(WeightLayer(base, name, "state_dict", "matrix", name, shape, max(big), min(big), 1, 1.0,
                                          loader=(lambda f=f64, big=big: [f().reshape(big)]), extra=dict(extra)))
            continue  # [1, 1, hidden] (ViT's cls_token): a vector, no matrix on any route
        cell = _keras_cell_gates(name, stored_shapes) if layout == "keras" and nd == 2 else None
        if cell and shape[1] % len(cell[1]) == 0 and shape[1]:
            # Keras' (in, gates x units) kernel of an LSTM / GRU cell: a matrix per gate, as the graph route cuts it
            layers += _gate_layers(name, shape, *cell, 1, f64, extra)
        elif nd == 2 and _GATES.search(name):
            gates = 4 if shape[0] % 4 == 0 else 3  # LSTM i,f,g,o / GRU r,z,n (PyTorch order)
            layers += _gate_layers(name, shape, "lstm" if gates == 4 else "gru", "ifgo" if gates == 4 else "rzn", 0,
                                   f64, extra)
        elif nd == 3 and _EXPERTS.search(name):  # (experts, out, in): one matrix per expert
            for e in range(shape[0]):
                layers.append(WeightLayer(_expert_name(base, e), name, "state_dict", "dense", name, shape,
                                          max(shape[1:]), min(shape[1:]), 1, 1.0,
                                          loader=(lambda e=e, f=f64: [f()[e]]), extra={**extra, "expert": e}))
        elif nd == 2:
            kind = "embedding" if _EMBEDDING.search(name) else "dense"
            expert = _STORED_EXPERT.search(name)  # one module per expert (Mixtral's experts.3.w1): its index
            layers.append(WeightLayer(base, name, "state_dict", kind, name, shape, max(shape), min(shape), 1, 1.0,
                                      loader=(lambda f=f64: [f()]),
                                      extra={**extra, "expert": int(expert[1])} if expert else dict(extra)))
        else:
            if layout == "keras":  # (k..., in, out) -> slices (in, out) per kernel position
                spatial, n_, m_ = shape[:-2], shape[-2], shape[-1]

                def slices(f=f64, spatial=spatial):
                    w = f()
                    return list(w.reshape(-1, *w.shape[-2:]))  # kernel positions in C order, as views
            else:
                spatial, n_, m_ = shape[2:], shape[0], shape[1]

                def slices(f=f64, spatial=spatial):
                    w = f()
                    w3 = w.reshape(*w.shape[:2], -1)  # kernel positions in C order, as views
                    return [w3[:, :, p] for p in range(w3.shape[2])]
            rf = int(np.prod(spatial))
            layers.append(WeightLayer(base, name, "state_dict", f"conv{len(spatial)}d", name, shape, max(n_, m_),
                                      min(n_, m_), rf, 0.5, loader=slices, extra=dict(extra)))
    if not split_gate_up:
        return layers
    if model_type is None:
        model_type = (getattr(tensors, "metadata", None) or {}).get("model_type")
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    keras = {layer.parameter: 1 for layer in layers if layout == "keras" and len(layer.weight_shape) == 2}
    return split_fused(layers, shapes, model_type, keras)


__all__ = ["fused_gate_up", "gate_up_part", "is_float", "split_fused", "weight_layers"]
