"""Counts stored compact: a weight's counts repeat along the axes its op sums over, and a tied
embedding's are a per-column part (the lookup) plus a per-row part (the output projection). The
stored form must give the same per-scalar counts as the dense arrays and the same reuse
quantities, while holding only the parts (issue 20: the reuse family of a 1B-parameter checkpoint)."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import irtools
import irtools.passes.context_counts.counts as counts_module
from irtools.passes.context_counts.counts import Counts, compact
from irtools.passes.reuse import reuse_quantities
from irtools.reports.html import _log2_count_quantiles
from tests.counts.oracle import covers

SEQ, VOCAB, DIM, K, J = 3, 50, 40, 7, 11


def tied_model() -> onnx.ModelProto:
    """ids -> Gather(E) -> h; logits = h @ E^T; outputs: logits, logits[:, :J], h[:, :K]."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Gather", ["E", "ids"], ["h"]),
        helper.make_node("Transpose", ["E"], ["Et"], perm=[1, 0]),
        helper.make_node("MatMul", ["h", "Et"], ["logits"]),
        helper.make_node("Slice", ["logits", "zero", "j", "one"], ["head"]),  # axes [1]: the columns
        helper.make_node("Slice", ["h", "zero", "k", "one"], ["part"]),
    ]
    inits = [numpy_helper.from_array(rng.standard_normal((VOCAB, DIM)).astype(np.float32), "E"),
             numpy_helper.from_array(np.array([0], np.int64), "zero"),
             numpy_helper.from_array(np.array([1], np.int64), "one"),  # the axis sliced
             numpy_helper.from_array(np.array([J], np.int64), "j"),
             numpy_helper.from_array(np.array([K], np.int64), "k")]
    graph = helper.make_graph(
        nodes, "tied", [helper.make_tensor_value_info("ids", TensorProto.INT64, [SEQ])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [SEQ, VOCAB]),
         helper.make_tensor_value_info("head", TensorProto.FLOAT, [SEQ, J]),
         helper.make_tensor_value_info("part", TensorProto.FLOAT, [SEQ, K])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def hand_counts() -> np.ndarray:
    """logits[s, v] is an output and, for v < J, feeds one `head` output: 1 + [v < J] contexts.
    h[s, d] feeds every logit of its row (VOCAB + J contexts) and, for d < K, one `part` output.
    The lookup gives E[v, d] column d's counts summed over the SEQ positions (any row may land
    anywhere); the projection gives E^T[d, v] the counts of logits' column v summed over SEQ."""
    d, v = np.arange(DIM), np.arange(VOCAB)
    lookup = SEQ * (VOCAB + J + (d < K))
    projection = SEQ * (1 + (v < J))
    return lookup[None, :] + projection[:, None]


def counts_of(monkeypatch, merge_limit: int) -> Counts:
    monkeypatch.setattr(counts_module, "MERGE_LIMIT", merge_limit)
    return irtools.get_pass("context-counts")(irtools.load(tied_model())).counts["E"]


@covers(("", "Gather"), ("", "MatMul"), ("", "Transpose"), ("", "Slice"))
def test_tied_embedding_counts_are_kept_as_two_parts_with_the_hand_derived_values(monkeypatch):
    c = counts_of(monkeypatch, 0)  # never merge: the per-row and per-column parts stay apart
    assert sorted(p.shape for p in c.parts) == [(1, DIM), (VOCAB, 1)]
    assert c.stored_size == DIM + VOCAB
    np.testing.assert_array_equal(c.mantissa * 2.0 ** c.exponent, hand_counts())


def test_parts_and_the_merged_dense_sum_agree(monkeypatch):
    parts, dense = counts_of(monkeypatch, 0), counts_of(monkeypatch, 1 << 30)
    assert len(dense.parts) == 1 and dense.stored_size == VOCAB * DIM
    np.testing.assert_array_equal(parts.mantissa * 2.0 ** parts.exponent, dense.mantissa * 2.0 ** dense.exponent)
    a = reuse_quantities({"E": parts}, SEQ, SEQ * (VOCAB + J + K))
    b = reuse_quantities({"E": dense}, SEQ, SEQ * (VOCAB + J + K))
    for key in ("total_surprisal", "entropy", "expected_spread", "log2_total_contexts", "num_params"):
        assert a[key] == pytest.approx(b[key], rel=1e-13), key


@pytest.mark.parametrize("chunk", [1, 7, 1 << 20])
def test_chunks_cover_every_scalar_once(monkeypatch, chunk):
    """Whatever the chunk size, the chunks' mantissas weighed by their repeats are the tensor's."""
    c = counts_of(monkeypatch, 0)
    got = [(m.copy(), rep) for m, rep in c.chunks(chunk)]
    assert sum(m.size * rep for m, rep in got) == VOCAB * DIM
    assert math.fsum(float(m.sum()) * rep for m, rep in got) == pytest.approx(float(c.mantissa.sum()), rel=1e-14)
    assert sorted(np.concatenate([m for m, _ in got])) == pytest.approx(sorted(c.mantissa.ravel()))


def test_a_weight_of_a_matmul_stores_one_count_per_output_feature():
    """W[i, j] of x @ W takes the counts of output column j summed over the batch: one stored column."""
    rng = np.random.default_rng(1)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"]), helper.make_node("Slice", ["y", "zero", "two"], ["y2"])],
        "mm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 5, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 5, 3]),
         helper.make_tensor_value_info("y2", TensorProto.FLOAT, [2, 5, 3])],
        [numpy_helper.from_array(rng.standard_normal((6, 3)).astype(np.float32), "W"),
         numpy_helper.from_array(np.array([0], np.int64), "zero"), numpy_helper.from_array(np.array([1], np.int64), "one"),
         numpy_helper.from_array(np.array([2], np.int64), "two")])
    # Slice on axis 0 of y (the batch axis): y[:2] is also an output
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    c = irtools.get_pass("context-counts")(irtools.load(model)).counts["W"]
    assert c.stored_size == 3 and compact(c.mantissa).shape == (1, 3)  # one per output column, not 6 x 3
    np.testing.assert_array_equal(c.mantissa * 2.0 ** c.exponent, np.full((6, 3), 4 * 5 + 2 * 5))


def test_report_quantiles_from_the_histogram_match_the_exact_ones(monkeypatch):
    c = counts_of(monkeypatch, 0)
    qs = [0.0, 0.25, 0.5, 0.75, 1.0]
    exact = np.quantile(np.log2(hand_counts().astype(float)).ravel(), qs)
    got, n = _log2_count_quantiles([c], qs)
    assert n == VOCAB * DIM
    np.testing.assert_allclose(got, exact, rtol=0, atol=1e-12)
    import irtools.reports.html as html

    monkeypatch.setattr(html, "QUANTILE_EXACT_LIMIT", 0)  # the bounded route a large tied embedding takes
    approx, n = _log2_count_quantiles([c], qs)
    span = exact[-1] - exact[0]
    assert n == VOCAB * DIM and np.all(np.abs(approx - exact) <= span / html.HISTOGRAM_BINS + 1e-12)
