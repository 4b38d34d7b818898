"""onnxruntime's fused transformer ops (com.microsoft) count as the graphs they fuse.

Each fused op is built beside the same computation written out in standard ops (counted by
the rules tested in test_count_rules.py). Where onnxruntime has a CPU kernel, both graphs are
first run on the same random tensors to show the written-out graph is the fused op; then the
per-scalar counts of every float input must be identical. A GPT-2 exported by torch and fused
by onnxruntime's transformer optimizer must count like the unfused export.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto as T
from onnx import helper as h

import irtools
from tests import builders as b

F = np.float32
I32 = np.int32
MS = "com.microsoft"


def _model(nodes, tensors, outputs, opset=17, feed=False):
    """Float tensors are initializers (parameters), integer ones too (ids, lengths). `outputs`:
    names, or (name, shape) where onnx cannot infer a com.microsoft op's shape. feed=True
    (an op without a CPU kernel): each float tensor k is stored as k_p and read as k_p + z, z a
    graph input, so nothing is constant-folded by onnxruntime."""
    outs = [b.vinfo(o, None) if isinstance(o, str) else b.vinfo(*o) for o in outputs]
    inits = [b.tensor(k + "_p" if feed and v.dtype == F else k, v) for k, v in tensors.items()]
    inputs = []
    if feed:
        inputs = [b.vinfo("z", [1])]
        nodes = [h.make_node("Add", [k + "_p", "z"], [k]) for k, v in tensors.items() if v.dtype == F] + list(nodes)
    m = b.model(nodes, inputs, outs, inits, opset=opset)
    m.opset_import.append(h.make_opsetid(MS, 1))
    m.ir_version = 10 if opset >= 21 else 8
    return m


def _counts(m, tensors, feed=False):
    params = {k + ("_p" if feed else "") for k, v in tensors.items() if v.dtype.kind == "f"}
    cc = irtools.run_passes(irtools.load(m, parameters=params), ["context-counts"])["context-counts"].counts
    return {k.removesuffix("_p") if feed else k: np.ldexp(c.mantissa, c.exponent) for k, c in cc.items()}


def _run(m):
    return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {})


def check(fused, written, tensors, outputs, opset=17, runs_on_cpu=True, compare=None):
    feed = not runs_on_cpu
    f = _model(fused, tensors, outputs, opset, feed)
    w = _model(written, tensors, outputs, opset, feed)
    if runs_on_cpu:
        for name, a, c in zip(outputs, _run(f), _run(w), strict=True):
            np.testing.assert_allclose(a, c, rtol=1e-4, atol=1e-5, err_msg=f"written-out graph differs on {name}")
    got, want = _counts(f, tensors, feed), _counts(w, tensors, feed)
    for name in compare or [k for k, v in tensors.items() if v.dtype.kind == "f"]:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
        assert want[name].any(), name  # a real check: the tensor has contexts


R = np.random.default_rng(0)


def x(*shape):
    return R.uniform(-1, 1, shape).astype(F)


@pytest.mark.parametrize("simplified", [False, True])
def test_skip_layer_norm_counts_both_the_normalised_output_and_the_residual_sum(simplified):
    t = {"x": x(1, 3, 4), "skip": x(1, 3, 4), "gamma": x(4), "beta": x(4), "bias": x(4)}
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
    check(fused, written, t, ["y", "s"])


def test_embed_layer_norm_is_three_lookups_and_a_layer_norm():
    ids, seg = np.array([[1, 3, 1, 0]], I32), np.array([[0, 1, 1, 0]], I32)
    t = {"ids": ids, "seg": seg, "word": x(5, 4), "pos": x(6, 4), "segment": x(2, 4), "gamma": x(4), "beta": x(4),
         "positions": np.arange(4, dtype=I32)[None]}
    fused = [h.make_node("EmbedLayerNormalization", ["ids", "seg", "word", "pos", "segment", "gamma", "beta"],
                         ["y", "mask"], domain=MS, epsilon=1e-12)]
    written = [h.make_node("Gather", ["word", "ids"], ["we"]), h.make_node("Gather", ["pos", "positions"], ["pe"]),
               h.make_node("Gather", ["segment", "seg"], ["se"]), h.make_node("Add", ["we", "pe"], ["a"]),
               h.make_node("Add", ["a", "se"], ["e"]),
               h.make_node("LayerNormalization", ["e", "gamma", "beta"], ["y"], axis=-1, epsilon=1e-12),
               h.make_node("Identity", ["ids"], ["mask"])]
    check(fused, written, t, ["y"])


def test_embed_layer_norm_with_data_ids_hands_every_row_the_lookup_counts():
    """Token ids from the input: like Gather (one_hot(ids) @ table), every word row may be picked."""
    proto = b.model([h.make_node("EmbedLayerNormalization", ["ids", "seg", "word", "pos", "segment", "gamma", "beta"],
                                 ["y", "mask"], domain=MS)],
                    [b.vinfo("ids", [2, 3], T.INT32), b.vinfo("seg", [2, 3], T.INT32)], [b.vinfo("y", [2, 3, 4])],
                    [b.tensor(k, v) for k, v in {"word": x(5, 4), "pos": x(6, 4), "segment": x(2, 4), "gamma": x(4),
                                                  "beta": x(4)}.items()])
    proto.opset_import.append(h.make_opsetid(MS, 1))
    cc = irtools.run_passes(irtools.load(proto), ["context-counts"])["context-counts"].counts
    word = np.ldexp(cc["word"].mantissa, cc["word"].exponent)
    pos = np.ldexp(cc["pos"].mantissa, cc["pos"].exponent)
    np.testing.assert_array_equal(word, np.full((5, 4), 6.0))  # 2 x 3 positions, one output element each
    np.testing.assert_array_equal(pos, np.array([[2.0] * 4] * 3 + [[0.0] * 4] * 3))  # rows 0..2, both batches


def test_bias_split_gelu_is_a_gated_half():
    """No CPU kernel: checked against its definition (X + bias, split in halves a, b: a * gelu(b))."""
    t = {"x": x(1, 3, 8), "bias": x(8)}
    fused = [h.make_node("BiasSplitGelu", ["x", "bias"], ["y"], domain=MS)]
    written = [h.make_node("Add", ["x", "bias"], ["s"]), h.make_node("Split", ["s"], ["a", "g"], axis=-1, num_outputs=2),
               h.make_node("Gelu", ["g"], ["gg"]), h.make_node("Mul", ["a", "gg"], ["y"])]
    check(fused, written, t, [("y", [1, 3, 4])], opset=20, runs_on_cpu=False)


def _mha_written(heads, past=False, packed=None):
    """softmax(Q K^T) V over heads, with bias added to Q, K, V; (past keys/values concatenated)."""
    nodes = []
    q, k, v = "q", "k", "v"
    if packed == "qkv":  # (B, S, N, 3, H) -> three (B, S, N, H)
        nodes.append(h.make_node("Split", ["q"], ["q5", "k5", "v5"], axis=3, num_outputs=3))
        for name in "qkv":
            nodes.append(h.make_node("Squeeze", [f"{name}5", "ax3"], [f"{name}4"]))
            nodes.append(h.make_node("Transpose", [f"{name}4"], [f"{name}h"], perm=[0, 2, 1, 3]))
    else:
        nodes += [h.make_node("Add", [q, "bq"], ["qb"]), h.make_node("Add", [k, "bk"], ["kb"]),
                  h.make_node("Add", [v, "bv"], ["vb"]), h.make_node("Split", ["bias"], ["bq", "bk", "bv"], axis=0,
                                                                     num_outputs=3)]
        for name in "qkv":
            nodes += [h.make_node("Reshape", [f"{name}b", "heads_shape"], [f"{name}4"]),
                      h.make_node("Transpose", [f"{name}4"], [f"{name}h"], perm=[0, 2, 1, 3])]
    kk, vv = "kh", "vh"
    if past:
        nodes += [h.make_node("Concat", ["pk", "kh"], ["kc"], axis=2), h.make_node("Concat", ["pv", "vh"], ["vc"], axis=2)]
        kk, vv = "kc", "vc"
    nodes += [h.make_node("Transpose", [kk], ["kt"], perm=[0, 1, 3, 2]), h.make_node("MatMul", ["qh", "kt"], ["s0"]),
              h.make_node("Mul", ["s0", "scale"], ["s"]), h.make_node("Softmax", ["s"], ["p"]),
              h.make_node("MatMul", ["p", vv], ["o"]), h.make_node("Transpose", ["o"], ["ot"], perm=[0, 2, 1, 3]),
              h.make_node("Reshape", ["ot", "out_shape"], ["y"])]
    return nodes


@pytest.mark.parametrize("past", [False, True])
def test_multi_head_attention_with_bias_counts_as_written_out(past):
    heads, hd = 2, 2
    t = {"q": x(1, 3, 4), "k": x(1, 5, 4), "v": x(1, 5, 4), "bias": x(12),
         "heads_shape": np.array([1, -1, heads, hd], np.int64), "out_shape": np.array([1, 3, 4], np.int64),
         "scale": np.array(1 / np.sqrt(hd), F)}
    ins = ["q", "k", "v", "bias"]
    outs = ["y"]
    if past:
        t.update(pk=x(1, heads, 2, hd), pv=x(1, heads, 2, hd))
        ins += ["", "", "pk", "pv"]
    fused = [h.make_node("MultiHeadAttention", ins, outs, domain=MS, num_heads=heads)]
    # with past keys, onnxruntime 1.32's CPU kernel does not reproduce the written-out values in
    # this configuration (the fused Attention's past does, see below): with past, counts only
    check(fused, _mha_written(heads, past), t, [("y", [1, 3, 4])] if past else outs, opset=18, runs_on_cpu=not past,
          compare=[k for k in t if k not in ("scale",) and t[k].dtype == F])


def test_multi_head_attention_with_packed_qkv():
    heads, hd = 2, 2
    t = {"q": x(1, 3, heads, 3, hd), "ax3": np.array([3], np.int64), "out_shape": np.array([1, 3, 4], np.int64),
         "scale": np.array(1 / np.sqrt(hd), F)}
    fused = [h.make_node("MultiHeadAttention", ["q"], ["y"], domain=MS, num_heads=heads)]
    # onnxruntime's CPU kernel takes no packed QKV: counts against the written-out graph only
    check(fused, _mha_written(heads, packed="qkv"), t, [("y", [1, 3, 4])], opset=18, runs_on_cpu=False, compare=["q"])


@pytest.mark.parametrize("rotary", [False, True])
def test_group_query_attention_shares_key_value_heads(rotary):
    """4 query heads over 2 key/value heads (head size 8, as the CPU kernel needs), no past; with
    do_rotary, Q and K are rotated (written out with ONNX RotaryEmbedding) before attention. The
    causal mask only drops edges' values, not edges (conventions of test_count_rules)."""
    qh, kvh, hd, seq = 4, 2, 16 if rotary else 8, 3  # the CPU kernel's head sizes
    t = {"q": x(1, seq, qh * hd), "k": x(1, seq, kvh * hd), "v": x(1, seq, kvh * hd),
         "sl": np.array([seq - 1], I32), "tl": np.array(seq, I32), "cos": x(seq, hd // 2), "sin": x(seq, hd // 2),
         "pos": np.arange(seq, dtype=np.int64)[None], "share": (np.arange(qh) // (qh // kvh)).astype(np.int64),
         "scale": np.array(1 / np.sqrt(hd), F), "out_shape": np.array([1, seq, qh * hd], np.int64)}
    ins = ["q", "k", "v", "", "", "sl", "tl"] + (["cos", "sin"] if rotary else [])
    fused = [h.make_node("GroupQueryAttention", ins, ["y", "pk", "pv"], domain=MS, num_heads=qh, kv_num_heads=kvh,
                         do_rotary=int(rotary))]
    written = []
    for name, n_ in (("q", qh), ("k", kvh), ("v", kvh)):
        t[f"{name}_shape"] = np.array([1, seq, n_, hd], np.int64)
        written += [h.make_node("Reshape", [name, f"{name}_shape"], [f"{name}4"]),
                    h.make_node("Transpose", [f"{name}4"], [f"{name}h0"], perm=[0, 2, 1, 3])]
        if rotary and name != "v":
            written.append(h.make_node("RotaryEmbedding", [f"{name}h0", "cos", "sin", "pos"], [f"{name}h"]))
        else:
            written.append(h.make_node("Identity", [f"{name}h0"], [f"{name}h"]))
    written += [h.make_node("Identity", ["kh"], ["pk"]), h.make_node("Identity", ["vh"], ["pv"]),
                h.make_node("Gather", ["kh", "share"], ["kr"], axis=1), h.make_node("Gather", ["vh", "share"], ["vr"], axis=1),
                h.make_node("Transpose", ["kr"], ["kt"], perm=[0, 1, 3, 2]), h.make_node("MatMul", ["qh", "kt"], ["s0"]),
                h.make_node("Mul", ["s0", "scale"], ["s"]), h.make_node("Softmax", ["s"], ["p"]),
                h.make_node("MatMul", ["p", "vr"], ["o"]), h.make_node("Transpose", ["o"], ["ot"], perm=[0, 2, 1, 3]),
                h.make_node("Reshape", ["ot", "out_shape"], ["y"])]
    # the written-out graph has no causal mask: compare the counts only; the fused op runs (CPU kernel)
    _run(_model(fused, t, ["y", "pk", "pv"], opset=23))
    check(fused, written, t, ["y", "pk", "pv"], opset=23, runs_on_cpu=False, compare=["q", "k", "v"])


@pytest.mark.parametrize("case", ["fused-matmul", "fused-gemm", "fused-conv", "gemm-fast-gelu", "group-norm"])
def test_fused_linear_ops_count_as_their_parts(case):
    if case == "fused-matmul":
        t = {"a": x(2, 4, 3), "bm": x(5, 4)}
        fused = [h.make_node("FusedMatMul", ["a", "bm"], ["y"], domain=MS, transA=1, transB=1, alpha=0.5)]
        written = [h.make_node("Transpose", ["a"], ["at"], perm=[0, 2, 1]), h.make_node("Transpose", ["bm"], ["bt"]),
                   h.make_node("MatMul", ["at", "bt"], ["m"]), h.make_node("Mul", ["m", "half"], ["y"])]
        t["half"] = np.array(0.5, F)
        check(fused, written, t, ["y"], compare=["a", "bm"])
    elif case == "fused-gemm":
        t = {"a": x(3, 2), "bm": x(4, 3), "c": x(4)}
        fused = [h.make_node("FusedGemm", ["a", "bm", "c"], ["y"], domain=MS, transA=1, transB=1, activation="Relu")]
        written = [h.make_node("Gemm", ["a", "bm", "c"], ["g"], transA=1, transB=1), h.make_node("Relu", ["g"], ["y"])]
        check(fused, written, t, ["y"])
    elif case == "fused-conv":
        t = {"xx": x(1, 2, 5, 5), "w": x(3, 2, 3, 3), "bb": x(3), "z": x(1, 3, 3, 3)}
        fused = [h.make_node("FusedConv", ["xx", "w", "bb", "z"], ["y"], domain=MS, activation="Relu",
                             kernel_shape=[3, 3])]
        written = [h.make_node("Conv", ["xx", "w", "bb"], ["c"], kernel_shape=[3, 3]), h.make_node("Add", ["c", "z"], ["s"]),
                   h.make_node("Relu", ["s"], ["y"])]
        check(fused, written, t, ["y"])
    elif case == "gemm-fast-gelu":  # no CPU kernel: its definition, FastGelu(X W + bias)
        t = {"a": x(2, 3), "w": x(3, 4), "bias": x(4)}
        fused = [h.make_node("GemmFastGelu", ["a", "w", "bias"], ["y"], domain=MS)]
        written = [h.make_node("MatMul", ["a", "w"], ["m"]), h.make_node("Add", ["m", "bias"], ["s"]),
                   h.make_node("Gelu", ["s"], ["y"], approximate="tanh")]
        check(fused, written, t, [("y", [2, 4])], opset=20, runs_on_cpu=False)
    else:  # com.microsoft GroupNorm, channels last, no CPU kernel: normalise, then gamma, beta per channel
        t = {"xx": x(1, 2, 2, 4), "gamma": x(4), "beta": x(4), "perm": np.array([0, 3, 1, 2], np.int64)}
        fused = [h.make_node("GroupNorm", ["xx", "gamma", "beta"], ["y"], domain=MS, groups=2, activation=0,
                             epsilon=1e-5, channels_last=1)]
        written = [h.make_node("Transpose", ["xx"], ["xc"], perm=[0, 3, 1, 2]),
                   h.make_node("GroupNormalization", ["xc", "gamma", "beta"], ["g"], num_groups=2),
                   h.make_node("Transpose", ["g"], ["y"], perm=[0, 2, 3, 1])]
        check(fused, written, t, [("y", [1, 2, 2, 4])], opset=21, runs_on_cpu=False)


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


@pytest.mark.parametrize("past", [False, True])
def test_packed_attention_is_a_projection_then_attention(past):
    """com.microsoft Attention: x @ W + bias split into Q, K, V, then attention over 2 heads;
    with past (2, B, N, P, H) concatenated before K and V, and present as an output."""
    heads, hd = 2, 2
    t = {"xx": x(1, 3, 4), "w": x(4, 12), "bias": x(12), "heads_shape": np.array([1, -1, heads, hd], np.int64),
         "out_shape": np.array([1, 3, 4], np.int64), "scale": np.array(1 / np.sqrt(hd), F)}
    ins, outs = ["xx", "w", "bias"], ["y"]
    written = [h.make_node("MatMul", ["xx", "w"], ["qkv"]),
               h.make_node("Split", ["qkv"], ["q", "k", "v"], axis=-1, num_outputs=3), *_mha_written(heads, past)]
    if past:
        t["past"] = x(2, 1, heads, 2, hd)
        ins += ["", "past"]
        outs.append("present")
        written = [h.make_node("Split", ["past"], ["pk5", "pv5"], axis=0, num_outputs=2),
                   h.make_node("Squeeze", ["pk5", "ax0"], ["pk"]), h.make_node("Squeeze", ["pv5", "ax0"], ["pv"]),
                   *written, h.make_node("Unsqueeze", ["kc", "ax0"], ["kc5"]),
                   h.make_node("Unsqueeze", ["vc", "ax0"], ["vc5"]),
                   h.make_node("Concat", ["kc5", "vc5"], ["present"], axis=0)]
        t["ax0"] = np.array([0], np.int64)
    fused = [h.make_node("Attention", ins, outs, domain=MS, num_heads=heads)]
    check(fused, written, t, outs, opset=18, compare=[k for k in ("xx", "w", "bias", "past") if k in t])


@pytest.mark.parametrize("case", ["bias-softmax", "bias-dropout", "skip-group-norm"])
def test_fused_elementwise_ops_count_as_their_parts(case):
    """No CPU kernels (training or CUDA ops): checked against their definitions."""
    if case == "bias-softmax":
        t = {"d": x(2, 3, 4), "bias": x(3, 4)}
        fused = [h.make_node("BiasSoftmax", ["d", "bias"], ["y"], domain=MS, axis=-1)]
        written = [h.make_node("Add", ["d", "bias"], ["s"]), h.make_node("Softmax", ["s"], ["y"], axis=-1)]
        out = [("y", [2, 3, 4])]
    elif case == "bias-dropout":
        t = {"d": x(2, 4), "bias": x(4), "res": x(2, 4)}
        fused = [h.make_node("BiasDropout", ["d", "bias", "res"], ["y"], domain=MS)]
        written = [h.make_node("Add", ["d", "bias"], ["s"]), h.make_node("Dropout", ["s"], ["dr"]),
                   h.make_node("Add", ["dr", "res"], ["y"])]
        out = [("y", [2, 4])]
    else:  # SkipGroupNorm(X, gamma, beta, skip, bias) -> (Y, S = X + skip + bias), channels last
        t = {"xx": x(1, 2, 2, 4), "gamma": x(4), "beta": x(4), "skip": x(1, 2, 2, 4), "bias": x(4)}
        fused = [h.make_node("SkipGroupNorm", ["xx", "gamma", "beta", "skip", "bias"], ["y", "s"], domain=MS, groups=2,
                             activation=0, epsilon=1e-5, channels_last=1)]
        written = [h.make_node("Add", ["xx", "skip"], ["a"]), h.make_node("Add", ["a", "bias"], ["s"]),
                   h.make_node("Transpose", ["s"], ["sc"], perm=[0, 3, 1, 2]),
                   h.make_node("GroupNormalization", ["sc", "gamma", "beta"], ["g"], num_groups=2),
                   h.make_node("Transpose", ["g"], ["y"], perm=[0, 2, 3, 1])]
        out = [("y", [1, 2, 2, 4]), ("s", [1, 2, 2, 4])]
    check(fused, written, t, out, opset=21, runs_on_cpu=False)
