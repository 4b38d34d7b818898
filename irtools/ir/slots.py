"""What each input slot of an op is, by (domain, op type): one table for the IR and the passes.

A slot is data unless the table says otherwise. `structural` slots carry shapes, axes, indices,
bounds, masks or quantisation parameters: a tensor read only there is no learnable parameter
(`irtools.ir.parameters`) and no contexts flow through it (`context-counts`), except through the
`counted` ones (a stored zero initial state or fixed boxes are no parameters, but an encoder's
state starting a decoder, or boxes a detection head regresses, carry contexts). `weight` slots
hold a weight even when it has one element; `quantized_weight` slots hold integers standing for
scale * (q - zero point), learnable although not float, with their `scales` slots alongside;
`bias` is the bias slot of ops with one; recurrent ops name their `gates` in the order ONNX
stacks them in W, R and B (RNN's single gate is ONNX's `i`), `transposed` when W and R are
stored (D, input or hidden, gates * H) instead of (D, gates * H, input or hidden).

The default domain is "" ("ai.onnx" is read as ""). An op of the same name in another domain
has its own row: com.microsoft's QuantizeLinear is not the default domain's.
"""

from __future__ import annotations

from dataclasses import dataclass

#: onnxruntime's contrib domain.
MS = "com.microsoft"


@dataclass(frozen=True, slots=True)
class OpSlots:
    """The input slots of one op, by what they hold (slots not named are data)."""

    structural: frozenset[int] = frozenset()
    counted: frozenset[int] = frozenset()
    weight: frozenset[int] = frozenset()
    quantized_weight: frozenset[int] = frozenset()
    #: (weight slot, scale slot, zero-point slot) per quantized weight; None: no such slot.
    scales: tuple[tuple[int, int | None, int | None], ...] = ()
    bias: int | None = None
    gates: str = ""
    transposed: bool = False

    @property
    def context_free(self) -> frozenset[int]:
        """Slots through which no contexts flow: structural ones that are not counted."""
        return self.structural - self.counted


NONE = OpSlots()


def _s(*slots: int) -> frozenset[int]:
    return frozenset(slots)


_REDUCE = ("ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
           "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare")
#: QLinearConcat(Y_scale, Y_zero_point, then (X, X_scale, X_zero_point) per input).
_QLINEAR_CONCAT = _s(0, 1, *(k for i in range(256) for k in (3 + 3 * i, 4 + 3 * i)))

SLOTS: dict[tuple[str, str], OpSlots] = {
    # -- default domain: shapes, axes, indices, bounds ------------------------------------------
    **{("", op): OpSlots(structural=_s(1)) for op in (
        "Reshape", "Expand", "Tile", "Upsample", "TopK", "Squeeze", "Unsqueeze", "Split", "GatherElements",
        "ScatterElements", "ScatterND", "Scatter", "CumSum", "Trilu", "Compress", "CenterCropPad",
        "ReverseSequence", "AffineGrid", *_REDUCE)},
    ("", "Slice"): OpSlots(structural=_s(1, 2, 3, 4)),
    ("", "Pad"): OpSlots(structural=_s(1, 2, 3)),
    ("", "Resize"): OpSlots(structural=_s(1, 2, 3)),
    ("", "ConstantOfShape"): OpSlots(structural=_s(0)),
    ("", "Range"): OpSlots(structural=_s(0, 1, 2)),
    ("", "OneHot"): OpSlots(structural=_s(0, 1, 2)),
    ("", "Gather"): OpSlots(structural=_s(1), weight=_s(0)),
    ("", "GatherND"): OpSlots(structural=_s(1)),
    ("", "Clip"): OpSlots(structural=_s(1, 2)),
    ("", "Dropout"): OpSlots(structural=_s(1, 2)),
    ("", "NonMaxSuppression"): OpSlots(structural=_s(2, 3, 4)),
    ("", "RoiAlign"): OpSlots(structural=_s(1, 2), counted=_s(1)),
    ("", "DFT"): OpSlots(structural=_s(1, 2)),
    ("", "STFT"): OpSlots(structural=_s(1, 2, 3), counted=_s(2)),
    ("", "Where"): OpSlots(structural=_s(0)),
    ("", "Col2Im"): OpSlots(structural=_s(1, 2)),
    ("", "MaxUnpool"): OpSlots(structural=_s(1, 2)),
    ("", "TensorScatter"): OpSlots(structural=_s(2)),
    ("", "RotaryEmbedding"): OpSlots(structural=_s(1, 2, 3)),
    # -- default domain: weights ------------------------------------------------------------------
    ("", "Conv"): OpSlots(weight=_s(1, 2), bias=2),
    ("", "ConvTranspose"): OpSlots(weight=_s(1, 2), bias=2),
    ("", "Gemm"): OpSlots(weight=_s(0, 1, 2), bias=2),
    ("", "MatMul"): OpSlots(weight=_s(0, 1)),
    ("", "BatchNormalization"): OpSlots(weight=_s(1, 2, 3, 4)),
    ("", "LayerNormalization"): OpSlots(weight=_s(1, 2)),
    ("", "GroupNormalization"): OpSlots(weight=_s(1, 2)),
    ("", "InstanceNormalization"): OpSlots(weight=_s(1, 2)),
    ("", "RMSNormalization"): OpSlots(weight=_s(1)),
    ("", "PRelu"): OpSlots(weight=_s(1)),
    ("", "Einsum"): OpSlots(weight=_s(0, 1)),
    ("", "LSTM"): OpSlots(structural=_s(4, 5, 6), counted=_s(5, 6), weight=_s(1, 2, 3), gates="iofc"),
    ("", "GRU"): OpSlots(structural=_s(4, 5), counted=_s(5), weight=_s(1, 2, 3), gates="zrh"),
    ("", "RNN"): OpSlots(structural=_s(4, 5), counted=_s(5), weight=_s(1, 2, 3), gates="i"),
    # -- default domain: quantisation ------------------------------------------------------------
    ("", "QuantizeLinear"): OpSlots(structural=_s(1, 2)),
    ("", "DequantizeLinear"): OpSlots(structural=_s(1, 2)),
    ("", "DynamicQuantizeLinear"): NONE,
    ("", "MatMulInteger"): OpSlots(structural=_s(2, 3), quantized_weight=_s(0, 1), scales=((1, None, 3),)),
    ("", "ConvInteger"): OpSlots(structural=_s(2, 3), quantized_weight=_s(0, 1), scales=((1, None, 3),)),
    ("", "QLinearConv"): OpSlots(structural=_s(1, 2, 4, 5, 6, 7), quantized_weight=_s(3, 8), scales=((3, 4, 5),)),
    ("", "QLinearMatMul"): OpSlots(structural=_s(1, 2, 4, 5, 6, 7), quantized_weight=_s(0, 3),
                                   scales=((3, 4, 5),)),
    # -- com.microsoft: the quantized operator format (scales and zero points) ---------------------
    (MS, "QuantizeLinear"): OpSlots(structural=_s(1, 2)),
    (MS, "DequantizeLinear"): OpSlots(structural=_s(1, 2)),
    (MS, "QGemm"): OpSlots(structural=_s(1, 2, 4, 5, 7, 8), quantized_weight=_s(0, 3, 6), scales=((3, 4, 5),)),
    (MS, "QLinearAdd"): OpSlots(structural=_s(1, 2, 4, 5, 6, 7), quantized_weight=_s(0, 3)),
    (MS, "QLinearMul"): OpSlots(structural=_s(1, 2, 4, 5, 6, 7), quantized_weight=_s(0, 3)),
    **{(MS, op): OpSlots(structural=_s(1, 2, 3, 4)) for op in (
        "QLinearSigmoid", "QLinearLeakyRelu", "QLinearSoftmax", "QLinearGlobalAveragePool", "QLinearAveragePool",
        "QLinearReduceMean")},
    (MS, "QLinearConv"): OpSlots(structural=_s(1, 2, 4, 5, 6, 7), quantized_weight=_s(3, 8), scales=((3, 4, 5),)),
    (MS, "QLinearConvTranspose"): OpSlots(structural=_s(1, 2, 4, 5, 6, 7), quantized_weight=_s(3, 8),
                                          scales=((3, 4, 5),)),
    (MS, "QLinearConcat"): OpSlots(structural=_QLINEAR_CONCAT),
    (MS, "QLinearWhere"): OpSlots(structural=_s(0, 2, 3, 5, 6, 7, 8)),
    (MS, "DynamicQuantizeMatMul"): OpSlots(structural=_s(2, 3), quantized_weight=_s(1), scales=((1, 2, 3),)),
    (MS, "MatMulIntegerToFloat"): OpSlots(structural=_s(2, 3, 4, 5), quantized_weight=_s(0, 1),
                                          scales=((1, 3, 5),)),
    (MS, "MatMulNBits"): OpSlots(structural=_s(2, 3, 4), weight=_s(1), quantized_weight=_s(1),
                                 scales=((1, 2, 3),)),
    (MS, "QAttention"): OpSlots(structural=_s(3, 4, 5, 6, 7), quantized_weight=_s(1), scales=((1, 4, 7),)),
    (MS, "DynamicQuantizeLSTM"): OpSlots(structural=_s(4, 8, 9, 10, 11), quantized_weight=_s(1, 2),
                                         scales=((1, 8, 9), (2, 10, 11)), gates="iofc", transposed=True),
    # -- com.microsoft: onnxruntime's fused transformer ops (ids, masks, lengths, rotary caches) ----
    (MS, "EmbedLayerNormalization"): OpSlots(structural=_s(0, 1, 7, 8)),
    (MS, "MultiHeadAttention"): OpSlots(structural=_s(4, 8, 9)),
    (MS, "GroupQueryAttention"): OpSlots(structural=_s(5, 6, 7, 8, 9)),
    (MS, "RotaryEmbedding"): OpSlots(structural=_s(1, 2, 3)),
    (MS, "BiasDropout"): OpSlots(structural=_s(3, 4)),
    (MS, "SkipLayerNormalization"): OpSlots(weight=_s(2, 3, 4)),
    (MS, "FusedGemm"): OpSlots(bias=2),
    (MS, "FusedConv"): OpSlots(bias=2),
    # -- com.microsoft twins of default-domain ops, with the same slots ----------------------------
    (MS, "GatherND"): OpSlots(structural=_s(1)),
    (MS, "Pad"): OpSlots(structural=_s(1, 2)),
    (MS, "Range"): OpSlots(structural=_s(0, 1, 2)),
    (MS, "Trilu"): OpSlots(structural=_s(1)),
}


def domain_of(domain: str | None) -> str:
    """The table's spelling of a domain: the default domain is ""."""
    return "" if domain in (None, "", "ai.onnx") else domain


def op_slots(domain: str | None, op_type: str) -> OpSlots:
    """The slots of `op_type` in `domain` (all data when the table has no row)."""
    return SLOTS.get((domain_of(domain), op_type), NONE)


def slots_of(node) -> OpSlots:
    """The slots of an `onnx_ir.Node` (anything with `domain` and `op_type`)."""
    return SLOTS.get((domain_of(node.domain), node.op_type), NONE)
