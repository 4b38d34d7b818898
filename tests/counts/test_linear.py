"""Linear-algebra rules (Gemm, MatMul, Einsum, Det).

Each against an independent truth: onnxruntime's dependency probes (`tests/counts/oracle.py`),
hand-derived counts where the conventions differ from value dependence, brute force or a
written-out graph.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper as h

from tests import builders as b
from tests.counts.oracle import Case, check_case, covers, our_counts, probed, x


CASES = {
    "gemm-transA-broadcast-C": Case(
        h.make_node("Gemm", ["A", "Bm", "C"], ["Y"], transA=1),
        {"A": x(3, 2), "Bm": x(3, 4), "C": x(1, 4)},
        (2, 4)),
    "matmul-vector": Case(h.make_node("MatMul", ["A", "Bm"], ["Y"]), {"A": x(3), "Bm": x(2, 3, 4)}, (2, 4)),
    "einsum-batched-matmul": Case(
        h.make_node("Einsum", ["A", "Bm"], ["Y"], equation="bij,bjk->bik"),
        {"A": x(2, 3, 4), "Bm": x(2, 4, 2)},
        (2, 3, 2)),
    "einsum-attention-scores": Case(
        h.make_node("Einsum", ["A", "Bm"], ["Y"], equation="bhqd,bhkd->bhqk"),
        {"A": x(1, 2, 3, 4), "Bm": x(1, 2, 5, 4)},
        (1, 2, 3, 5)),
    "einsum-outer-implicit": Case(
        h.make_node("Einsum", ["A", "Bm"], ["Y"], equation="i,j"),
        {"A": x(3), "Bm": x(4)},
        (3, 4)),
    "einsum-ellipsis-sum": Case(
        h.make_node("Einsum", ["A", "Bm"], ["Y"], equation="...ij,j->...i"),
        {"A": x(2, 3, 4), "Bm": x(4)},
        (2, 3)),
}


@pytest.mark.parametrize("case", probed(CASES))
def test_rule_matches_onnxruntime_dependencies(case):
    check_case(CASES[case], case)


@covers("Einsum")
def test_einsum_counts_a_factor_once_per_product_term():
    """y = sum_ij a_i b_j ('i,j->'): a_i is a factor of J terms, so it has J paths to y."""
    node = h.make_node("Einsum", ["A", "Bm"], ["Y"], equation="i,j->")
    ours = our_counts(node, {"A": x(3), "Bm": x(5)}, ())
    np.testing.assert_array_equal(ours["A"], [5] * 3)
    np.testing.assert_array_equal(ours["Bm"], [3] * 5)


@covers("Det")
def test_det_reaches_every_element_of_its_matrix():
    """A one-hot probe of Det sees a singular matrix; perturb a random one instead: every element
    changes its determinant, and each matrix has one output."""
    import onnxruntime as ort

    node = h.make_node("Det", ["X"], ["Y"])
    base = x(2, 3, 3)
    ours = our_counts(node, {"X": base}, (2,))["X"]
    proto = b.model([node], [b.vinfo("X", [2, 3, 3])], [b.vinfo("Y", [2])])
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    y0 = sess.run(None, {"X": base})[0]
    probed = np.zeros(base.size)
    for i in range(base.size):
        bumped = base.copy().ravel()
        bumped[i] += 0.5
        probed[i] = np.count_nonzero(np.abs(sess.run(None, {"X": bumped.reshape(base.shape)})[0] - y0) > 1e-6)
    np.testing.assert_array_equal(ours, probed.reshape(base.shape))


@covers("MatMul")
def test_matmul_of_vectors_is_a_dot_product():
    """1-D x 1-D: one output, each element one path; 1-D x 2-D: each a[k] reaches every column."""
    ours = our_counts(h.make_node("MatMul", ["A", "Bm"], ["Y"]), {"A": x(3), "Bm": x(3)}, ())
    np.testing.assert_array_equal(ours["A"], np.ones(3))
    ours = our_counts(h.make_node("MatMul", ["A", "Bm"], ["Y"]), {"A": x(3), "Bm": x(3, 4)}, (4,))
    np.testing.assert_array_equal(ours["A"], np.full(3, 4.0))
    np.testing.assert_array_equal(ours["Bm"], np.ones((3, 4)))
