"""The sweep: one reverse pass over the graph in reverse topological order, and the pass itself.

Every output scalar starts at 1; each node hands its outputs' counts back to its inputs through
its registered rule (`registry`), so each element receives the sum of the counts of the elements
computed from it and each parameter scalar the sum over its uses. An activation region's exit hands
its counts straight to the region's source (`regions`). Subgraphs are swept in place by the
control-flow rules (`RuleContext.sweep_subgraph`).
"""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir

from irtools import budget
from irtools.errors import IrtoolsError, UnsupportedError
from irtools.ir.model import IRModel
from irtools.passes.context_counts.context import RuleContext
from irtools.passes.context_counts.counts import Accumulator, ContextCounts, Counts, SeqCounts
from irtools.passes.context_counts.liveness import live_values
from irtools.passes.context_counts.regions import activation_regions
from irtools.passes.context_counts.registry import rule_for
from irtools.passing import Pass, register_pass


class Sweep:
    """One reverse sweep: the accumulator, the live values and the parameters found so far."""

    def __init__(self, model: IRModel, live: set[ir.Value]):
        self.model, self.live = model, live
        self.acc = Accumulator()
        self.roots = {p.value: p for p in model.parameters}
        self.collapse = activation_regions(model, live)
        self.done: dict[str, Counts] = {}
        self.notes: list[str] = []
        self._orders: dict[ir.Graph, list[ir.Node]] = {}

    def run(self, nodes: list[ir.Node]) -> None:
        for node in reversed(nodes):
            self.visit(node)

    def visit(self, node: ir.Node) -> None:
        model = self.model
        if not any(v in self.live for v in node.outputs):
            return
        outs = [self.acc.pop(v) for v in node.outputs]
        for v, c in zip(node.outputs, outs, strict=True):
            if v in self.roots and c is not None:
                self.done[self.roots[v].name] = c
        if all(c is None for c in outs) or all(v in self.roots for v in node.outputs):
            return
        if len(node.outputs) == 1 and node.outputs[0] in self.collapse and isinstance(outs[0], Counts):
            c = outs[0]
            self.acc.add_counts(self.collapse[node.outputs[0]], c)
            return
        rule = rule_for(node)
        name = model.node_names.get(node, node.op_type)
        numel = sum(c.size if isinstance(c, SeqCounts) else c.stored_size for c in outs if c is not None)
        # inputs' counts: a parameter's are stored compact and checked where a sum grows
        # (`Accumulator.add`) or a rule builds an index map of it (`index_map_rule`)
        numel += sum(math.prod(v.shape) for v in node.inputs
                     if v is not None and v in self.live and v not in self.roots and v.shape is not None
                     and v.shape.is_static())
        budget.check(16.0 * numel, f"context counts of {node.op_type} node '{name}'", model.path)
        exponent = max(c.exponent for c in outs if c is not None)
        try:
            rule(RuleContext(self, node, outs, exponent))
        except IrtoolsError:
            raise
        except Exception as exc:
            raise UnsupportedError(f"context counts: cannot count {node.op_type} node '{name}': {exc}",
                                   model.path) from exc

    def seed(self, values, counts: list[Counts | SeqCounts | None]) -> None:
        for v, c in zip(values, counts, strict=True):
            if c is None or v not in self.live:
                continue
            if isinstance(c, SeqCounts):
                for pos, item in c.items.items():
                    self.acc.add_item(v, pos, item.mantissa, item.exponent)
            else:
                self.acc.add_counts(v, c)

    def subgraph(self, graph: ir.Graph, output_counts) -> list[Counts | SeqCounts | None]:
        """Sweep `graph` backwards from its outputs' counts; returns its inputs' counts (popped)."""
        from irtools.ir.model import topological_order

        order = self._orders.get(graph)
        if order is None:
            order = self._orders[graph] = topological_order(graph, self.model.path)
        self.seed(graph.outputs, output_counts)
        self.run(order)
        return [self.acc.pop(v) for v in graph.inputs]


def unsupported_ops(model: IRModel, live: set[ir.Value]) -> dict[str, list[str]]:
    """{op label: names of the nodes using it} for live nodes that have no counting rule."""
    missing: dict[str, list[str]] = {}
    for node in model.all_nodes:
        if rule_for(node) is None and any(v in live for v in node.outputs):
            label = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
            missing.setdefault(label, []).append(model.node_names.get(node, node.op_type))
    return missing


@register_pass
class ContextCountsPass(Pass):
    """Exact per-scalar context counts (paths to an output) of every learnable parameter."""

    name = "context-counts"

    def run(self, model: IRModel) -> ContextCounts:
        live = live_values(model)
        if any(v.const_value is None and (v.shape is None or not v.shape.is_static()) for v in live):
            model.probe_shapes()
        missing = unsupported_ops(model, live)
        if missing:
            parts = [f"{op} (node{'s' if len(names) > 1 else ''} {', '.join(repr(x) for x in names[:8])}"
                     f"{f' and {len(names) - 8} more' if len(names) > 8 else ''})" for op, names in missing.items()]
            raise UnsupportedError("context counts: no counting rule for " + "; ".join(parts)
                                   + " on a path from a learnable parameter", model.path)
        n_in = sum(math.prod(model.static_shape(v)) for v in model.inputs)
        sweep = Sweep(model, live)
        for v in model.outputs:
            if v in live:
                shape = model.static_shape(v)
                budget.check(8.0 * math.prod(shape), f"context counts of output '{v.name}'", model.path)
                sweep.acc.add(v, np.ones(shape), 0)
        n_out = sum(math.prod(model.static_shape(v)) for v in model.outputs)
        sweep.run(model.nodes)
        for p in model.parameters:
            if p.name not in sweep.done:
                c = sweep.acc.pop(p.value)
                sweep.done[p.name] = c if c is not None else Counts(np.broadcast_to(np.zeros(()), p.shape), 0)
        return ContextCounts({p.name: sweep.done[p.name] for p in model.parameters}, int(n_in), int(n_out),
                             sweep.notes)
