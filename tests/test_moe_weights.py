"""Mixture-of-experts and Einsum weights: analysed as the matrices they are, experts one by one.

Truths: the parameter tensors themselves (each expert's matrix is `param[e]`, element for element),
the Einsum equation contracted by hand (numpy's einsum of the weight against an input equals the
input times the matrix the weights pass hands over), and a summary computed directly from the rows.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import irtools
from irtools.passes.weights import expert_summary


def _model(nodes, inits, inputs, outputs):
    graph = helper.make_graph(nodes, "g", inputs, outputs,
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], producer_name="pytorch")
    proto.ir_version = 9
    return irtools.load(proto)


def test_expert_tensor_read_by_a_router_gather_is_one_matrix_per_expert():
    """[experts, out, in] gathered by the router's chosen index, then a batched MatMul: each expert a row,
    named module path + [e], its `expert` column e, its matrix param[e]."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 24, 16)).astype(np.float32)
    inits = {"model.layers.0.mlp.experts.down_proj": w, "idx": np.array([2], dtype=np.int64)}
    nodes = [helper.make_node("Gather", ["model.layers.0.mlp.experts.down_proj", "idx"], ["chosen"], axis=0),
             helper.make_node("Transpose", ["chosen"], ["chosen_t"], perm=[0, 2, 1]),
             helper.make_node("MatMul", ["x", "chosen_t"], ["y"])]
    model = _model(nodes, inits, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 24])])
    weights = irtools.run_passes(model, ["weights"])["weights"]
    experts = [layer for layer in weights.layers if layer.parameter == "model.layers.0.mlp.experts.down_proj"]
    assert [layer.name for layer in experts] == [f"model.layers.0.mlp.experts.down_proj[{e}]" for e in range(4)]
    assert [layer.extra["expert"] for layer in experts] == [0, 1, 2, 3]
    for e, layer in enumerate(experts):
        assert (layer.N, layer.M, layer.layer_type) == (24, 16, "dense")
        np.testing.assert_array_equal(layer.matrices()[0], w[e])
    assert not [s for s in weights.skipped if s["parameter"] == "model.layers.0.mlp.experts.down_proj"]
    analysis = irtools.analyze(model, metrics="spectral")
    rows = {r["name"]: r for r in analysis.layers}
    for e in range(4):
        want = np.sort(np.linalg.svd(w[e].astype(np.float64), compute_uv=False) ** 2)
        assert rows[f"model.layers.0.mlp.experts.down_proj[{e}]"]["expert"] == e
        assert rows[f"model.layers.0.mlp.experts.down_proj[{e}]"]["lambda_max"] == pytest.approx(want[-1], rel=1e-6)
    # the summary across experts: in analyze's summary and its table
    alphas = [rows[f"model.layers.0.mlp.experts.down_proj[{e}]"]["alpha"] for e in range(4)]
    ex = analysis.summary["experts"]["model.layers.0.mlp.experts.down_proj"]
    assert ex["experts"] == 4 and ex["alpha_mean"] == pytest.approx(np.mean(alphas))
    assert ex["alpha_min"] == min(alphas) and ex["alpha_max"] == max(alphas)
    from irtools.reports.tables import render_analysis

    assert "Mixture-of-experts layers" in render_analysis(analysis.to_dict())


def test_an_einsum_weight_is_the_matrix_of_its_contraction():
    """Funnel's r_kernel [d_model, heads, head_dim] in `td,dnh->tnh`: the d x (heads*head_dim) matrix; a
    batch letter (e in `ecd,edf->ecf`) gives one matrix per index."""
    rng = np.random.default_rng(1)
    r = rng.standard_normal((16, 2, 12)).astype(np.float32)
    e = rng.standard_normal((3, 16, 20)).astype(np.float32)
    inits = {"attention.r_kernel": r, "experts.w": e}
    nodes = [helper.make_node("Einsum", ["x", "attention.r_kernel"], ["y"], equation="td,dnh->tnh"),
             helper.make_node("Einsum", ["xe", "experts.w"], ["ye"], equation="ecd,edf->ecf")]
    model = _model(nodes, inits, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [5, 16]),
                                  helper.make_tensor_value_info("xe", TensorProto.FLOAT, [3, 4, 16])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, [5, 2, 12]),
                    helper.make_tensor_value_info("ye", TensorProto.FLOAT, [3, 4, 20])])
    weights = irtools.run_passes(model, ["weights"])["weights"]
    (rk,) = [layer for layer in weights.layers if layer.parameter == "attention.r_kernel"]
    assert (rk.name, rk.op_type, rk.N, rk.M) == ("attention.r_kernel", "Einsum", 24, 16)
    x = rng.standard_normal((5, 16))
    np.testing.assert_allclose(x @ rk.matrices()[0], np.einsum("td,dnh->tnh", x, r).reshape(5, 24), rtol=1e-5)
    per = [layer for layer in weights.layers if layer.parameter == "experts.w"]
    assert [(layer.name, layer.extra.get("expert")) for layer in per] == [(f"experts[{i}]", i) for i in range(3)]
    xe = rng.standard_normal((3, 4, 16))
    want = np.einsum("ecd,edf->ecf", xe, e)
    for i, layer in enumerate(per):
        np.testing.assert_allclose(xe[i] @ layer.matrices()[0], want[i], rtol=1e-5)


@pytest.mark.parametrize("between", ["Einsum", "Transpose"])
def test_the_einsum_that_reads_the_weight_itself_names_its_matrix(between):
    """XLNet's r [d, heads, head_dim] reaches the attention's `ibnd,jbnd->bnij` only through a constant Einsum with
    the relative positions (`ibh,hnd->ibnd`); a Transpose between them reorders the axes. The Einsum that reads the
    weight itself names its axes: r is the d x (heads*head_dim) matrix of that product, as the module route
    analyses it (the attention's Einsum names another tensor's axes: read as the weight's, a 4-letter operand
    against the 3-D weight was a ValueError that stopped the whole pass). Behind a Transpose no Einsum reads the
    weight: no layer, and `skipped` says why; the other weights are analysed."""
    rng = np.random.default_rng(2)
    r = rng.standard_normal((16, 2, 8)).astype(np.float32)
    pos = rng.standard_normal((6, 1, 16)).astype(np.float32)
    inits = {"rel_attn.r": r, "pos": pos, "rel_attn.q": rng.standard_normal((16, 2, 8)).astype(np.float32)}
    if between == "Einsum":
        first = helper.make_node("Einsum", ["pos", "rel_attn.r"], ["k_r"], equation="ibh,hnd->ibnd")
        second = helper.make_node("Einsum", ["q", "k_r"], ["y"], equation="ibnd,jbnd->bnij")
    else:
        first = helper.make_node("Transpose", ["rel_attn.r"], ["k_r"], perm=[2, 1, 0])
        second = helper.make_node("Einsum", ["x", "k_r"], ["y"], equation="td,dnh->tnh")
    q = helper.make_node("Einsum", ["xq", "rel_attn.q"], ["q"], equation="ibh,hnd->ibnd")
    nodes = [first, q, second]
    model = _model(nodes, inits, [helper.make_tensor_value_info("xq", TensorProto.FLOAT, [6, 1, 16]),
                                  helper.make_tensor_value_info("x", TensorProto.FLOAT, [5, 8])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    weights = irtools.run_passes(model, ["weights"])["weights"]
    if between == "Einsum":
        (r_layer,) = [layer for layer in weights.layers if layer.parameter == "rel_attn.r"]
        assert (r_layer.name, r_layer.op_type, r_layer.N, r_layer.M) == ("rel_attn.r", "Einsum", 16, 16)
        np.testing.assert_array_equal(r_layer.matrices()[0], r.reshape(16, 16))
        assert not [s for s in weights.skipped if s["parameter"] == "rel_attn.r"]
    else:
        assert not [layer for layer in weights.layers if layer.parameter == "rel_attn.r"]
        (skip,) = [s for s in weights.skipped if s["parameter"] == "rel_attn.r"]
        assert "no weight-matrix rule" in skip["reason"]
    (q_layer,) = [layer for layer in weights.layers if layer.parameter == "rel_attn.q"]
    assert (q_layer.N, q_layer.M) == (16, 16)


def test_expert_summary_is_mean_spread_and_worst_across_experts():
    rows = [{"name": f"m.experts.down_proj[{i}]", "expert": i, "alpha": a} for i, a in enumerate([3.0, 5.0, 1.5, 4.0])]
    rows += [{"name": "m.q_proj", "alpha": 9.0}]
    (key, got), = expert_summary(rows).items()
    alphas = np.array([3.0, 5.0, 1.5, 4.0])
    assert key == "m.experts.down_proj" and got["experts"] == 4
    assert got["alpha_mean"] == pytest.approx(alphas.mean()) and got["alpha_std"] == pytest.approx(alphas.std())
    assert (got["alpha_min"], got["alpha_max"]) == (1.5, 5.0)
    assert (got["worst_expert"], got["worst_alpha"]) == (2, 1.5)  # the one outside 2..6


def test_a_torch_moe_module_gets_every_expert_from_its_parameters_without_export():
    """The module route (no export): the fused [experts, out, in] tensors of a transformers MoE, expert by expert."""
    torch = pytest.importorskip("torch")
    tf = pytest.importorskip("transformers")
    from irtools.frontends.torch import module_weight_layers

    torch.manual_seed(0)
    model = tf.Qwen2MoeForCausalLM(tf.Qwen2MoeConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                                                      num_hidden_layers=1, num_attention_heads=4,
                                                      num_key_value_heads=2, num_experts=4, num_experts_per_tok=2,
                                                      moe_intermediate_size=32, shared_expert_intermediate_size=32))
    layers = module_weight_layers(model)
    params = dict(model.named_parameters())
    three_d = {k: p for k, p in params.items() if p.dim() == 3}
    assert three_d, "the architecture keeps its experts fused"
    for k, p in three_d.items():
        rows = [layer for layer in layers if layer.parameter == k]
        if "gate_up_proj" in k:  # the fused [E, 2I, H] gate/up: each expert's gate and up halves (chunk(2))
            assert [(layer.extra["expert"], layer.name) for layer in rows] == [
                (e, f"{k}[{e}].{part}") for e in range(p.shape[0]) for part in ("gate", "up")]
            for layer in rows:
                e, half = layer.extra["expert"], 0 if layer.name.endswith(".gate") else 1
                np.testing.assert_array_equal(layer.matrices()[0], p[e].detach().numpy().reshape(2, -1, p.shape[2])[half])
            continue
        assert [layer.extra["expert"] for layer in rows] == list(range(p.shape[0]))
        for e, layer in enumerate(rows):
            assert layer.name == f"{k}[{e}]"
            np.testing.assert_array_equal(layer.matrices()[0], p[e].detach().numpy())
    # every 2-D parameter (the 1 x 32 shared_expert_gate too, a Linear as the graph's Gemm rule reads it) and
    # every other with two dims > 1 is a layer (tied weights once), named by module path
    assert {layer.parameter for layer in layers} == {k for k, p in params.items()
                                                     if p.dim() == 2 or sum(d > 1 for d in p.shape) >= 2}
    assert "model.layers.0.self_attn.q_proj" in {layer.name for layer in layers}
