"""Each op's counting rule against onnxruntime: one-hot probes give the op's dependency pattern.

For a single op whose output counts are all 1, an input scalar's context count is the number
of output scalars that depend on it. onnxruntime (an independent implementation of the op)
finds them: with the other inputs positive, set the probed tensor to zero, then to a one-hot
vector, and count the outputs that change.
"""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper as h

import irtools
from tests import builders as b


STRUCTURAL = {"sc"}  # float inputs that are not data (Resize scales): probes keep their values


def _nodes(node) -> list[onnx.NodeProto]:
    return list(node) if isinstance(node, (list, tuple)) else [node]


def probe_counts(node, tensors: dict[str, np.ndarray], out_shape, name: str, opset: int = 17,
                 base_value: float = 1.0) -> np.ndarray:
    """Dependency counts of tensor `name`'s scalars, measured with onnxruntime (`node`: one node
    or a list whose last node's first output is the output)."""
    nodes = _nodes(node)
    inputs = [b.vinfo(k, list(v.shape), onnx.helper.np_dtype_to_tensor_dtype(v.dtype)) for k, v in tensors.items()]
    proto = b.model(nodes, inputs, [b.vinfo(nodes[-1].output[0], list(out_shape))], opset=opset)
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    base = {k: (np.full_like(v, base_value) if v.dtype.kind == "f" and k not in STRUCTURAL else v)
            for k, v in tensors.items()}
    counts = np.zeros(tensors[name].size, dtype=np.int64)
    zero = sess.run(None, {**base, name: np.zeros_like(tensors[name])})[0]
    for i in range(tensors[name].size):
        feed = dict(base)
        one_hot = np.zeros(tensors[name].size, dtype=tensors[name].dtype)
        one_hot[i] = 1
        feed[name] = one_hot.reshape(tensors[name].shape)
        got = sess.run(None, feed)[0]
        counts[i] = int(np.count_nonzero((got != zero) & ~(np.isnan(got) & np.isnan(zero))))
    return counts.reshape(tensors[name].shape)


def our_counts(node, tensors: dict[str, np.ndarray], out_shape, opset: int = 17) -> dict[str, np.ndarray]:
    nodes = _nodes(node)
    inits = [b.tensor(k, v) for k, v in tensors.items()]
    proto = b.model(nodes, [], [b.vinfo(nodes[-1].output[0], list(out_shape))], inits, opset=opset)
    floats = {k for k, v in tensors.items() if v.dtype.kind == "f" and k not in STRUCTURAL}
    m = irtools.load(proto, parameters=floats)  # every float input is a parameter here
    cc = irtools.run_passes(m, ["context-counts"])["context-counts"]
    return {k: np.ldexp(c.mantissa, c.exponent) for k, c in cc.counts.items()}


F = np.float32
I64 = np.int64
R = np.random.default_rng(0)


def x(*shape):
    return R.uniform(0.5, 1.5, size=shape).astype(F)


CASES = {
    "pad-constant": (h.make_node("Pad", ["X", "pads"], ["Y"], mode="constant"),
                     {"X": x(2, 3), "pads": np.array([1, 0, 2, 1], I64)}, (5, 4)),
    "pad-negative": (h.make_node("Pad", ["X", "pads"], ["Y"]),
                     {"X": x(3, 4), "pads": np.array([-1, 1, 0, -2], I64)}, (2, 3)),
    "pad-reflect": (h.make_node("Pad", ["X", "pads"], ["Y"], mode="reflect"),
                    {"X": x(1, 4), "pads": np.array([0, 2, 0, 3], I64)}, (1, 9)),
    "pad-edge": (h.make_node("Pad", ["X", "pads"], ["Y"], mode="edge"),
                 {"X": x(2, 3), "pads": np.array([1, 2, 1, 2], I64)}, (4, 7)),
    "slice-steps": (h.make_node("Slice", ["X", "st", "en", "ax", "sp"], ["Y"]),
                    {"X": x(4, 7), "st": np.array([-1, 1], I64), "en": np.array([-10**18, 7], I64),
                     "ax": np.array([0, 1], I64), "sp": np.array([-2, 3], I64)}, (2, 2)),
    "gather-axis1": (h.make_node("Gather", ["X", "idx"], ["Y"], axis=1),
                     {"X": x(2, 5), "idx": np.array([[0, -1], [4, 0]], I64)}, (2, 2, 2)),
    "tile": (h.make_node("Tile", ["X", "reps"], ["Y"]), {"X": x(2, 3), "reps": np.array([2, 3], I64)}, (4, 9)),
    "expand": (h.make_node("Expand", ["X", "shape"], ["Y"]), {"X": x(3, 1), "shape": np.array([2, 3, 4], I64)},
               (2, 3, 4)),
    "reduce-sum": (h.make_node("ReduceSum", ["X", "axes"], ["Y"], keepdims=0),
                   {"X": x(2, 3, 4), "axes": np.array([1], I64)}, (2, 4)),
    "reduce-mean-all": (h.make_node("ReduceMean", ["X"], ["Y"], keepdims=1), {"X": x(2, 3)}, (1, 1)),
    "transpose": (h.make_node("Transpose", ["X"], ["Y"], perm=[2, 0, 1]), {"X": x(2, 3, 4)}, (4, 2, 3)),
    "conv1d-same-upper": (h.make_node("Conv", ["X", "W", "B"], ["Y"], kernel_shape=[4], strides=[2],
                                      auto_pad="SAME_UPPER"),
                          {"X": x(1, 2, 7), "W": x(3, 2, 4), "B": x(3)}, (1, 3, 4)),
    "conv2d-same-lower": (h.make_node("Conv", ["X", "W"], ["Y"], kernel_shape=[2, 3], strides=[2, 1],
                                      auto_pad="SAME_LOWER"),
                          {"X": x(1, 2, 5, 4), "W": x(2, 2, 2, 3)}, (1, 2, 3, 4)),
    "conv2d-dilated-pads": (h.make_node("Conv", ["X", "W"], ["Y"], kernel_shape=[2, 3], dilations=[2, 1],
                                        pads=[1, 0, 0, 2]),
                            {"X": x(1, 2, 5, 4), "W": x(2, 2, 2, 3)}, (1, 2, 4, 4)),
    "conv3d-grouped": (h.make_node("Conv", ["X", "W"], ["Y"], kernel_shape=[2, 2, 2], group=2, pads=[1, 0, 0, 0, 1, 1]),
                       {"X": x(1, 4, 3, 3, 3), "W": x(2, 2, 2, 2, 2)}, (1, 2, 3, 3, 3)),
    "conv-transpose": (h.make_node("ConvTranspose", ["X", "W", "B"], ["Y"], kernel_shape=[3, 3], strides=[2, 2],
                                   pads=[1, 0, 0, 1], output_padding=[1, 0]),
                       {"X": x(1, 2, 3, 3), "W": x(2, 3, 3, 3), "B": x(3)}, (1, 3, 7, 6)),
    "conv-transpose-grouped": (h.make_node("ConvTranspose", ["X", "W"], ["Y"], kernel_shape=[2, 2], strides=[1, 2],
                                           group=2),
                               {"X": x(1, 4, 2, 3), "W": x(4, 1, 2, 2)}, (1, 2, 3, 6)),
    "avgpool-ceil-pads": (h.make_node("AveragePool", ["X"], ["Y"], kernel_shape=[3, 3], strides=[2, 2],
                                      pads=[1, 1, 0, 0], ceil_mode=1),
                          {"X": x(1, 2, 5, 6)}, (1, 2, 3, 3)),
    "maxpool-dilated": (h.make_node("MaxPool", ["X"], ["Y"], kernel_shape=[2, 2], dilations=[2, 2]),
                        {"X": x(1, 1, 5, 5)}, (1, 1, 3, 3)),
    "gemm-transA-broadcast-C": (h.make_node("Gemm", ["A", "Bm", "C"], ["Y"], transA=1),
                                {"A": x(3, 2), "Bm": x(3, 4), "C": x(1, 4)}, (2, 4)),
    "matmul-vector": (h.make_node("MatMul", ["A", "Bm"], ["Y"]), {"A": x(3), "Bm": x(2, 3, 4)}, (2, 4)),
    "mul-broadcast": (h.make_node("Mul", ["A", "Bm"], ["Y"]), {"A": x(2, 1, 3), "Bm": x(4, 1)}, (2, 4, 3)),
    "where": (h.make_node("Where", ["cond", "A", "Bm"], ["Y"]),
              {"cond": np.array([[True, False, True]]), "A": x(2, 3), "Bm": x(3)}, (2, 3)),
    "instance-norm": (h.make_node("InstanceNormalization", ["X", "s", "bb"], ["Y"]),
                      {"X": x(2, 3, 4), "s": x(3), "bb": x(3)}, (2, 3, 4)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_rule_matches_onnxruntime_dependencies(case):
    node, tensors, out_shape = CASES[case]
    ours = our_counts(node, tensors, out_shape)
    for name, v in tensors.items():
        if v.dtype.kind != "f" or name in STRUCTURAL:
            continue
        if case in ("where", "instance-norm"):
            continue  # conventions differ from value dependence on purpose: checked below
        probed = probe_counts(node, tensors, out_shape, name)
        np.testing.assert_array_equal(ours[name], probed, err_msg=f"{case}: {name}")


def test_instance_norm_statistics_make_no_paths():
    """conventions.md: normalisations act element to element; scale and shift count per channel."""
    node, tensors, out_shape = CASES["instance-norm"]
    ours = our_counts(node, tensors, out_shape)
    np.testing.assert_array_equal(ours["X"], np.ones((2, 3, 4)))
    np.testing.assert_array_equal(ours["s"], [2 * 4] * 3)  # every output element of its channel
    np.testing.assert_array_equal(ours["bb"], [2 * 4] * 3)


def test_where_counts_both_branches_whatever_the_condition():
    """Counts follow the graph's structure, not values: both branches of Where stay connected."""
    node, tensors, out_shape = CASES["where"]
    ours = our_counts(node, tensors, out_shape)
    np.testing.assert_array_equal(ours["A"], np.ones((2, 3)))
    np.testing.assert_array_equal(ours["Bm"], [2, 2, 2])  # broadcast over the two rows


def test_split_hands_each_part_back():
    node = h.make_node("Split", ["X", "sizes"], ["Y0", "Y1"], axis=1)
    proto = b.model([node, h.make_node("Concat", ["Y1", "Y0", "Y1"], ["Y"], axis=1)], [],
                    [b.vinfo("Y", [2, 8])], [b.tensor("X", x(2, 5)), b.tensor("sizes", np.array([2, 3], I64))])
    m = irtools.load(proto, parameters={"X"})
    c = irtools.run_passes(m, ["context-counts"])["context-counts"].counts["X"]
    np.testing.assert_array_equal(np.ldexp(c.mantissa, c.exponent), [[1, 1, 2, 2, 2]] * 2)


RESIZE_CASES = {
    "nearest-2x": (h.make_node("Resize", ["X", "", "sc"], ["Y"], mode="nearest"),
                   {"X": x(1, 1, 3, 4), "sc": np.array([1, 1, 2, 2], F)}, (1, 1, 6, 8)),
    "linear-half-pixel": (h.make_node("Resize", ["X", "", "", "sz"], ["Y"], mode="linear",
                                      coordinate_transformation_mode="half_pixel"),
                          {"X": x(1, 2, 3, 3), "sz": np.array([1, 2, 5, 7], I64)}, (1, 2, 5, 7)),
    "linear-align-corners-down": (h.make_node("Resize", ["X", "", "", "sz"], ["Y"], mode="linear",
                                              coordinate_transformation_mode="align_corners"),
                                  {"X": x(1, 1, 6, 5), "sz": np.array([1, 1, 3, 4], I64)}, (1, 1, 3, 4)),
    "cubic": (h.make_node("Resize", ["X", "", "sc"], ["Y"], mode="cubic"),
              {"X": x(1, 1, 4, 4), "sc": np.array([1, 1, 2, 1.5], F)}, (1, 1, 8, 6)),
    "depth-to-space-crd": (h.make_node("DepthToSpace", ["X"], ["Y"], blocksize=2, mode="CRD"),
                           {"X": x(1, 8, 2, 3)}, (1, 2, 4, 6)),
    "depth-to-space-dcr": (h.make_node("DepthToSpace", ["X"], ["Y"], blocksize=2), {"X": x(1, 8, 2, 3)}, (1, 2, 4, 6)),
    "space-to-depth": (h.make_node("SpaceToDepth", ["X"], ["Y"], blocksize=2), {"X": x(1, 2, 4, 6)}, (1, 8, 2, 3)),
}


@pytest.mark.parametrize("case", list(RESIZE_CASES))
def test_resize_and_depth_rules_match_onnxruntime(case):
    node, tensors, out_shape = RESIZE_CASES[case]
    ours = our_counts(node, tensors, out_shape)
    np.testing.assert_array_equal(ours["X"], probe_counts(node, tensors, out_shape, "X"))


def test_nearest_upsample_by_hand():
    """2x nearest upsampling: every input pixel feeds exactly its 2x2 block."""
    node, tensors, out_shape = RESIZE_CASES["nearest-2x"]
    np.testing.assert_array_equal(our_counts(node, tensors, out_shape)["X"], np.full((1, 1, 3, 4), 4))


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


# -- the ops of today's language and vision transformers (issue 13) ---------------------------
def seq_ops(split, at, concat_axis=None):
    nodes = [h.make_node("SplitToSequence", ["X", "sp"], ["S"], axis=1)]
    if concat_axis is None:
        return nodes + [h.make_node("SequenceAt", ["S", "pos"], ["Y"])]
    return nodes + [h.make_node("ConcatFromSequence", ["S"], ["Y"], axis=concat_axis)]


TRANSFORMER_CASES = {
    "trilu-upper-k1": (h.make_node("Trilu", ["X", "k"], ["Y"]), {"X": x(2, 3, 4), "k": np.array(1, I64)}, (2, 3, 4)),
    "trilu-lower": (h.make_node("Trilu", ["X"], ["Y"], upper=0), {"X": x(4, 3)}, (4, 3)),
    "cumsum": (h.make_node("CumSum", ["X", "ax"], ["Y"]), {"X": x(2, 4), "ax": np.array(1, I64)}, (2, 4)),
    "cumsum-exclusive-reverse": (h.make_node("CumSum", ["X", "ax"], ["Y"], exclusive=1, reverse=1),
                                 {"X": x(3, 2), "ax": np.array(0, I64)}, (3, 2)),
    "gathernd": (h.make_node("GatherND", ["X", "idx"], ["Y"]),
                 {"X": x(3, 4, 2), "idx": np.array([[0, 1], [2, -1], [0, 1]], I64)}, (3, 2)),
    "gathernd-batch": (h.make_node("GatherND", ["X", "idx"], ["Y"], batch_dims=1),
                       {"X": x(2, 3, 2), "idx": np.array([[[1], [1]], [[0], [2]]], I64)}, (2, 2, 2)),
    "gather-elements": (h.make_node("GatherElements", ["X", "idx"], ["Y"], axis=1),
                        {"X": x(3, 4), "idx": np.array([[0, 3], [1, 1], [-1, 2]], I64)}, (3, 2)),
    "scatternd": (h.make_node("ScatterND", ["X", "idx", "U"], ["Y"]),
                  {"X": x(4, 3), "idx": np.array([[1], [3]], I64), "U": x(2, 3)}, (4, 3)),
    "scatter-elements": (h.make_node("ScatterElements", ["X", "idx", "U"], ["Y"], axis=1),
                         {"X": x(2, 4), "idx": np.array([[3, 0], [1, 2]], I64), "U": x(2, 2)}, (2, 4)),
    "einsum-batched-matmul": (h.make_node("Einsum", ["A", "Bm"], ["Y"], equation="bij,bjk->bik"),
                              {"A": x(2, 3, 4), "Bm": x(2, 4, 2)}, (2, 3, 2)),
    "einsum-attention-scores": (h.make_node("Einsum", ["A", "Bm"], ["Y"], equation="bhqd,bhkd->bhqk"),
                                {"A": x(1, 2, 3, 4), "Bm": x(1, 2, 5, 4)}, (1, 2, 3, 5)),
    "einsum-outer-implicit": (h.make_node("Einsum", ["A", "Bm"], ["Y"], equation="i,j"), {"A": x(3), "Bm": x(4)},
                              (3, 4)),
    "einsum-ellipsis-sum": (h.make_node("Einsum", ["A", "Bm"], ["Y"], equation="...ij,j->...i"),
                            {"A": x(2, 3, 4), "Bm": x(4)}, (2, 3)),
    "mod": (h.make_node("Mod", ["A", "Bm"], ["Y"], fmod=1), {"A": x(2, 3), "Bm": x(3) + 2}, (2, 3)),
    "compress-constant": (h.make_node("Compress", ["X", "cond"], ["Y"], axis=1),
                          {"X": x(2, 4), "cond": np.array([True, False, True, True])}, (2, 3)),
    "split-to-sequence-at": (seq_ops(None, 1), {"X": x(2, 5), "sp": np.array([2, 3], I64), "pos": np.array(-1, I64)},
                             (2, 3)),
    "split-to-sequence-concat": (seq_ops(None, None, 0), {"X": x(2, 4), "sp": np.array([2, 2], I64)}, (4, 2)),
}


@pytest.mark.parametrize("case", list(TRANSFORMER_CASES))
def test_transformer_op_rules_match_onnxruntime_dependencies(case):
    node, tensors, out_shape = TRANSFORMER_CASES[case]
    ours = our_counts(node, tensors, out_shape)
    for name, v in tensors.items():
        if v.dtype.kind == "f":
            base = 3.0 if case == "mod" else 1.0  # fmod(1, 1) = fmod(0, 1): probe with 3 beside the one-hot
            np.testing.assert_array_equal(ours[name], probe_counts(node, tensors, out_shape, name, base_value=base),
                                          err_msg=f"{case}: {name}")


def test_einsum_counts_a_factor_once_per_product_term():
    """y = sum_ij a_i b_j ('i,j->'): a_i is a factor of J terms, so it has J paths to y."""
    node = h.make_node("Einsum", ["A", "Bm"], ["Y"], equation="i,j->")
    ours = our_counts(node, {"A": x(3), "Bm": x(5)}, ())
    np.testing.assert_array_equal(ours["A"], [5] * 3)
    np.testing.assert_array_equal(ours["Bm"], [3] * 5)


COMPARISONS = "Equal Less Greater LessOrEqual GreaterOrEqual".split()


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


def test_data_chosen_gathernd_lets_every_slice_reach_every_position():
    """GatherND(table, ids) with ids from the input: like Gather of token ids, each table slice
    receives the counts of every index position (one_hot(ids) @ table)."""
    from onnx import TensorProto as T

    proto = b.model([h.make_node("GatherND", ["table", "ids"], ["y"])], [b.vinfo("ids", [3, 1], T.INT64)],
                    [b.vinfo("y", [3, 2])], [b.tensor("table", x(4, 2))])
    m = irtools.load(proto, parameters={"table"})
    c = irtools.run_passes(m, ["context-counts"])["context-counts"].counts["table"]
    np.testing.assert_array_equal(np.ldexp(c.mantissa, c.exponent), np.full((4, 2), 3.0))


def _if_model(cond_input: bool):
    """y = If(c, then: W1 x, else: W2 x); c a constant True or a model input."""
    from onnx import TensorProto as T

    rng = np.random.default_rng(3)
    then_g = h.make_graph([h.make_node("MatMul", ["w1", "x"], ["t"])], "then", [], [b.vinfo("t", [2, 3])])
    else_g = h.make_graph([h.make_node("MatMul", ["w2", "x"], ["e"]), h.make_node("Relu", ["e"], ["e2"])], "else",
                          [], [b.vinfo("e2", [2, 3])])
    nodes = [h.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g, name="branch")]
    inits = [b.tensor("w1", rng.standard_normal((2, 4)).astype(F)), b.tensor("w2", rng.standard_normal((2, 4)).astype(F))]
    inputs = [b.vinfo("x", [4, 3])]
    if cond_input:
        inputs.append(b.vinfo("c", [], T.BOOL))
    else:
        inits.append(b.tensor("c", np.array(True)))
    return b.model(nodes, inputs, [b.vinfo("y", [2, 3])], inits)


def test_if_with_a_constant_condition_counts_its_branch_only():
    m = irtools.load(_if_model(False), parameters={"w1", "w2"})
    cc = irtools.run_passes(m, ["context-counts"])["context-counts"]
    np.testing.assert_array_equal(np.ldexp(cc.counts["w1"].mantissa, cc.counts["w1"].exponent), np.full((2, 4), 3.0))
    assert not cc.counts["w2"].mantissa.any() and not cc.notes


def test_if_with_an_input_condition_counts_the_union_of_both_branches():
    m = irtools.load(_if_model(True), parameters={"w1", "w2"})
    cc = irtools.run_passes(m, ["context-counts"])["context-counts"]
    for name in ("w1", "w2"):
        np.testing.assert_array_equal(np.ldexp(cc.counts[name].mantissa, cc.counts[name].exponent),
                                      np.full((2, 4), 3.0))
    assert len(cc.notes) == 1 and "If node 'branch'" in cc.notes[0] and "both branches" in cc.notes[0]


def test_group_norm_parameters_behind_unsqueeze_are_never_folded_into_an_activation():
    """TorchScript's GroupNorm: InstanceNormalization (unit scale) -> Mul(Unsqueeze(w)) ->
    Add(Unsqueeze(b)) -> GELU written out (x * 0.5 * (1 + erf(x / sqrt 2))). w and b are used by
    every output element of their channel: 1 x 4 = 4 contexts each, never 0."""
    c, length = 3, 4
    rng = np.random.default_rng(4)
    nodes = [
        h.make_node("InstanceNormalization", ["x", "ones", "zeros"], ["n"]),
        h.make_node("Unsqueeze", ["gn.weight", "ax"], ["wu"]), h.make_node("Mul", ["n", "wu"], ["s"]),
        h.make_node("Unsqueeze", ["gn.bias", "ax"], ["bu"]), h.make_node("Add", ["s", "bu"], ["g"]),
        h.make_node("Div", ["g", "sqrt2"], ["d"]), h.make_node("Erf", ["d"], ["e"]),
        h.make_node("Add", ["e", "one"], ["e1"]), h.make_node("Mul", ["g", "e1"], ["p"]),
        h.make_node("Mul", ["p", "half"], ["y"]),
    ]
    inits = [b.tensor("ones", np.ones(c, F)), b.tensor("zeros", np.zeros(c, F)), b.tensor("ax", np.array([1], I64)),
             b.tensor("gn.weight", rng.standard_normal(c).astype(F)), b.tensor("gn.bias", rng.standard_normal(c).astype(F)),
             b.tensor("sqrt2", np.array(1.4142135, F)), b.tensor("one", np.array(1.0, F)),
             b.tensor("half", np.array(0.5, F))]
    proto = b.model(nodes, [b.vinfo("x", [1, c, length])], [b.vinfo("y", [1, c, length])], inits)
    m = irtools.load(proto, parameters={"gn.weight", "gn.bias"})
    cc = irtools.run_passes(m, ["context-counts"])["context-counts"].counts
    for name in ("gn.weight", "gn.bias"):
        np.testing.assert_array_equal(np.ldexp(cc[name].mantissa, cc[name].exponent), np.full(c, float(length)))


def _rope_case(domain: str, interleaved: int, rot: int):
    x_ = x(1, 2, 3, 8)  # (B, heads, S, D)
    half = (rot or 8) // 2
    pos = np.array([[0, 1, 2]], I64)
    cos, sin = x(4, half), x(4, half)
    if domain:
        node = h.make_node("RotaryEmbedding", ["X", "pos", "cos", "sin"], ["Y"], domain=domain,
                           interleaved=interleaved, rotary_embedding_dim=rot, num_heads=2)
    else:
        node = h.make_node("RotaryEmbedding", ["X", "cos", "sin", "pos"], ["Y"], interleaved=interleaved,
                           rotary_embedding_dim=rot)
    return node, {"X": x_, "pos": pos, "cos": cos, "sin": sin}


@pytest.mark.parametrize("domain,interleaved,rot", [("", 0, 0), ("", 1, 0), ("", 0, 4), ("com.microsoft", 0, 0),
                                                    ("com.microsoft", 1, 0)])
def test_rotary_embedding_matches_onnxruntime(domain, interleaved, rot):
    node, tensors = _rope_case(domain, interleaved, rot)
    opset = 23
    extra = [h.make_opsetid(domain, 1)] if domain else []
    inits = [b.tensor(k, v) for k, v in tensors.items()]
    proto = b.model([node], [], [b.vinfo("Y", [1, 2, 3, 8])], inits, opset=opset)
    proto.opset_import.extend(extra)
    proto.ir_version = 10
    m = irtools.load(proto, parameters={"X"})
    ours = irtools.run_passes(m, ["context-counts"])["context-counts"].counts["X"]
    ours = np.ldexp(ours.mantissa, ours.exponent)
    inputs = [b.vinfo(k, list(v.shape), onnx.helper.np_dtype_to_tensor_dtype(v.dtype)) for k, v in tensors.items()]
    probe = b.model([node], inputs, [b.vinfo("Y", [1, 2, 3, 8])], opset=opset)
    probe.opset_import.extend(extra)
    probe.ir_version = 10
    sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = dict(tensors)
    zero = sess.run(None, {**feeds, "X": np.zeros_like(tensors["X"])})[0]
    truth = np.zeros(tensors["X"].size)
    for i in range(truth.size):
        one = np.zeros(truth.size, F)
        one[i] = 1
        truth[i] = np.count_nonzero(sess.run(None, {**feeds, "X": one.reshape(tensors["X"].shape)})[0] != zero)
    np.testing.assert_array_equal(ours, truth.reshape(ours.shape))


def _attention_models(q_heads: int, kv_heads: int, past: int = 0):
    """Fused ONNX Attention over 4-D Q, K, V and the same computation written out (Gather to
    share key/value heads, MatMul, Softmax, MatMul, with past keys/values concatenated)."""
    rng = np.random.default_rng(5)
    q, k, v = (rng.standard_normal(s).astype(F) for s in ((1, q_heads, 3, 4), (1, kv_heads, 5, 4), (1, kv_heads, 5, 2)))
    inits = [b.tensor("q", q), b.tensor("k", k), b.tensor("v", v)]
    if past:
        inits += [b.tensor("pk", rng.standard_normal((1, kv_heads, past, 4)).astype(F)),
                  b.tensor("pv", rng.standard_normal((1, kv_heads, past, 2)).astype(F))]
    fused = b.model([h.make_node("Attention", ["q", "k", "v", "", "pk", "pv"] if past else ["q", "k", "v"], ["y"])],
                    [], [b.vinfo("y", [1, q_heads, 3, 2])], inits, opset=23)
    fused.ir_version = 10
    heads = np.arange(q_heads) // (q_heads // kv_heads)
    nodes = []
    kk, vv = "k", "v"
    if past:
        nodes += [h.make_node("Concat", ["pk", "k"], ["kc"], axis=2), h.make_node("Concat", ["pv", "v"], ["vc"], axis=2)]
        kk, vv = "kc", "vc"
    nodes += [h.make_node("Gather", [kk, "heads"], ["kr"], axis=1), h.make_node("Gather", [vv, "heads"], ["vr"], axis=1),
              h.make_node("Transpose", ["kr"], ["kt"], perm=[0, 1, 3, 2]), h.make_node("MatMul", ["q", "kt"], ["s"]),
              h.make_node("Softmax", ["s"], ["p"]), h.make_node("MatMul", ["p", "vr"], ["y"])]
    written = b.model(nodes, [], [b.vinfo("y", [1, q_heads, 3, 2])], inits + [b.tensor("heads", heads.astype(I64))])
    return fused, written


@pytest.mark.parametrize("q_heads,kv_heads,past", [(2, 2, 0), (4, 2, 0), (4, 1, 2)])
def test_fused_attention_counts_as_its_written_out_graph(q_heads, kv_heads, past):
    fused, written = _attention_models(q_heads, kv_heads, past)
    params = {"q", "k", "v", "pk", "pv"} if past else {"q", "k", "v"}
    got = [irtools.run_passes(irtools.load(m, parameters=params), ["context-counts"])["context-counts"].counts
           for m in (fused, written)]
    for name in params:
        np.testing.assert_array_equal(np.ldexp(got[0][name].mantissa, got[0][name].exponent),
                                      np.ldexp(got[1][name].mantissa, got[1][name].exponent), err_msg=name)
    if past == 0 and q_heads == kv_heads:  # and the written-out graph against brute force
        from tests.brute_force import brute_force_counts

        plain = b.model([h.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
                         h.make_node("MatMul", ["q", "kt"], ["s"]), h.make_node("Softmax", ["s"], ["p"]),
                         h.make_node("MatMul", ["p", "v"], ["y"])], [], [b.vinfo("y", [1, q_heads, 3, 2])],
                        list(written.graph.initializer)[:3])
        truth = brute_force_counts(plain)
        for name in params:
            np.testing.assert_array_equal(np.ldexp(got[0][name].mantissa, got[0][name].exponent),
                                          truth[name].astype(float), err_msg=name)


def _loop_models(kind: str, steps: int = 3):
    """h_{t+1} = relu(h_t W + x_t) for t < steps, y = stacked h_{t+1} (and the final state):
    as a Loop (x_t = x), a Scan over x's rows, and written out step by step."""
    from onnx import TensorProto as T

    rng = np.random.default_rng(6)
    w = b.tensor("w", rng.standard_normal((2, 2)).astype(F))
    h0 = b.tensor("h0", rng.standard_normal((1, 2)).astype(F))
    if kind == "loop":
        body = h.make_graph([h.make_node("MatMul", ["h_in", "w"], ["m"]), h.make_node("Add", ["m", "xs"], ["a"]),
                             h.make_node("Relu", ["a"], ["h_out"]), h.make_node("Identity", ["c_in"], ["c_out"]),
                             h.make_node("Identity", ["h_out"], ["scan_out"])], "body",
                            [b.vinfo("i", [], T.INT64), b.vinfo("c_in", [], T.BOOL), b.vinfo("h_in", [1, 2])],
                            [b.vinfo("c_out", [], T.BOOL), b.vinfo("h_out", [1, 2]), b.vinfo("scan_out", [1, 2])])
        node = h.make_node("Loop", ["n", "", "h0"], ["h_final", "y"], body=body)
        inits = [w, h0, b.tensor("n", np.array(steps, I64)), b.tensor("xs", x(1, 2))]
        looped = b.model([node], [], [b.vinfo("y", [steps, 1, 2])], inits)
        xs = ["xs"] * steps
    else:
        body = h.make_graph([h.make_node("MatMul", ["h_in", "w"], ["m"]), h.make_node("Add", ["m", "x_t"], ["a"]),
                             h.make_node("Relu", ["a"], ["h_out"]), h.make_node("Identity", ["h_out"], ["scan_out"])],
                            "body", [b.vinfo("h_in", [1, 2]), b.vinfo("x_t", [2])],
                            [b.vinfo("h_out", [1, 2]), b.vinfo("scan_out", [1, 2])])
        node = h.make_node("Scan", ["h0", "xseq"], ["h_final", "y"], body=body, num_scan_inputs=1)
        inits = [w, h0, b.tensor("xseq", x(steps, 2))]
        looped = b.model([node], [], [b.vinfo("y", [steps, 1, 2])], inits)
        xs = [f"x{t}" for t in range(steps)]
    nodes, prev = [], "h0"
    if kind == "scan":
        nodes.append(h.make_node("Split", ["xseq"], xs, axis=0, num_outputs=steps))
    for t in range(steps):
        xt = xs[t]
        if kind == "scan":
            nodes.append(h.make_node("Squeeze", [xt, "ax0"], [f"xq{t}"]))
            xt = f"xq{t}"
        nodes += [h.make_node("MatMul", [prev, "w"], [f"m{t}"]), h.make_node("Add", [f"m{t}", xt], [f"a{t}"]),
                  h.make_node("Relu", [f"a{t}"], [f"s{t}"]), h.make_node("Unsqueeze", [f"s{t}", "ax0"], [f"u{t}"])]
        prev = f"s{t}"
    nodes.append(h.make_node("Concat", [f"u{t}" for t in range(steps)], ["y"], axis=0))
    written = b.model(nodes, [], [b.vinfo("y", [steps, 1, 2])], inits + [b.tensor("ax0", np.array([0], I64))],
                      opset=18)
    return looped, written


@pytest.mark.parametrize("kind", ["loop", "scan"])
def test_loops_with_constant_trip_counts_count_as_unrolled(kind):
    looped, written = _loop_models(kind)
    params = {"w", "h0", "xs"} if kind == "loop" else {"w", "h0", "xseq"}
    got = [irtools.run_passes(irtools.load(m, parameters=params), ["context-counts"])["context-counts"].counts
           for m in (looped, written)]
    for name in params:
        np.testing.assert_array_equal(np.ldexp(got[0][name].mantissa, got[0][name].exponent),
                                      np.ldexp(got[1][name].mantissa, got[1][name].exponent), err_msg=name)
    assert got[0]["w"].log2().max() > 2


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
