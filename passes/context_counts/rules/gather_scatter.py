"""Gathers and scatters: constant indices move elements (an index map); indices the data choose
may pick any element, as one_hot(ids) @ table would. TopK and Compress pick by value."""

from __future__ import annotations

import math

import numpy as np

from irtools.passes.context_counts.arrays import index_adjoint, index_map_rule
from irtools.passes.context_counts.context import RuleContext
from irtools.passes.context_counts.registry import register


def _gather_map(n: RuleContext, idx: np.ndarray) -> np.ndarray:
    indices = n.const(1).astype(np.int64)
    axis = int(n.attr("axis", 0)) % idx.ndim
    indices = np.where(indices < 0, indices + idx.shape[axis], indices)
    return np.take(idx, indices, axis=axis)


@register("", "Gather")
def _gather(n: RuleContext) -> None:
    """Gather with constant indices moves elements; with data-chosen indices (an embedding
    lookup of token ids) every table row may land at every index position, as in the
    equivalent one_hot(ids) @ table: a table element receives the sum of its column's counts
    over all index positions."""
    if n.model.constants_analysis.is_constant(n.node.inputs[1]):
        index_map_rule(_gather_map)(n)
        return
    x_shape = n.in_shape(0)
    axis = int(n.attr("axis", 0)) % len(x_shape)
    idx_rank = len(n.in_shape(1))
    out = n.out()  # x_shape[:axis] + indices shape + x_shape[axis+1:]
    summed = out.sum(axis=tuple(range(axis, axis + idx_rank)), keepdims=False)
    n.give(0, np.broadcast_to(np.expand_dims(summed, axis), x_shape))


def _gather_elements_map(n: RuleContext, idx: np.ndarray) -> np.ndarray:
    axis = int(n.attr("axis", 0)) % idx.ndim
    indices = n.const(1).astype(np.int64)
    indices = np.where(indices < 0, indices + idx.shape[axis], indices)
    grid = list(np.indices(indices.shape, sparse=True))
    grid[axis] = indices
    return idx[tuple(np.broadcast_arrays(*grid))]


@register("", "GatherElements")
def _gather_elements(n: RuleContext) -> None:
    if n.is_const(1):
        index_map_rule(_gather_elements_map)(n)
        return
    x_shape = n.in_shape(0)
    axis = int(n.attr("axis", 0)) % len(x_shape)
    along = n.out().sum(axis=axis, keepdims=True)  # any element along the axis may be picked
    pad = [(0, x - a) if i != axis else (0, 0) for i, (x, a) in enumerate(zip(x_shape, along.shape, strict=True))]
    n.give(0, np.broadcast_to(np.pad(along, pad), x_shape))


def _gather_nd_targets(indices: np.ndarray, data_shape, batch_dims: int) -> np.ndarray:
    """GatherND / ScatterND: flat positions in `data` of every (batch..., index tuple) slice start,
    shaped indices.shape[:-1], and the number of trailing elements each slice covers."""
    k = indices.shape[-1]
    lead = data_shape[:batch_dims]
    sizes = np.array(data_shape[batch_dims:batch_dims + k], dtype=np.int64)
    idx = np.where(indices < 0, indices + sizes, indices).astype(np.int64)
    rest = math.prod(data_shape[batch_dims + k:])
    inner = np.ravel_multi_index(tuple(np.moveaxis(idx, -1, 0)), tuple(int(x) for x in sizes)) if k else np.zeros(
        idx.shape[:-1], np.int64)
    batch = np.arange(math.prod(lead), dtype=np.int64).reshape(lead + (1,) * (inner.ndim - batch_dims))
    return (batch * math.prod(sizes) + inner) * rest, rest


@register("", "GatherND")
def _gather_nd(n: RuleContext) -> None:
    """GatherND: constant indices move slices (an index map); data-chosen indices may pick any
    slice, so each slice of the table receives the counts of every index position of its batch."""
    x_shape = n.in_shape(0)
    b = int(n.attr("batch_dims", 0))
    out = n.out()
    if n.is_const(1):
        starts, rest = _gather_nd_targets(n.const(1), x_shape, b)
        src = (starts[..., None] + np.arange(rest)).reshape(out.shape)
        n.give(0, index_adjoint(out, src, math.prod(x_shape)).reshape(x_shape))
        return
    k = n.in_shape(1)[-1]
    lead = math.prod(x_shape[:b])
    tail = x_shape[b + k:]
    per = out.reshape(lead, -1, math.prod(tail)).sum(axis=1)  # (batch, trailing)
    n.give(0, np.broadcast_to(per.reshape((lead,) + (1,) * k + (math.prod(tail),)),
                              (lead, *x_shape[b:b + k], math.prod(tail))).reshape(x_shape))


@register("", "ScatterND")
def _scatter_nd(n: RuleContext) -> None:
    """ScatterND(data, indices, updates): an overwritten data element takes no contexts, an update
    element takes its target's; data-chosen indices may hit any slice (data keeps every count)."""
    out = n.out()
    x_shape = out.shape
    u_shape = n.in_shape(2)
    reduction = n.attr("reduction", "none")
    reduction = reduction.decode() if isinstance(reduction, bytes) else reduction
    if n.is_const(1):
        starts, rest = _gather_nd_targets(n.const(1), x_shape, 0)
        targets = (starts[..., None] + np.arange(rest)).reshape(u_shape)
        if n.wants(0):
            data = out.copy().ravel()
            if reduction == "none":
                data[targets.ravel()] = 0.0
            n.give(0, data.reshape(x_shape))
        n.give(2, out.ravel()[targets])
        return
    k = n.in_shape(1)[-1]
    n.give(0, out)
    tail = x_shape[k:]
    per = out.reshape(-1, math.prod(tail)).sum(axis=0)
    n.give(2, np.broadcast_to(per, (math.prod(u_shape[:len(u_shape) - len(tail)]), math.prod(tail))).reshape(u_shape))


@register("", "ScatterElements", "Scatter")
def _scatter_elements(n: RuleContext) -> None:
    out = n.out()
    axis = int(n.attr("axis", 0)) % out.ndim
    u_shape = n.in_shape(2)
    reduction = n.attr("reduction", "none")
    reduction = reduction.decode() if isinstance(reduction, bytes) else reduction
    if n.is_const(1):
        indices = n.const(1).astype(np.int64)
        indices = np.where(indices < 0, indices + out.shape[axis], indices)
        grid = list(np.indices(u_shape, sparse=True))
        grid[axis] = indices
        targets = np.ravel_multi_index(tuple(np.broadcast_arrays(*grid)), out.shape)
        if n.wants(0):
            data = out.copy().ravel()
            if reduction == "none":
                data[targets.ravel()] = 0.0
            n.give(0, data.reshape(out.shape))
        n.give(2, out.ravel()[targets])
        return
    n.give(0, out)
    along = out.sum(axis=axis, keepdims=True)
    n.give(2, np.broadcast_to(along, out.shape)[tuple(slice(0, d) for d in u_shape)])


@register("", "TensorScatter")
def _tensor_scatter(n: RuleContext) -> None:
    """TensorScatter(past_cache, update, write_indices): update written into the cache along
    `axis` from write_indices[b] (zero if absent; modulo the length when mode is circular).
    An overwritten cache element takes no contexts; an update element takes its target's."""
    out = n.out()
    axis = int(n.attr("axis", -2)) % out.ndim
    u_shape = n.in_shape(1)
    mode = n.attr("mode", "linear")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    starts = np.asarray(n.const(2), dtype=np.int64).reshape(-1) if n.has_input(2) else np.zeros(out.shape[0], np.int64)
    size = out.shape[axis]
    cache = out.copy()
    upd = np.zeros(u_shape)
    for b in range(out.shape[0]):
        pos = starts[b] + np.arange(u_shape[axis])
        pos = pos % size if mode == "circular" else pos
        src = np.take(out[b], pos, axis=axis - 1)
        idx = [slice(None)] * (out.ndim - 1)
        idx[axis - 1] = pos
        upd[b] = src
        cache[b][tuple(idx)] = 0.0
    n.give(0, cache)
    n.give(1, upd)


def _chosen_along(n: RuleContext, out: np.ndarray, axis: int) -> None:
    """Input 0 of an op that picks elements along `axis` by their values (TopK, Compress with a
    data-made condition): any element may be picked, as max pooling hands every element of its
    window the window's count (conventions.md), so each takes the counts summed along the axis."""
    x_shape = n.in_shape(0)
    along = out.sum(axis=axis, keepdims=True)
    n.give(0, np.broadcast_to(along, x_shape))


@register("", "TopK")
def _topk(n: RuleContext) -> None:  # values output only: the indices carry no contexts
    out = n.out(0)
    _chosen_along(n, out, int(n.attr("axis", -1)) % out.ndim)


@register("", "Compress")
def _compress(n: RuleContext) -> None:
    axis = n.attr("axis", None)
    x_shape = n.in_shape(0)
    if n.is_const(1):
        cond = np.asarray(n.const(1)).astype(bool).reshape(-1)
        idx = np.arange(math.prod(x_shape), dtype=np.int64).reshape(x_shape)
        picked = np.compress(cond, idx, axis=None if axis is None else int(axis) % len(x_shape))
        n.give(0, index_adjoint(n.out(), picked, idx.size).reshape(x_shape))
        return
    out = n.out()  # a data-made condition: the output size is the data's, known only from an annotation
    if axis is None:
        n.give(0, np.full(x_shape, out.sum()))
        return
    _chosen_along(n, out, int(axis) % len(x_shape))
