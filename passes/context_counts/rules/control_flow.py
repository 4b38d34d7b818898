"""Control flow, swept in place through the rule context: If by its branch (both when the
condition is not constant), Loop and Scan unrolled. Unrolling asks the work budget first: a file
may declare 10^6 steps."""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir

from irtools import budget
from irtools.errors import UnsupportedError
from irtools.passes.context_counts.context import NODE_VISIT_WORK, RuleContext
from irtools.passes.context_counts.counts import Counts
from irtools.passes.context_counts.registry import register


@register("", "If")
def _if(n: RuleContext) -> None:
    """If: a condition that folds to a constant selects its branch; otherwise both branches
    take the output counts (the union of their contexts), and a note says so."""
    then_g, else_g = n.attr("then_branch"), n.attr("else_branch")
    chosen = [then_g, else_g]
    if n.is_const(0):
        chosen = [then_g if bool(np.asarray(n.const(0)).reshape(-1)[0]) else else_g]
    else:
        n.note(f"If node '{n.name}': the condition depends on the input, so both branches are "
               f"counted (the union of their contexts)")
    for g in chosen:
        n.sweep_subgraph(g, n.outs)


def _iterate(n: RuleContext, body: ir.Graph, steps: int, seed_outputs, take_inputs) -> None:
    """Run `body` backwards `steps` times: `seed_outputs(t, carry)` gives the body outputs'
    counts of step t (carry: the loop-carried inputs' counts of step t + 1), `take_inputs(t,
    counts)` takes the body inputs' counts of step t."""
    carry: list[Counts | None] | None = None
    for t in reversed(range(steps)):
        carry = n.sweep_subgraph(body, seed_outputs(t, carry))
        take_inputs(t, carry)


@register("", "Loop")
def _loop(n: RuleContext) -> None:
    """Loop with a constant trip count, unrolled: body outputs (cond, carried..., scan...)
    take the next step's carried-input counts and their step of each scan output."""
    if not n.is_const(0):
        raise UnsupportedError(f"Loop node '{n.name}': the trip count must be constant to count contexts",
                               n.model.path)
    steps = int(np.asarray(n.const(0)).reshape(()))
    body = n.attr("body")
    carried = len(n.node.inputs) - 2
    scans = len(n.node.outputs) - carried
    _check_unrolling(n, steps, body)

    def seed(t, carry):
        if carry is None:
            state = [n.outs[i] for i in range(carried)]
        else:
            state = carry[2:2 + carried]
        scan = [_step(n.outs[carried + k], t) for k in range(scans)]
        return [None, *state, *scan]

    def take(t, counts):
        if t == 0:
            for i, c in enumerate(counts[2:2 + carried]):
                if c is not None:
                    n.give_counts(2 + i, c)

    _iterate(n, body, steps, seed, take)


@register("", "Scan")
def _scan(n: RuleContext) -> None:
    """Scan (opset >= 9), unrolled over its scan axis."""
    body = n.attr("body")
    k_in = int(n.attr("num_scan_inputs"))
    states = len(n.node.inputs) - k_in
    k_out = len(n.node.outputs) - states
    in_axes = list(n.attr("scan_input_axes", None) or [0] * k_in)
    in_dirs = list(n.attr("scan_input_directions", None) or [0] * k_in)
    out_axes = list(n.attr("scan_output_axes", None) or [0] * k_out)
    out_dirs = list(n.attr("scan_output_directions", None) or [0] * k_out)
    steps = n.in_shape(states)[in_axes[0] % len(n.in_shape(states))]
    _check_unrolling(n, steps, body)
    scan_in = {j: np.zeros(n.in_shape(states + j)) for j in range(k_in) if n.wants(states + j)}

    def seed(t, carry):
        state = [n.outs[i] for i in range(states)] if carry is None else carry[:states]
        outs = []
        for j in range(k_out):
            c = n.outs[states + j]
            pos = steps - 1 - t if out_dirs[j] else t
            outs.append(None if c is None else Counts(np.take(c.mantissa, pos, axis=out_axes[j] % c.mantissa.ndim),
                                                      c.exponent))
        return [*state, *outs]

    def take(t, counts):
        for j, arr in scan_in.items():
            c = counts[states + j]
            if c is not None:
                axis = in_axes[j] % arr.ndim
                pos = steps - 1 - t if in_dirs[j] else t
                idx = [slice(None)] * arr.ndim
                idx[axis] = pos
                arr[tuple(idx)] += np.ldexp(c.mantissa, c.exponent - n.exponent)
        if t == 0:
            for i, c in enumerate(counts[:states]):
                if c is not None:
                    n.give_counts(i, c)

    _iterate(n, body, steps, seed, take)
    for j, arr in scan_in.items():
        n.give(states + j, arr)


def _check_unrolling(n: RuleContext, steps: int, body: ir.Graph) -> None:
    """Refuse a Loop / Scan whose unrolling would run for minutes (a 1 KB file may ask for 10^6
    trips): each step visits every body node and touches its outputs."""
    nodes = list(ir.traversal.RecursiveGraphIterator(body))
    per_step = sum(NODE_VISIT_WORK + sum(math.prod(v.shape) for v in node.outputs
                                         if v.shape is not None and v.shape.is_static()) for node in nodes)
    budget.check(8.0 * steps * len(nodes), f"unrolling {n.node.op_type} node '{n.name}'", n.model.path)
    budget.check_work(float(steps) * per_step, f"unrolling {n.node.op_type} node '{n.name}' ({steps} steps)",
                      n.model.path)


def _step(c: Counts | None, t: int) -> Counts | None:
    """Step t of a Loop scan output (stacked along a new first axis)."""
    return None if c is None else Counts(c.mantissa[t], c.exponent)
