"""Tensor-sequence rules (SplitToSequence, SequenceAt, SequenceConstruct, ConcatFromSequence).

Each against an independent truth: onnxruntime's dependency probes (`tests/counts/oracle.py`),
hand-derived counts where the conventions differ from value dependence, brute force or a
written-out graph.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper as h

from tests.counts.oracle import Case, I64, check_case, probed, x


def seq_ops(split, at, concat_axis=None):
    nodes = [h.make_node("SplitToSequence", ["X", "sp"], ["S"], axis=1)]
    if concat_axis is None:
        return nodes + [h.make_node("SequenceAt", ["S", "pos"], ["Y"])]
    return nodes + [h.make_node("ConcatFromSequence", ["S"], ["Y"], axis=concat_axis)]


CASES = {
    "split-to-sequence-at": Case(
        seq_ops(None, 1),
        {"X": x(2, 5), "sp": np.array([2, 3], I64), "pos": np.array(-1, I64)},
        (2, 3)),
    "split-to-sequence-concat": Case(seq_ops(None, None, 0), {"X": x(2, 4), "sp": np.array([2, 2], I64)}, (4, 2)),
}


CASES["sequence-construct-concat"] = Case(
    [h.make_node("SequenceConstruct", ["A", "Bm"], ["S"]), h.make_node("ConcatFromSequence", ["S"], ["Y"], axis=1)],
    {"A": x(2, 3), "Bm": x(2, 2)}, (2, 5))


@pytest.mark.parametrize("case", probed(CASES))
def test_rule_matches_onnxruntime_dependencies(case):
    check_case(CASES[case], case)
