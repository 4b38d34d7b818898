"""Reduction rules (Reduce*, CumSum, CumProd).

Each against an independent truth: onnxruntime's dependency probes (`tests/counts/oracle.py`),
hand-derived counts where the conventions differ from value dependence, brute force or a
written-out graph.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper as h

from tests.counts.oracle import Case, I64, check_case, covers, our_counts, probe_counts, probed, x


CASES = {
    "reduce-sum": Case(
        h.make_node("ReduceSum", ["X", "axes"], ["Y"], keepdims=0),
        {"X": x(2, 3, 4), "axes": np.array([1], I64)},
        (2, 4)),
    "reduce-mean-all": Case(h.make_node("ReduceMean", ["X"], ["Y"], keepdims=1), {"X": x(2, 3)}, (1, 1)),
    "cumsum": Case(
        h.make_node("CumSum", ["X", "ax"], ["Y"]),
        {"X": x(2, 4), "ax": np.array(1, I64)},
        (2, 4)),
    "cumsum-exclusive-reverse": Case(
        h.make_node("CumSum", ["X", "ax"], ["Y"], exclusive=1, reverse=1),
        {"X": x(3, 2), "ax": np.array(0, I64)},
        (3, 2)),
}


for _op in ("ReduceMax", "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare"):
    CASES[_op] = Case(h.make_node(_op, ["X", "axes"], ["Y"], keepdims=0), {"X": x(2, 3, 4), "axes": np.array([1], I64)},
                      (2, 4), opset=18)


@pytest.mark.parametrize("case", probed(CASES))
def test_rule_matches_onnxruntime_dependencies(case):
    check_case(CASES[case], case)


@covers("CumProd")
def test_cumprod_has_the_cumsum_pattern():
    """out[j] = prod_{i <= j} x[i]: x[i] reaches the outputs j >= i (reverse: j <= i)."""
    ours = our_counts(h.make_node("CumProd", ["X", "ax"], ["Y"]), {"X": x(2, 4), "ax": np.array(1, I64)}, (2, 4),
                      opset=26)
    np.testing.assert_array_equal(ours["X"], [[4, 3, 2, 1]] * 2)
    rev = our_counts(h.make_node("CumProd", ["X", "ax"], ["Y"], reverse=1, exclusive=1),
                     {"X": x(3), "ax": np.array(0, I64)}, (3,), opset=26)
    np.testing.assert_array_equal(rev["X"], [0, 1, 2])  # exclusive reverse: y[j] = prod_{i > j} x[i]


@covers("ReduceMin", "ReduceProd")
@pytest.mark.parametrize("op", ["ReduceMin", "ReduceProd"])
def test_min_and_product_reach_every_reduced_element_as_max_does(op):
    """A one-hot probe cannot see them (the minimum and the product of a one-hot row are those of
    zeros): each reduced element reaches its row's output once, as onnxruntime shows for ReduceMax."""
    t = {"X": x(2, 3, 4), "axes": np.array([1], I64)}
    ours = our_counts(h.make_node(op, ["X", "axes"], ["Y"], keepdims=0), t, (2, 4), opset=18)["X"]
    np.testing.assert_array_equal(ours, probe_counts(h.make_node("ReduceMax", ["X", "axes"], ["Y"], keepdims=0), t,
                                                     (2, 4), "X", opset=18))
    np.testing.assert_array_equal(ours, np.ones((2, 3, 4)))
