"""Data movement: reshapes, transposes, broadcasts, concatenation and splits, and the ops that
copy elements by an index map (Slice, Pad, DepthToSpace, Trilu, ...)."""

from __future__ import annotations

import numpy as np

from irtools.passes.context_counts.arrays import index_map_rule, unbroadcast
from irtools.passes.context_counts.context import RuleContext
from irtools.passes.context_counts.registry import register


@register("", "Reshape", "Flatten", "Squeeze", "Unsqueeze")
def _reshape_like(n: RuleContext) -> None:
    n.give(0, n.out().reshape(n.in_shape(0)))


@register("", "Transpose")
def _transpose(n: RuleContext) -> None:
    out = n.out()
    perm = n.attr("perm", None) or list(range(out.ndim))[::-1]
    n.give(0, out.transpose(np.argsort(perm)))


@register("", "Expand")
def _expand(n: RuleContext) -> None:
    n.give(0, unbroadcast(n.out(), n.in_shape(0)))


@register("", "Tile")
def _tile(n: RuleContext) -> None:
    x_shape = n.in_shape(0)
    reps = [int(r) for r in n.const(1)]
    out = n.out().reshape([v for r, d in zip(reps, x_shape, strict=True) for v in (r, d)])
    n.give(0, out.sum(axis=tuple(range(0, 2 * len(x_shape), 2))))


@register("", "Concat")
def _concat(n: RuleContext) -> None:
    out = n.out()
    axis = int(n.attr("axis")) % out.ndim
    start = 0
    for i in range(len(n.node.inputs)):
        if not n.has_input(i):
            continue
        size = n.in_shape(i)[axis]
        n.give(i, np.take(out, np.arange(start, start + size), axis=axis))
        start += size


@register("", "Split")
def _split(n: RuleContext) -> None:
    axis = int(n.attr("axis", 0)) % len(n.in_shape(0))
    n.give(0, np.concatenate([n.out(i) for i in range(len(n.node.outputs))], axis=axis))


def _slice_map(n: RuleContext, idx: np.ndarray) -> np.ndarray:
    if n.has_input(1):  # opset >= 10: starts, ends, axes, steps as inputs
        starts, ends = n.const(1), n.const(2)
        axes = n.const(3) if n.has_input(3) else np.arange(len(starts))
        steps = n.const(4) if n.has_input(4) else np.ones(len(starts), dtype=np.int64)
    else:
        starts, ends = n.attr("starts"), n.attr("ends")
        axes = n.attr("axes", None) or list(range(len(starts)))
        steps = [1] * len(starts)
    sl = [slice(None)] * idx.ndim
    big = np.iinfo(np.int64).max
    for s, e, a, st in zip(starts, ends, axes, steps, strict=True):
        e = int(e)
        e = None if (st < 0 and e <= -big) or (st > 0 and e >= big) else e
        sl[int(a) % idx.ndim] = slice(int(s), e, int(st))
    return idx[tuple(sl)]


def _pad_map(n: RuleContext, idx: np.ndarray) -> np.ndarray:
    pads = [int(p) for p in (n.const(1) if n.has_input(1) else n.attr("pads"))]
    nd = idx.ndim
    axes = [int(a) % nd for a in n.const(3)] if n.has_input(3) else list(range(nd))
    k = len(axes)
    width = [(0, 0)] * nd
    for j, a in enumerate(axes):
        width[a] = (pads[j], pads[j + k])
    mode = n.attr("mode", "constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    # negative pads crop first
    crop = tuple(slice(max(-b, 0), idx.shape[i] - max(-e, 0)) for i, (b, e) in enumerate(width))
    idx = idx[crop]
    pos = [(max(b, 0), max(e, 0)) for b, e in width]
    if mode == "constant":
        return np.pad(idx, pos, mode="constant", constant_values=-1)
    return np.pad(idx, pos, mode={"edge": "edge", "reflect": "reflect", "wrap": "wrap"}[mode])


def _depth_to_space(n: RuleContext, idx: np.ndarray) -> np.ndarray:
    b, c, hh, ww = idx.shape
    k = int(n.attr("blocksize"))
    mode = n.attr("mode", "DCR")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if mode == "DCR":
        t = idx.reshape(b, k, k, c // (k * k), hh, ww).transpose(0, 3, 4, 1, 5, 2)
    else:
        t = idx.reshape(b, c // (k * k), k, k, hh, ww).transpose(0, 1, 4, 2, 5, 3)
    return t.reshape(b, c // (k * k), hh * k, ww * k)


def _space_to_depth(n: RuleContext, idx: np.ndarray) -> np.ndarray:
    b, c, hh, ww = idx.shape
    k = int(n.attr("blocksize"))
    t = idx.reshape(b, c, hh // k, k, ww // k, k).transpose(0, 3, 5, 1, 2, 4)
    return t.reshape(b, c * k * k, hh // k, ww // k)


def _trilu_map(n: RuleContext, idx: np.ndarray) -> np.ndarray:
    k = int(n.const(1).reshape(())) if n.has_input(1) else 0
    rows, cols = idx.shape[-2:]
    i, j = np.ogrid[:rows, :cols]
    keep = (j - i >= k) if n.attr("upper", 1) else (j - i <= k)
    return np.where(keep, idx, -1)


def _reverse_sequence_map(n: RuleContext, idx: np.ndarray) -> np.ndarray:
    """ReverseSequence: the first lens[b] steps of batch b reversed along the time axis."""
    lens = np.asarray(n.const(1), dtype=np.int64).reshape(-1)
    t_axis, b_axis = int(n.attr("time_axis", 0)), int(n.attr("batch_axis", 1))
    moved = np.moveaxis(idx, (b_axis, t_axis), (0, 1)).copy()
    for b, length in enumerate(lens):
        moved[b, :length] = moved[b, :length][::-1]
    return np.moveaxis(moved, (0, 1), (b_axis, t_axis))


def _center_crop_pad_map(n: RuleContext, idx: np.ndarray) -> np.ndarray:
    """CenterCropPad: per axis, crop from (size - target) // 2, or pad with (target - size) // 2
    before and the rest after (zeros: no source)."""
    target = [int(v) for v in n.const(1)]
    axes = [int(a) % idx.ndim for a in (n.attr("axes", None) or range(idx.ndim))]
    for a, size in zip(axes, target, strict=True):
        have = idx.shape[a]
        if size <= have:
            start = (have - size) // 2
            idx = np.take(idx, np.arange(start, start + size), axis=a)
        else:
            before = (size - have) // 2
            width = [(0, 0)] * idx.ndim
            width[a] = (before, size - have - before)
            idx = np.pad(idx, width, constant_values=-1)
    return idx


register("", "Slice")(index_map_rule(_slice_map))
register("", "Pad")(index_map_rule(_pad_map))
register("", "DepthToSpace")(index_map_rule(_depth_to_space))
register("", "SpaceToDepth")(index_map_rule(_space_to_depth))
register("", "Trilu")(index_map_rule(_trilu_map))
register("", "ReverseSequence")(index_map_rule(_reverse_sequence_map))
register("", "CenterCropPad")(index_map_rule(_center_crop_pad_map))
