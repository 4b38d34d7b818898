"""Activation regions: a parameter-free elementwise subgraph of one tensor that gates it (swish
x * sigmoid(x), GELU, mish, ...) counts as one activation, so its source takes the exit's counts
once instead of once per path through the subgraph (conventions.md section 1)."""

from __future__ import annotations

import onnx_ir as ir

from irtools.ir.model import IRModel
from irtools.passes.context_counts.liveness import live_values

# Elementwise ops an activation expanded into a subgraph is built from (swish, GELU, mish, ...).
_ACTIVATION_PARTS = frozenset(
    "Mul Add Sub Div Pow Sigmoid Tanh Erf Relu Exp Log Softplus HardSigmoid Clip Min Max Neg Abs Sqrt "
    "Reciprocal Softsign".split()
)


def _activation_part(node: ir.Node) -> str | None:
    """The elementwise op a node is as part of an activation subgraph: itself, or the float op of
    a quantized twin (QLinearSigmoid, QLinearMul); Quantize/DequantizeLinear pass values on."""
    op = node.op_type
    if node.domain == "com.microsoft" and op.startswith("QLinear"):
        op = op[len("QLinear"):]
    elif node.domain not in ("", "ai.onnx"):
        return None
    return op if op in _ACTIVATION_PARTS or op in ("QuantizeLinear", "DequantizeLinear") else None


def activation_regions(model: IRModel, live: set[ir.Value] | None = None) -> dict[ir.Value, ir.Value]:
    """Exits of parameter-free elementwise subgraphs of one tensor that gate it (x * f(x)).

    Returns {exit value: source tensor}; such a subgraph counts as one activation, so the
    source receives the exit's counts once instead of once per path through the subgraph.
    A node reading a parameter, or a constant computed from one (GroupNorm exported as
    InstanceNormalization, then Mul / Add by the Unsqueeze'd weight and bias), is never part of
    a region: its parameter takes contexts.
    """
    consts = model.constants_analysis
    params = live if live is not None else live_values(model)
    src: dict[ir.Value, ir.Value] = {}
    gated: dict[ir.Value, bool] = {}
    for node in model.nodes:
        op = _activation_part(node)
        if op is None or len(node.outputs) != 1:
            continue
        inputs = [v for v in node.inputs if v is not None]
        if any(v in params and (consts.is_constant(v) or v.const_value is not None) for v in inputs):
            continue
        live = [v for v in inputs if not consts.is_constant(v)]
        roots = {src.get(v, v) for v in live}
        if len(roots) != 1:
            continue
        x = roots.pop()
        out = node.outputs[0]
        if out.shape is None or x.shape is None or list(out.shape) != list(x.shape):
            continue
        src[out] = x
        gated[out] = any(gated.get(v, False) for v in live) or (op in ("Mul", "Div") and len(live) == 2)
    members: dict[ir.Value, list[ir.Value]] = {}
    for v, x in src.items():
        members.setdefault(x, []).append(v)
    graph_outputs = set(model.outputs)
    exits: dict[ir.Value, ir.Value] = {}
    for x, vals in members.items():
        inside = set(vals)
        leaving = [v for v in vals if v in graph_outputs or any(u.node.outputs[0] not in inside for u in v.uses())]
        if len(leaving) != 1 or not gated.get(leaving[0], False):
            continue
        exits[leaving[0]] = x
    return exits
