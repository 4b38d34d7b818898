"""Context counts and the reusability-prior quantities against independent truth."""

import json
import math
import os

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import helper as h

import irtools
from irtools.cli import main
from tests import builders as b
from tests.brute_force import brute_force_counts
from tests.conftest import EXAMPLE, LIGHT_MODELS
from tests.counts.oracle import covers


def exact(c) -> np.ndarray:
    """Counts as exact Python integers (valid while they fit a float64 mantissa)."""
    vals = np.ldexp(c.mantissa, c.exponent)
    assert np.all(vals < 2**53)
    return np.vectorize(lambda v: int(v), otypes=[object])(vals)


def counts_of(proto, **kw):
    m = irtools.load(proto, **kw)
    return m, irtools.run_passes(m, ["context-counts"])["context-counts"]


def reuse_of(proto):
    m = irtools.load(proto)
    return irtools.run_passes(m, ["reuse"])["reuse"]


W = lambda name, shape, rng: b.tensor(name, rng.standard_normal(shape).astype(np.float32))  # noqa: E731


# -- the seed's three worked examples ---------------------------------------------------
def seed_figure3():
    rng = np.random.default_rng(0)
    return b.model(
        [h.make_node("MatMul", ["x", "w1"], ["h"]), h.make_node("MatMul", ["h", "w2"], ["z"]),
         h.make_node("ReduceSum", ["z"], ["y"], keepdims=0)],
        [b.vinfo("x", [1, 2])], [b.vinfo("y", [])], [W("w1", (2, 2), rng), W("w2", (2, 2), rng)])


def seed_uniform():
    rng = np.random.default_rng(1)
    nodes, prev = [], "x"
    for k in range(4):
        nodes.append(h.make_node("Mul", [prev, f"w{k}"], [f"m{k}"]))
        prev = f"m{k}"
    nodes.append(h.make_node("ReduceSum", [prev], ["y"], keepdims=0))
    return b.model(nodes, [b.vinfo("x", [2])], [b.vinfo("y", [])], [W(f"w{k}", (2,), rng) for k in range(4)])


def seed_second():
    rng = np.random.default_rng(2)
    return b.model(
        [h.make_node("Mul", ["x", "v"], ["z"]), h.make_node("Mul", ["z", "a"], ["za"]),
         h.make_node("Mul", ["za", "c"], ["zac"]), h.make_node("Mul", ["z", "b"], ["zb"]),
         h.make_node("Add", ["zac", "zb"], ["s"]), h.make_node("ReduceSum", ["s"], ["y"], keepdims=0)],
        [b.vinfo("x", [2])], [b.vinfo("y", [])], [W(n, (2,), rng) for n in ("v", "a", "c", "b")])


def expected(counts: list[int], n_in: int, n_out: int) -> dict:
    total = sum(counts)
    p = [c / total for c in counts]
    s = sum(-math.log2(q) for q in p)
    e = sum(q * math.log2(c) for q, c in zip(p, counts))
    hh = -sum(q * math.log2(q) for q in p)
    g = n_in + n_out + len(counts)
    return {"total_surprisal": s, "entropy": hh, "expected_spread": e,
            "performance_surprisal": math.log2(s * n_in / g),
            "performance_spread": math.log2(len(counts) * (e + 1) * n_in / g)}


@pytest.mark.parametrize("build, counts, rounded", [
    (seed_figure3, [2, 2, 2, 2, 1, 1, 1, 1], {"total_surprisal": 24.68, "entropy": 2.92, "expected_spread": 0.67,
                                              "performance_surprisal": 2.17, "performance_spread": 1.28}),
    (seed_uniform, [1] * 8, {"total_surprisal": 24.00, "entropy": 3.0, "expected_spread": 0.0,
                            "performance_surprisal": 2.13, "performance_spread": 0.54}),
    (seed_second, [2, 2] + [1] * 6, {"total_surprisal": 24.58, "entropy": 2.92, "expected_spread": 0.4,
                                     "performance_surprisal": 2.16, "performance_spread": 1.03}),
], ids=["figure3", "uniform", "second"])
def test_seed_worked_examples(build, counts, rounded):
    r = reuse_of(build())
    assert (r["num_params"], r["num_input_nodes"], r["num_output_nodes"], r["graph_size"]) == (8, 2, 1, 11)
    want = expected(counts, 2, 1)
    for key, value in want.items():
        assert r[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
        assert round(r[key], 2) == pytest.approx(rounded[key], abs=0.006), key  # the seed's printed figures
    _, cc = counts_of(build())
    assert sorted(int(v) for c in cc.counts.values() for v in exact(c).ravel()) == sorted(counts)


# -- brute-force path enumeration ---------------------------------------------------------
@st.composite
def small_cnns(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    c = draw(st.integers(1, 3))
    hw = draw(st.integers(3, 6))
    nodes, inits, cur, shape = [], [], "x", (1, c, hw, hw)
    history = [(cur, shape)]
    for layer in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["conv", "conv", "depthwise", "pool", "bn"]))
        if kind in ("conv", "depthwise"):
            k = draw(st.integers(1, 3))
            s = draw(st.integers(1, 2))
            d = draw(st.integers(1, 2))
            p = draw(st.integers(0, 1))
            span = (k - 1) * d + 1
            if shape[2] + 2 * p < span:
                continue
            cout = shape[1] if kind == "depthwise" else draw(st.integers(1, 3))
            groups = shape[1] if kind == "depthwise" else 1
            inits.append(W(f"conv{layer}.weight", (cout, shape[1] // groups, k, k), rng))
            inputs = [cur, f"conv{layer}.weight"]
            if draw(st.booleans()):
                inits.append(W(f"conv{layer}.bias", (cout,), rng))
                inputs.append(f"conv{layer}.bias")
            out = f"c{layer}"
            nodes.append(h.make_node("Conv", inputs, [out], kernel_shape=[k, k], strides=[s, s], dilations=[d, d],
                                     pads=[p] * 4, group=groups))
            o = (shape[2] + 2 * p - span) // s + 1
            shape = (1, cout, o, o)
        elif kind == "pool":
            k = draw(st.integers(1, 2))
            if shape[2] < k:
                continue
            op = draw(st.sampled_from(["MaxPool", "AveragePool"]))
            out = f"p{layer}"
            nodes.append(h.make_node(op, [cur], [out], kernel_shape=[k, k], strides=[1, 1]))
            shape = (1, shape[1], shape[2] - k + 1, shape[3] - k + 1)
        else:
            out = f"bn{layer}"
            names = [f"bn{layer}.{n}" for n in ("weight", "bias", "running_mean", "running_var")]
            inits += [W(n, (shape[1],), rng) for n in names]
            nodes.append(h.make_node("BatchNormalization", [cur, *names], [out]))
        nodes.append(h.make_node("Relu", [out], [out + "_r"]))
        cur = out + "_r"
        same = [name for name, sh in history if sh == shape and name != cur]
        if same and draw(st.booleans()):  # residual add with an earlier tensor of the same shape
            nodes.append(h.make_node("Add", [cur, same[-1]], [cur + "_res"]))
            cur = cur + "_res"
        history.append((cur, shape))
    classes = draw(st.integers(1, 3))
    nodes += [h.make_node("GlobalAveragePool", [cur], ["gap"]), h.make_node("Flatten", ["gap"], ["flat"]),
              h.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["y"], transB=1)]
    inits += [W("fc.weight", (classes, shape[1]), rng), W("fc.bias", (classes,), rng)]
    return b.model(nodes, [b.vinfo("x", [1, c, hw, hw])], [b.vinfo("y", [1, classes])], inits)


@covers("Conv",
        "BatchNormalization",
        "Relu",
        "MaxPool",
        "AveragePool",
        "GlobalAveragePool",
        "Flatten",
        "Gemm",
        "Add",
        "Mul")
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(small_cnns())
def test_counts_equal_brute_force_on_random_cnns(proto):
    truth = brute_force_counts(proto)
    _, cc = counts_of(proto)
    assert set(cc.counts) == set(truth)
    for name, c in cc.counts.items():
        assert (exact(c) == truth[name]).all(), name


@st.composite
def small_dags(draw):
    """Random DAGs of dense layers, residual adds, broadcast scales and a shared weight."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    width = draw(st.integers(1, 3))
    nodes, inits, values = [], [W("shared", (width, width), rng)], ["x"]
    for k in range(draw(st.integers(1, 5))):
        op = draw(st.sampled_from(["matmul", "shared", "add", "relu", "mul"]))
        a = draw(st.sampled_from(values))
        out = f"v{k}"
        if op == "matmul":
            inits.append(W(f"w{k}", (width, width), rng))
            nodes.append(h.make_node("MatMul", [a, f"w{k}"], [out]))
        elif op == "shared":
            nodes.append(h.make_node("MatMul", [a, "shared"], [out]))
        elif op == "add":  # x + x stays two paths (only gating products collapse, see the swish test)
            c_ = draw(st.sampled_from(values))
            nodes.append(h.make_node("Add", [a, c_], [out]))
        elif op == "mul":  # elementwise scale by a broadcast parameter row
            inits.append(W(f"g{k}", (1, width), rng))
            nodes.append(h.make_node("Mul", [a, f"g{k}"], [out]))
        else:
            nodes.append(h.make_node("Relu", [a], [out]))
        values.append(out)
    inits.append(W("head", (width, 2), rng))
    nodes.append(h.make_node("MatMul", [values[-1], "head"], ["y"]))
    used = {i for n in nodes for i in n.input}
    inits = [t for t in inits if t.name in used]
    return b.model(nodes, [b.vinfo("x", [1, width])], [b.vinfo("y", [1, 2])], inits)


@settings(max_examples=60, deadline=None)
@given(small_dags())
def test_counts_equal_brute_force_on_random_dags(proto):
    truth = brute_force_counts(proto)
    _, cc = counts_of(proto)
    for name, c in cc.counts.items():
        assert (exact(c) == truth[name]).all(), name


# -- model-level identities, real topologies, precision -------------------------------------
@pytest.mark.parametrize("path", [p for p in LIGHT_MODELS if "vgg" not in p and "zfnet" not in p
                                  and "alexnet" not in p], ids=os.path.basename)
def test_entropy_plus_spread_is_log2_total(path):
    r = reuse_of(path)
    assert r["entropy"] + r["expected_spread"] == pytest.approx(r["log2_total_contexts"], rel=1e-12)
    assert r["num_input_nodes"] == 3 * 224 * 224 and r["num_output_nodes"] == 1000
    assert r["zero_count_scalars"] == 0
    assert sum(p["mass_share"] for p in r["parameters"]) == pytest.approx(1.0, rel=1e-9)


def test_deep_chain_counts_do_not_overflow():
    """200 dense 4x4 layers: weight k has 4**(200-k) contexts per scalar, far beyond float64."""
    rng = np.random.default_rng(0)
    depth, width = 200, 4
    nodes = [h.make_node("MatMul", ["x" if k == 0 else f"h{k}", f"w{k}"], [f"h{k + 1}"]) for k in range(depth)]
    nodes.append(h.make_node("ReduceSum", [f"h{depth}"], ["y"], keepdims=0))
    proto = b.model(nodes, [b.vinfo("x", [1, width])], [b.vinfo("y", [])],
                    [W(f"w{k}", (width, width), rng) for k in range(depth)])
    _, cc = counts_of(proto)
    for k in (0, 1, 100, 199):
        # w_k[i, j] reaches the output through 4 choices at each of the later layers
        np.testing.assert_allclose(cc.counts[f"w{k}"].log2(), 2 * (depth - 1 - k), rtol=1e-12)
    r = reuse_of(proto)
    per = [2.0 * (depth - 1 - k) for k in range(depth) for _ in range(width * width)]
    top = max(per)
    log2_total = top + math.log2(math.fsum(2 ** (x - top) for x in per))
    assert r["log2_total_contexts"] == pytest.approx(log2_total, rel=1e-12)
    assert r["total_surprisal"] == pytest.approx(len(per) * log2_total - math.fsum(per), rel=1e-9)


def test_swish_subgraph_counts_as_one_activation():
    rng = np.random.default_rng(0)
    nodes = [h.make_node("MatMul", ["x", "w"], ["z"]),
             h.make_node("Mul", ["z", "beta"], ["bz"]), h.make_node("Sigmoid", ["bz"], ["s"]),
             h.make_node("Mul", ["z", "s"], ["a"]),  # Keras 3 swish: z * sigmoid(beta * z)
             h.make_node("MatMul", ["a", "v"], ["y"])]
    inits = [W("w", (3, 4), rng), W("v", (4, 2), rng), b.tensor("beta", np.float32(1.0))]
    swish = b.model(nodes, [b.vinfo("x", [1, 3])], [b.vinfo("y", [1, 2])], inits)
    relu = b.model([nodes[0], h.make_node("Relu", ["z"], ["a"]), nodes[4]],
                   [b.vinfo("x", [1, 3])], [b.vinfo("y", [1, 2])], inits[:2])
    _, c_swish = counts_of(swish)
    _, c_relu = counts_of(relu)
    assert set(c_swish.counts) == {"w", "v"}  # beta is a scalar constant, not a parameter
    for name in ("w", "v"):
        assert (exact(c_swish.counts[name]) == exact(c_relu.counts[name])).all()
    # a residual x + relu(x) is two paths, not an activation
    res = b.model([nodes[0], h.make_node("Relu", ["z"], ["r"]), h.make_node("Add", ["z", "r"], ["a"]), nodes[4]],
                  [b.vinfo("x", [1, 3])], [b.vinfo("y", [1, 2])], inits[:2])
    _, c_res = counts_of(res)
    assert (exact(c_res.counts["w"]) == 2 * exact(c_relu.counts["w"])).all()


def test_unsupported_op_is_named_once_with_every_node():
    """An op without a rule on a parameter's path is reported once, naming each node using it."""
    rng = np.random.default_rng(0)
    proto = b.model([h.make_node("MatMul", ["x", "w"], ["z"]),
                     h.make_node("Frob", ["z"], ["f1"], name="f1", domain="com.example"),
                     h.make_node("Frob", ["f1"], ["y"], name="f2", domain="com.example")],
                    [b.vinfo("x", [1, 2])], [b.vinfo("y", [1, 2])], [W("w", (2, 2), rng)])
    proto.opset_import.append(h.make_opsetid("com.example", 1))
    proto.graph.value_info.extend([b.vinfo("f1", [1, 2])])
    with pytest.raises(irtools.UnsupportedError) as err:
        counts_of(proto)
    assert "no counting rule for com.example::Frob (nodes 'f1', 'f2')" in str(err.value)
    assert str(err.value).count("Frob") == 1


def test_ops_downstream_of_nothing_learnable_need_no_rule_nor_shape():
    """A mask built by an op without a rule (and of unknown shape) from the input alone is
    skipped: the weight's counts are those of the same graph with the mask a constant input."""
    rng = np.random.default_rng(0)
    w = W("w", (3, 3), rng)
    masked = b.model([h.make_node("Frob", ["x"], ["m"], domain="com.example"),
                      h.make_node("MatMul", ["x", "w"], ["z"]), h.make_node("Where", ["m", "z", "x"], ["y"])],
                     [b.vinfo("x", [2, 3])], [b.vinfo("y", [2, 3])], [w])
    masked.opset_import.append(h.make_opsetid("com.example", 1))
    plain = b.model([h.make_node("MatMul", ["x", "w"], ["z"]), h.make_node("Where", ["m", "z", "x"], ["y"])],
                    [b.vinfo("x", [2, 3]), b.vinfo("m", [2, 3], onnx.TensorProto.BOOL)], [b.vinfo("y", [2, 3])], [w])
    truth = brute_force_counts(b.model([h.make_node("MatMul", ["x", "w"], ["y"])], [b.vinfo("x", [2, 3])],
                                       [b.vinfo("y", [2, 3])], [w]))["w"]
    for proto in (masked, plain):
        _, cc = counts_of(proto)
        assert (exact(cc.counts["w"]) == truth).all()


def test_constant_node_weight_through_transpose_is_counted():
    m, cc = counts_of(b.constant_node_model())
    # y = 2 * (x @ w_stored.T + b): one output per row of w_stored, each weight scalar has 1 context
    assert (exact(cc.counts["w_stored"]) == 1).all() and (exact(cc.counts["b"]) == 1).all()


def test_analyze_cli_json_and_table(tmp_path):
    res = CliRunner().invoke(main, ["analyze", EXAMPLE, "--input-shape", "image=1,1,8,8", "--metrics", "reuse",
                                    "--format", "json"])
    assert res.exit_code == 0, res.output
    r = json.loads(res.output)["reuse"]
    for key in ("total_surprisal", "entropy", "expected_spread", "num_params", "num_input_nodes",
                "num_output_nodes", "graph_size", "performance_surprisal", "performance_spread", "parameters"):
        assert key in r
    assert r["num_params"] == 38_474 and r["num_input_nodes"] == 64 and r["num_output_nodes"] == 10
    # the classifier's last bias: each scalar reaches exactly one output
    last = next(p for p in r["parameters"] if p["name"] == "classifier.3.bias")
    assert last["log2_count_min"] == last["log2_count_max"] == 0.0
    res = CliRunner().invoke(main, ["analyze", EXAMPLE, "--input-shape", "image=1,1,8,8"])
    assert res.exit_code == 0 and "total surprisal" in res.output and "classifier.3.bias" in res.output
    res = CliRunner().invoke(main, ["analyze", EXAMPLE, "--metrics", "colour"])
    assert res.exit_code == 2 and "unknown metric family colour" in res.output
    # a symbolic batch dim is fixed to 1 (one note): the same counts as --input-shape image=1,1,8,8
    res = CliRunner().invoke(main, ["analyze", EXAMPLE, "--metrics", "reuse", "--format", "json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["reuse"] == r
    assert res.stderr.count("irtools: note:") == 1 and "symbolic batch dimension 'batch' fixed to 1" in res.stderr


@covers("LayerNormalization", "MatMul", "Softmax", "Transpose", "Add", "Relu")
@settings(max_examples=15, deadline=None)
@given(st.integers(1, 3), st.integers(2, 4), st.integers(0, 2**32 - 1))
def test_counts_equal_brute_force_on_a_transformer_block(tokens, dim, seed):
    """Self-attention (MatMul of two activations, Transpose, Softmax), LayerNorm, FFN, residuals."""
    rng = np.random.default_rng(seed)
    nodes = [
        h.make_node("MatMul", ["x", "wq"], ["q"]), h.make_node("MatMul", ["x", "wk"], ["k"]),
        h.make_node("MatMul", ["x", "wv"], ["v"]), h.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
        h.make_node("MatMul", ["q", "kt"], ["s"]), h.make_node("Softmax", ["s"], ["a"], axis=-1),
        h.make_node("MatMul", ["a", "v"], ["o"]), h.make_node("MatMul", ["o", "wo"], ["p"]),
        h.make_node("Add", ["x", "p"], ["r"]),
        h.make_node("LayerNormalization", ["r", "ln.weight", "ln.bias"], ["n"], axis=-1),
        h.make_node("MatMul", ["n", "w1"], ["f"]), h.make_node("Add", ["f", "b1"], ["fb"]),
        h.make_node("Relu", ["fb"], ["fr"]), h.make_node("MatMul", ["fr", "w2"], ["g"]),
        h.make_node("Add", ["n", "g"], ["y"]),
    ]
    inits = [W(n, (dim, dim), rng) for n in ("wq", "wk", "wv", "wo")]
    inits += [W("ln.weight", (dim,), rng), W("ln.bias", (dim,), rng), W("w1", (dim, 2 * dim), rng),
              W("b1", (2 * dim,), rng), W("w2", (2 * dim, dim), rng)]
    proto = b.model(nodes, [b.vinfo("x", [1, tokens, dim])], [b.vinfo("y", [1, tokens, dim])], inits)
    truth = brute_force_counts(proto)
    _, cc = counts_of(proto)
    assert set(cc.counts) == set(truth)
    for name, c in cc.counts.items():
        assert (exact(c) == truth[name]).all(), name


def test_degenerate_models_give_clear_results(save):
    no_params = save(b.model([h.make_node("Relu", ["x"], ["y"])], [b.vinfo("x", [1, 2])], [b.vinfo("y", [1, 2])]),
                     "relu.onnx")
    res = CliRunner().invoke(main, ["analyze", no_params, "--format", "json", "--metrics", "reuse"])
    assert res.exit_code == 2 and "no learnable parameter scalar reaches an output" in res.output
    res = CliRunner().invoke(main, ["analyze", no_params, "--format", "json"])  # not asked for: left out, with why
    assert res.exit_code == 0
    assert "reuse metrics left out: no learnable parameter scalar reaches an output" in res.output
    one = save(b.model([h.make_node("MatMul", ["x", "w"], ["y"])], [b.vinfo("x", [1, 1])], [b.vinfo("y", [1, 1])],
                       [b.tensor("w", np.ones((1, 1), np.float32))]), "one.onnx")
    res = CliRunner().invoke(main, ["analyze", one, "--format", "json"])
    assert res.exit_code == 0, res.output
    r = json.loads(res.output)["reuse"]  # one scalar: S_G = 0, so P_G = log2(0) is reported as null
    assert r["total_surprisal"] == 0.0 and r["performance_surprisal"] is None and r["entropy"] == 0.0


def test_shape_annotations_that_contradict_the_ops_are_not_trusted():
    """jax2onnx 0.17 annotated NCHW values as NHWC; counting through such shapes once wrote out
    of bounds in the numba kernel. Where inference knows a shape it overrides the annotation;
    where it cannot (an op it has no schema for), a window op refuses inconsistent shapes in one
    line instead of indexing with them."""

    from onnx import helper as oh

    from tests.builders import model, tensor, vinfo

    rng = np.random.default_rng(0)

    def cnn(middle_op: str, domain: str = ""):
        m = model(
            [oh.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             oh.make_node(middle_op, ["c"], ["r"], name="mid", domain=domain),
             oh.make_node("MaxPool", ["r"], ["y"], name="pool", kernel_shape=[2, 2], strides=[2, 2])],
            [vinfo("x", [1, 3, 8, 8])], [vinfo("y", [1, 24, 4, 4])],
            [tensor("w", rng.standard_normal((24, 3, 3, 3)).astype(np.float32))],
        )
        if domain:
            m.opset_import.append(oh.make_opsetid(domain, 1))
        return m

    clean = cnn("Relu")
    wrong = cnn("Relu")
    wrong.graph.value_info.extend([vinfo("c", [1, 24, 8, 8]), vinfo("r", [1, 8, 8, 24])])  # r: NHWC, wrongly
    counts = [irtools.get_pass("context-counts")(irtools.load(m)) for m in (clean, wrong)]
    assert np.array_equal(counts[0].counts["w"].log2(), counts[1].counts["w"].log2())
    assert counts[0].counts["w"].log2().max() > 0

    custom = cnn("Opaque", domain="com.example")  # no schema: only the annotation gives r a shape
    custom.graph.value_info.extend([vinfo("c", [1, 24, 8, 8]), vinfo("r", [1, 8, 8, 24])])
    with pytest.raises(irtools.UnsupportedError, match="no counting rule for com.example::Opaque \\(node 'mid'\\)"):
        irtools.get_pass("context-counts")(irtools.load(custom))
    from irtools.passes.context_counts import register, registry

    @register("com.example", "Opaque")  # a plugin's rule, through the public registry
    def opaque(ctx):
        ctx.give(0, ctx.out())

    try:
        with pytest.raises(irtools.ShapeError, match="MaxPool node 'pool'.*inconsistent"):
            irtools.get_pass("context-counts")(irtools.load(custom))
    finally:
        assert registry.unregister("com.example", "Opaque") is opaque


def test_a_window_op_declaring_minutes_of_work_is_refused_in_one_line(tmp_path):
    """A small file can declare a kernel as large as its input (here 1000 x 1000 taps over a million outputs,
    10^12 kernel steps, from a ConstantOfShape): refused before the kernel runs, with the node named; the same
    graph at a sane size is counted."""
    def conv_model(size, k):
        nodes = [h.make_node("ConstantOfShape", ["wshape"], ["w"], value=onnx.numpy_helper.from_array(
                     np.array([0.5], np.float32))),
                 h.make_node("Conv", ["x", "w"], ["y"], name="huge")]
        out = size - k + 1
        return b.model(nodes, [b.vinfo("x", [1, 1, size, size])], [b.vinfo("y", [1, 1, out, out])],
                       [b.tensor("wshape", np.array([1, 1, k, k], np.int64))])

    path = tmp_path / "bomb.onnx"
    onnx.save(conv_model(2000, 1000), str(path))
    assert os.path.getsize(path) < 1000
    res = CliRunner().invoke(main, ["analyze", str(path), "--metrics", "reuse"])
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1
    assert "Conv node 'huge'" in res.output and "operations" in res.output
    cc = irtools.get_pass("context-counts")(irtools.load(conv_model(12, 3)))
    assert (exact(cc.counts["w"]) == 100).all()  # each of the 3x3 taps serves the 10x10 outputs


@pytest.mark.parametrize("chunk", [1 << 20, 3, 1])
def test_reuse_quantities_equal_the_definitions_computed_directly(monkeypatch, chunk):
    """S_G, H, E, P_G, P'_G from explicit counts (Python floats, the conventions' formulas) against
    the pass's per-tensor mantissa/exponent arithmetic, with exponents far apart and a zero count,
    whether a tensor is summed whole or in chunks (a chunk of only zeros included)."""
    import math

    import irtools.passes.context_counts.counts as counts_module
    from irtools.passes.context_counts.counts import Counts
    from irtools.passes.reuse import reuse_quantities

    monkeypatch.setattr(counts_module, "CHUNK", chunk)

    rng = np.random.default_rng(3)
    tensors = {"a": (rng.integers(1, 50, 7).astype(float), 3), "b": (rng.integers(1, 9, 5).astype(float), -40),
               "c": (np.array([0.0, 0.0, 0.0, 2.0, 5.0]), 10)}
    counts = {k: Counts(m / 64, e + 6) for k, (m, e) in tensors.items()}
    got = reuse_quantities(counts, num_inputs=11, num_outputs=4)
    cs = [float(x) * 2.0 ** e for m, e in tensors.values() for x in m if x > 0]
    total = math.fsum(cs)
    n = len(cs)
    surprisal = math.fsum(-math.log2(c / total) for c in cs)
    entropy = -math.fsum(c / total * math.log2(c / total) for c in cs)
    spread = math.fsum(c / total * math.log2(c) for c in cs)
    size = 11 + 4 + n
    assert got["num_params"] == n and got["zero_count_scalars"] == 3 and got["graph_size"] == size
    c = next(p for p in got["parameters"] if p["name"] == "c")
    assert (c["log2_count_min"], c["log2_count_max"]) == pytest.approx((1 + 10, math.log2(5) + 10), rel=1e-14)
    assert got["total_surprisal"] == pytest.approx(surprisal, rel=1e-12)
    assert got["entropy"] == pytest.approx(entropy, rel=1e-12)
    assert got["expected_spread"] == pytest.approx(spread, rel=1e-12)
    assert got["performance_surprisal"] == pytest.approx(math.log2(surprisal * 11 / size), rel=1e-12)
    assert got["performance_spread"] == pytest.approx(math.log2(n * (spread + 1) * 11 / size), rel=1e-12)
