"""Parameters of rank >= 3 that hold several matrices: mixture-of-experts tensors, one matrix per expert,
and weights an Einsum contracts; and the summary of a mixture-of-experts layer across its experts."""

from __future__ import annotations

import math
import re

import numpy as np
import onnx_ir as ir

from irtools.ir.layers import WeightLayer
from irtools.ir.parameters import StoredTensor
from irtools.passes.weights.context import Context, is_state_name, module_path


#: experts' matrices, a batched MatMul over all of them.
_EXPERT_READERS = frozenset({"Gather", "GatherND", "GatherElements", "MatMul", "Slice", "Split", "Squeeze",
                             "Transpose", "Reshape", "Cast", "Unsqueeze", "Identity"})


def _einsum_roles(equation: str, slot: int) -> tuple[str, str, str, str] | None:
    """(weight letters, batch, contracted, free) of a two-operand Einsum's operand `slot`; None for
    any other equation (an ellipsis on the weight, one operand, no contraction)."""
    eq = equation.replace(" ", "")
    if "->" not in eq:
        return None
    lhs, out = eq.split("->")
    ops = lhs.split(",")
    if len(ops) != 2 or slot > 1 or "." in ops[slot]:
        return None
    w, other = ops[slot], ops[1 - slot].replace("...", "")
    out = out.replace("...", "")
    batch = "".join(c for c in w if c in other and c in out)
    contracted = "".join(c for c in w if c in other and c not in out)
    free = "".join(c for c in w if c not in other)
    if not contracted or not free or len(set(w)) != len(w):
        return None
    return w, batch, contracted, free


#: Constant ops between a weight and its use that keep its axes as stored (an Einsum's letters then name them).
_SAME_LAYOUT_OPS = frozenset({"Cast", "Identity", "DequantizeLinear"})


def _direct_readers(value: ir.Value) -> list[tuple[ir.Node, int]]:
    """(node, input index) of the nodes that read `value` itself or through `_SAME_LAYOUT_OPS` (constant or not)."""
    out, stack, seen = [], [value], {value}
    while stack:
        for usage in stack.pop().uses():
            if usage.node.op_type in _SAME_LAYOUT_OPS:
                stack.extend(o for o in usage.node.outputs if o not in seen and not seen.add(o))
            else:
                out.append((usage.node, usage.idx))
    return out


def stacked_matrices(ctx: Context, p: StoredTensor) -> bool:
    """A parameter of rank >= 3 holding matrices: mixture-of-experts tensors ([experts, out, in], fused
    gate_up_proj, read through the router's Gather / a batched MatMul) one matrix per expert
    (`extra={"expert": i}`), and a weight an Einsum contracts (Funnel's r_kernel [d, heads, head_dim] in
    `td,dnh->tnh`: a d x (heads*head_dim) matrix, one per batch index; the Einsum that reads the weight, even where
    it computes a constant, as against the positional encodings). Returns whether it made layers."""
    shape = tuple(p.shape)
    if len(shape) < 3 or sum(d > 1 for d in shape) < 3 or not p.uses:
        return False
    torch = ctx.torch_names
    base = module_path(p.name) if torch and is_state_name(p.name) else p.name
    first = p.uses[0]
    ops = {u.op_type for u in p.uses}
    readers = _direct_readers(p.value)
    if readers and all(node.op_type == "Einsum" for node, _ in readers):
        # the Einsums that read the weight itself (through views that keep its axes): their letters name its
        # axes. One whose other operand is a constant (Funnel's r_kernel and XLNet's r against the positional
        # encodings) computes a constant: the weight's products are then read only through it
        def roles_of(node, slot):
            eq = node.attributes.get("equation")
            return _einsum_roles(eq.value if eq is not None else "", slot)
        node, slot = readers[0]
        node_name, roles = ctx.model.node_names[node], roles_of(node, slot)
        if roles is None or any(roles_of(n, i) != roles for n, i in readers[1:]):
            return False
        w, batch, contracted, free = roles
        if len(w) != len(shape):
            return False
        dims = dict(zip(w, shape, strict=True))
        rows, cols = math.prod(dims[c] for c in contracted), math.prod(dims[c] for c in free)
        order = [w.index(c) for c in batch + contracted + free]
        count = math.prod(dims[c] for c in batch) if batch else 1

        def load(b, v=p.value, order=order):
            a = np.transpose(ctx.value(v), order).reshape(count, rows, cols)
            return [a[b]]
        for b in range(count):
            suffix = f"[{b}]" if batch else ""
            ctx.layers.append(WeightLayer(
                name=base + suffix, node=node_name, op_type="Einsum", layer_type="matrix", parameter=p.name,
                weight_shape=shape, N=max(rows, cols), M=min(rows, cols), rf=1, eigen_scale=1.0,
                loader=(lambda b=b: load(b)), sources=(p.name,),
                extra={"expert": b} if batch and "expert" in p.name.lower() else {}))
        return True
    if len(shape) != 3 or not ops <= _EXPERT_READERS or not ("expert" in p.name.lower() or ops & {"Gather", "GatherND"}):
        return False
    for e in range(shape[0]):
        ctx.layers.append(WeightLayer(
            name=f"{base}[{e}]", node=first.node, op_type=first.op_type, layer_type="dense", parameter=p.name,
            weight_shape=shape, N=max(shape[1:]), M=min(shape[1:]), rf=1, eigen_scale=1.0,
            loader=(lambda e=e, v=p.value: [np.asarray(ctx.value(v))[e]]), sources=(p.name,), extra={"expert": e}))
    return True


def expert_summary(rows: list[dict]) -> dict[str, dict]:
    """Per mixture-of-experts layer, a summary across its experts' spectral rows (rows with an `expert`
    column, grouped by name without the `[i]`; a fused gate/up's parts apart: `gate_up_proj[3].gate` is
    expert 3 of `gate_up_proj.gate`): {layer: {"experts", "alpha_mean", "alpha_std",
    "alpha_max" (the worst: heaviest-tailed is lowest, so also "alpha_min"), "worst_expert"}}."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        if row.get("expert") is None:
            continue
        name = re.sub(r"\[\d+\](?=(\.[A-Za-z_]\w*)?$)", "", str(row.get("name", "")))
        groups.setdefault(re.sub(r"(^|\.)experts\.\d+\.", r"\1experts.*.", name), []).append(row)
    out = {}
    for layer, members in groups.items():
        alphas = [(float(r["alpha"]), r["expert"]) for r in members
                  if r.get("alpha") is not None and math.isfinite(float(r["alpha"]))]
        entry = {"experts": len(members)}
        if alphas:
            values = np.array([a for a, _ in alphas])
            worst = max(alphas, key=lambda t: abs(t[0] - 4.0) if not 2.0 <= t[0] <= 6.0 else -1.0)
            entry.update(alpha_mean=float(values.mean()), alpha_std=float(values.std()),
                         alpha_min=float(values.min()), alpha_max=float(values.max()),
                         worst_expert=int(worst[1]), worst_alpha=float(worst[0]))
        out[layer] = entry
    return out
