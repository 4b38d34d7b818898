"""Data-movement rules (reshapes, transposes, Pad, Slice, Tile, Concat, Split, index maps).

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
from tests.counts.oracle import Case, I64, check_case, probed, x


CASES = {
    "pad-constant": Case(
        h.make_node("Pad", ["X", "pads"], ["Y"], mode="constant"),
        {"X": x(2, 3), "pads": np.array([1, 0, 2, 1], I64)},
        (5, 4)),
    "pad-negative": Case(
        h.make_node("Pad", ["X", "pads"], ["Y"]),
        {"X": x(3, 4), "pads": np.array([-1, 1, 0, -2], I64)},
        (2, 3)),
    "pad-reflect": Case(
        h.make_node("Pad", ["X", "pads"], ["Y"], mode="reflect"),
        {"X": x(1, 4), "pads": np.array([0, 2, 0, 3], I64)},
        (1, 9)),
    "pad-edge": Case(
        h.make_node("Pad", ["X", "pads"], ["Y"], mode="edge"),
        {"X": x(2, 3), "pads": np.array([1, 2, 1, 2], I64)},
        (4, 7)),
    "slice-steps": Case(
        h.make_node("Slice", ["X", "st", "en", "ax", "sp"], ["Y"]),
        {"X": x(4, 7), "st": np.array([-1, 1], I64), "en": np.array([-10**18, 7], I64),
                     "ax": np.array([0, 1], I64), "sp": np.array([-2, 3], I64)},
        (2, 2)),
    "tile": Case(
        h.make_node("Tile", ["X", "reps"], ["Y"]),
        {"X": x(2, 3), "reps": np.array([2, 3], I64)},
        (4, 9)),
    "expand": Case(
        h.make_node("Expand", ["X", "shape"], ["Y"]),
        {"X": x(3, 1), "shape": np.array([2, 3, 4], I64)},
        (2, 3, 4)),
    "transpose": Case(h.make_node("Transpose", ["X"], ["Y"], perm=[2, 0, 1]), {"X": x(2, 3, 4)}, (4, 2, 3)),
    "depth-to-space-crd": Case(
        h.make_node("DepthToSpace", ["X"], ["Y"], blocksize=2, mode="CRD"),
        {"X": x(1, 8, 2, 3)},
        (1, 2, 4, 6)),
    "depth-to-space-dcr": Case(
        h.make_node("DepthToSpace", ["X"], ["Y"], blocksize=2),
        {"X": x(1, 8, 2, 3)},
        (1, 2, 4, 6)),
    "space-to-depth": Case(
        h.make_node("SpaceToDepth", ["X"], ["Y"], blocksize=2),
        {"X": x(1, 2, 4, 6)},
        (1, 8, 2, 3)),
    "trilu-upper-k1": Case(
        h.make_node("Trilu", ["X", "k"], ["Y"]),
        {"X": x(2, 3, 4), "k": np.array(1, I64)},
        (2, 3, 4)),
    "trilu-lower": Case(h.make_node("Trilu", ["X"], ["Y"], upper=0), {"X": x(4, 3)}, (4, 3)),
    "reverse-sequence": Case(
        h.make_node("ReverseSequence", ["X", "lens"], ["Y"], time_axis=0, batch_axis=1),
        {"X": x(4, 3, 2), "lens": np.array([4, 1, 2], I64)},
        (4, 3, 2),
        opset=17),
    "reverse-sequence-batch-major": Case(
        h.make_node("ReverseSequence", ["X", "lens"], ["Y"], time_axis=1, batch_axis=0),
        {"X": x(2, 3), "lens": np.array([3, 2], I64)},
        (2, 3),
        opset=17),
    "center-crop-pad": Case(
        h.make_node("CenterCropPad", ["X", "shape"], ["Y"]),
        {"X": x(5, 2, 3), "shape": np.array([2, 5, 3], I64)},
        (2, 5, 3),
        opset=18),
    "center-crop-pad-axes": Case(
        h.make_node("CenterCropPad", ["X", "shape"], ["Y"], axes=[-1]),
        {"X": x(2, 4), "shape": np.array([7], I64)},
        (2, 7),
        opset=18),
}


CASES.update({
    "reshape": Case(h.make_node("Reshape", ["X", "shape"], ["Y"]), {"X": x(2, 3, 2), "shape": np.array([3, -1], I64)},
                    (3, 4)),
    "squeeze": Case(h.make_node("Squeeze", ["X", "axes"], ["Y"]), {"X": x(2, 1, 3), "axes": np.array([1], I64)},
                    (2, 3)),
    "unsqueeze": Case(h.make_node("Unsqueeze", ["X", "axes"], ["Y"]), {"X": x(2, 3), "axes": np.array([0, 2], I64)},
                      (1, 2, 1, 3)),
    "flatten": Case(h.make_node("Flatten", ["X"], ["Y"], axis=2), {"X": x(2, 3, 2, 2)}, (6, 4)),
    "concat": Case(h.make_node("Concat", ["A", "Bm", "A"], ["Y"], axis=1), {"A": x(2, 1), "Bm": x(2, 3)}, (2, 5)),
    "split-concat": Case([h.make_node("Split", ["X", "sizes"], ["Y0", "Y1"], axis=1),
                          h.make_node("Concat", ["Y1", "Y0", "Y1"], ["Y"], axis=1)],
                         {"X": x(2, 5), "sizes": np.array([2, 3], I64)}, (2, 8)),
})


@pytest.mark.parametrize("case", probed(CASES))
def test_rule_matches_onnxruntime_dependencies(case):
    check_case(CASES[case], case)


def test_split_hands_each_part_back():
    node = h.make_node("Split", ["X", "sizes"], ["Y0", "Y1"], axis=1)
    proto = b.model([node, h.make_node("Concat", ["Y1", "Y0", "Y1"], ["Y"], axis=1)], [],
                    [b.vinfo("Y", [2, 8])], [b.tensor("X", x(2, 5)), b.tensor("sizes", np.array([2, 3], I64))])
    m = irtools.load(proto, parameters={"X"})
    c = irtools.run_passes(m, ["context-counts"])["context-counts"].counts["X"]
    np.testing.assert_array_equal(np.ldexp(c.mantissa, c.exponent), [[1, 1, 2, 2, 2]] * 2)
