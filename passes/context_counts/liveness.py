"""Which values the sweep visits: those computed from a learnable parameter (`live_values`).

Only they can hand contexts back to a parameter; causal masks, position ids and shape arithmetic
(Range, Trilu, comparisons, ...) need neither a counting rule nor a static shape. Ops whose outputs
are shapes, indices, masks or booleans (`NO_CONTEXT`) end a path.
"""

from __future__ import annotations

import onnx_ir as ir

from irtools.ir.model import IRModel
from irtools.ir.slots import slots_of

#: Ops whose outputs are shapes, indices, masks or booleans: they carry no contexts, and a value
#: computed from them alone (a causal mask, position ids) is downstream of nothing learnable.
NO_CONTEXT = frozenset(
    "Shape Size Range Equal Less Greater LessOrEqual GreaterOrEqual And Or Xor Not IsNaN IsInf ArgMax ArgMin "
    "NonZero EyeLike ConstantOfShape OneHot Hardmax RandomNormal RandomUniform RandomNormalLike RandomUniformLike "
    "SequenceLength Multinomial Bernoulli BitShift BitwiseAnd BitwiseOr BitwiseXor BitwiseNot StringNormalizer "
    "NonMaxSuppression".split()
)


def subgraphs(node: ir.Node):
    for a in node.attributes.values():
        if a.type == ir.AttributeType.GRAPH:
            yield a.value
        elif a.type == ir.AttributeType.GRAPHS:
            yield from a.value


def _captured(node: ir.Node) -> list[ir.Value]:
    """Values a node's subgraphs read from enclosing graphs."""
    out = []
    for g in subgraphs(node):
        inner = set(g.inputs) | {v for n in ir.traversal.RecursiveGraphIterator(g) for v in n.outputs}
        for n in ir.traversal.RecursiveGraphIterator(g):
            out.extend(v for v in n.inputs if v is not None and v not in inner)
        out.extend(v for v in g.outputs if v not in inner)
    return out


def live_values(model: IRModel) -> set[ir.Value]:
    """Values computed from a learnable parameter through inputs that carry contexts.

    Only these can hand contexts back to a parameter; everything else (causal masks built from
    Range / Trilu / comparisons, position ids, shape arithmetic) is skipped by the sweep, so it
    needs neither a counting rule nor a static shape. A node with subgraphs is live when any
    input or any value its subgraphs read is; its subgraphs' inputs are then live too.
    """
    live = {p.value for p in model.parameters}
    for node in model.all_nodes:  # producers first, an owner before its subgraphs' nodes
        if node.domain in ("", "ai.onnx") and node.op_type in NO_CONTEXT:
            continue
        structural = slots_of(node).context_free
        hit = any(v is not None and i not in structural and v in live for i, v in enumerate(node.inputs))
        subs = list(subgraphs(node))
        if subs and not hit:
            hit = any(v in live for v in _captured(node))
        if hit:
            live.update(node.outputs)
            for g in subs:
                live.update(g.inputs)
    return live
