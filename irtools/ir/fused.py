"""Fused projections, analysed as the matrices they are: one set of rules for every route (the
weights-only and module routes in `frontends/formats/layers.py`, the graph route in `passes/weights/`).

A fused `gate_up_proj` holds two matrices side by side (gate, then up, along the output features:
transformers' `chunk(2, dim=-1)`; gpt-oss interleaves them, gate = [..., ::2], up = [..., 1::2]).
irtools' tables split it into its two matrices (rows `...gate_up_proj.gate` / `.up`; experts
`...gate_up_proj[e].gate`) with `split_fused`; WeightWatcher sees the nn.Linear, so its compatible
API keeps the one fused matrix."""

from __future__ import annotations

import re

import numpy as np

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
    `model_type`; else nothing (None: the experts stay whole, since splitting the wrong axis would halve the
    input features). `out_axis`: the output axis where the route knows it (an op)."""
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
        if len(by_bias) == 1:
            axis = by_bias[0]
        elif len(by_down) == 1:
            axis = by_down[0]
        elif model_type is not None:
            axis = 1 if model_type in OUT_LAST_GATE_UP else 0
        else:  # nothing tells [E, 2I, H] from gpt-oss's [E, H, 2I]: a guess would split the wrong features
            return None
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


#: IR model metadata: {parameter: [gate letters, units]} for the recurrent weights of a route that computes them as
#: one plain matrix (Keras' LSTM / GRU / ConvLSTM kernels, read by a MatMul or Conv on the whole (in, gates x units)
#: tensor): the axis of `units` x len(letters) holds one block per gate, in the letters' order (Keras' LSTM "ifco",
#: GRU "zrh"). The frontend that knows the layer writes it; `split_gates` applies it, so that the matrices are the
#: gates that ONNX's LSTM / GRU op and the state-dict route give for the same weights (letters as ONNX names them).
RECURRENT_GATES_KEY = "irtools.recurrent_gates"
#: Keras' gate letters of each recurrent kind, in its stored order (the frontend's metadata, a weights file's rule).
KERAS_GATES = {"lstm": "ifco", "gru": "zrh"}


def recurrent_gates(text) -> dict[str, tuple[str, int]]:
    """`RECURRENT_GATES_KEY`'s value (JSON text or a dict) as {parameter: (gate letters, units)}; an entry not of
    that form (a hand-made file's metadata can hold anything) is left out: it only decides how a matrix is cut."""
    import json

    if isinstance(text, str):
        try:
            text = json.loads(text)
        except (ValueError, RecursionError):
            return {}
    out: dict[str, tuple[str, int]] = {}
    for name, entry in (text.items() if isinstance(text, dict) else ()):
        if (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str)
                and 2 <= len(entry[0]) <= 8 and entry[0].isascii() and entry[0].isalpha()
                and len(set(entry[0])) == len(entry[0]) and type(entry[1]) is int and entry[1] > 0):
            out[name] = (entry[0], entry[1])
    return out


def _gate_axis(shape: tuple[int, ...], size: int, out_axis: int | None, stored: tuple[int, ...] | None) -> int | None:
    """The axis of a 2-D matrix of `shape` that holds the gates (`size` = gates x units): the only one of that
    length; for a square (4H, 4H) kernel the output axis where the route knows it, else the stored tensor's last
    axis when the layer loads the tensor as stored (`stored`: its shape; the metadata describes Keras' stored
    (in, gates x units) layout); None: no such axis."""
    axes = [a for a in (0, 1) if shape[a] == size]
    if len(axes) == 1:
        return axes[0]
    if out_axis in axes:
        return out_axis
    return 1 if axes and stored == shape else None


def split_gates(layers: list, gates: dict[str, tuple[str, int]], out_axes=None, shapes=None) -> list:
    """`layers` with each layer of a recurrent weight (`RECURRENT_GATES_KEY`) replaced by one layer per gate, named
    `{name}.{letter}` (type "lstm" for the four gates i, f, c, o, "gru" for z, r, h, else "rnn"): a plain matrix cut
    along its gate axis (`_gate_axis`: `out_axes` {parameter: output axis} where the graph's op says it, `shapes`
    {parameter: stored shape}), a conv
    kernel's positions each cut along their output axis (an ONNX Conv slice is (out, in)). A layer whose matrices
    have no axis of gates x units is kept whole, as is one already split (its type is not dense / matrix / conv)."""
    from dataclasses import replace

    if not gates:
        return layers
    out = []
    for layer in layers:
        spec = gates.get(layer.parameter)
        conv = layer.layer_type.startswith("conv") and layer.layer_type != "conv_transpose"
        if spec is None or not (conv or layer.layer_type in ("dense", "matrix")) or layer.groups != 1:
            out.append(layer)
            continue
        letters, units = spec
        size = len(letters) * units
        shape = tuple(layer.weight_shape)
        if conv:  # every slice of an ONNX Conv kernel (out, in, *k) is (out, in): the gates on its axis 0
            axis = 0 if len(shape) >= 3 and shape[0] == size else None
        else:  # the matrix the layer loads has the shape it records
            stored = (shapes or {}).get(layer.parameter)
            axis = _gate_axis(shape, size, (out_axes or {}).get(layer.parameter), tuple(stored) if stored else None) \
                if len(shape) == 2 else None
        if axis is None:
            out.append(layer)
            continue
        kind = next((k for k, order in KERAS_GATES.items() if sorted(order) == sorted(letters)), "rnn")
        other = shape[1 - axis] if not conv else shape[1]
        for g, letter in enumerate(letters):
            out.append(replace(layer, name=f"{layer.name}.{letter}", layer_type=kind, N=max(units, other),
                               M=min(units, other), shared_with=list(layer.shared_with),
                               loader=(lambda f=layer.loader, g=g, a=axis, u=units:
                                       [gate_block(w, g, a, u) for w in f()])))
    return out


def gate_block(w, g: int, axis: int, units: int) -> np.ndarray:
    """Gate g's block of a 2-D matrix: its rows (axis 0) or columns (axis 1) g x units to (g + 1) x units."""
    cut = slice(g * units, (g + 1) * units)
    return np.asarray(w)[cut] if axis == 0 else np.asarray(w)[:, cut]


#: IR model metadata: {the row name the graph route gives: [the checkpoint's row name, its tensor, its shape]}
#: for the rows of parameters a checkpoint stores under other names or in another layout (a Hugging Face
#: folder's Mixtral experts, `block_sparse_moe.experts.3.w1`, are the module's `mlp.experts.gate_up_proj[3].gate`):
#: the checkpoint folder's frontend writes it, `checkpoint_renamed` applies it, so that every route names a
#: matrix by the tensor a user finds in the checkpoint (the rule: `frontends/torch_names.py`, `checkpoint_named`).
CHECKPOINT_NAMES_KEY = "irtools.checkpoint_names"


def checkpoint_renamed(layers: list, names) -> list:
    """`layers` with the rows `names` lists (`CHECKPOINT_NAMES_KEY`'s value: a dict or its JSON text) under
    the checkpoint's row name, tensor and shape; anything else in `names` (not JSON, not that form: a
    hand-made file's metadata) renames nothing."""
    import json
    from dataclasses import replace

    if isinstance(names, str):
        try:
            names = json.loads(names)
        except (ValueError, RecursionError):
            return layers
    if not isinstance(names, dict) or not names:
        return layers
    out = []
    for layer in layers:
        new = names.get(layer.name)
        if (isinstance(new, list) and len(new) == 3 and all(isinstance(x, str) for x in new[:2])
                and isinstance(new[2], list) and all(isinstance(d, int) and not isinstance(d, bool) for d in new[2])):
            layer = replace(layer, name=new[0], parameter=new[1], sources=(new[1],), weight_shape=tuple(new[2]),
                            shared_with=list(layer.shared_with))
        out.append(layer)
    return out


__all__ = ["CHECKPOINT_NAMES_KEY", "INTERLEAVED_GATE_UP", "KERAS_GATES", "OUT_LAST_GATE_UP", "RECURRENT_GATES_KEY",
           "checkpoint_renamed", "fused_gate_up", "gate_block", "gate_up_part", "recurrent_gates", "split_fused",
           "split_gates"]
