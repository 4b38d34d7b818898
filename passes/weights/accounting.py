"""The pass's invariant: every learnable parameter that must appear (`must_appear`: >= 2 dims, and either
two of them > 1 or read in a weight slot) yields a layer or a `skipped` entry with its reason, never
silence. A 2-D parameter that no op rule analysed (DeBERTa's `rel_embeddings`, read whole through a
LayerNorm) is analysed as the matrix it is (`layer_type` "matrix"); a stacked one by `stacked_matrices`;
one the forward pass never reads by the layout its framework gives it (`_unread_layers`); any other is
skipped, its reason naming the ops that read it."""

from __future__ import annotations

import math
import re

import numpy as np

from irtools.ir.layers import WeightLayer
from irtools.ir.parameters import StoredTensor
from irtools.ir.slots import op_slots
from irtools.passes.weights.context import VIEW_OPS, Context, is_state_name, module_path
from irtools.passes.weights.stacked import stacked_matrices


#: Ops that add a parameter to what they compute (the bias slots of ops with one: `irtools.ir.slots`).
ADDITIVE_OPS = frozenset({"Add", "Sub", "BiasAdd"})


def is_split_bias(p: StoredTensor) -> bool:
    """A bias kept per head, (heads, head_dim) in Flax DenseGeneral and Keras EinsumDense: read
    only in bias slots, or named a bias and only ever added as it is stored. Like every 1-D bias it is no weight
    matrix (a learned position table added to the input is one, and stays a layer)."""
    if not p.uses:
        return False
    if all(op_slots(u.domain, u.op_type).bias == u.input_index for u in p.uses):
        return True
    last = re.split(r"[/.:]", p.name)[-1].lower()
    # added as stored (through views at most): a table read by index first (Swin's and BEiT's
    # `relative_position_bias_table`, gathered then added to the scores) is a matrix, whatever its name
    return "bias" in last and set(p.via) <= VIEW_OPS and all(
        u.op_type in ADDITIVE_OPS or op_slots(u.domain, u.op_type).bias == u.input_index for u in p.uses)


def must_appear(p: StoredTensor) -> bool:
    """Whether a learnable parameter must yield a layer or a skipped entry (the invariant)."""
    if len(p.shape) < 2 or is_split_bias(p):
        return False
    return sum(d > 1 for d in p.shape) >= 2 or any(u.input_index in op_slots(u.domain, u.op_type).weight
                                                   for u in p.uses)


def account_for_every_parameter(ctx: Context) -> None:
    """Analyse or skip, with its reason, every parameter no op rule accounted for."""
    _unread_layers(ctx)  # first: read by no node, they are laid out as their framework says, not as a 2-D guess
    analysed = {s for layer in ctx.layers for s in (layer.parameter, *layer.sources)}
    skipped = ctx.skipped_sources
    parts = {s: layer for layer in ctx.layers for s in layer.sources if s != layer.parameter}
    for p in ctx.model.parameters:
        if p.name in parts and must_appear(p) and p.name not in skipped:
            # a matrix analysed inside another layer's weight (gate kernels concatenated before one
            # matmul): said under its own name, so that every weight matrix can be found by name
            layer = parts[p.name]
            ctx.skipped.append({"name": p.name, "node": layer.node, "op_type": layer.op_type, "parameter": p.name,
                                "reason": f"analysed as part of layer '{layer.name}' (its weight is computed from "
                                          f"{', '.join(layer.sources)})"})
            continue
        if p.name in analysed or not must_appear(p):
            continue
        readers = ", ".join(sorted({f"{u.op_type} '{u.node}' (input {u.input_index})" for u in p.uses})) or "no node"
        first = p.uses[0] if p.uses else None
        node, op_type = (first.node, first.op_type) if first else ("", "")
        if p.name not in skipped and stacked_matrices(ctx, p):
            continue
        if sum(d > 1 for d in p.shape) == 2 and p.name not in skipped:
            shape = tuple(d for d in p.shape if d > 1) if len(p.shape) > 2 else tuple(p.shape)
            label = module_path(p.name) if ctx.torch_names and is_state_name(p.name) else p.name
            if label in ctx.layer_names:
                label = p.name
            layer = WeightLayer(
                name=label, node=node, op_type=op_type, layer_type="matrix", parameter=p.name,
                weight_shape=tuple(p.shape), N=max(shape), M=min(shape), rf=1, eigen_scale=1.0,
                loader=(lambda v=p.value, s=shape: [ctx.value(v).reshape(s)]), sources=(p.name,),
            )
            ctx.layers.append(layer)
        elif p.name not in skipped:
            ctx.skipped.append({"name": p.name, "node": node, "op_type": op_type, "parameter": p.name,
                                "reason": f"{len(p.shape)}-D parameter {tuple(p.shape)} read by {readers}: "
                                          "no weight-matrix rule for it"})


def _unread_layers(ctx: Context) -> None:
    """The parameters the forward pass never reads (`IRModel.unread_parameters`; a pooler the output
    skips): analysed like read ones, by the rule their framework's layout calls for (metadata
    `irtools.unread_layouts`, written by the frontend that kept their values as initializers no node
    reads: Linear/Dense, Conv kernels per position, embeddings, experts one by one, recurrent gates),
    each row named by its module / layer path and marked `unread`. One whose values the IR does not
    hold (a file written before frontends kept them) or that has no matrix rule is skipped, with why."""
    from irtools.ir.parameters import UNREAD_REASON, default_unread_layout, unread_layouts  # noqa: PLC0415

    unread = ctx.model.unread_parameters
    if not unread:
        return
    layouts = unread_layouts(ctx.model.model.metadata_props, ctx.model.path)
    held = {p.name: p for p in ctx.model.parameters if p.name in unread and not p.uses}
    for name, shape in unread.items():
        if sum(d > 1 for d in shape) < 2:
            continue  # a vector (a bias, a norm's scale): no matrix anywhere
        p = held.get(name)
        label = module_path(name) if ctx.torch_names and is_state_name(name) else name
        layout = layouts.get(name) or default_unread_layout(name, tuple(shape), label)
        rows = list(_unread_rows(ctx, p, layout)) if p is not None and layout is not None \
            and tuple(p.shape) == tuple(shape) else []
        if not rows:
            why = ("the exporter left this tensor out of the graph" if p is None else
                   f"no weight-matrix rule for a {len(shape)}-D tensor" + (f" laid out as '{layout.kind}'"
                                                                         if layout is not None else ""))
            ctx.skipped.append({"name": name, "node": "", "op_type": "", "parameter": name,
                                "reason": f"{UNREAD_REASON}: {why} {tuple(shape)}"})
            ctx.skipped_sources.add(name)
            continue
        for row, kind, n, m, rf, scale, load, groups, extra in rows:
            if row in ctx.layer_names:
                row = f"{name}{row[len(layout.layer):]}" if row.startswith(layout.layer) else name
            ctx.layers.append(WeightLayer(
                name=row, node="", op_type="", layer_type=kind, parameter=name, weight_shape=tuple(shape),
                N=n, M=m, rf=rf, eigen_scale=scale, groups=groups, loader=load, sources=(name,),
                extra={**extra, "unread": True}))
            ctx.layer_names.add(row)


def _unread_rows(ctx: Context, p: StoredTensor, layout):
    """(row name, layer type, N, M, rf, eigen_scale, loader, groups, extra) of an unread parameter, by
    the rules the op extractors apply to a read one (`ops._dense_weight`, `ops._conv`,
    `ops._embedding`, `stacked_matrices`, `ops._recurrent`) and torch's module route (`module_weight_layers`)."""
    shape, kind, base = tuple(p.shape), layout.kind, layout.layer

    def value():
        return ctx.value(p.value)

    if kind in ("dense", "embedding", "matrix") or (len(shape) == 2 and kind not in ("rnn", "experts")):
        big = tuple(d for d in shape if d > 1) if len(shape) != 2 else shape
        if len(big) == 2:
            plain = len(shape) == 2 and kind in ("dense", "embedding", "matrix")
            yield base, kind if plain else "matrix", max(big), min(big), 1, 1.0, \
                (lambda: [np.asarray(value()).reshape(big)]), 1, {}
        elif kind == "matrix" and len(shape) == 3 and len(big) == 3:  # Funnel's r_kernel [d, heads, head_dim]
            rest = shape[1] * shape[2]
            yield base, "matrix", max(shape[0], rest), min(shape[0], rest), 1, 1.0, \
                (lambda: [np.asarray(value()).reshape(shape[0], rest)]), 1, {}
        return
    if kind == "experts" and len(shape) == 3:
        for e in range(shape[0]):
            yield f"{base}[{e}]", "dense", max(shape[1:]), min(shape[1:]), 1, 1.0, \
                (lambda e=e: [np.asarray(value())[e]]), 1, {"expert": e}
        return
    if kind == "rnn" and len(shape) == 2 and layout.gates and shape[0] % len(layout.gates) == 0:
        hidden = shape[0] // len(layout.gates)
        for g, gate in enumerate(layout.gates):
            yield f"{base}.{gate}", {"ifgo": "lstm", "rzn": "gru"}.get(layout.gates, "rnn"), max(hidden, shape[1]), min(hidden, shape[1]), 1, 1.0, \
                (lambda g=g: [np.asarray(value())[g * hidden:(g + 1) * hidden]]), 1, {}
        return
    if kind in ("conv", "conv_transpose", "depthwise") and 3 <= len(shape) <= 5:
        last = layout.kernel == "IO" or kind == "depthwise"
        spatial = shape[:-2] if last else shape[2:]
        positions = list(np.ndindex(*spatial))
        if kind == "depthwise":  # (*k, in, multiplier): as ONNX reads it, one (in x multiplier) x 1 column
            n, m = shape[-2] * shape[-1], 1

            def pick(w, pos):
                return w[pos].reshape(-1, 1)
        else:
            io = shape[-2:] if last else shape[:2]
            n, m = max(io), min(io)

            def pick(w, pos):
                return w[pos] if last else w[(slice(None), slice(None), *pos)]
        layer_type = "conv_transpose" if kind == "conv_transpose" else f"conv{len(spatial)}d"
        rf = math.prod(spatial)

        def slices():
            w = np.asarray(value())
            return [pick(w, pos) for pos in positions]

        if ctx.opts.conv_slices:
            for k, pos in enumerate(positions):
                yield f"{base}[{','.join(map(str, pos))}]", layer_type, n, m, 1, rf / 2.0, \
                    (lambda k=k: [slices()[k]]), layout.groups, {}
        else:
            yield base, layer_type, n, m, rf, 0.5, slices, layout.groups, {}
