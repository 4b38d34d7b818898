"""Reductions, and the cumulative ones (CumSum, CumProd)."""

from __future__ import annotations

import numpy as np

from irtools.passes.context_counts.context import RuleContext
from irtools.passes.context_counts.registry import register

REDUCE = "ReduceMean ReduceSum ReduceMax ReduceMin ReduceProd ReduceL2 ReduceL1 ReduceLogSum ReduceLogSumExp "\
         "ReduceSumSquare".split()


@register("", *REDUCE)
def _reduce(n: RuleContext) -> None:
    x_shape = n.in_shape(0)
    axes = n.attr("axes", None)
    if axes is None and n.has_input(1):
        axes = [int(a) for a in n.const(1)]
    if not axes:
        if n.attr("noop_with_empty_axes", 0):
            n.give(0, n.out())
            return
        axes = list(range(len(x_shape)))
    axes = sorted(int(a) % len(x_shape) for a in axes)
    kept = [1 if i in axes else d for i, d in enumerate(x_shape)]
    n.give(0, np.broadcast_to(n.out().reshape(kept), x_shape))


@register("", "CumSum", "CumProd")  # CumProd: out[j] = product of x[i], i <= j: the CumSum pattern
def _cumsum(n: RuleContext) -> None:
    """out[j] = sum of x[i] for i <= j (exclusive: i < j; reverse: i >= j): x[i] takes the sum
    of the counts of the outputs it is summed into."""
    out = n.out()
    axis = int(n.const(1).reshape(())) % out.ndim
    rev = bool(n.attr("reverse", 0))
    flipped = out if rev else np.flip(out, axis)
    acc = np.cumsum(flipped, axis=axis)
    if n.attr("exclusive", 0):
        acc = acc - flipped
    n.give(0, acc if rev else np.flip(acc, axis))
