"""Rules of the remaining default-domain ops that can sit on a parameter's path.

Single ops, checked like test_count_rules: onnxruntime one-hot dependency probes where the
op's dependency pattern is its path pattern, hand-derived counts otherwise.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper as h

import irtools
from irtools.errors import IrtoolsError, UnsupportedError
from tests import builders as b
from tests.test_count_rules import our_counts, probe_counts, x

F = np.float32
I64 = np.int64

PROBED = {
    "reverse-sequence": (h.make_node("ReverseSequence", ["X", "lens"], ["Y"], time_axis=0, batch_axis=1),
                         {"X": x(4, 3, 2), "lens": np.array([4, 1, 2], I64)}, (4, 3, 2), 17),
    "reverse-sequence-batch-major": (h.make_node("ReverseSequence", ["X", "lens"], ["Y"], time_axis=1, batch_axis=0),
                                     {"X": x(2, 3), "lens": np.array([3, 2], I64)}, (2, 3), 17),
    "center-crop-pad": (h.make_node("CenterCropPad", ["X", "shape"], ["Y"]),
                        {"X": x(5, 2, 3), "shape": np.array([2, 5, 3], I64)}, (2, 5, 3), 18),
    "center-crop-pad-axes": (h.make_node("CenterCropPad", ["X", "shape"], ["Y"], axes=[-1]),
                             {"X": x(2, 4), "shape": np.array([7], I64)}, (2, 7), 18),
    "col2im": (h.make_node("Col2Im", ["X", "img", "blk"], ["Y"], strides=[1, 2], pads=[1, 0, 0, 1]),
               {"X": x(1, 2 * 2 * 2, 12), "img": np.array([4, 5], I64), "blk": np.array([2, 2], I64)}, (1, 2, 4, 5), 18),
    "col2im-dilated": (h.make_node("Col2Im", ["X", "img", "blk"], ["Y"], dilations=[2, 1]),
                       {"X": x(1, 3 * 2 * 1, 2 * 3), "img": np.array([4, 3], I64), "blk": np.array([2, 1], I64)},
                       (1, 3, 4, 3), 18),
    "affine-grid": (h.make_node("AffineGrid", ["theta", "size"], ["Y"]),
                    {"theta": x(2, 2, 3), "size": np.array([2, 1, 4, 2], I64)}, (2, 4, 2, 2), 20),
}


@pytest.mark.parametrize("case", list(PROBED))
def test_rule_matches_onnxruntime_dependencies(case):
    node, tensors, out_shape, opset = PROBED[case]
    ours = our_counts(node, tensors, out_shape, opset=opset)
    for name, v in tensors.items():
        if v.dtype.kind == "f":
            probed = probe_counts(node, tensors, out_shape, name, opset=opset)
            np.testing.assert_array_equal(ours[name], probed, err_msg=f"{case}: {name}")
            assert probed.any()


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


def test_cumprod_has_the_cumsum_pattern():
    """out[j] = prod_{i <= j} x[i]: x[i] reaches the outputs j >= i (reverse: j <= i)."""
    ours = our_counts(h.make_node("CumProd", ["X", "ax"], ["Y"]), {"X": x(2, 4), "ax": np.array(1, I64)}, (2, 4),
                      opset=26)
    np.testing.assert_array_equal(ours["X"], [[4, 3, 2, 1]] * 2)
    rev = our_counts(h.make_node("CumProd", ["X", "ax"], ["Y"], reverse=1, exclusive=1),
                     {"X": x(3), "ax": np.array(0, I64)}, (3,), opset=26)
    np.testing.assert_array_equal(rev["X"], [0, 1, 2])  # exclusive reverse: y[j] = prod_{i > j} x[i]


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


def test_swiglu_and_bitcast_pass_counts_element_to_element():
    ours = our_counts(h.make_node("SwiGLU", ["A", "B"], ["Y"]), {"A": x(2, 3), "B": x(2, 3)}, (2, 3), opset=28)
    np.testing.assert_array_equal(ours["A"], np.ones((2, 3)))
    np.testing.assert_array_equal(ours["B"], np.ones((2, 3)))


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


def test_unrolling_a_million_steps_is_refused_at_once():
    """A 1 KB file may ask for 10^6 loop trips or LSTM steps: refused with the work budget's
    one-line error before any unrolling (found by the hostile-input sweep)."""
    from onnx import TensorProto as T

    body = h.make_graph([h.make_node("MatMul", ["h_in", "w"], ["h_out"]), h.make_node("Identity", ["c_in"], ["c_out"])],
                        "body", [b.vinfo("i", [], T.INT64), b.vinfo("c_in", [], T.BOOL), b.vinfo("h_in", [1, 3])],
                        [b.vinfo("c_out", [], T.BOOL), b.vinfo("h_out", [1, 3])])
    loop = b.model([h.make_node("Loop", ["n", "", "h0"], ["y"], body=body)], [], [b.vinfo("y", [1, 3])],
                   [b.tensor("w", x(3, 3)), b.tensor("h0", x(1, 3)), b.tensor("n", np.array(10**6, I64))])
    lstm = b.model([h.make_node("LSTM", ["X", "W", "R"], ["", "Y_h"], hidden_size=2)], [b.vinfo("X", [10**6, 1, 1])],
                   [b.vinfo("Y_h", [1, 1, 2])], [b.tensor("W", x(1, 8, 1)), b.tensor("R", x(1, 8, 2))])
    for proto, what in ((loop, "Loop"), (lstm, "LSTM")):
        with pytest.raises(IrtoolsError, match=rf"unrolling {what} node .* \(1000000 steps\)"):
            irtools.run_passes(irtools.load(proto), ["context-counts"])


@pytest.mark.parametrize("complex_input,onesided", [(False, 0), (False, 1), (True, 0)])
def test_dft_counts_as_matmul_with_its_constant_matrices(complex_input, onesided):
    """DFT along axis 1 of (B, N, 1 or 2) = x_re C - x_im S and x_re S + x_im C with constant
    cos / sin matrices (N, K), counted by the MatMul rule; onnxruntime confirms the written-out
    graph computes the DFT."""
    import onnxruntime as ort

    bsz, size = 2, 4
    k = size // 2 + 1 if onesided else size
    xs = x(bsz, size, 2 if complex_input else 1)
    angle = -2 * np.pi * np.outer(np.arange(size), np.arange(k)) / size
    t = {"X": xs, "C": np.cos(angle).astype(F), "S": np.sin(angle).astype(F), "ax": np.array([2], I64),
         "m1": np.array(-1.0, F)}
    dft = h.make_node("DFT", ["X"], ["Y"], axis=1, onesided=onesided)
    nodes = [h.make_node("Split", ["X"], ["xr", "xi"] if complex_input else ["xr"], axis=2,
                         **({"num_outputs": 2} if complex_input else {"num_outputs": 1})),
             h.make_node("Squeeze", ["xr", "ax"], ["r"]), h.make_node("MatMul", ["r", "C"], ["rc"]),
             h.make_node("MatMul", ["r", "S"], ["rs"])]
    re, im = "rc", "rs"
    if complex_input:
        nodes += [h.make_node("Squeeze", ["xi", "ax"], ["i"]), h.make_node("MatMul", ["i", "C"], ["ic"]),
                  h.make_node("MatMul", ["i", "S"], ["is"]), h.make_node("Mul", ["is", "m1"], ["nis"]),
                  h.make_node("Add", ["rc", "nis"], ["re"]), h.make_node("Add", ["rs", "ic"], ["im"])]
        re, im = "re", "im"
    nodes += [h.make_node("Unsqueeze", [re, "ax"], ["ure"]), h.make_node("Unsqueeze", [im, "ax"], ["uim"]),
              h.make_node("Concat", ["ure", "uim"], ["Y"], axis=2)]
    fused = b.model([dft], [], [b.vinfo("Y", [bsz, k, 2])], [b.tensor("X", xs)], opset=18)
    written = b.model(nodes, [], [b.vinfo("Y", [bsz, k, 2])], [b.tensor(n_, v) for n_, v in t.items()], opset=18)
    run = [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {})[0]
           for m in (fused, written)]
    np.testing.assert_allclose(run[0], run[1], rtol=1e-5, atol=1e-5)
    got = [irtools.run_passes(irtools.load(m, parameters={"X"}), ["context-counts"])["context-counts"].counts["X"]
           for m in (fused, written)]
    np.testing.assert_array_equal(*(np.ldexp(c.mantissa, c.exponent) for c in got))


def test_matmul_of_vectors_is_a_dot_product():
    """1-D x 1-D: one output, each element one path; 1-D x 2-D: each a[k] reaches every column."""
    ours = our_counts(h.make_node("MatMul", ["A", "Bm"], ["Y"]), {"A": x(3), "Bm": x(3)}, ())
    np.testing.assert_array_equal(ours["A"], np.ones(3))
    ours = our_counts(h.make_node("MatMul", ["A", "Bm"], ["Y"]), {"A": x(3), "Bm": x(3, 4)}, (4,))
    np.testing.assert_array_equal(ours["A"], np.full(3, 4.0))
    np.testing.assert_array_equal(ours["Bm"], np.ones((3, 4)))


def test_matrix_inverse_reaches_every_element_of_its_matrix():
    """com.microsoft Inverse: perturbing any element of a generic matrix changes every element
    of its inverse, so each element takes the summed counts of its matrix's 9 outputs."""
    import onnxruntime as ort

    node = h.make_node("Inverse", ["X"], ["Y"], domain="com.microsoft")
    base = x(2, 3, 3) + 2 * np.eye(3, dtype=F)
    proto = b.model([node], [b.vinfo("X", [2, 3, 3])], [b.vinfo("Y", [2, 3, 3])])
    proto.opset_import.append(h.make_opsetid("com.microsoft", 1))
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    y0 = sess.run(None, {"X": base})[0]
    probed = np.zeros(base.size)
    for i in range(base.size):
        bumped = base.copy().ravel()
        bumped[i] += 0.25
        probed[i] = np.count_nonzero(np.abs(sess.run(None, {"X": bumped.reshape(base.shape)})[0] - y0) > 1e-6)
    owned = b.model([node], [], [b.vinfo("Y", [2, 3, 3])], [b.tensor("X", base)])
    owned.opset_import.append(h.make_opsetid("com.microsoft", 1))
    c = irtools.run_passes(irtools.load(owned, parameters={"X"}), ["context-counts"])["context-counts"].counts["X"]
    np.testing.assert_array_equal(np.ldexp(c.mantissa, c.exponent), probed.reshape(base.shape))


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


@pytest.mark.parametrize("mode", ["linear", "nearest", "cubic"])
def test_grid_sample_with_a_constant_grid_reads_known_pixels(mode):
    """A constant grid: the exact dependency, against onnxruntime probes of X."""
    import tests.test_count_rules as rules

    grid = np.random.default_rng(10).uniform(-1.1, 1.1, (1, 2, 3, 2)).astype(F)
    node = h.make_node("GridSample", ["X", "sc"], ["Y"], mode=mode)  # "sc": a structural input for the probes
    tensors = {"X": x(1, 2, 4, 5), "sc": grid}
    ours = rules.our_counts(node, tensors, (1, 2, 2, 3), opset=20)
    probed = rules.probe_counts(node, tensors, (1, 2, 2, 3), "X", opset=20)
    np.testing.assert_array_equal(ours["X"], probed)
    assert probed.any() and not probed.all()


def test_stft_counts_each_sample_in_every_frame_holding_it():
    """8 samples, frames of 4 every 2 (3 frames), one-sided: 3 bins x 2 parts per frame. Samples
    0-1 and 6-7 lie in one frame, 2-5 in two: 6 or 12 contexts; a window element multiplies one
    sample of each of the 3 frames: 18 (onnxruntime confirms the output's frames and bins)."""
    import onnxruntime as ort

    node = h.make_node("STFT", ["X", "step", "win"], ["Y"], onesided=1)
    tensors = {"X": x(1, 8, 1), "step": np.array(2, I64), "win": x(4)}
    proto = b.model([node], [], [b.vinfo("Y", None)], [b.tensor(k, v) for k, v in tensors.items()], opset=17)
    y = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {})[0]
    assert y.shape == (1, 3, 3, 2)
    ours = our_counts(node, tensors, (1, 3, 3, 2), opset=17)
    np.testing.assert_array_equal(ours["X"].ravel(), [6, 6, 12, 12, 12, 12, 6, 6])
    np.testing.assert_array_equal(ours["win"], np.full(4, 18.0))
