"""Attention and rotary embeddings: ONNX Attention (opset 23) and RotaryEmbedding, onnxruntime's
com.microsoft Attention (packed projection), MultiHeadAttention, GroupQueryAttention and
RotaryEmbedding; all written out as MatMul -> Softmax (an activation) -> MatMul."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from irtools.errors import UnsupportedError
from irtools.ir.slots import MS
from irtools.passes.context_counts.arrays import unbroadcast
from irtools.passes.context_counts.context import RuleContext
from irtools.passes.context_counts.registry import register


def _heads4(shape: tuple[int, ...], heads: int) -> tuple[int, ...]:
    """(B, S, heads * D) -> (B, heads, S, D); 4-D shapes stay."""
    if len(shape) == 4:
        return shape
    b, seq, hidden = shape
    return (b, heads, seq, hidden // heads)


def _to4(counts: np.ndarray, heads: int) -> np.ndarray:
    if counts.ndim == 4:
        return counts
    b, seq, hidden = counts.shape
    return counts.reshape(b, seq, heads, hidden // heads).transpose(0, 2, 1, 3)


def _from4(counts: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if len(shape) == 4:
        return counts
    return counts.transpose(0, 2, 1, 3).reshape(shape)


def attention_counts(y: np.ndarray, kv_heads: int, kv_len: int, head_dim: int, scores_extra=None):
    """Counts of softmax(Q K^T) V, written out as MatMul -> Softmax (an activation) -> MatMul:
    y (B, Hq, S, Dv) -> (Q (B, Hq, S, D), K and V (B, Hkv, L, .), scores (B, Hq, S, L)).
    Query heads share key/value heads in groups (grouped-query attention). A causal or padding
    mask acts on values only, as in the written-out graph (an additive mask keeps every edge).
    `scores_extra`: counts the raw scores receive from elsewhere (a qk_matmul_output)."""
    b, hq, seq, dv = y.shape
    group = hq // kv_heads
    scores = np.broadcast_to(y.sum(axis=-1, keepdims=True), (b, hq, seq, kv_len))  # each P[i,j] feeds Dv outputs
    if scores_extra is not None:
        scores = scores + scores_extra
    q = np.broadcast_to(scores.sum(axis=-1, keepdims=True), (b, hq, seq, head_dim))
    k = np.broadcast_to(scores.sum(axis=2).reshape(b, kv_heads, group, kv_len).sum(axis=2)[..., None],
                        (b, kv_heads, kv_len, head_dim))
    v = np.broadcast_to(y.sum(axis=2).reshape(b, kv_heads, group, dv).sum(axis=2)[:, :, None, :],
                        (b, kv_heads, kv_len, dv))
    return q, k, v, scores


@register("", "Attention")
def _attention(n: RuleContext) -> None:
    """ONNX Attention (opset 23): Q, K, V, attn_mask, past_key, past_value -> Y, present_key,
    present_value, qk_matmul_output; 3-D inputs carry the heads in the last axis."""
    q_shape, k_shape, v_shape = n.in_shape(0), n.in_shape(1), n.in_shape(2)
    q_heads = int(n.attr("q_num_heads", 0) or (q_shape[1] if len(q_shape) == 4 else 1))
    kv_heads = int(n.attr("kv_num_heads", 0) or (k_shape[1] if len(k_shape) == 4 else 1))
    q4, k4 = _heads4(q_shape, q_heads), _heads4(k_shape, kv_heads)
    past = n.in_shape(4)[2] if n.has_input(4) else 0
    extra = n.out(3) if len(n.node.outputs) > 3 and n.outs[3] is not None else None
    cq, ck, cv, scores = attention_counts(_to4(n.out(0), q_heads), kv_heads, past + k4[2], q4[3], extra)
    if len(n.node.outputs) > 1 and n.outs[1] is not None:  # present_key = concat(past_key, K)
        ck = ck + n.out(1)
    if len(n.node.outputs) > 2 and n.outs[2] is not None:
        cv = cv + n.out(2)
    n.give(0, _from4(np.asarray(cq), q_shape))
    n.give(1, _from4(np.asarray(ck[:, :, past:]), k_shape))
    n.give(2, _from4(np.asarray(cv[:, :, past:]), v_shape))
    n.give(4, ck[:, :, :past])
    n.give(5, cv[:, :, :past])
    if n.wants(3):
        n.give(3, unbroadcast(np.asarray(scores), n.in_shape(3)))


@register(MS, "Attention")
def _packed_attention(n: RuleContext) -> None:
    """com.microsoft Attention (and QAttention on its data slots): input (B, S, D) @ weights
    (D, Dq + Dk + Dv) + bias, split into Q, K and V, then attention over num_heads heads; past
    (2, B, N, P, H) is concatenated before K and V, present (output 1) is that concatenation;
    attention_bias (slot 5) is added to the scores."""
    x_shape, w_shape = n.in_shape(0), n.in_shape(1)
    heads = int(n.attr("num_heads"))
    sizes = n.attr("qkv_hidden_sizes", None) or [w_shape[1] // 3] * 3
    dq, dk, dv = (int(v) for v in sizes)
    b, seq, _ = x_shape
    past = n.in_shape(4)[3] if n.has_input(4) else 0
    y = _to4(n.out(0), heads)
    cq, ck, cv, scores = attention_counts(y, heads, past + seq, dq // heads)
    if len(n.outs) > 1 and n.outs[1] is not None:  # present = stack(concat(past_k, K), concat(past_v, V))
        present = n.out(1)
        ck, cv = ck + present[0], cv + present[1]
    if n.has_input(4):
        n.give(4, np.stack([ck[:, :, :past], cv[:, :, :past]]))
    ck, cv = np.asarray(ck[:, :, past:]), np.asarray(cv[:, :, past:])
    qkv = np.concatenate([_from4(np.asarray(cq), (b, seq, dq)), _from4(ck, (b, seq, dk)),
                          _from4(cv, (b, seq, dv))], axis=-1)  # (B, S, Dq + Dk + Dv)
    n.give(0, np.broadcast_to(qkv.sum(axis=-1, keepdims=True), x_shape))
    n.give(1, np.broadcast_to(qkv.sum(axis=(0, 1))[None, :], w_shape))
    if n.has_input(2):
        n.give(2, qkv.sum(axis=(0, 1)))
    if n.wants(5):
        n.give(5, unbroadcast(np.asarray(scores), n.in_shape(5)))


def _rotary(x_slot: int, cache_slots: tuple[int, ...]) -> Callable[[RuleContext], None]:
    """RotaryEmbedding (opset 23: X, cos, sin, position_ids; com.microsoft: X, position_ids, cos,
    sin): out[d] = x[d] cos - x[partner(d)] sin on the first rotary_embedding_dim features of each
    head, x passes through on the rest; x[d] reaches out[d] and out[partner(d)]."""

    def rule(n: RuleContext) -> None:
        y = n.out()
        x_shape = n.in_shape(x_slot)
        heads = int(n.attr("num_heads", 0) or 0)
        y4 = y if y.ndim == 4 else y.reshape(y.shape[0], y.shape[1], heads or 1, -1)
        head_dim = y4.shape[-1]
        rot = int(n.attr("rotary_embedding_dim", 0) or 0) or head_dim
        half = rot // 2
        d = np.arange(rot)
        if n.attr("interleaved", 0):
            partner = d ^ 1
        else:
            partner = np.where(d < half, d + half, d - half)
        cx = y4.copy()
        cx[..., :rot] += y4[..., partner]
        n.give(x_slot, cx.reshape(x_shape))
        for i in cache_slots:
            if n.wants(i):
                raise UnsupportedError(f"{n.node.op_type} node '{n.name}': learnable cos/sin caches are not supported",
                                       n.model.path)

    return rule


register("", "RotaryEmbedding")(_rotary(0, (1, 2)))
register(MS, "RotaryEmbedding")(_rotary(0, (2, 3)))


def _rotary_adjoint(c: np.ndarray, rot: int, interleaved: bool) -> np.ndarray:
    """Counts before a rotary embedding over the first `rot` features of the last axis: x[d]
    reaches out[d] and out[partner(d)]."""
    d = np.arange(rot)
    partner = d ^ 1 if interleaved else np.where(d < rot // 2, d + rot // 2, d - rot // 2)
    got = np.array(c, dtype=np.float64, copy=True)
    got[..., :rot] += c[..., partner]
    return got


def _kv_counts(n: RuleContext, ck: np.ndarray, cv: np.ndarray, past_k: int, past_v: int, past: int):
    """Add present_key / present_value (outputs 1, 2: concat(past, new)) and hand the past part
    back to the past inputs; returns the new keys' and values' counts (B, N, L, .)."""
    if len(n.outs) > 1 and n.outs[1] is not None:
        ck = ck + n.out(1)
    if len(n.outs) > 2 and n.outs[2] is not None:
        cv = cv + n.out(2)
    n.give(past_k, ck[:, :, :past])
    n.give(past_v, cv[:, :, :past])
    return np.asarray(ck[:, :, past:]), np.asarray(cv[:, :, past:])


@register(MS, "MultiHeadAttention")
def _multi_head_attention(n: RuleContext) -> None:
    """com.microsoft MultiHeadAttention(query, key, value, bias, key_padding_mask, attention_bias,
    past_key, past_value): query (B, S, D), or Q, K, V packed as (B, S, N, 3, H); key and value
    (B, L, D), (B, N, L, H) or K, V packed as (B, L, N, 2, H); bias (D + D + Dv) added first."""
    heads = int(n.attr("num_heads"))
    q_shape = n.in_shape(0)
    packed_qkv = len(q_shape) == 5
    k_shape = q_shape if packed_qkv else n.in_shape(1)
    packed_kv = not packed_qkv and len(k_shape) == 5
    if n.has_input(8) or n.has_input(9):
        raise UnsupportedError(f"MultiHeadAttention node '{n.name}': past_sequence_length / cache_indirection "
                               f"are not supported", n.model.path)
    y = _to4(n.out(0), heads)
    head_dim = q_shape[-1] if packed_qkv else (k_shape[-1] if len(k_shape) >= 4 else q_shape[-1] // heads)
    kv_len = k_shape[1] if (packed_qkv or packed_kv or len(k_shape) == 3) else k_shape[2]
    past = n.in_shape(6)[2] if n.has_input(6) else 0
    extra = n.out(3) if len(n.outs) > 3 and n.outs[3] is not None else None
    cq, ck, cv, scores = attention_counts(y, heads, past + kv_len, head_dim, extra)
    ck, cv = _kv_counts(n, ck, cv, 6, 7, past)
    cq = np.asarray(cq)
    if packed_qkv:  # (B, N, S, H) each -> (B, S, N, 3, H)
        n.give(0, np.stack([c.transpose(0, 2, 1, 3) for c in (cq, ck, cv)], axis=3))
        parts = [cq, ck, cv]
    else:
        n.give(0, _from4(cq, q_shape))
        if packed_kv:
            n.give(1, np.stack([ck.transpose(0, 2, 1, 3), cv.transpose(0, 2, 1, 3)], axis=3))
        else:
            n.give(1, _from4(ck, k_shape))
            n.give(2, _from4(cv, n.in_shape(2)))
        parts = [cq, ck, cv]
    if n.wants(3):  # the bias: per feature, summed over batch and positions
        n.give(3, np.concatenate([c.sum(axis=(0, 2)).reshape(-1) for c in parts]))
    if n.wants(5):
        n.give(5, unbroadcast(np.asarray(scores), n.in_shape(5)))


@register(MS, "GroupQueryAttention")
def _group_query_attention(n: RuleContext) -> None:
    """com.microsoft GroupQueryAttention(query, key, value, past_key, past_value, seqlens_k,
    total_sequence_length, cos_cache, sin_cache, ...): query heads share kv_num_heads key/value
    heads; with do_rotary, Q and K are rotated first; present = concat(past, new) along time."""
    heads, kv_heads = int(n.attr("num_heads")), int(n.attr("kv_num_heads"))
    q_shape = n.in_shape(0)
    b, seq, width = q_shape
    packed = not n.has_input(1)
    head_dim = width // (heads + 2 * kv_heads) if packed else width // heads
    past = n.in_shape(3)[2] if n.has_input(3) else 0
    if len(n.node.outputs) > 1 and n.outs[1] is not None and n.out_shape(1)[2] != past + seq:
        raise UnsupportedError(f"GroupQueryAttention node '{n.name}': a shared key/value buffer (present length "
                               f"{n.out_shape(1)[2]}, past {past} + new {seq}) places new keys by the data",
                               n.model.path)
    y = _to4(n.out(0), heads)
    cq, ck, cv, _ = attention_counts(y, kv_heads, past + seq, head_dim)
    ck, cv = _kv_counts(n, ck, cv, 3, 4, past)
    cq = np.asarray(cq)
    if n.attr("do_rotary", 0):
        rot = 2 * n.in_shape(7)[1]
        inter = bool(n.attr("rotary_interleaved", 0))
        cq, ck = _rotary_adjoint(cq, rot, inter), _rotary_adjoint(ck, rot, inter)
    q3 = _from4(cq, (b, seq, heads * head_dim))
    k3, v3 = _from4(ck, (b, seq, kv_heads * head_dim)), _from4(cv, (b, seq, kv_heads * head_dim))
    if packed:
        n.give(0, np.concatenate([q3, k3, v3], axis=-1))
    else:
        n.give(0, q3)
        n.give(1, k3)
        n.give(2, v3)
