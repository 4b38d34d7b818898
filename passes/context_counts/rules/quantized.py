"""Quantized operators, counted as their float ops on their data slots (scales and zero points
carry no contexts): the default domain's QLinearConv / QLinearMatMul / MatMulInteger /
ConvInteger / DynamicQuantizeLinear, and onnxruntime's com.microsoft QOperator format and int4
weights. Each twin registers *as* its float op by name (`register_as`), so this family imports
no other."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from irtools.errors import UnsupportedError
from irtools.ir.slots import MS
from irtools.passes.context_counts.arrays import give_bias
from irtools.passes.context_counts.context import RuleContext
from irtools.passes.context_counts.registry import register, register_as

# -- the default domain ----------------------------------------------------------------------
register_as("", "QLinearConv", "Conv", 0, 3, 8)
register_as("", "QLinearMatMul", "MatMul", 0, 3)
register_as("", "MatMulInteger", "MatMul", 0, 1)
register_as("", "ConvInteger", "Conv", 0, 1)


@register("", "DynamicQuantizeLinear")
def _dynamic_quantize(n: RuleContext) -> None:
    """DynamicQuantizeLinear: y element to element; the scale and zero point are statistics of
    x (its range), which make no paths, as a normalisation's statistics do not."""
    n.give(0, n.out(0))


# -- com.microsoft ------------------------------------------------------------------------------
def _qlinear_concat_slots(node: ir.Node) -> list[int]:  # (Y_scale, Y_zp, then (X, scale, zp) per input)
    return list(range(2, len(node.inputs), 3))


register_as(MS, "QGemm", "Gemm", 0, 3, 6)
register_as(MS, "QLinearAdd", "Add", 0, 3)
register_as(MS, "QLinearMul", "Mul", 0, 3)
register_as(MS, "QLinearSigmoid", "Sigmoid")
register_as(MS, "QLinearLeakyRelu", "LeakyRelu")
register_as(MS, "QLinearSoftmax", "Softmax")
register_as(MS, "QLinearConcat", "Concat", data_slots=_qlinear_concat_slots)
register_as(MS, "QLinearGlobalAveragePool", "GlobalAveragePool")
register_as(MS, "QLinearConvTranspose", "ConvTranspose", 0, 3, 8)
register_as(MS, "QLinearReduceMean", "ReduceMean")
register_as(MS, "QLinearWhere", "Where", 0, 1, 4)
register_as(MS, "QAttention", "Attention", 0, 1, 2, as_domain=MS)
register_as(MS, "DynamicQuantizeLSTM", "LSTM")  # an LSTM with int8 W, R stored transposed (slots.py)


@register(MS, "QLinearAveragePool")
def _qlinear_average_pool(n: RuleContext) -> None:
    """AveragePool on the node itself; channels_last pooling is not supported."""
    if n.attr("channels_last", 0):
        raise UnsupportedError(f"{n.node.op_type} node '{n.name}': channels_last pooling is not supported",
                               n.model.path)
    n.count_as("AveragePool")


@register(MS, "DynamicQuantizeMatMul")
def _dynamic_quantize_matmul(n: RuleContext) -> None:
    """MatMul on (A, B), then + bias (slot 4)."""
    n.count_as("MatMul", 0, 1)
    give_bias(n, 4)


@register(MS, "MatMulIntegerToFloat")
def _matmul_integer_to_float(n: RuleContext) -> None:
    """MatMul on (A, B), then + bias (slot 6)."""
    n.count_as("MatMul", 0, 1)
    give_bias(n, 6)


@register(MS, "MatMulNBits")
def _matmul_nbits(n: RuleContext) -> None:
    """com.microsoft MatMulNBits: A (..., K) @ dequantize(B)^T with B packed as (N, blocks, blob):
    the weight's N x K scalars get MatMul's counts; bias (N) per output feature."""
    k, n_out = int(n.attr("K")), int(n.attr("N"))
    y = n.out()
    n.give(0, np.broadcast_to(y.sum(axis=-1, keepdims=True), n.in_shape(0)))
    if n.wants(1):  # counts per unpacked scalar, (N, K): the packed bytes hold several each
        per_out = y.reshape(-1, n_out).sum(axis=0)
        n.give_unshaped(1, np.repeat(per_out[:, None], k, axis=1))
    if n.has_input(5):
        n.give(5, y.reshape(-1, n_out).sum(axis=0))
