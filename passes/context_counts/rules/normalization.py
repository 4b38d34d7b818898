"""Normalisations: x element to element, the affine vectors per channel or per feature."""

from __future__ import annotations

import math
from collections.abc import Callable

from irtools.passes.context_counts.arrays import channel_sums, unbroadcast
from irtools.passes.context_counts.context import RuleContext
from irtools.passes.context_counts.registry import register


def _channel_norm(*slots: int) -> Callable[[RuleContext], None]:
    """BatchNormalization / InstanceNormalization: X element to element, vectors per channel."""

    def rule(n: RuleContext) -> None:
        out = n.out()
        n.give(0, out)
        per_channel = channel_sums(out, 1)
        for i in slots:
            n.give(i, per_channel)

    return rule


register("", "BatchNormalization")(_channel_norm(1, 2, 3, 4))
register("", "InstanceNormalization")(_channel_norm(1, 2))


@register("", "GroupNormalization")
def _group_norm(n: RuleContext) -> None:
    out = n.out()
    n.give(0, out)
    per_channel = channel_sums(out, 1)
    for i in (1, 2):
        if n.has_input(i):
            size = math.prod(n.in_shape(i))
            n.give(i, per_channel if size == per_channel.size else per_channel.reshape(size, -1).sum(1))


# SimplifiedLayerNormalization: onnxruntime registers it in the default domain too
@register("", "LayerNormalization", "RMSNormalization", "SimplifiedLayerNormalization")
def _layer_norm(n: RuleContext) -> None:
    """LayerNormalization / RMSNormalization / SimplifiedLayerNormalization."""
    out = n.out()
    n.give(0, out)
    for i in range(1, len(n.node.inputs)):
        if n.wants(i):
            n.give(i, unbroadcast(out, n.in_shape(i)))
