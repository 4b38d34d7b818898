"""Gather and scatter rules (constant and data-chosen indices, TopK, Compress).

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
from tests.counts.oracle import Case, I64, check_case, covers, our_counts, probed, x


CASES = {
    "gather-axis1": Case(
        h.make_node("Gather", ["X", "idx"], ["Y"], axis=1),
        {"X": x(2, 5), "idx": np.array([[0, -1], [4, 0]], I64)},
        (2, 2, 2)),
    "gathernd": Case(
        h.make_node("GatherND", ["X", "idx"], ["Y"]),
        {"X": x(3, 4, 2), "idx": np.array([[0, 1], [2, -1], [0, 1]], I64)},
        (3, 2)),
    "gathernd-batch": Case(
        h.make_node("GatherND", ["X", "idx"], ["Y"], batch_dims=1),
        {"X": x(2, 3, 2), "idx": np.array([[[1], [1]], [[0], [2]]], I64)},
        (2, 2, 2)),
    "gather-elements": Case(
        h.make_node("GatherElements", ["X", "idx"], ["Y"], axis=1),
        {"X": x(3, 4), "idx": np.array([[0, 3], [1, 1], [-1, 2]], I64)},
        (3, 2)),
    "scatternd": Case(
        h.make_node("ScatterND", ["X", "idx", "U"], ["Y"]),
        {"X": x(4, 3), "idx": np.array([[1], [3]], I64), "U": x(2, 3)},
        (4, 3)),
    "scatter-elements": Case(
        h.make_node("ScatterElements", ["X", "idx", "U"], ["Y"], axis=1),
        {"X": x(2, 4), "idx": np.array([[3, 0], [1, 2]], I64), "U": x(2, 2)},
        (2, 4)),
    "compress-constant": Case(
        h.make_node("Compress", ["X", "cond"], ["Y"], axis=1),
        {"X": x(2, 4), "cond": np.array([True, False, True, True])},
        (2, 3)),
}


CASES["scatter-opset10"] = Case(h.make_node("Scatter", ["X", "idx", "U"], ["Y"], axis=1),
                                {"X": x(2, 4), "idx": np.array([[3, 0], [1, 2]], I64), "U": x(2, 2)}, (2, 4), opset=10)


@pytest.mark.parametrize("case", probed(CASES))
def test_rule_matches_onnxruntime_dependencies(case):
    check_case(CASES[case], case)


@covers("Gather")
def test_embedding_lookup_of_token_ids_counts_like_one_hot_matmul():
    """Gather(table, ids) with ids a model input == one_hot(ids) @ table, counted by brute force."""
    from onnx import TensorProto as T

    from tests.brute_force import brute_force_counts

    vocab, dim, tokens = 5, 3, 4
    table = x(vocab, dim)
    w = x(dim, 2)
    gather = b.model([h.make_node("Gather", ["table", "ids"], ["e"]), h.make_node("MatMul", ["e", "w"], ["y"])],
                     [b.vinfo("ids", [1, tokens], T.INT64)], [b.vinfo("y", [1, tokens, 2])],
                     [b.tensor("table", table), b.tensor("w", w)])
    one_hot = b.model([h.make_node("MatMul", ["oh", "table"], ["e"]), h.make_node("MatMul", ["e", "w"], ["y"])],
                      [b.vinfo("oh", [1, tokens, vocab])], [b.vinfo("y", [1, tokens, 2])],
                      [b.tensor("table", table), b.tensor("w", w)])
    truth = brute_force_counts(one_hot)
    m = irtools.load(gather)
    cc = irtools.run_passes(m, ["context-counts"])["context-counts"].counts
    for name in ("table", "w"):
        np.testing.assert_array_equal(np.ldexp(cc[name].mantissa, cc[name].exponent), truth[name].astype(float))


@covers("GatherND")
def test_data_chosen_gathernd_lets_every_slice_reach_every_position():
    """GatherND(table, ids) with ids from the input: like Gather of token ids, each table slice
    receives the counts of every index position (one_hot(ids) @ table)."""
    from onnx import TensorProto as T

    proto = b.model([h.make_node("GatherND", ["table", "ids"], ["y"])], [b.vinfo("ids", [3, 1], T.INT64)],
                    [b.vinfo("y", [3, 2])], [b.tensor("table", x(4, 2))])
    m = irtools.load(proto, parameters={"table"})
    c = irtools.run_passes(m, ["context-counts"])["context-counts"].counts["table"]
    np.testing.assert_array_equal(np.ldexp(c.mantissa, c.exponent), np.full((4, 2), 3.0))


@covers("TopK")
def test_topk_hands_every_candidate_the_counts():
    """TopK picks by value: like max pooling (conventions.md), every element along the axis may
    be picked, so each receives the sum of the K outputs' counts of its row (K = 2), and the
    indices output carries none."""
    nodes = [h.make_node("TopK", ["X", "k"], ["V", "I"], axis=1), h.make_node("Cast", ["I"], ["If"], to=1),
             h.make_node("Add", ["V", "If"], ["Y"])]
    proto = b.model(nodes, [], [b.vinfo("Y", [3, 2])], [b.tensor("X", x(3, 4)), b.tensor("k", np.array([2], I64))])
    m = irtools.load(proto, parameters={"X"})
    c = irtools.run_passes(m, ["context-counts"])["context-counts"].counts["X"]
    np.testing.assert_array_equal(np.ldexp(c.mantissa, c.exponent), np.full((3, 4), 2.0))


@covers("TensorScatter")
def test_tensor_scatter_writes_updates_into_the_cache():
    """A KV-cache update: rows 1..2 of batch 0 and 0..1 of batch 1 (circular: 3, 0) are
    overwritten; they take no contexts from the cache, the update takes theirs."""
    for mode, starts, cache_zero in (("linear", [1, 0], [[1, 2], [0, 1]]), ("circular", [1, 3], [[1, 2], [3, 0]])):
        node = h.make_node("TensorScatter", ["cache", "upd", "wi"], ["Y"], axis=1, mode=mode)
        tensors = {"cache": x(2, 4, 3), "upd": x(2, 2, 3), "wi": np.array(starts, I64)}
        ours = our_counts(node, tensors, (2, 4, 3), opset=24)
        want = np.ones((2, 4, 3))
        for bb, rows in enumerate(cache_zero):
            want[bb, rows] = 0
        np.testing.assert_array_equal(ours["cache"], want, err_msg=mode)
        np.testing.assert_array_equal(ours["upd"], np.ones((2, 2, 3)), err_msg=mode)
