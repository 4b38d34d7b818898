"""Window rules (Conv, ConvTranspose, pooling, Col2Im, MaxUnpool).

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
from tests.counts.oracle import Case, I64, check_case, covers, probed, x


CASES = {
    "conv1d-same-upper": Case(
        h.make_node("Conv", ["X", "W", "B"], ["Y"], kernel_shape=[4], strides=[2],
                                      auto_pad="SAME_UPPER"),
        {"X": x(1, 2, 7), "W": x(3, 2, 4), "B": x(3)},
        (1, 3, 4)),
    "conv2d-same-lower": Case(
        h.make_node("Conv", ["X", "W"], ["Y"], kernel_shape=[2, 3], strides=[2, 1],
                                      auto_pad="SAME_LOWER"),
        {"X": x(1, 2, 5, 4), "W": x(2, 2, 2, 3)},
        (1, 2, 3, 4)),
    "conv2d-dilated-pads": Case(
        h.make_node("Conv", ["X", "W"], ["Y"], kernel_shape=[2, 3], dilations=[2, 1],
                                        pads=[1, 0, 0, 2]),
        {"X": x(1, 2, 5, 4), "W": x(2, 2, 2, 3)},
        (1, 2, 4, 4)),
    "conv3d-grouped": Case(
        h.make_node("Conv", ["X", "W"], ["Y"], kernel_shape=[2, 2, 2], group=2, pads=[1, 0, 0, 0, 1, 1]),
        {"X": x(1, 4, 3, 3, 3), "W": x(2, 2, 2, 2, 2)},
        (1, 2, 3, 3, 3)),
    "conv-transpose": Case(
        h.make_node("ConvTranspose", ["X", "W", "B"], ["Y"], kernel_shape=[3, 3], strides=[2, 2],
                                   pads=[1, 0, 0, 1], output_padding=[1, 0]),
        {"X": x(1, 2, 3, 3), "W": x(2, 3, 3, 3), "B": x(3)},
        (1, 3, 7, 6)),
    "conv-transpose-grouped": Case(
        h.make_node("ConvTranspose", ["X", "W"], ["Y"], kernel_shape=[2, 2], strides=[1, 2],
                                           group=2),
        {"X": x(1, 4, 2, 3), "W": x(4, 1, 2, 2)},
        (1, 2, 3, 6)),
    "avgpool-ceil-pads": Case(
        h.make_node("AveragePool", ["X"], ["Y"], kernel_shape=[3, 3], strides=[2, 2],
                                      pads=[1, 1, 0, 0], ceil_mode=1),
        {"X": x(1, 2, 5, 6)},
        (1, 2, 3, 3)),
    "maxpool-dilated": Case(
        h.make_node("MaxPool", ["X"], ["Y"], kernel_shape=[2, 2], dilations=[2, 2]),
        {"X": x(1, 1, 5, 5)},
        (1, 1, 3, 3)),
    "col2im": Case(
        h.make_node("Col2Im", ["X", "img", "blk"], ["Y"], strides=[1, 2], pads=[1, 0, 0, 1]),
        {"X": x(1, 2 * 2 * 2, 12), "img": np.array([4, 5], I64), "blk": np.array([2, 2], I64)},
        (1, 2, 4, 5),
        opset=18),
    "col2im-dilated": Case(
        h.make_node("Col2Im", ["X", "img", "blk"], ["Y"], dilations=[2, 1]),
        {"X": x(1, 3 * 2 * 1, 2 * 3), "img": np.array([4, 3], I64), "blk": np.array([2, 1], I64)},
        (1, 3, 4, 3),
        opset=18),
}


CASES["global-max-pool"] = Case(h.make_node("GlobalMaxPool", ["X"], ["Y"]), {"X": x(1, 2, 3, 3)}, (1, 2, 1, 1))
CASES["global-lp-pool"] = Case(h.make_node("GlobalLpPool", ["X"], ["Y"], p=2), {"X": x(1, 2, 3, 3)}, (1, 2, 1, 1))
CASES["global-average-pool"] = Case(h.make_node("GlobalAveragePool", ["X"], ["Y"]), {"X": x(1, 2, 3, 3)}, (1, 2, 1, 1))
CASES["lp-pool"] = Case(h.make_node("LpPool", ["X"], ["Y"], kernel_shape=[2, 2], strides=[1, 2], p=2),
                        {"X": x(1, 2, 3, 4)}, (1, 2, 2, 2), opset=18)


@pytest.mark.parametrize("case", probed(CASES))
def test_rule_matches_onnxruntime_dependencies(case):
    check_case(CASES[case], case)


@covers("MaxUnpool")
def test_max_unpool_connects_each_value_with_its_window():
    """MaxPool hands every window element the window's count (conventions.md); MaxUnpool, its
    inverse, connects X[j] with every position of its window: 2x2 windows, stride 2, no overlap,
    so each X element takes 4 output counts; with stride 1 and 3 windows per row, overlapping."""
    node = h.make_node("MaxUnpool", ["X", "I"], ["Y"], kernel_shape=[2, 2], strides=[2, 2])
    proto = b.model([node], [b.vinfo("I", [1, 1, 2, 3], 7)], [b.vinfo("Y", [1, 1, 4, 6])], [b.tensor("X", x(1, 1, 2, 3))])
    c = irtools.run_passes(irtools.load(proto, parameters={"X"}), ["context-counts"])["context-counts"].counts["X"]
    np.testing.assert_array_equal(np.ldexp(c.mantissa, c.exponent), np.full((1, 1, 2, 3), 4.0))
    node = h.make_node("MaxUnpool", ["X", "I"], ["Y"], kernel_shape=[1, 2], strides=[1, 1], pads=[0, 1, 0, 0])
    proto = b.model([node], [b.vinfo("I", [1, 1, 1, 3], 7)], [b.vinfo("Y", [1, 1, 1, 3])], [b.tensor("X", x(1, 1, 1, 3))])
    c = irtools.run_passes(irtools.load(proto, parameters={"X"}), ["context-counts"])["context-counts"].counts["X"]
    # output width (3 - 1) * 1 - 1 + 2 = 3; window j covers output positions j - 1 and j
    np.testing.assert_array_equal(np.ldexp(c.mantissa, c.exponent), [[[[1.0, 2.0, 2.0]]]])  # window 0 is half padding
