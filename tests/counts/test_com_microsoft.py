"""onnxruntime's fused com.microsoft ops against the graphs they fuse.

Each against an independent truth: onnxruntime's dependency probes (`tests/counts/oracle.py`),
hand-derived counts where the conventions differ from value dependence, brute force or a
written-out graph.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as h

import irtools
from tests import builders as b
from tests.counts.oracle import Case, F, I32, MS, check_case, check_twin, covers, probed, sx, x


@covers(("com.microsoft", "Inverse"))
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


@covers(("com.microsoft", "SkipLayerNormalization"), ("com.microsoft", "SkipSimplifiedLayerNormalization"))
@pytest.mark.parametrize("simplified", [False, True])
def test_skip_layer_norm_counts_both_the_normalised_output_and_the_residual_sum(simplified):
    t = {"x": sx(1, 3, 4), "skip": sx(1, 3, 4), "gamma": sx(4), "beta": sx(4), "bias": sx(4)}
    if simplified:
        del t["beta"]
        fused = [h.make_node("SkipSimplifiedLayerNormalization", ["x", "skip", "gamma", "bias"], ["y", "", "", "s"],
                             domain=MS)]
        norm = h.make_node("SimplifiedLayerNormalization", ["s", "gamma"], ["y"], axis=-1)  # onnxruntime's, domain ""
    else:
        fused = [h.make_node("SkipLayerNormalization", ["x", "skip", "gamma", "beta", "bias"], ["y", "", "", "s"],
                             domain=MS)]
        norm = h.make_node("LayerNormalization", ["s", "gamma", "beta"], ["y"], axis=-1)
    written = [h.make_node("Add", ["x", "skip"], ["xs"]), h.make_node("Add", ["xs", "bias"], ["s"]), norm]
    check_twin(fused, written, t, ["y", "s"])


@covers(("com.microsoft", "EmbedLayerNormalization"))
def test_embed_layer_norm_is_three_lookups_and_a_layer_norm():
    ids, seg = np.array([[1, 3, 1, 0]], I32), np.array([[0, 1, 1, 0]], I32)
    t = {"ids": ids, "seg": seg, "word": sx(5, 4), "pos": sx(6, 4), "segment": sx(2, 4), "gamma": sx(4), "beta": sx(4),
         "positions": np.arange(4, dtype=I32)[None]}
    fused = [h.make_node("EmbedLayerNormalization", ["ids", "seg", "word", "pos", "segment", "gamma", "beta"],
                         ["y", "mask"], domain=MS, epsilon=1e-12)]
    written = [h.make_node("Gather", ["word", "ids"], ["we"]), h.make_node("Gather", ["pos", "positions"], ["pe"]),
               h.make_node("Gather", ["segment", "seg"], ["se"]), h.make_node("Add", ["we", "pe"], ["a"]),
               h.make_node("Add", ["a", "se"], ["e"]),
               h.make_node("LayerNormalization", ["e", "gamma", "beta"], ["y"], axis=-1, epsilon=1e-12),
               h.make_node("Identity", ["ids"], ["mask"])]
    check_twin(fused, written, t, ["y"])


@covers(("com.microsoft", "EmbedLayerNormalization"))
def test_embed_layer_norm_with_data_ids_hands_every_row_the_lookup_counts():
    """Token ids from the input: like Gather (one_hot(ids) @ table), every word row may be picked."""
    proto = b.model([h.make_node("EmbedLayerNormalization", ["ids", "seg", "word", "pos", "segment", "gamma", "beta"],
                                 ["y", "mask"], domain=MS)],
                    [b.vinfo("ids", [2, 3], T.INT32), b.vinfo("seg", [2, 3], T.INT32)], [b.vinfo("y", [2, 3, 4])],
                    [b.tensor(k, v) for k, v in {"word": sx(5, 4), "pos": sx(6, 4), "segment": sx(2, 4), "gamma": sx(4),
                                                  "beta": sx(4)}.items()])
    proto.opset_import.append(h.make_opsetid(MS, 1))
    cc = irtools.run_passes(irtools.load(proto), ["context-counts"])["context-counts"].counts
    word = np.ldexp(cc["word"].mantissa, cc["word"].exponent)
    pos = np.ldexp(cc["pos"].mantissa, cc["pos"].exponent)
    np.testing.assert_array_equal(word, np.full((5, 4), 6.0))  # 2 x 3 positions, one output element each
    np.testing.assert_array_equal(pos, np.array([[2.0] * 4] * 3 + [[0.0] * 4] * 3))  # rows 0..2, both batches


@covers(("com.microsoft", "BiasSplitGelu"))
def test_bias_split_gelu_is_a_gated_half():
    """No CPU kernel: checked against its definition (X + bias, split in halves a, b: a * gelu(b))."""
    t = {"x": sx(1, 3, 8), "bias": sx(8)}
    fused = [h.make_node("BiasSplitGelu", ["x", "bias"], ["y"], domain=MS)]
    written = [h.make_node("Add", ["x", "bias"], ["s"]), h.make_node("Split", ["s"], ["a", "g"], axis=-1, num_outputs=2),
               h.make_node("Gelu", ["g"], ["gg"]), h.make_node("Mul", ["a", "gg"], ["y"])]
    check_twin(fused, written, t, [("y", [1, 3, 4])], opset=20, runs_on_cpu=False)


@covers(("com.microsoft", "FusedMatMul"),
        ("com.microsoft", "FusedGemm"),
        ("com.microsoft", "FusedConv"),
        ("com.microsoft", "GemmFastGelu"),
        ("com.microsoft", "GroupNorm"))
@pytest.mark.parametrize("case", ["fused-matmul", "fused-gemm", "fused-conv", "gemm-fast-gelu", "group-norm"])
def test_fused_linear_ops_count_as_their_parts(case):
    if case == "fused-matmul":
        t = {"a": sx(2, 4, 3), "bm": sx(5, 4)}
        fused = [h.make_node("FusedMatMul", ["a", "bm"], ["y"], domain=MS, transA=1, transB=1, alpha=0.5)]
        written = [h.make_node("Transpose", ["a"], ["at"], perm=[0, 2, 1]), h.make_node("Transpose", ["bm"], ["bt"]),
                   h.make_node("MatMul", ["at", "bt"], ["m"]), h.make_node("Mul", ["m", "half"], ["y"])]
        t["half"] = np.array(0.5, F)
        check_twin(fused, written, t, ["y"], compare=["a", "bm"])
    elif case == "fused-gemm":
        t = {"a": sx(3, 2), "bm": sx(4, 3), "c": sx(4)}
        fused = [h.make_node("FusedGemm", ["a", "bm", "c"], ["y"], domain=MS, transA=1, transB=1, activation="Relu")]
        written = [h.make_node("Gemm", ["a", "bm", "c"], ["g"], transA=1, transB=1), h.make_node("Relu", ["g"], ["y"])]
        check_twin(fused, written, t, ["y"])
    elif case == "fused-conv":
        t = {"xx": sx(1, 2, 5, 5), "w": sx(3, 2, 3, 3), "bb": sx(3), "z": sx(1, 3, 3, 3)}
        fused = [h.make_node("FusedConv", ["xx", "w", "bb", "z"], ["y"], domain=MS, activation="Relu",
                             kernel_shape=[3, 3])]
        written = [h.make_node("Conv", ["xx", "w", "bb"], ["c"], kernel_shape=[3, 3]), h.make_node("Add", ["c", "z"], ["s"]),
                   h.make_node("Relu", ["s"], ["y"])]
        check_twin(fused, written, t, ["y"])
    elif case == "gemm-fast-gelu":  # no CPU kernel: its definition, FastGelu(X W + bias)
        t = {"a": sx(2, 3), "w": sx(3, 4), "bias": sx(4)}
        fused = [h.make_node("GemmFastGelu", ["a", "w", "bias"], ["y"], domain=MS)]
        written = [h.make_node("MatMul", ["a", "w"], ["m"]), h.make_node("Add", ["m", "bias"], ["s"]),
                   h.make_node("Gelu", ["s"], ["y"], approximate="tanh")]
        check_twin(fused, written, t, [("y", [2, 4])], opset=20, runs_on_cpu=False)
    else:  # com.microsoft GroupNorm, channels last, no CPU kernel: normalise, then gamma, beta per channel
        t = {"xx": sx(1, 2, 2, 4), "gamma": sx(4), "beta": sx(4), "perm": np.array([0, 3, 1, 2], np.int64)}
        fused = [h.make_node("GroupNorm", ["xx", "gamma", "beta"], ["y"], domain=MS, groups=2, activation=0,
                             epsilon=1e-5, channels_last=1)]
        written = [h.make_node("Transpose", ["xx"], ["xc"], perm=[0, 3, 1, 2]),
                   h.make_node("GroupNormalization", ["xc", "gamma", "beta"], ["g"], num_groups=2),
                   h.make_node("Transpose", ["g"], ["y"], perm=[0, 2, 3, 1])]
        check_twin(fused, written, t, [("y", [1, 2, 2, 4])], opset=21, runs_on_cpu=False)


@pytest.mark.slow  # torch export + onnxruntime's optimizer (~20 s)
def test_gpt2_fused_by_onnxruntime_counts_like_the_export(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from onnxruntime.transformers.optimizer import optimize_model

    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=50, n_embd=16, n_layer=2, n_head=2, n_positions=16, use_cache=False)
    gpt = transformers.GPT2LMHeadModel(cfg).eval()

    class Logits(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, ids, mask):
            return self.m(input_ids=ids, attention_mask=mask, use_cache=False).logits

    path = str(tmp_path / "gpt2.onnx")
    ids = torch.randint(0, 50, (1, 8))
    torch.onnx.export(Logits(gpt), (ids, torch.ones_like(ids)), path, input_names=["ids", "mask"], opset_version=17,
                      dynamo=False)
    opt = optimize_model(path, model_type="gpt2", num_heads=2, hidden_size=16)
    fused_path = str(tmp_path / "gpt2_fused.onnx")
    opt.save_model_to_file(fused_path)
    assert any(n.op_type == "SkipLayerNormalization" for n in onnx.load(fused_path).graph.node)
    got, want = (irtools.run_passes(irtools.load(p), ["context-counts"])["context-counts"].counts
                 for p in (fused_path, path))
    common = set(got) & set(want)
    assert len(common) >= 12
    for name in common:
        np.testing.assert_allclose(got[name].log2(), want[name].log2(), rtol=0, atol=1e-12, err_msg=name)


@covers(("com.microsoft", "BiasSoftmax"), ("com.microsoft", "BiasDropout"), ("com.microsoft", "SkipGroupNorm"))
@pytest.mark.parametrize("case", ["bias-softmax", "bias-dropout", "skip-group-norm"])
def test_fused_elementwise_ops_count_as_their_parts(case):
    """No CPU kernels (training or CUDA ops): checked against their definitions."""
    if case == "bias-softmax":
        t = {"d": sx(2, 3, 4), "bias": sx(3, 4)}
        fused = [h.make_node("BiasSoftmax", ["d", "bias"], ["y"], domain=MS, axis=-1)]
        written = [h.make_node("Add", ["d", "bias"], ["s"]), h.make_node("Softmax", ["s"], ["y"], axis=-1)]
        out = [("y", [2, 3, 4])]
    elif case == "bias-dropout":
        t = {"d": sx(2, 4), "bias": sx(4), "res": sx(2, 4)}
        fused = [h.make_node("BiasDropout", ["d", "bias", "res"], ["y"], domain=MS)]
        written = [h.make_node("Add", ["d", "bias"], ["s"]), h.make_node("Dropout", ["s"], ["dr"]),
                   h.make_node("Add", ["dr", "res"], ["y"])]
        out = [("y", [2, 4])]
    else:  # SkipGroupNorm(X, gamma, beta, skip, bias) -> (Y, S = X + skip + bias), channels last
        t = {"xx": sx(1, 2, 2, 4), "gamma": sx(4), "beta": sx(4), "skip": sx(1, 2, 2, 4), "bias": sx(4)}
        fused = [h.make_node("SkipGroupNorm", ["xx", "gamma", "beta", "skip", "bias"], ["y", "s"], domain=MS, groups=2,
                             activation=0, epsilon=1e-5, channels_last=1)]
        written = [h.make_node("Add", ["xx", "skip"], ["a"]), h.make_node("Add", ["a", "bias"], ["s"]),
                   h.make_node("Transpose", ["s"], ["sc"], perm=[0, 3, 1, 2]),
                   h.make_node("GroupNormalization", ["sc", "gamma", "beta"], ["g"], num_groups=2),
                   h.make_node("Transpose", ["g"], ["y"], perm=[0, 2, 3, 1])]
        out = [("y", [1, 2, 2, 4]), ("s", [1, 2, 2, 4])]
    check_twin(fused, written, t, out, opset=21, runs_on_cpu=False)


CASES = {
    "fast-gelu": Case(h.make_node("FastGelu", ["X", "bias"], ["Y"], domain=MS), {"X": x(2, 3), "bias": x(3)}, (2, 3)),
    "bias-gelu": Case(h.make_node("BiasGelu", ["X", "bias"], ["Y"], domain=MS), {"X": x(2, 3), "bias": x(3)}, (2, 3)),
    "quick-gelu": Case(h.make_node("QuickGelu", ["X"], ["Y"], domain=MS), {"X": x(2, 3)}, (2, 3)),
    "gelu": Case(h.make_node("Gelu", ["X"], ["Y"], domain=MS), {"X": x(2, 3)}, (2, 3)),
}


@pytest.mark.parametrize("case", probed(CASES))
def test_rule_matches_onnxruntime_dependencies(case):
    check_case(CASES[case], case)


@covers((MS, "BiasAdd"))
def test_bias_add_is_two_additions():
    """No CPU kernel: checked against its definition, X + bias + skip."""
    t = {"xx": sx(1, 2, 4), "bias": sx(4), "skip": sx(1, 2, 4)}
    fused = [h.make_node("BiasAdd", ["xx", "bias", "skip"], ["y"], domain=MS)]
    written = [h.make_node("Add", ["xx", "bias"], ["s"]), h.make_node("Add", ["s", "skip"], ["y"])]
    check_twin(fused, written, t, [("y", [1, 2, 4])], runs_on_cpu=False)
