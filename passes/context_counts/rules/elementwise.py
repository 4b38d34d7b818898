"""Elementwise ops: activations element to element, broadcasting binary ops, Where, and the ops
whose outputs carry no contexts (shapes, indices, masks, booleans) or are leaves."""

from __future__ import annotations

from irtools.passes.context_counts.arrays import unbroadcast
from irtools.passes.context_counts.context import RuleContext
from irtools.passes.context_counts.liveness import NO_CONTEXT
from irtools.passes.context_counts.registry import register

UNARY = (
    "Relu LeakyRelu Sigmoid Tanh HardSigmoid HardSwish Elu Selu Celu Gelu Softplus Softsign Mish Erf Exp Log "
    "Sqrt Reciprocal Neg Abs Sin Cos Floor Ceil Round Sign Identity Dropout Cast CastLike Softmax LogSoftmax "
    "Clip LRN ThresholdedRelu Shrink Swish Tan Asin Acos Atan Sinh Cosh Asinh Acosh Atanh FastGelu BiasGelu "
    "QuickGelu LpNormalization MeanVarianceNormalization QuantizeLinear DequantizeLinear"
).split()
BROADCAST = "Add Sub Mul Div Pow Max Min Sum Mean PRelu Mod BiasAdd".split()


@register("", *UNARY, "BitCast")
def _passthrough(n: RuleContext) -> None:
    n.give(0, n.out())


@register("", *BROADCAST, "SwiGLU")  # SwiGLU: swish(A) * B, A an activation's input, B multiplied
def _broadcast_all(n: RuleContext) -> None:
    out = n.out()
    for i in range(len(n.node.inputs)):
        if n.wants(i):
            n.give(i, unbroadcast(out, n.in_shape(i)))


@register("", "Where")
def _where(n: RuleContext) -> None:  # Where(cond, x, y): the condition carries no contexts
    out = n.out()
    for i in (1, 2):
        if n.wants(i):
            n.give(i, unbroadcast(out, n.in_shape(i)))


@register("", *NO_CONTEXT)  # ConstantOfShape among them (it was also a leaf below: one key, one rule)
def _no_contexts(n: RuleContext) -> None:
    """Outputs that are shapes, indices, masks or booleans: no path runs through them."""


@register("", "Constant")
def _leaf(n: RuleContext) -> None:
    """Leaves: a constant that is no parameter takes no contexts."""
