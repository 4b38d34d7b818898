"""onnxruntime's com.microsoft fused ops (transformer optimizer, graph optimisation level 99),
counted as the graphs they fuse; those that are a float op under another name register as it
(`register_as`). Attention-like ones are in `attention`, quantized ones in `quantized`."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from irtools.errors import UnsupportedError
from irtools.ir.slots import MS
from irtools.passes.context_counts.arrays import channel_sums, give_bias, unbroadcast
from irtools.passes.context_counts.context import RuleContext
from irtools.passes.context_counts.registry import register, register_as


@register(MS, "FastGelu", "BiasGelu", "QuickGelu", "Gelu", "BiasAdd", "BiasSoftmax")
def _activation_of_sum(n: RuleContext) -> None:
    """act(X + bias (+ skip)), softmax(data + bias): an activation of the broadcast sum of the
    inputs, counted as Add (every input element to the output elements it is added into)."""
    n.count_as("Add")


register_as(MS, "SimplifiedLayerNormalization", "SimplifiedLayerNormalization")
register_as(MS, "BiasDropout", "Add", 0, 1, 2)  # dropout(data + bias) + residual; ratio, training: none
register_as(MS, "FusedGemm", "Gemm")
register_as(MS, "Inverse", "Det")  # every element of the inverse: each takes the matrix's summed counts


def _skip_layer_norm(bias_slot: int, affine: tuple[int, ...]) -> Callable[[RuleContext], None]:
    """SkipLayerNormalization (input, skip, gamma, beta, bias) / SkipSimplifiedLayerNormalization
    (input, skip, gamma, bias): s = input + skip + bias, output = LN(s) * gamma (+ beta); output 3
    is s itself (the residual stream of the next block), so s takes both outputs' counts."""

    def rule(n: RuleContext) -> None:
        out = n.out(0)
        s = out + n.out(3) if len(n.outs) > 3 and n.outs[3] is not None else out
        for i in (0, 1, bias_slot):
            if n.wants(i):
                n.give(i, unbroadcast(s, n.in_shape(i)))
        for i in affine:
            if n.wants(i):
                n.give(i, unbroadcast(out, n.in_shape(i)))

    return rule


register(MS, "SkipLayerNormalization")(_skip_layer_norm(4, (2, 3)))
register(MS, "SkipSimplifiedLayerNormalization")(_skip_layer_norm(3, (2,)))


def _lookup(n: RuleContext, ids_slot: int | None, table_slot: int, counts: np.ndarray, default_rows=None) -> None:
    """A table row lookup (B, S, H) <- table (V, H): constant ids move rows; data-chosen ids may
    pick any row, so every row takes the counts summed over all positions (as Gather does)."""
    if not n.wants(table_slot):
        return
    shape = n.in_shape(table_slot)
    if ids_slot is not None and n.has_input(ids_slot) and not n.is_const(ids_slot):
        n.give(table_slot, np.broadcast_to(counts.reshape(-1, shape[-1]).sum(axis=0), shape))
        return
    ids = np.asarray(n.const(ids_slot)) if ids_slot is not None and n.has_input(ids_slot) else default_rows
    ids = np.broadcast_to(ids, counts.shape[:-1]).reshape(-1).astype(np.int64)
    got = np.zeros(shape)
    np.add.at(got, np.where(ids < 0, ids + shape[0], ids), counts.reshape(-1, shape[-1]))
    n.give(table_slot, got)


@register(MS, "EmbedLayerNormalization")
def _embed_layer_norm(n: RuleContext) -> None:
    """EmbedLayerNormalization(input_ids, segment_ids, word, position, segment, gamma, beta, mask,
    position_ids): LN(word[ids] + position[pos] + segment[seg]) * gamma + beta; output 2 is the sum."""
    out = n.out(0)
    s = out + n.out(2) if len(n.outs) > 2 and n.outs[2] is not None else out
    seq = out.shape[1]
    _lookup(n, 0, 2, s)
    _lookup(n, 8 if n.has_input(8) else None, 3, s, default_rows=np.arange(seq)[None, :])
    if n.has_input(4):
        _lookup(n, 1, 4, s)
    for i in (5, 6):
        if n.wants(i):
            n.give(i, unbroadcast(out, n.in_shape(i)))


@register(MS, "BiasSplitGelu")
def _bias_split_gelu(n: RuleContext) -> None:
    """BiasSplitGelu(X (.., 2D), bias (2D)): (X + bias) split in halves a, b; out = a * gelu(b)."""
    out = n.out()
    both = np.concatenate([out, out], axis=-1)
    n.give(0, both)
    n.give(1, unbroadcast(both, n.in_shape(1)))


@register(MS, "FusedMatMul")
def _fused_matmul(n: RuleContext) -> None:
    """com.microsoft FusedMatMul: alpha * op(A) @ op(B), op a transpose of the last two axes."""
    if n.attr("transBatchA", 0) or n.attr("transBatchB", 0):
        raise UnsupportedError(f"FusedMatMul node '{n.name}': batch transposes are not supported", n.model.path)
    ta, tb = bool(n.attr("transA", 0)), bool(n.attr("transB", 0))
    a_shape, b_shape = n.in_shape(0), n.in_shape(1)
    a2 = a_shape[:-2] + a_shape[-2:][::-1] if ta else a_shape
    b2 = b_shape[:-2] + b_shape[-2:][::-1] if tb else b_shape
    y = n.out()
    k = a2[-1]
    ca = unbroadcast(np.broadcast_to(y.sum(axis=-1)[..., :, None], (*y.shape[:-2], y.shape[-2], k)), a2)
    cb = unbroadcast(np.broadcast_to(y.sum(axis=-2)[..., None, :], (*y.shape[:-2], k, y.shape[-1])), b2)
    n.give(0, np.swapaxes(ca, -1, -2) if ta else ca)
    n.give(1, np.swapaxes(cb, -1, -2) if tb else cb)


@register(MS, "FusedConv")
def _fused_conv(n: RuleContext) -> None:
    """com.microsoft FusedConv(X, W, B, Z): activation(Conv(X, W, B) + Z)."""
    n.count_as("Conv")
    n.give(3, n.out())


@register(MS, "GemmFastGelu")
def _gemm_fast_gelu(n: RuleContext) -> None:
    """FastGelu(MatMul(X, W) + bias)."""
    n.count_as("MatMul")
    give_bias(n, 2)


@register(MS, "GroupNorm", "SkipGroupNorm")
def _ms_group_norm(n: RuleContext) -> None:
    """com.microsoft GroupNorm(X, gamma, beta) (channels last by default); SkipGroupNorm adds
    skip and bias first and returns that sum as output 1."""
    out = n.out(0)
    s = out + n.out(1) if len(n.outs) > 1 and n.outs[1] is not None else out
    axis = out.ndim - 1 if n.attr("channels_last", 1) else 1
    n.give(0, s)
    for i in (1, 2):
        n.give(i, channel_sums(out, axis))
    for i in (3, 4):  # SkipGroupNorm: skip, bias
        if n.wants(i):
            shape = n.in_shape(i)
            n.give(i, channel_sums(s, axis) if len(shape) == 1 else unbroadcast(s, shape))
