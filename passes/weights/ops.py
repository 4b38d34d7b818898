"""The extraction rule of each weight-bearing op (`EXTRACTORS`): the 2-D matrices a node computes with.

Gemm and MatMul with a constant weight on either side (a part of a stored weight, split before its
matmuls, is that whole weight: `_whole_of_part`), Conv / ConvTranspose (1-3 spatial dims) cut into
one matrix per kernel position, embeddings (Gather on a constant table), LSTM / GRU / RNN (W and R
per gate and direction), MatMulNBits packed weights; weights reached through Transpose / Reshape /
Cast / DequantizeLinear are evaluated first. Quantized operators (`QUANTIZED_WEIGHTS`: QLinearConv,
QLinearMatMul, QGemm, ConvInteger, MatMulInteger, QAttention, ...) give their integer weight
dequantized, scale * (q - zero point), per tensor or per output channel; MatMulInteger and
ConvInteger take the weight scale from the Mul that rescales their output (onnxruntime's dynamic
quantizer). Matrices are loaded lazily, one layer at a time.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from irtools.ir.parameters import StoredTensor
from irtools.ir.slots import slots_of
from irtools.passes.weights.context import VIEW_OPS, Context, module_path


def _dense(ctx: Context, node: ir.Node) -> None:
    for slot in (1, 0):
        v = ctx.const_input(node, slot)
        if v is None or not (v.dtype is not None and v.dtype.is_floating_point()):
            continue
        whole = _whole_of_part(ctx, v)
        if whole is not None:
            _whole_dense_weight(ctx, node, slot, whole)
            return
        parts = _concatenated_parameters(ctx, v)
        if parts:
            _dense_parts(ctx, node, slot, parts)
            return
        _dense_weight(ctx, node, slot, v, lambda v=v: ctx.value(v))
        return


#: Ops between a Concat of parameters and the matmul that reads it which keep each part's values as a matrix.
_PART_VIEWS = frozenset({"Identity", "Cast", "Transpose"})


def _concatenated_parameters(ctx: Context, v: ir.Value) -> list[ir.Value]:
    """The parts of a dense operand that is a Concat of 2-D views of stored parameters (through Identity, Cast or
    Transpose), or []: Flax's OptimizedLSTMCell concatenates its four gate kernels at run time, a custom attention
    its q, k and v weights. x @ [A | B] is [x @ A | x @ B] (and [x1, x2] @ [A; B] is x1 @ A + x2 @ B): each stored
    part is a matrix of its own, as the module route and a weights file analyse them, not one fused matrix."""
    for _ in range(8):
        producer = v.producer()
        if producer is None or producer.op_type not in _PART_VIEWS or not producer.inputs or \
                producer.inputs[0] is None:
            break
        v = producer.inputs[0]
    producer = v.producer()
    if producer is None or producer.op_type != "Concat" or producer.domain not in ("", "ai.onnx") or \
            len(producer.inputs) < 2 or not ctx.model.constants_analysis.is_constant(v):
        return []
    parts = list(producer.inputs)
    for part in parts:
        if part is None:
            return []
        names, view = ctx.origin(part)
        if not (view and len(names) == 1) or len(ctx.model.static_shape(part)) != 2:
            return []
    return parts


def _dense_parts(ctx: Context, node: ir.Node, slot: int, parts: list[ir.Value]) -> None:
    """One dense layer per concatenated parameter (`_concatenated_parameters`), named by its module path
    (`attn.q_proj.weight` -> `attn.q_proj`; Flax's `params/OptimizedLSTMCell_0/ii/kernel` ->
    `OptimizedLSTMCell_0/ii`, as the JAX frontend names a module's node): the node computes with all of them."""
    for part in parts:
        shape = tuple(ctx.model.static_shape(part))
        parameter = ctx.parameter(part)
        name = ctx.layer_name(node, parameter, (parameter,)) if ctx.torch_names else module_path(parameter)
        if name.startswith("params/") and name.count("/") >= 2:  # a Flax collection is no part of the path
            name = name[len("params/"):]
        ctx.add(node, slot, "dense", shape, max(shape), min(shape), 1, 1.0, lambda part=part: [ctx.value(part)],
                value=part, label=name)


#: Ops that take a part of their first input's values (with the views of `VIEW_OPS` between them): the dynamo
#: exporter writes torch's split as SplitToSequence and a SequenceAt per part.
PART_OPS = frozenset({"Split", "Slice", "SplitToSequence", "SequenceAt"})


def _whole_of_part(ctx: Context, v: ir.Value) -> StoredTensor | None:
    """The 2-D parameter a dense operand is a part of (through `PART_OPS` and views), or None.
    nn.MultiheadAttention with a query other than its keys (cross-attention, SigLIP's pooling head) splits
    its stored (3E, E) `in_proj_weight` into a (E, E) and a (2E, E) part, one matmul each: the layer is the
    stored matrix, as the module and weights-only routes analyse it. (Each part as a layer of the
    parameter's name analysed the first part alone, the others taken for shared uses of it.)"""
    part = False
    for _ in range(64):  # a chain of views and parts; a graph's chains are short
        p = ctx.parameter_of.get(v)
        if p is not None:
            return p if part and len(p.shape) == 2 and min(p.shape) > 0 else None
        producer = v.producer()
        if producer is None or producer.op_type not in PART_OPS | VIEW_OPS or not producer.inputs or \
                producer.inputs[0] is None or not ctx.model.constants_analysis.is_constant(producer.inputs[0]):
            return None
        part = part or producer.op_type in PART_OPS
        v = producer.inputs[0]
    return None


def _whole_dense_weight(ctx: Context, node: ir.Node, slot: int, p: StoredTensor) -> None:
    """`_dense_weight` of the whole stored parameter `p` a node reads a part of (`_whole_of_part`): one layer
    for all its parts' nodes (the other parts' nodes are its shared uses); with --split-qkv a (3E, E) or (E, 3E)
    parameter in thirds along its long axis, as stored."""
    shape = tuple(p.shape)
    axis = 0 if shape[0] >= shape[1] else 1
    _add_dense(ctx, node, slot, shape, axis if ctx.opts.split_qkv and shape[axis] == 3 * shape[1 - axis] else None,
               lambda v=p.value: ctx.value(v), value=p.value)


def _dense_weight(ctx: Context, node: ir.Node, slot: int, v: ir.Value, load: Callable[[], np.ndarray]) -> None:
    """One dense weight matrix (or its q, k, v thirds with --split-qkv); `load` gives its float values."""
    shape = ctx.model.static_shape(v)
    if len(shape) != 2:
        ctx.skip(node, slot, f"constant operand of rank {len(shape)}, expected a 2-D weight")
        return
    parameter = ctx.parameter(v)
    if parameter and parameter not in ctx.out_axes:  # which axis holds a fused gate/up's two halves
        ctx.out_axes[parameter] = _output_axis(node, slot)
    split = ctx.opts.split_qkv and _is_fused_qkv(node, slot, shape)
    _add_dense(ctx, node, slot, shape, _output_axis(node, slot) if split else None, load)


def _add_dense(ctx: Context, node: ir.Node, slot: int, shape, qkv_axis: int | None, load: Callable[[], np.ndarray],
               value: ir.Value | None = None) -> None:
    """A dense layer of the 2-D `shape` (values from `load`), or, with `qkv_axis`, its q, k and v thirds
    along that axis (`--split-qkv`); `value`: the weight's IR value when it is not the node's input."""
    if qkv_axis is None:
        ctx.add(node, slot, "dense", shape, max(shape), min(shape), 1, 1.0, lambda: [load()], value=value)
        return
    third = shape[qkv_axis] // 3
    for k, part in enumerate("qkv"):
        sub = list(shape)
        sub[qkv_axis] = third
        ctx.add(node, slot, "dense", sub, max(sub), min(sub), 1, 1.0,
                (lambda k=k: [np.take(load(), range(k * third, (k + 1) * third), qkv_axis)]),
                suffix=f":{part}", value=value)


def _output_axis(node: ir.Node, slot: int) -> int:
    """Axis of a Gemm/MatMul weight that indexes output features (QGemm's B is slot 3, A slot 0)."""
    if node.op_type in ("Gemm", "QGemm"):
        is_b = slot in (1, 3) if node.op_type == "QGemm" else slot == 1
        trans = node.attributes.get("transB" if is_b else "transA")
        t = bool(trans.value) if trans is not None else False
        return (0 if t else 1) if is_b else (1 if t else 0)
    return 0 if slot == 0 else 1


def _is_fused_qkv(node: ir.Node, slot: int, shape) -> bool:
    out_axis = _output_axis(node, slot)
    return shape[out_axis] == 3 * shape[1 - out_axis]


def _conv(ctx: Context, node: ir.Node, slot: int = 1, load: Callable[[], np.ndarray] | None = None) -> None:
    v = ctx.const_input(node, slot)
    if v is None:
        return
    load = load or (lambda: ctx.value(v))
    shape = ctx.model.static_shape(v)
    spatial = shape[2:]
    if not 1 <= len(spatial) <= 3:
        ctx.skip(node, 1, f"{len(spatial)}-D kernel")
        return
    transpose = node.op_type in ("ConvTranspose", "QLinearConvTranspose")
    layer_type = "conv_transpose" if transpose else f"conv{len(spatial)}d"
    groups_attr = node.attributes.get("group")
    groups = int(groups_attr.value) if groups_attr is not None else 1
    rf = math.prod(spatial)
    n, m = max(shape[0], shape[1]), min(shape[0], shape[1])
    positions = list(np.ndindex(*spatial))

    def slices():
        w = load()
        return [w[(slice(None), slice(None), *pos)] for pos in positions]

    if ctx.opts.conv_slices:
        for k, pos in enumerate(positions):
            ctx.add(node, slot, layer_type, shape, n, m, 1, rf / 2.0,
                    (lambda k=k: [slices()[k]]), suffix=f"[{','.join(map(str, pos))}]", groups=groups)
    else:
        ctx.add(node, slot, layer_type, shape, n, m, rf, 0.5, slices, groups=groups)


def _embedding(ctx: Context, node: ir.Node) -> None:
    v = ctx.const_input(node, 0)
    axis = node.attributes.get("axis")
    if v is None or (axis is not None and axis.value != 0):
        return
    if not ctx.origin(v)[0]:
        return  # a row lookup in a learnable table (token or position embedding), not shape arithmetic
    shape = ctx.model.static_shape(v)
    if len(shape) != 2:
        return
    ctx.add(node, 0, "embedding", shape, max(shape), min(shape), 1, 1.0, lambda v=v: [ctx.value(v)])


def _recurrent(ctx: Context, node: ir.Node) -> None:
    """W and R per direction and gate; DynamicQuantizeLSTM's transposed int8 ones dequantized first."""
    quantized = node.op_type == "DynamicQuantizeLSTM"
    slots = slots_of(node)  # gates in ONNX's order; DynamicQuantizeLSTM: a scale and zero point per weight
    gates = slots.gates
    for slot, label in ((1, "W"), (2, "R")):
        v = ctx.const_input(node, slot)
        if v is None:
            continue
        shape = ctx.model.static_shape(v)
        if quantized:
            shape = (shape[0], shape[2], shape[1])
        hidden = shape[1] // len(gates)  # shape: (directions, gates * hidden, input or hidden)
        s_slot, z_slot = next(sc[1:] for sc in slots.scales if sc[0] == slot) if quantized else (None, None)
        if quantized:
            from irtools.ir.quant import dequantize_problem

            if ctx.const_input(node, s_slot) is None:
                ctx.skip(node, slot, "quantized weight whose scale is not a constant the graph shows")
                continue
            s_shape = ctx.model.static_shape(node.inputs[s_slot])
            z_shape = ctx.model.static_shape(node.inputs[z_slot]) if ctx.const_input(node, z_slot) is not None \
                else None
            per_channel = (shape[0], shape[1])
            problem = (None if s_shape == per_channel and z_shape in (None, per_channel) else
                       dequantize_problem((shape[0], shape[2], shape[1]), s_shape, z_shape, 0))
            if problem:
                ctx.skip(node, slot, f"quantized weight not dequantized: {problem}")
                continue

        def load(v=v, s_slot=s_slot, z_slot=z_slot):
            w = ctx.value(v)
            if not quantized:
                return w
            from irtools.ir.quant import dequantize_linear

            s, z = (ctx.model.constant_value(node.inputs[i]) if ctx.const_input(node, i) is not None else None
                    for i in (s_slot, z_slot))
            s, z = np.asarray(s), None if z is None else np.asarray(z)
            if s.ndim == 2:  # per channel: (directions, gates * hidden) scales of W's last axis
                zero = 0.0 if z is None else z.astype(np.float64)[:, None, :]
                return ((w.astype(np.float64) - zero) * s.astype(np.float64)[:, None, :]).transpose(0, 2, 1)
            return dequantize_linear(w, s, z, axis=0).transpose(0, 2, 1)

        torch_names = _torch_recurrent_names(ctx, v, shape[0])
        for d in range(shape[0]):
            for g, gate in enumerate(gates):
                loader = (lambda load=load, d=d, g=g, hd=hidden: [load()[d, g * hd:(g + 1) * hd, :]])
                kind, n, m = "lstm" if quantized else node.op_type.lower(), max(hidden, shape[2]), min(hidden, shape[2])
                if torch_names:  # PyTorch's own tensor per direction, its gate letters: the module route's rows
                    ctx.add(node, slot, kind, shape, n, m, 1, 1.0, loader, suffix=f".{_TORCH_GATE.get(gate, gate)}",
                            label=torch_names[d], parameter=torch_names[d])
                else:
                    ctx.add(node, slot, kind, shape, n, m, 1, 1.0, loader, suffix=f":{label}[{d}].{gate}")


#: PyTorch's recurrent weights (`rnn.weight_ih_l0`, `rnn.weight_hh_l1_reverse`) and its names of ONNX's gates
#: (LSTM i, o, f, c are torch's i, o, f, g; GRU z, r, h are z, r, n), as the module and weights-only routes name rows.
_TORCH_RECURRENT = re.compile(r"weight_(ih|hh)_l(\d+)(_reverse)?$")
_TORCH_GATE = {"c": "g", "h": "n"}


def _torch_recurrent_names(ctx: Context, v: ir.Value, directions: int) -> list[str]:
    """On a PyTorch graph, the torch tensor behind each direction of a recurrent op's W or R (the exporter stacks
    `weight_ih_l0` and `weight_ih_l0_reverse`, its gates reordered): one per direction, or [] (another source)."""
    if not ctx.torch_names:
        return []
    names = ctx.origin(v)[0]
    found = {name: _TORCH_RECURRENT.search(name) for name in names}
    if len(names) != directions or not all(found.values()):
        return []
    by_direction = sorted(names, key=lambda n: found[n][3] is not None)  # forward, then _reverse
    if len({found[n].group(1, 2) for n in names}) != 1 or [found[n][3] is not None for n in by_direction] != \
            [d == 1 for d in range(directions)]:
        return []
    return by_direction


def _matmul_nbits(ctx: Context, node: ir.Node) -> None:
    from irtools.ir.quant import dequantize_matmul_nbits, matmul_nbits_problem

    b = ctx.const_input(node, 1)
    s = ctx.const_input(node, 2)
    if b is None or s is None:
        return
    attrs = {k: a.value for k, a in node.attributes.items()}
    n, k, block, bits = (attrs.get(name, default) for name, default in
                         (("N", None), ("K", None), ("block_size", None), ("bits", 4)))
    z = ctx.const_input(node, 3)
    if z is None and len(node.inputs) > 3 and node.inputs[3] is not None:
        ctx.skip(node, 1, "MatMulNBits zero points are not a constant the graph shows")
        return
    if z is not None and z.dtype != ir.DataType.UINT8:  # zero points of the scales' float type, one per block
        ctx.skip(node, 1, f"MatMulNBits zero points of type {z.dtype}: only packed uint8 zero points are read")
        return
    sizes = [math.prod(ctx.model.static_shape(v)) for v in (b, s)]
    zeros = math.prod(ctx.model.static_shape(z)) if z is not None else None
    problem = matmul_nbits_problem(n, k, block, bits, *sizes, zeros)
    if problem:  # the unpacking kernel reads the stored arrays where the attributes say they are
        ctx.skip(node, 1, f"MatMulNBits weight not unpacked: {problem}")
        return

    def load():
        zeros = ctx.model.constant_value(z) if z is not None else None
        return [dequantize_matmul_nbits(ctx.model.constant_value(b), ctx.model.constant_value(s), zeros, n, k, block, bits)]

    ctx.add(node, 1, "dense", (n, k), max(n, k), min(n, k), 1, 1.0, load)


# -- quantized operators: their weights dequantized (scale * (q - zero point)) ------------------
@dataclass(frozen=True, slots=True)
class _QuantWeight:
    """Where a quantized op keeps its weight: slot, scale slot, zero-point slot (None: none, or for
    MatMulInteger / ConvInteger the scale applied to the output by a following Mul)."""

    kind: str  # dense | conv
    slot: int
    scale: int | None
    zero: int | None


QUANTIZED_WEIGHTS: dict[str, _QuantWeight] = {
    "QLinearConv": _QuantWeight("conv", 3, 4, 5),
    "com.microsoft::QLinearConvTranspose": _QuantWeight("conv", 3, 4, 5),
    "ConvInteger": _QuantWeight("conv", 1, None, 3),
    "QLinearMatMul": _QuantWeight("dense", 3, 4, 5),
    "com.microsoft::QGemm": _QuantWeight("dense", 3, 4, 5),
    "MatMulInteger": _QuantWeight("dense", 1, None, 3),
    "com.microsoft::DynamicQuantizeMatMul": _QuantWeight("dense", 1, 2, 3),
    "com.microsoft::MatMulIntegerToFloat": _QuantWeight("dense", 1, 3, 5),
    "com.microsoft::QAttention": _QuantWeight("dense", 1, 4, 7),
}


def _output_scale(ctx: Context, node: ir.Node) -> np.ndarray | None:
    """MatMulInteger / ConvInteger as onnxruntime's dynamic quantizer writes them: the integer
    output is Cast, then multiplied by Mul(input scale, weight scale); the weight scale is that
    Mul's constant operand (or the constant multiplier itself)."""
    consts = ctx.model.constants_analysis
    frontier = [node.outputs[0]]
    for _ in range(3):
        nxt = []
        for v in frontier:
            for use in v.uses():
                user = use.node
                if user.op_type == "Cast":
                    nxt.extend(user.outputs)
                elif user.op_type == "Mul":
                    other = user.inputs[1 - use.idx]
                    if other is None:
                        continue
                    if consts.is_constant(other):
                        return np.asarray(ctx.model.constant_value(other), dtype=np.float64)
                    maker = other.producer()
                    if maker is not None and maker.op_type == "Mul":
                        for x in maker.inputs:
                            if x is not None and consts.is_constant(x):
                                return np.asarray(ctx.model.constant_value(x), dtype=np.float64)
        frontier = nxt
    return None


def _quantized(ctx: Context, node: ir.Node) -> None:
    from irtools.ir.quant import dequantize_linear, dequantize_problem

    key = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
    spec = QUANTIZED_WEIGHTS[key]
    v = ctx.const_input(node, spec.slot)
    if v is None:
        return
    if spec.scale is not None:
        s = ctx.const_input(node, spec.scale)
        scale = None if s is None else np.asarray(ctx.model.constant_value(s), dtype=np.float64)
    else:
        scale = _output_scale(ctx, node)
    if scale is None:
        ctx.skip(node, spec.slot, "quantized weight whose scale is not a constant the graph shows")
        return
    z = ctx.const_input(node, spec.zero) if spec.zero is not None else None
    # per-channel scales run along the output features: a kernel's axis 0 (1 transposed), B's output axis
    if spec.kind == "conv":
        axis = 1 if node.op_type == "QLinearConvTranspose" else 0
    else:
        axis = _output_axis(node, spec.slot)
    zero_shape = None if z is None else (math.prod(ctx.model.static_shape(z)),)
    problem = dequantize_problem(ctx.model.static_shape(v), scale.ravel().shape, zero_shape, axis)
    if problem:  # the product would be a broadcast of the stored weight, not the weight
        ctx.skip(node, spec.slot, f"quantized weight not dequantized: {problem}")
        return

    def load(v=v, z=z, scale=scale, axis=axis):
        zero = None if z is None else np.asarray(ctx.model.constant_value(z)).ravel()
        return dequantize_linear(ctx.model.constant_value(v), scale.ravel(), zero, axis=axis)

    if spec.kind == "conv":
        _conv(ctx, node, spec.slot, load)
    else:
        _dense_weight(ctx, node, spec.slot, v, load)


EXTRACTORS: dict[str, Callable[[Context, ir.Node], None]] = {
    **{key: _quantized for key in QUANTIZED_WEIGHTS},
    "Gemm": _dense,
    "MatMul": _dense,
    "Conv": _conv,
    "ConvTranspose": _conv,
    "Gather": _embedding,
    "LSTM": _recurrent,
    "com.microsoft::DynamicQuantizeLSTM": _recurrent,
    "GRU": _recurrent,
    "RNN": _recurrent,
    "com.microsoft::MatMulNBits": _matmul_nbits,
    "com.microsoft::Attention": _dense,  # input (B, S, D) @ weights (D, 3D): the fused Q, K, V projection
}
