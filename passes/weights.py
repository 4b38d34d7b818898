"""The `weights` pass: the 2-D matrices behind every weight-bearing node, with their names.

One extraction rule per op (`EXTRACTORS`): Gemm and MatMul with a constant weight on either
side, Conv / ConvTranspose (1-3 spatial dims) cut into one matrix per kernel position,
embeddings (Gather on a constant table), LSTM / GRU / RNN (W and R per gate and direction),
MatMulNBits packed weights; weights reached through Transpose / Reshape / Cast /
DequantizeLinear are evaluated first. Matrices are loaded lazily, one layer at a time.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from irtools.ir.layers import WeightLayer
from irtools.ir.model import IRModel
from irtools.passing import Pass, register_pass

GATES = {"LSTM": "iofc", "GRU": "zrh", "RNN": "h"}


@dataclass(slots=True)
class Weights:
    """Result of the `weights` pass."""

    layers: list[WeightLayer]
    skipped: list[dict]  # {"name", "node", "op_type", "parameter", "reason"}


class _Ctx:
    def __init__(self, model: IRModel, opts: WeightsPass):
        self.model, self.opts = model, opts
        self.param_of: dict[tuple[str, int], str] = {}
        for p in model.parameters:
            for u in p.uses:  # the nodes that compute with it, after view-like constant ops
                self.param_of[(u.node, u.input_index)] = p.name
            for usage in p.value.uses():  # and its direct readers, constant ones included
                self.param_of[(model.node_names[usage.node], usage.idx)] = p.name
        self.layers: list[WeightLayer] = []
        self.skipped: list[dict] = []
        self._seen: dict[tuple, WeightLayer] = {}

    def const_input(self, node: ir.Node, i: int) -> ir.Value | None:
        if i >= len(node.inputs) or node.inputs[i] is None:
            return None
        v = node.inputs[i]
        return v if self.model.constants_analysis.is_constant(v) else None

    def value(self, v: ir.Value) -> np.ndarray:
        """A weight's values in its stored float precision (backends compute in float64)."""
        return np.asarray(self.model.constant_value(v))

    def add(self, node, slot, layer_type, shape, n, m, rf, scale, loader, suffix="", groups=1):
        name = self.model.node_names[node]
        parameter = self.param_of.get((name, slot), "")
        key = (parameter, node.op_type, suffix.split(":")[-1] if ":" in suffix else suffix)
        if parameter and key in self._seen:  # a shared weight (e.g. an unrolled LSTM) is one layer
            self._seen[key].shared_with.append(name)
            return
        layer = WeightLayer(
            name=name + suffix, node=name, op_type=node.op_type, layer_type=layer_type,
            parameter=parameter, weight_shape=tuple(shape), N=n, M=m, rf=rf,
            eigen_scale=scale, groups=groups, loader=loader,
        )
        self.layers.append(layer)
        if parameter:
            self._seen[key] = layer

    def skip(self, node, slot, reason):
        name = self.model.node_names[node]
        self.skipped.append({"name": name, "node": name, "op_type": node.op_type,
                             "parameter": self.param_of.get((name, slot), ""), "reason": reason})


def _dense(ctx: _Ctx, node: ir.Node) -> None:
    for slot in (1, 0):
        v = ctx.const_input(node, slot)
        if v is None or not (v.dtype is not None and v.dtype.is_floating_point()):
            continue
        shape = ctx.model.static_shape(v)
        if len(shape) != 2:
            ctx.skip(node, slot, f"constant operand of rank {len(shape)}, expected a 2-D weight")
            return
        n, m = max(shape), min(shape)
        split = ctx.opts.split_qkv and _is_fused_qkv(node, slot, shape)
        if split:
            axis = _output_axis(node, slot)
            third = shape[axis] // 3
            for k, part in enumerate("qkv"):
                sub = list(shape)
                sub[axis] = third
                ctx.add(node, slot, "dense", sub, max(sub), min(sub), 1, 1.0,
                        (lambda v=v, k=k, axis=axis, t=third: [np.take(ctx.value(v), range(k * t, (k + 1) * t), axis)]),
                        suffix=f":{part}")
            return
        ctx.add(node, slot, "dense", shape, n, m, 1, 1.0, lambda v=v: [ctx.value(v)])
        return


def _output_axis(node: ir.Node, slot: int) -> int:
    """Axis of a Gemm/MatMul weight that indexes output features."""
    if node.op_type == "Gemm":
        trans = node.attributes.get("transB" if slot == 1 else "transA")
        t = bool(trans.value) if trans is not None else False
        return (0 if t else 1) if slot == 1 else (1 if t else 0)
    return 1 if slot == 1 else 0


def _is_fused_qkv(node: ir.Node, slot: int, shape) -> bool:
    out_axis = _output_axis(node, slot)
    return shape[out_axis] == 3 * shape[1 - out_axis]


def _conv(ctx: _Ctx, node: ir.Node) -> None:
    v = ctx.const_input(node, 1)
    if v is None:
        return
    shape = ctx.model.static_shape(v)
    spatial = shape[2:]
    if not 1 <= len(spatial) <= 3:
        ctx.skip(node, 1, f"{len(spatial)}-D kernel")
        return
    transpose = node.op_type == "ConvTranspose"
    layer_type = "conv_transpose" if transpose else f"conv{len(spatial)}d"
    groups_attr = node.attributes.get("group")
    groups = int(groups_attr.value) if groups_attr is not None else 1
    rf = math.prod(spatial)
    n, m = max(shape[0], shape[1]), min(shape[0], shape[1])
    positions = list(np.ndindex(*spatial))

    def slices(v=v):
        w = ctx.value(v)
        return [w[(slice(None), slice(None), *pos)] for pos in positions]

    if ctx.opts.conv_slices:
        for k, pos in enumerate(positions):
            ctx.add(node, 1, layer_type, shape, n, m, 1, rf / 2.0,
                    (lambda v=v, k=k: [slices(v)[k]]), suffix=f"[{','.join(map(str, pos))}]", groups=groups)
    else:
        ctx.add(node, 1, layer_type, shape, n, m, rf, 0.5, slices, groups=groups)


def _embedding(ctx: _Ctx, node: ir.Node) -> None:
    v = ctx.const_input(node, 0)
    axis = node.attributes.get("axis")
    if v is None or (axis is not None and axis.value != 0):
        return
    if (ctx.model.node_names[node], 0) not in ctx.param_of:
        return  # a row lookup in a learnable table (token or position embedding), not shape arithmetic
    shape = ctx.model.static_shape(v)
    if len(shape) != 2:
        return
    ctx.add(node, 0, "embedding", shape, max(shape), min(shape), 1, 1.0, lambda v=v: [ctx.value(v)])


def _recurrent(ctx: _Ctx, node: ir.Node) -> None:
    gates = GATES[node.op_type]
    for slot, label in ((1, "W"), (2, "R")):
        v = ctx.const_input(node, slot)
        if v is None:
            continue
        shape = ctx.model.static_shape(v)  # (directions, gates * hidden, input or hidden)
        hidden = shape[1] // len(gates)
        for d in range(shape[0]):
            for g, gate in enumerate(gates):
                ctx.add(node, slot, node.op_type.lower(), shape, max(hidden, shape[2]), min(hidden, shape[2]), 1, 1.0,
                        (lambda v=v, d=d, g=g: [ctx.value(v)[d, g * hidden:(g + 1) * hidden, :]]),
                        suffix=f":{label}[{d}].{gate}")


def _matmul_nbits(ctx: _Ctx, node: ir.Node) -> None:
    from irtools.ir.quant import dequantize_matmul_nbits

    b = ctx.const_input(node, 1)
    s = ctx.const_input(node, 2)
    if b is None or s is None:
        return
    attrs = {k: a.value for k, a in node.attributes.items()}
    n, k, block, bits = int(attrs["N"]), int(attrs["K"]), int(attrs["block_size"]), int(attrs.get("bits", 4))
    z = ctx.const_input(node, 3)

    def load():
        zeros = ctx.model.constant_value(z) if z is not None else None
        return [dequantize_matmul_nbits(ctx.model.constant_value(b), ctx.model.constant_value(s), zeros, n, k, block, bits)]

    ctx.add(node, 1, "dense", (n, k), max(n, k), min(n, k), 1, 1.0, load)


EXTRACTORS: dict[str, Callable[[_Ctx, ir.Node], None]] = {
    "Gemm": _dense,
    "MatMul": _dense,
    "Conv": _conv,
    "ConvTranspose": _conv,
    "Gather": _embedding,
    "LSTM": _recurrent,
    "GRU": _recurrent,
    "RNN": _recurrent,
    "com.microsoft::MatMulNBits": _matmul_nbits,
}


@register_pass
class WeightsPass(Pass):
    """The 2-D weight matrices of every Gemm/MatMul/Conv/embedding/recurrent node."""

    name = "weights"
    conv_slices: bool = False  # one layer per kernel position instead of one pooled ESD
    split_qkv: bool = False  # split fused (in, 3*in) projections into q, k, v

    def run(self, model: IRModel) -> Weights:
        ctx = _Ctx(model, self)
        for node in model.all_nodes:
            key = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
            rule = EXTRACTORS.get(key)
            if rule is not None:
                rule(ctx, node)
        return Weights(ctx.layers, ctx.skipped)
