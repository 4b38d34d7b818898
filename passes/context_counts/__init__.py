"""The `context-counts` pass: for every learnable scalar, how many paths lead from it to an output.

Horizontal unrolling by reverse accumulation (conventions.md section 1): every output scalar
starts at 1, each element receives the sum of the counts of the elements computed from it
and each parameter scalar the sum over its uses; one sweep in reverse topological order.
Counts are float64 mantissas with one power-of-two exponent per tensor, so they never
overflow (they reach 2^750 on EfficientNetV2-B0). A registry of rules keyed by (domain, op type)
says how each op hands its output counts back to its inputs; the loops are numba kernels in
`irtools.passes._kernels`.

Only values computed from a learnable parameter (`live_values`) are swept: causal masks,
position ids and shape arithmetic (Range, Trilu, comparisons, ...) need neither a rule nor a
static shape, and an op without a rule is an error only on a parameter's path, reported once
with every node using it. Subgraphs are swept in place: If by its branch (both when the
condition is not constant), Loop and Scan unrolled; tensor sequences element by element.
LSTM / GRU / RNN are unrolled over their static sequence length, the cell written out.
Quantized operators count as their float ops on their data slots (scales and zero points carry
no contexts), and onnxruntime's fused transformer ops as the graphs they fuse. Unrolling asks
the work budget first: a file may declare 10^6 steps.

The package:
    counts      Counts (mantissa * 2**exponent), SeqCounts, the Accumulator, ContextCounts
    context     RuleContext: the one public view a rule has of its node (gives, slot views,
                count_as, sweep_subgraph, notes)
    registry    {(domain, op type): rule}, `register` / `register_as` decorators
    liveness    live_values: which values the sweep visits
    regions     activation_regions: gating subgraphs counted as one activation
    sweep       the reverse sweep and ContextCountsPass
    arrays      array helpers the rule families share
    rules/      one module per op family; importing it fills the registry

A plugin adds an op with `register` (see `registry`); what each input slot of an op is comes
from `irtools.ir.slots`.
"""

from __future__ import annotations

from irtools.passes.context_counts.arrays import unbroadcast
from irtools.passes.context_counts.context import NODE_VISIT_WORK, RuleContext, SlotView
from irtools.passes.context_counts.counts import Accumulator, ContextCounts, Counts, SeqCounts
from irtools.passes.context_counts.liveness import NO_CONTEXT, live_values
from irtools.passes.context_counts.regions import activation_regions
from irtools.passes.context_counts.registry import RuleRegistry, Twin, register, register_as, registry, rule_for
from irtools.passes.context_counts.sweep import ContextCountsPass, Sweep, unsupported_ops
from irtools.passes.context_counts import rules  # noqa: E402,F401  (fills the registry)

__all__ = [
    "NODE_VISIT_WORK",
    "NO_CONTEXT",
    "Accumulator",
    "ContextCounts",
    "ContextCountsPass",
    "Counts",
    "RuleContext",
    "RuleRegistry",
    "SeqCounts",
    "SlotView",
    "Sweep",
    "Twin",
    "activation_regions",
    "live_values",
    "register",
    "register_as",
    "registry",
    "rule_for",
    "unbroadcast",
    "unsupported_ops",
]
