"""Array helpers the rule families share: un-broadcasting, per-channel sums, index maps, biases.

`index_map_rule(build)` turns a data-movement op into a rule: `build(ctx, idx)` applies the op to
an array of input indices and returns, per output element, the input element it copies (-1: none);
each input element then takes the summed counts of the outputs that copy it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from irtools import budget
from irtools.passes.context_counts.context import RuleContext
from irtools.passes.context_counts.counts import compact, expand


def unbroadcast(counts: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Sum counts over the axes along which an operand of `shape` was broadcast.

    Counts that repeat along an axis (a broadcast view, see `counts.compact`) are summed on their
    stored part: the sum along a repeated axis is the stored slice times its length, and the result
    stays a broadcast view where the input was one (a weight's counts stay as small as they came)."""
    shape = tuple(shape)
    extra = counts.ndim - len(shape)
    axes = [*range(max(extra, 0)),
            *(i + extra for i, d in enumerate(shape) if d == 1 and counts.shape[i + extra] != 1)]
    if not axes:
        return counts.reshape(shape)
    stored, factor = compact(counts), 1
    summed = [a for a in axes if stored.shape[a] != 1]
    for a in axes:
        if stored.shape[a] == 1:
            factor *= counts.shape[a]
    if summed:
        stored = stored.sum(axis=tuple(summed), keepdims=True)
    if factor != 1:
        stored = stored * float(factor)
    stored = stored.reshape(stored.shape[max(extra, 0):])
    return expand(stored, shape)


def channel_sums(counts: np.ndarray, axis: int = 1) -> np.ndarray:
    """Counts summed over every axis but `axis` (a per-channel vector's counts)."""
    axes = tuple(i for i in range(counts.ndim) if i != axis)
    return counts.sum(axis=axes)


def index_adjoint(out: np.ndarray, index_map: np.ndarray, in_numel: int) -> np.ndarray:
    """Input counts of a data-movement op whose output element j copies input index_map[j] (-1: none)."""
    idx = index_map.ravel()
    w = out.ravel()
    keep = idx >= 0
    return np.bincount(idx[keep], weights=w[keep], minlength=in_numel)


def index_map_rule(build: Callable[[RuleContext, np.ndarray], np.ndarray]):
    def rule(n: RuleContext) -> None:
        x_shape = n.in_shape(0)
        budget.check(24.0 * math.prod(x_shape), f"context counts of {n.node.op_type} node '{n.name}'", n.model.path)
        idx = np.arange(math.prod(x_shape), dtype=np.int64).reshape(x_shape)
        n.give(0, index_adjoint(n.out(), build(n, idx), idx.size).reshape(x_shape))

    return rule


def give_bias(n: RuleContext, bias_slot: int) -> None:
    """A fused op's `+ bias` (per last-axis feature), after its rule ran on the data slots."""
    if n.has_input(bias_slot):
        n.give(bias_slot, unbroadcast(n.out(), n.in_shape(bias_slot)))
