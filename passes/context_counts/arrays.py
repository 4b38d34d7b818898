"""Array helpers the rule families share: un-broadcasting, per-channel sums, index maps, biases.

`index_map_rule(build)` turns a data-movement op into a rule: `build(ctx, idx)` applies the op to
an array of input indices and returns, per output element, the input element it copies (-1: none);
each input element then takes the summed counts of the outputs that copy it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from irtools.passes.context_counts.context import RuleContext


def unbroadcast(counts: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Sum counts over the axes along which an operand of `shape` was broadcast."""
    extra = counts.ndim - len(shape)
    if extra > 0:
        counts = counts.sum(axis=tuple(range(extra)))
    axes = tuple(i for i, d in enumerate(shape) if d == 1 and counts.shape[i] != 1)
    if axes:
        counts = counts.sum(axis=axes, keepdims=True)
    return counts.reshape(shape)


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
        idx = np.arange(math.prod(x_shape), dtype=np.int64).reshape(x_shape)
        n.give(0, index_adjoint(n.out(), build(n, idx), idx.size).reshape(x_shape))

    return rule


def give_bias(n: RuleContext, bias_slot: int) -> None:
    """A fused op's `+ bias` (per last-axis feature), after its rule ran on the data slots."""
    if n.has_input(bias_slot):
        n.give(bias_slot, unbroadcast(n.out(), n.in_shape(bias_slot)))
