"""Tensor sequences, element by element: SplitToSequence, SequenceAt, SequenceConstruct,
ConcatFromSequence."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from irtools.errors import UnsupportedError
from irtools.passes.context_counts.context import RuleContext
from irtools.passes.context_counts.registry import register


def _split_sizes(n: RuleContext) -> tuple[int, list[int], bool]:
    """SplitToSequence: (axis, element sizes along it, whether elements keep the axis)."""
    shape = n.in_shape(0)
    axis = int(n.attr("axis", 0)) % len(shape)
    if not n.has_input(1):
        return axis, [1] * shape[axis], bool(n.attr("keepdims", 1))
    split = np.asarray(n.const(1)).astype(np.int64)
    if split.ndim == 0:
        k = int(split)
        full, rest = divmod(shape[axis], k)
        return axis, [k] * full + ([rest] if rest else []), True
    return axis, [int(v) for v in split], True


def sequence_shapes(n: RuleContext, seq: ir.Value) -> list[tuple[int, ...]]:
    """Element shapes of a sequence made by SplitToSequence or SequenceConstruct."""
    p = seq.producer()
    if p is not None and p.op_type == "SplitToSequence":
        shape = n.model.static_shape(p.inputs[0])
        node = n.context_of(p)
        axis, sizes, keep = _split_sizes(node)
        return [tuple(shape[:axis]) + ((k,) if keep else ()) + tuple(shape[axis + 1:]) for k in sizes]
    if p is not None and p.op_type == "SequenceConstruct":
        return [n.model.static_shape(v) for v in p.inputs]
    raise UnsupportedError(f"{n.node.op_type} node '{n.name}': the element shapes of sequence '{seq.name}' are "
                           f"unknown (made by {p.op_type if p is not None else 'a graph input'})", n.model.path)


@register("", "SplitToSequence")
def _split_to_sequence(n: RuleContext) -> None:
    shape = n.in_shape(0)
    axis, sizes, keep = _split_sizes(n)
    parts = []
    for k, got in zip(sizes, n.items(0, len(sizes)), strict=True):
        part_shape = tuple(shape[:axis]) + (k,) + tuple(shape[axis + 1:])
        parts.append(np.zeros(part_shape) if got is None else got.reshape(part_shape))
    n.give(0, np.concatenate(parts, axis=axis))


@register("", "SequenceAt")
def _sequence_at(n: RuleContext) -> None:
    n.give_item(0, int(np.asarray(n.const(1)).reshape(())), n.out())


@register("", "SequenceConstruct")
def _sequence_construct(n: RuleContext) -> None:
    for i, got in enumerate(n.items(0, len(n.node.inputs))):
        if got is not None:
            n.give(i, got)


@register("", "ConcatFromSequence")
def _concat_from_sequence(n: RuleContext) -> None:
    shapes = sequence_shapes(n, n.node.inputs[0])
    axis = int(n.attr("axis"))
    new = bool(n.attr("new_axis", 0))
    out = n.out()
    axis %= out.ndim
    start = 0
    for pos, shape in enumerate(shapes):
        size = 1 if new else shape[axis]
        n.give_item(0, pos, np.take(out, np.arange(start, start + size), axis=axis).reshape(shape))
        start += size
