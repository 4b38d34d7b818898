"""The counting rules' registry, frozen: the (domain, op type) keys registered today.

Written from the tables `passes/context_counts.py` held before it became a package (RULES and
DOMAIN_RULES, 186 + 40 keys): the package must register exactly these, so no rule is lost or
gained unseen in the move. A rule added on purpose is added here too.

Noted while freezing: `ConstantOfShape` was a key twice in RULES (once from NO_CONTEXT, once
written out; both rules do nothing, the later won): it is registered once now. The gate table also
spread `DynamicQuantizeLSTM`, a com.microsoft op, into the default domain, where no runtime defines
it: that key is dropped on purpose (`DROPPED`); com.microsoft's stays.
"""

from __future__ import annotations

DEFAULT_DOMAIN = """
    Abs Acos Acosh Add AffineGrid And ArgMax ArgMin Asin Asinh Atan Atanh Attention AveragePool
    BatchNormalization Bernoulli BiasAdd BiasGelu BitCast BitShift BitwiseAnd BitwiseNot BitwiseOr
    BitwiseXor Cast CastLike Ceil Celu CenterCropPad Clip Col2Im Compress Concat ConcatFromSequence
    Constant ConstantOfShape Conv ConvInteger ConvTranspose Cos Cosh CumProd CumSum DFT DepthToSpace
    DequantizeLinear Det Div Dropout DynamicQuantizeLSTM DynamicQuantizeLinear Einsum Elu Equal Erf Exp
    Expand EyeLike FastGelu Flatten Floor GRU Gather GatherElements GatherND Gelu Gemm GlobalAveragePool
    GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GridSample GroupNormalization HardSigmoid
    HardSwish Hardmax Identity If InstanceNormalization IsInf IsNaN LRN LSTM LayerNormalization
    LeakyRelu Less LessOrEqual Log LogSoftmax Loop LpNormalization LpPool MatMul MatMulInteger Max
    MaxPool MaxUnpool Mean MeanVarianceNormalization Min Mish Mod Mul Multinomial Neg NonMaxSuppression
    NonZero Not OneHot Or PRelu Pad Pow QLinearConv QLinearMatMul QuantizeLinear QuickGelu
    RMSNormalization RNN RandomNormal RandomNormalLike RandomUniform RandomUniformLike Range Reciprocal
    ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum
    ReduceSumSquare Relu Reshape Resize ReverseSequence RoiAlign RotaryEmbedding Round STFT Scan Scatter
    ScatterElements ScatterND Selu SequenceAt SequenceConstruct SequenceLength Shape Shrink Sigmoid Sign
    SimplifiedLayerNormalization Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split
    SplitToSequence Sqrt Squeeze StringNormalizer Sub Sum SwiGLU Swish Tan Tanh TensorScatter
    ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor
""".split()

COM_MICROSOFT = """
    Attention BiasAdd BiasDropout BiasGelu BiasSoftmax BiasSplitGelu DynamicQuantizeLSTM
    DynamicQuantizeMatMul EmbedLayerNormalization FastGelu FusedConv FusedGemm FusedMatMul Gelu
    GemmFastGelu GroupNorm GroupQueryAttention Inverse MatMulIntegerToFloat MatMulNBits
    MultiHeadAttention QAttention QGemm QLinearAdd QLinearAveragePool QLinearConcat QLinearConvTranspose
    QLinearGlobalAveragePool QLinearLeakyRelu QLinearMul QLinearReduceMean QLinearSigmoid QLinearSoftmax
    QLinearWhere QuickGelu RotaryEmbedding SimplifiedLayerNormalization SkipGroupNorm
    SkipLayerNormalization SkipSimplifiedLayerNormalization
""".split()

#: Frozen keys removed on purpose, with the reason above.
DROPPED = {("", "DynamicQuantizeLSTM")}
EXPECTED = ({("", op) for op in DEFAULT_DOMAIN} | {("com.microsoft", op) for op in COM_MICROSOFT}) - DROPPED


def registered_keys() -> set[tuple[str, str]]:
    from irtools.passes.context_counts import registry

    return registry.keys()


def test_the_registered_keys_are_todays():
    got = registered_keys()
    assert len(DEFAULT_DOMAIN) == 186 and len(COM_MICROSOFT) == 40
    assert sorted(got - EXPECTED) == [], "registered but not frozen"
    assert sorted(EXPECTED - got) == [], "frozen but no longer registered"
