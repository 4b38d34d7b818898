"""Elementwise rules (activations, broadcasting ops, Where, ops whose outputs carry no contexts).

Each against an independent truth: onnxruntime's dependency probes (`tests/counts/oracle.py`),
hand-derived counts where the conventions differ from value dependence, brute force or a
written-out graph.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper as h

import irtools
from tests import builders as b
from tests.counts.oracle import Case, F, I64, check_case, covers, our_counts, probe_counts, probed, x


COMPARISONS = "Equal Less Greater LessOrEqual GreaterOrEqual".split()


CASES = {
    "mul-broadcast": Case(h.make_node("Mul", ["A", "Bm"], ["Y"]), {"A": x(2, 1, 3), "Bm": x(4, 1)}, (2, 4, 3)),
    "where": Case(
        h.make_node("Where", ["cond", "A", "Bm"], ["Y"]),
        {"cond": np.array([[True, False, True]]), "A": x(2, 3), "Bm": x(3)},
        (2, 3),
        probe=False),
    "mod": Case(
        h.make_node("Mod", ["A", "Bm"], ["Y"], fmod=1),
        {"A": x(2, 3), "Bm": x(3) + 2},
        (2, 3),
        base_value=3.0),
}


#: Activations, element to element: {op: (attributes, opset)}. ThresholdedRelu's default alpha 1
#: maps both 0 and 1 to 0, which a one-hot probe cannot tell apart: alpha 0.5.
UNARY = {op: ({}, 17) for op in (
    "Relu LeakyRelu Sigmoid Tanh HardSigmoid HardSwish Elu Selu Celu Softplus Softsign Erf Exp Log Sqrt Reciprocal "
    "Neg Abs Sin Cos Tan Asin Acos Atan Sinh Cosh Asinh Acosh Atanh Floor Ceil Round Sign Identity Dropout Clip "
    "Shrink LpNormalization").split()}
UNARY.update({"ThresholdedRelu": ({"alpha": 0.5}, 17), "LRN": ({"size": 3}, 17), "Gelu": ({}, 20), "Mish": ({}, 18),
              "Swish": ({}, 24), "Cast": ({"to": 1}, 17), "BitCast": ({"to": 1}, 26)})
for _op, (_attrs, _opset) in UNARY.items():
    _shape = (1, 3, 2, 2) if _op == "LRN" else (2, 3)
    CASES[f"unary-{_op}"] = Case(h.make_node(_op, ["X"], ["Y"], **_attrs), {"X": x(*_shape)}, _shape, opset=_opset)
#: Broadcasting binary ops, probed with the other input at a value where it does not hide the probe
#: (max(0, 1) = max(1, 1); 1^0 = 1^1; PRelu's slope acts on negative inputs only).
_BASES = {"Add": 1.0, "Sub": 1.0, "Div": 1.0, "Pow": 2.0, "Max": 0.5, "Min": 0.5, "Sum": 1.0, "Mean": 1.0}
for _op, _base in _BASES.items():
    CASES[f"broadcast-{_op}"] = Case(h.make_node(_op, ["A", "Bm"], ["Y"]), {"A": x(2, 1, 3), "Bm": x(4, 1)}, (2, 4, 3),
                                     base_value=_base)
CASES["broadcast-PRelu"] = Case(h.make_node("PRelu", ["A", "Bm"], ["Y"]), {"A": x(2, 1, 3), "Bm": x(1, 3)}, (2, 1, 3),
                                base_value=-1.0)
CASES["cast-like"] = Case(h.make_node("CastLike", ["X", "sc"], ["Y"]), {"X": x(2, 3), "sc": x(1)}, (2, 3))
CASES["quantize-dequantize"] = Case(
    [h.make_node("QuantizeLinear", ["X", "sc", "zp"], ["q"]),
     h.make_node("DequantizeLinear", ["q", "sc", "zp"], ["Y"])],
    {"X": x(2, 3), "sc": np.array(0.01, F), "zp": np.array(0, np.uint8)}, (2, 3))


@pytest.mark.parametrize("case", probed(CASES))
def test_rule_matches_onnxruntime_dependencies(case):
    check_case(CASES[case], case)


@covers("Where")
def test_where_counts_both_branches_whatever_the_condition():
    """Counts follow the graph's structure, not values: both branches of Where stay connected."""
    node, tensors, out_shape = CASES["where"]
    ours = our_counts(node, tensors, out_shape)
    np.testing.assert_array_equal(ours["A"], np.ones((2, 3)))
    np.testing.assert_array_equal(ours["Bm"], [2, 2, 2])  # broadcast over the two rows


@covers("Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "IsNaN", "IsInf", "Not")
@pytest.mark.parametrize("op", [*COMPARISONS, "IsNaN", "IsInf", "Not"])
def test_masks_computed_from_parameters_carry_no_contexts(op):
    """mask = op(W x); y = Where(mask, W x, 0): W's contexts run through the selected branch only."""
    rng = np.random.default_rng(2)
    w = rng.standard_normal((3, 2)).astype(F)
    nodes = [h.make_node("MatMul", ["w", "x"], ["z"])]
    if op in COMPARISONS:
        nodes.append(h.make_node(op, ["z", "zero"], ["m"]))
    elif op == "Not":
        nodes += [h.make_node("IsNaN", ["z"], ["n"]), h.make_node("Not", ["n"], ["m"])]
    else:
        nodes.append(h.make_node(op, ["z"], ["m"]))
    nodes.append(h.make_node("Where", ["m", "z", "zero"], ["y"]))
    proto = b.model(nodes, [b.vinfo("x", [2, 4])], [b.vinfo("y", [3, 4])],
                    [b.tensor("w", w), b.tensor("zero", np.zeros((), F))])
    m = irtools.load(proto, parameters={"w"})
    c = irtools.run_passes(m, ["context-counts"])["context-counts"].counts["w"]
    np.testing.assert_array_equal(np.ldexp(c.mantissa, c.exponent), np.full((3, 2), 4.0))  # 4 outputs per row


@covers("SwiGLU")
def test_swiglu_and_bitcast_pass_counts_element_to_element():
    ours = our_counts(h.make_node("SwiGLU", ["A", "B"], ["Y"]), {"A": x(2, 3), "B": x(2, 3)}, (2, 3), opset=28)
    np.testing.assert_array_equal(ours["A"], np.ones((2, 3)))
    np.testing.assert_array_equal(ours["B"], np.ones((2, 3)))


@covers("NonMaxSuppression")
def test_non_max_suppression_indices_carry_no_contexts():
    """Detection heads: scores from a parameter -> NonMaxSuppression -> Gather(boxes, selected):
    the indices carry no contexts, the boxes reach the output through a data-chosen Gather."""
    from onnx import TensorProto as T

    nodes = [h.make_node("MatMul", ["feat", "w"], ["scores"]),  # (1, 1, 4) class scores of 4 boxes
             h.make_node("NonMaxSuppression", ["boxes", "scores", "k"], ["sel"]),
             h.make_node("Gather", ["sel", "two"], ["idx"], axis=1), h.make_node("Gather", ["boxes2d", "idx"], ["y"])]
    proto = b.model(nodes, [b.vinfo("feat", [1, 1, 3])], [b.vinfo("y", [3, 4])],
                    [b.tensor("w", x(3, 4)), b.tensor("boxes", x(1, 4, 4)), b.tensor("boxes2d", x(4, 4)),
                     b.tensor("k", np.array([3], I64)), b.tensor("two", np.array(2, I64))])
    proto.graph.value_info.extend([b.vinfo("sel", [3, 3], T.INT64), b.vinfo("idx", [3], T.INT64)])  # data-sized
    cc = irtools.run_passes(irtools.load(proto, parameters={"w", "boxes2d"}), ["context-counts"])["context-counts"]
    np.testing.assert_array_equal(cc.counts["w"].mantissa, 0)  # scores only choose boxes
    np.testing.assert_array_equal(np.ldexp(cc.counts["boxes2d"].mantissa, cc.counts["boxes2d"].exponent),
                                  np.full((4, 4), 3.0))  # any box may be selected by each of the 3 rows


@covers("Softmax", "LogSoftmax", "MeanVarianceNormalization")
@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax", "MeanVarianceNormalization"])
def test_normalising_activations_count_element_to_element(op):
    """conventions.md: a softmax (a normalisation) acts element to element, its statistics make no
    paths; onnxruntime shows every element moving every output of its row (channel): the
    convention, not the value dependence."""
    shape = (1, 3, 2, 2)
    node = h.make_node(op, ["X"], ["Y"])
    t = {"X": x(*shape)}
    np.testing.assert_array_equal(our_counts(node, t, shape)["X"], np.ones(shape))
    assert (probe_counts(node, t, shape, "X") > 1).all()
