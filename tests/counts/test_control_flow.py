"""Control-flow rules (If, Loop, Scan) against their unrolled, written-out graphs.

Each against an independent truth: onnxruntime's dependency probes (`tests/counts/oracle.py`),
hand-derived counts where the conventions differ from value dependence, brute force or a
written-out graph.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper as h

import irtools
from irtools.errors import IrtoolsError
from tests import builders as b
from tests.counts.oracle import F, I64, covers, x


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


@covers("If")
def test_if_with_a_constant_condition_counts_its_branch_only():
    m = irtools.load(_if_model(False), parameters={"w1", "w2"})
    cc = irtools.run_passes(m, ["context-counts"])["context-counts"]
    np.testing.assert_array_equal(np.ldexp(cc.counts["w1"].mantissa, cc.counts["w1"].exponent), np.full((2, 4), 3.0))
    assert not cc.counts["w2"].mantissa.any() and not cc.notes


@covers("If")
def test_if_with_an_input_condition_counts_the_union_of_both_branches():
    m = irtools.load(_if_model(True), parameters={"w1", "w2"})
    cc = irtools.run_passes(m, ["context-counts"])["context-counts"]
    for name in ("w1", "w2"):
        np.testing.assert_array_equal(np.ldexp(cc.counts[name].mantissa, cc.counts[name].exponent),
                                      np.full((2, 4), 3.0))
    assert len(cc.notes) == 1 and "If node 'branch'" in cc.notes[0] and "both branches" in cc.notes[0]


@covers("Loop", "Scan")
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
