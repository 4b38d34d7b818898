"""Resampling rules (Resize, Upsample, GridSample, RoiAlign, AffineGrid).

Each against an independent truth: onnxruntime's dependency probes (`tests/counts/oracle.py`),
hand-derived counts where the conventions differ from value dependence, brute force or a
written-out graph.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper as h

import irtools
from irtools.errors import UnsupportedError
from tests import builders as b
from tests.counts.oracle import Case, F, I64, check_case, covers, our_counts, probed, x


CASES = {
    "nearest-2x": Case(
        h.make_node("Resize", ["X", "", "sc"], ["Y"], mode="nearest"),
        {"X": x(1, 1, 3, 4), "sc": np.array([1, 1, 2, 2], F)},
        (1, 1, 6, 8)),
    "linear-half-pixel": Case(
        h.make_node("Resize", ["X", "", "", "sz"], ["Y"], mode="linear",
                                      coordinate_transformation_mode="half_pixel"),
        {"X": x(1, 2, 3, 3), "sz": np.array([1, 2, 5, 7], I64)},
        (1, 2, 5, 7)),
    "linear-align-corners-down": Case(
        h.make_node("Resize", ["X", "", "", "sz"], ["Y"], mode="linear",
                                              coordinate_transformation_mode="align_corners"),
        {"X": x(1, 1, 6, 5), "sz": np.array([1, 1, 3, 4], I64)},
        (1, 1, 3, 4)),
    "cubic": Case(
        h.make_node("Resize", ["X", "", "sc"], ["Y"], mode="cubic"),
        {"X": x(1, 1, 4, 4), "sc": np.array([1, 1, 2, 1.5], F)},
        (1, 1, 8, 6)),
    "affine-grid": Case(
        h.make_node("AffineGrid", ["theta", "size"], ["Y"]),
        {"theta": x(2, 2, 3), "size": np.array([2, 1, 4, 2], I64)},
        (2, 4, 2, 2),
        opset=20),
}


CASES["upsample-nearest"] = Case(h.make_node("Upsample", ["X", "sc"], ["Y"], mode="nearest"),
                                 {"X": x(1, 1, 2, 3), "sc": np.array([1, 1, 2, 2], F)}, (1, 1, 4, 6), opset=9)


@pytest.mark.parametrize("case", probed(CASES))
def test_rule_matches_onnxruntime_dependencies(case):
    check_case(CASES[case], case)


def test_nearest_upsample_by_hand():
    """2x nearest upsampling: every input pixel feeds exactly its 2x2 block."""
    node, tensors, out_shape = CASES["nearest-2x"]
    np.testing.assert_array_equal(our_counts(node, tensors, out_shape)["X"], np.full((1, 1, 3, 4), 4))


@covers("RoiAlign")
def test_roi_align_reads_data_chosen_positions():
    """Boxes regressed by a detection head: every X element of a channel may be read by each of the
    4 x 2^2 bilinear taps of every bin (2 x 2) of every roi (3): 3 x 4 x 16 = 192 per element; a box
    coordinate reaches the taps of all its bins and channels (2 x 4 x 16 = 128)."""
    nodes = [h.make_node("Add", ["boxes", "z"], ["rois"]),
             h.make_node("RoiAlign", ["X", "rois", "bi"], ["Y"], output_height=2, output_width=2, sampling_ratio=2)]
    proto = b.model(nodes, [b.vinfo("z", [1]), b.vinfo("bi", [3], 7)], [b.vinfo("Y", [3, 2, 2, 2])],
                    [b.tensor("X", x(1, 2, 6, 6)), b.tensor("boxes", np.abs(x(3, 4)) * 4)])
    cc = irtools.run_passes(irtools.load(proto, parameters={"X", "boxes"}), ["context-counts"])["context-counts"].counts
    got = {k: np.ldexp(c.mantissa, c.exponent) for k, c in cc.items()}
    np.testing.assert_array_equal(got["X"], np.full((1, 2, 6, 6), 192.0))
    np.testing.assert_array_equal(got["boxes"], np.full((3, 4), 128.0))


def test_an_op_without_an_exact_count_on_a_parameter_path_is_named_once():
    """RoiAlign with sampling_ratio 0 takes a data-dependent number of samples: the one-line report."""
    node = h.make_node("RoiAlign", ["X", "rois", "bi"], ["Y"], output_height=2, output_width=2, name="roi")
    proto = b.model([node, h.make_node("Relu", ["Y"], ["Z"])], [b.vinfo("rois", [1, 4]), b.vinfo("bi", [1], 7)],
                    [b.vinfo("Z", [1, 2, 2, 2])], [b.tensor("X", x(1, 2, 4, 4))])
    with pytest.raises(UnsupportedError, match=r"RoiAlign node 'roi': sampling_ratio 0"):
        irtools.run_passes(irtools.load(proto, parameters={"X"}), ["context-counts"])
    proto.graph.node[0].op_type = "MaxRoiPool"  # no rule at all: named once with its nodes
    del proto.graph.node[0].attribute[:]
    proto.graph.node[0].attribute.append(h.make_attribute("pooled_shape", [2, 2]))
    del proto.graph.node[0].input[2:]
    proto.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 5
    with pytest.raises(UnsupportedError, match=r"no counting rule for MaxRoiPool \(node 'roi'\)"):
        irtools.run_passes(irtools.load(proto, parameters={"X"}), ["context-counts"])


@covers("GridSample")
@pytest.mark.parametrize("mode,taps", [("linear", 4), ("nearest", 1), ("cubic", 16)])
def test_grid_sample_reads_data_chosen_positions(mode, taps):
    """GridSample with a grid computed from a parameter (deformable attention, spatial
    transformers): X's plane is read at data-chosen positions, counted as Gather with data-chosen
    indices counts (every element may be picked): each X element of a plane takes the plane's 2x3
    output points x the taps (2 x 2 linear, 4 x 4 cubic); each grid coordinate reaches every tap
    weight and, through it, the 2 channels of its point (nearest: the grid only chooses)."""
    node = h.make_node("GridSample", ["X", "G"], ["Y"], mode=mode)
    offsets = h.make_node("Add", ["theta", "z"], ["G"])  # a grid computed from a parameter and the input
    theta = np.random.default_rng(9).uniform(-1, 1, (1, 2, 3, 2)).astype(F)
    proto = b.model([offsets, node], [b.vinfo("z", [1])], [b.vinfo("Y", [1, 2, 2, 3])],
                    [b.tensor("X", x(1, 2, 4, 4)), b.tensor("theta", theta)], opset=20)
    cc = irtools.run_passes(irtools.load(proto, parameters={"X", "theta"}), ["context-counts"])["context-counts"].counts
    got = {k: np.ldexp(c.mantissa, c.exponent) for k, c in cc.items()}
    np.testing.assert_array_equal(got["X"], np.full((1, 2, 4, 4), 6.0 * taps))
    np.testing.assert_array_equal(got["theta"], np.full(theta.shape, 0.0 if mode == "nearest" else 2.0 * taps))


@covers("GridSample")
@pytest.mark.parametrize("mode", ["linear", "nearest", "cubic"])
def test_grid_sample_with_a_constant_grid_reads_known_pixels(mode):
    """A constant grid: the exact dependency, against onnxruntime probes of X."""
    from tests.counts import oracle as rules

    grid = np.random.default_rng(10).uniform(-1.1, 1.1, (1, 2, 3, 2)).astype(F)
    node = h.make_node("GridSample", ["X", "sc"], ["Y"], mode=mode)  # "sc": a structural input for the probes
    tensors = {"X": x(1, 2, 4, 5), "sc": grid}
    ours = rules.our_counts(node, tensors, (1, 2, 2, 3), opset=20)
    probed = rules.probe_counts(node, tensors, (1, 2, 2, 3), "X", opset=20)
    np.testing.assert_array_equal(ours["X"], probed)
    assert probed.any() and not probed.all()
