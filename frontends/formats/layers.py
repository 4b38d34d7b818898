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


from .common import StoredArray

_GATES = re.compile(r"(weight_ih|weight_hh)(_l\d+(_reverse)?)?$")
#: Float types a row may hold as stored (float8 without a scale is its own values).
_FLOAT8 = (ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e5m2, ml_dtypes.float8_e8m0fnu, ml_dtypes.float4_e2m1fn)
_FLOAT8_DTYPES = tuple(map(np.dtype, _FLOAT8))


#: A 3-D tensor of stacked experts' matrices (transformers' fused `experts.gate_up_proj`, GGUF's `*_exps`).
_EXPERTS = re.compile(r"(^|[._])(experts?|exps)([._]|$)", re.IGNORECASE)


def _expert_name(base: str, e: int) -> str:
    """`mlp.experts.gate_up_proj`, expert 3 -> `mlp.experts.gate_up_proj[3]`: the name the graph route and the
    module route give the same expert (the stored tensor's path and the index along its first axis), so a
    checkpoint's rows line up whichever route read it."""
    return f"{base}[{e}]"


# -- fused projections: analysed as the matrices they are -----------------------------------------
# A fused `gate_up_proj` holds two matrices side by side (gate, then up, along the output features: transformers'
# `chunk(2, dim=-1)`; gpt-oss interleaves them, gate = [..., ::2], up = [..., 1::2]). irtools' tables split it
# into its two matrices (rows `...gate_up_proj.gate` / `.up`; experts `...gate_up_proj[e].gate`), on every route
# alike (`split_fused`). WeightWatcher sees the nn.Linear, so its compatible API keeps the one fused matrix.
#: The module path's last part of a fused gate/up projection.
_GATE_UP = re.compile(r"(^|[._])(gate_up_proj|gate_up|w13)$")
#: Fused q/k/v projections: kept one matrix (their layouts differ by architecture: contiguous, grouped-query
#: sizes from the config, GPT-NeoX's and BLOOM's per-head interleave), the row saying so (`fused`).
_QKV = re.compile(r"(^|[._])(qkv_proj|query_key_value|c_attn|Wqkv|qkv|in_proj_weight|W_pack)$")
#: Architectures (config `model_type`) whose experts' gate_up_proj is stored [experts, in, 2*I] (x @ W).
OUT_LAST_GATE_UP = frozenset({"gpt_oss", "llama4", "llama4_text", "aria", "aria_text", "openai_privacy_filter"})
#: Architectures whose gate_up interleaves gate and up; with no config, a `gate_up_proj_bias` beside the
#: experts (gpt-oss's layout) says interleaved.
INTERLEAVED_GATE_UP = frozenset({"gpt_oss"})


def fused_gate_up(parameter: str, shape, shapes=None, model_type: str | None = None,
                  out_axis: int | None = None) -> tuple[int, bool] | None:
    """(the axis of each matrix that holds gate and up, whether interleaved) for a fused gate/up parameter
    of `shape` (2-D [2I, H], or experts [E, 2I, H] / [E, H, 2I]); None for any other parameter, or one whose
    fused axis cannot be halved. `shapes` ({name: shape} of the checkpoint's other tensors) tells the experts'
    layout: the bias `{name}_bias` [E, 2I], else `down_proj` [E, I, H] / [E, H, I]; else the config's
    `model_type`; else transformers' [E, 2I, H]. `out_axis`: the output axis where the route knows it (an op)."""
    path = re.sub(r"[./](weight|kernel|w)$", "", parameter)
    if not _GATE_UP.search(path) or len(shape) not in (2, 3):
        return None
    shapes = shapes or {}
    per = tuple(shape[-2:])
    bias = shapes.get(f"{parameter}_bias") or shapes.get(f"{path}.bias") if len(shape) == 3 else None
    if out_axis is not None:
        axis = out_axis
    elif len(shape) == 2:
        axis = 0  # torch's Linear stores (out, in)
    else:
        even = [k for k in (0, 1) if per[k] % 2 == 0]
        down = shapes.get(parameter.replace("gate_up_proj", "down_proj")) if "gate_up_proj" in parameter else None
        by_bias = [k for k in even if bias is not None and per[k] == bias[-1]]
        # down_proj maps I -> H in the same layout: [E, H, I] beside [E, 2I, H], [E, I, H] beside [E, H, 2I]
        by_down = [k for k in even if down is not None and len(down) == 3
                   and tuple(down[1:]) == ((per[1], per[0] // 2) if k == 0 else (per[1] // 2, per[0]))]
        axis = (by_bias[0] if len(by_bias) == 1 else by_down[0] if len(by_down) == 1 else
                1 if model_type in OUT_LAST_GATE_UP else 0)
    if per[axis] % 2:
        return None
    interleaved = model_type in INTERLEAVED_GATE_UP if model_type else bias is not None
    return axis, interleaved


def gate_up_part(w: np.ndarray, axis: int, interleaved: bool, k: int) -> np.ndarray:
    """Part k (0 gate, 1 up) of a fused gate/up matrix `w` along `axis`."""
    half = w.shape[axis] // 2
    index = [slice(None)] * w.ndim
    index[axis] = slice(k, None, 2) if interleaved else slice(k * half, (k + 1) * half)
    return w[tuple(index)]


def split_fused(layers: list, shapes=None, model_type: str | None = None, out_axes=None) -> list:
    """`layers` with each fused gate/up layer replaced by its gate and up matrices (`fused_gate_up`), named
    `{name}.gate` / `{name}.up` (an expert `{name}[e].gate`), the row's `fused` column saying the layout;
    a fused q/k/v layer kept one matrix, its `fused` column saying so. Layers already split are kept, so
    calling it twice changes nothing. `out_axes` {parameter: output axis of the matrix its layer loads}
    where the route knows it (the graph's op)."""
    from dataclasses import replace

    out = []
    for layer in layers:
        if ("fused" in layer.extra or layer.layer_type not in ("dense", "matrix") or layer.rf != 1
                or layer.name.endswith((":q", ":k", ":v"))):  # already split (--split-qkv's thirds)
            out.append(layer)
            continue
        spec = fused_gate_up(layer.parameter, layer.weight_shape, shapes, model_type,
                             (out_axes or {}).get(layer.parameter))
        if spec is None:
            path = re.sub(r"[./](weight|kernel|w)$", "", layer.parameter)
            if _QKV.search(path) or _QKV.search(layer.parameter):
                layer = replace(layer, extra={**layer.extra, "fused": "q,k,v (one matrix)"})
            out.append(layer)
            continue
        axis, interleaved = spec
        per = list(layer.weight_shape[-2:])
        per[axis] //= 2
        how = f"gate_up {'interleaved' if interleaved else 'halves'}"
        for k, part in enumerate(("gate", "up")):
            out.append(replace(layer, name=f"{layer.name}.{part}", N=max(per), M=min(per),
                               shared_with=list(layer.shared_with),
                               loader=(lambda f=layer.loader, k=k, a=axis, i=interleaved:
                                       [gate_up_part(np.asarray(f()[0]), a, i, k)]),
                               extra={**layer.extra, "fused": how}))
    return out


def is_float(dtype) -> bool:
    dtype = np.dtype(dtype)
    return np.issubdtype(dtype, np.floating) or dtype == ml_dtypes.bfloat16 or dtype in _FLOAT8_DTYPES


def weight_layers(tensors: dict[str, StoredArray], layout: str = "torch", skipped: list | None = None,
                  model_type: str | None = None, split_gate_up: bool = False):
    """`WeightLayer`s of the matrix-like tensors: 2-D dense/embedding, 3-5-D convolutions,
    PyTorch LSTM/GRU weights split per gate; with `split_gate_up`, fused gate/up projections split in
    their gate and up matrices (`split_fused`; `model_type`, the config's, where known, tells gpt-oss's
    layout: off by default until the module route splits them too, so that every route names alike). `layout`
    is "torch" (out, in, k...) or "keras" ((k..., in, out) kernels). A tensor of two or more dims that
    makes no row is appended to `skipped` (when given) with its reason; a dequantized tensor's row says
    its storage format (`extra["storage"]`)."""
    from irtools.ir.layers import WeightLayer

    layers: list[WeightLayer] = []
    for name, t in tensors.items():
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
        base = re.sub(r"[./](weight|kernel|embeddings|w)$", "", name)
        storage = getattr(t, "storage", None)
        if storage is None and np.dtype(t.dtype) in _FLOAT8_DTYPES:
            storage = np.dtype(t.dtype).name
        extra = {"storage": storage} if storage else {}

        def f64(t=t):  # stored precision; the backend forms Gram matrices in float64
            w = np.asarray(t.load())
            return w.astype(np.float32) if w.dtype in _FLOAT8_DTYPES else w

        if nd == 2 and _GATES.search(name):
            gates = 4 if shape[0] % 4 == 0 else 3  # LSTM i,f,g,o / GRU r,z,n (PyTorch order)
            hidden = shape[0] // gates
            labels = "ifgo" if gates == 4 else "rzn"
            for g in range(gates):
                layers.append(WeightLayer(f"{name}.{labels[g]}", name, "state_dict", "lstm" if gates == 4 else "gru",
                                          name, shape, max(hidden, shape[1]), min(hidden, shape[1]), 1, 1.0,
                                          loader=(lambda g=g, f=f64: [f()[g * hidden:(g + 1) * hidden]]),
                                          extra=dict(extra)))
        elif nd == 3 and _EXPERTS.search(name):  # (experts, out, in): one matrix per expert
            for e in range(shape[0]):
                layers.append(WeightLayer(_expert_name(base, e), name, "state_dict", "dense", name, shape,
                                          max(shape[1:]), min(shape[1:]), 1, 1.0,
                                          loader=(lambda e=e, f=f64: [f()[e]]), extra={**extra, "expert": e}))
        elif nd == 2:
            kind = "embedding" if "embed" in name.lower() else "dense"
            layers.append(WeightLayer(base, name, "state_dict", kind, name, shape, max(shape), min(shape), 1, 1.0,
                                      loader=(lambda f=f64: [f()]), extra=dict(extra)))
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
