"""Fused projections analysed as the matrices they are: a fused `gate_up_proj` (Phi-3's dense [2I, H], the
experts' [E, 2I, H] or gpt-oss's interleaved [E, H, 2I]) is two matrices, gate and up (rows
`...gate_up_proj.gate` / `.up`, experts `...gate_up_proj[e].gate`), on the weights-only route, the graph
route and the module route alike (`split_gate_up`: opt-in until the module route in frontends/torch.py
applies `split_fused` too); the WeightWatcher-compatible API keeps the one nn.Linear WeightWatcher sees. A
fused q/k/v projection stays one matrix, its row saying so.

Truths: the model's own forward arithmetic (transformers' `chunk(2, dim=-1)` / gpt-oss's `[..., ::2]`, run on
the parameter in torch), transformers' own checkpoint conversion (Qwen3-MoE is saved per expert: its
`experts.e.gate_proj` is the gate half the module computes with), and numpy's SVD of the slices."""

from __future__ import annotations


import numpy as np
import pytest

from irtools.frontends import open_source

torch = pytest.importorskip("torch")
tf = pytest.importorskip("transformers")

TOKENS = (1, 8)


def _phi3():
    torch.manual_seed(0)
    cfg = tf.Phi3Config(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=4,
                        num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0, eos_token_id=1,
                        bos_token_id=1, use_cache=False)
    return tf.Phi3ForCausalLM(cfg).eval()


def _gpt_oss():
    torch.manual_seed(0)
    cfg = tf.GptOssConfig(vocab_size=64, hidden_size=32, intermediate_size=24, num_hidden_layers=1,
                          num_attention_heads=4, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2,
                          head_dim=8, use_cache=False, layer_types=["full_attention"], pad_token_id=0,
                          eos_token_id=1, bos_token_id=1)
    model = tf.GptOssForCausalLM(cfg).eval()
    with torch.no_grad():  # the zero-initialised biases random, so a wrong layout could not pass unseen
        for name, p in model.named_parameters():
            if p.dim() == 2 and "bias" in name:
                p.normal_()
    return model


def _file_route(path):
    from irtools.frontends.formats.layers import weight_layers
    from irtools.frontends.weights_file import read_weights

    return weight_layers(read_weights(str(path)), split_gate_up=True)


def _graph_route(model):
    from irtools.passing import get_pass

    graph = open_source((model, (torch.zeros(TOKENS, dtype=torch.long),))).model
    return get_pass("weights", split_gate_up=True)(graph).layers


def _module_route(model):
    """The rows the module route (checkpoint folders, modules that fail to export) gives, split as the
    other routes split them."""
    from irtools.ir.fused import split_fused
    from irtools.frontends.torch import module_weight_layers

    shapes = {k: tuple(p.shape) for k, p in model.named_parameters()}
    return split_fused(module_weight_layers(model), shapes, model.config.model_type)


def _spectral(layers):
    from irtools.passing import get_pass

    return get_pass("spectral", min_evals=1).analyse(layers).rows


def _by_name(layers):
    return {layer.name: layer for layer in layers}


def _esd(matrix):
    return np.sort(np.linalg.svd(np.asarray(matrix, np.float64), compute_uv=False) ** 2)


def _same_rows(routes: dict[str, list]):
    """Every route: the same row names, the same matrices' spectra (lambda_max, alpha) row for row."""
    tables = {route: {r["name"]: r for r in _spectral(layers)} for route, layers in routes.items()}
    first, *others = tables
    for other in others:
        assert set(tables[other]) == set(tables[first]), (other, set(tables[other]) ^ set(tables[first]))
        for name, row in tables[first].items():
            for key in ("lambda_max", "alpha", "N", "M"):
                assert tables[other][name][key] == pytest.approx(row[key], rel=1e-6), (other, name, key)
    return tables[first]


def test_phi3_gate_up_is_gate_and_up_on_every_route(tmp_path):
    model = _phi3()
    model.save_pretrained(tmp_path)
    w = model.model.layers[0].mlp.gate_up_proj.weight.detach().numpy()
    half = w.shape[0] // 2
    # the truth: the module's own forward splits the projection's output with chunk(2, dim=-1)
    x = torch.randn(3, 32)
    gate, up = model.model.layers[0].mlp.gate_up_proj(x).chunk(2, dim=-1)
    np.testing.assert_allclose(gate.detach().numpy(), x.numpy() @ w[:half].T, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(up.detach().numpy(), x.numpy() @ w[half:].T, rtol=1e-5, atol=1e-6)

    file_route = _file_route(tmp_path / "model.safetensors")
    graph_route = _graph_route(model)
    rows = _same_rows({"weights-only": file_route, "graph": graph_route, "module": _module_route(model)})
    base = "model.layers.0.mlp.gate_up_proj"
    assert base not in rows and {f"{base}.gate", f"{base}.up"} <= set(rows)
    layers = _by_name(file_route)
    np.testing.assert_array_equal(layers[f"{base}.gate"].matrices()[0], w[:half])
    np.testing.assert_array_equal(layers[f"{base}.up"].matrices()[0], w[half:])
    for part, piece in (("gate", w[:half]), ("up", w[half:])):
        assert rows[f"{base}.{part}"]["lambda_max"] == pytest.approx(_esd(piece)[-1], rel=1e-6)
        assert rows[f"{base}.{part}"]["fused"] == "gate_up halves"
        assert (rows[f"{base}.{part}"]["N"], rows[f"{base}.{part}"]["M"]) == (48, 32)
    # a fused q/k/v stays one matrix (its split depends on the architecture), and the row says it is fused
    qkv = rows["model.layers.0.self_attn.qkv_proj"]
    assert qkv["fused"] == "q,k,v (one matrix)" and qkv["N"] == 64
    assert "fused" not in rows["model.layers.0.mlp.down_proj"] or rows["model.layers.0.mlp.down_proj"]["fused"] is None


def test_gpt_oss_experts_interleave_gate_and_up(tmp_path):
    model = _gpt_oss()
    model.save_pretrained(tmp_path)
    experts = model.model.layers[0].mlp.experts
    w = experts.gate_up_proj.detach().numpy()  # [E, H, 2I]: x @ w[e], gate = [..., ::2], up = [..., 1::2]
    assert w.shape == (4, 32, 48)
    x = torch.randn(3, 32)
    gate_up = x @ experts.gate_up_proj[2] + experts.gate_up_proj_bias[2]
    np.testing.assert_allclose((gate_up[..., ::2] - experts.gate_up_proj_bias[2][::2]).detach().numpy(),
                               x.numpy() @ w[2][:, ::2], rtol=1e-5, atol=1e-5)

    file_route = _file_route(tmp_path / "model.safetensors")
    graph_route = _graph_route(model)
    rows = _same_rows({"weights-only": file_route, "graph": graph_route, "module": _module_route(model)})
    base = "model.layers.0.mlp.experts.gate_up_proj"
    layers = _by_name(file_route)
    for e in range(4):
        for part, piece in (("gate", w[e][:, ::2]), ("up", w[e][:, 1::2])):
            name = f"{base}[{e}].{part}"
            np.testing.assert_array_equal(layers[name].matrices()[0], piece)
            assert rows[name]["expert"] == e and rows[name]["fused"] == "gate_up interleaved"
            assert rows[name]["lambda_max"] == pytest.approx(_esd(piece)[-1], rel=1e-6)
    assert f"{base}[0]" not in rows
    # the per-layer summary across experts keeps gate and up apart, each over its 4 experts
    from irtools.passes.weights import expert_summary

    table = _spectral(graph_route)
    summary = expert_summary(table)
    for part in ("gate", "up"):
        alphas = [r["alpha"] for r in table if r["name"].startswith(f"{base}[") and r["name"].endswith(part)]
        assert summary[f"{base}.{part}"]["experts"] == 4 and len(alphas) == 4
        assert summary[f"{base}.{part}"]["alpha_mean"] == pytest.approx(np.mean(alphas))
    assert summary["model.layers.0.mlp.experts.down_proj"]["experts"] == 4


def test_qwen3_moe_parts_are_the_per_expert_matrices_transformers_saves(tmp_path):
    """transformers 5 keeps Qwen3-MoE's experts fused in the module ([E, 2I, H]) and saves them per expert
    (its checkpoint conversion): the module route's `gate_up_proj[e].gate` / `.up` are, bit for bit, the
    `experts.e.gate_proj` / `up_proj` the checkpoint holds."""
    from safetensors.numpy import load_file

    torch.manual_seed(0)
    cfg = tf.Qwen3MoeConfig(vocab_size=64, hidden_size=32, intermediate_size=48, moe_intermediate_size=24,
                            num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2, num_experts=4,
                            num_experts_per_tok=2, head_dim=8, use_cache=False, pad_token_id=0, eos_token_id=1,
                            bos_token_id=1)
    model = tf.Qwen3MoeForCausalLM(cfg).eval()
    model.save_pretrained(tmp_path)
    saved = load_file(str(tmp_path / "model.safetensors"))
    layers = _by_name(_module_route(model))
    for e in range(4):
        for part in ("gate", "up"):
            got = layers[f"model.layers.0.mlp.experts.gate_up_proj[{e}].{part}"]
            assert got.extra == {"expert": e, "fused": "gate_up halves"} and (got.N, got.M) == (32, 24)
            want = saved[f"model.layers.0.mlp.experts.{e}.{part}_proj.weight"]
            np.testing.assert_array_equal(got.matrices()[0], want)


def test_weightwatcher_compatible_api_keeps_the_fused_linear_one_matrix():
    """WeightWatcher sees nn.Linear modules: Phi-3's gate_up_proj is one layer of 96 x 32 there, and so in
    irtools' WeightWatcher-compatible API."""
    from irtools.compat import weightwatcher as ww

    model = _phi3()
    details = ww.WeightWatcher(model=model).analyze(min_evals=1)
    names = list(details["name"]) if "name" in details else [str(n) for n in details.index]
    shapes = {n: (N, M) for n, N, M in zip(names, details["N"], details["M"], strict=True)}
    fused = [n for n in names if "gate_up" in n]
    assert len(fused) == 1 and shapes[fused[0]] == (96, 32), shapes


@pytest.mark.parametrize("shape,shapes,model_type,want", [
    ((96, 32), {}, None, (0, False)),  # a Linear [2I, H]: the output rows, halves
    ((4, 48, 32), {}, None, None),  # [E, 2I, H] or [E, H, 2I]: nothing tells, kept whole
    ((4, 32, 48), {"m.experts.gate_up_proj_bias": (4, 48)}, None, (1, True)),  # gpt-oss: the bias tells, interleaved
    ((4, 32, 48), {}, "gpt_oss", (1, True)),
    ((4, 32, 48), {}, "llama4_text", (1, False)),  # Llama 4 stores [E, H, 2I], halves
    ((4, 64, 64), {"m.experts.down_proj": (4, 32, 64)}, None, (1, False)),  # square: down_proj [E, I, H] tells
    ((4, 64, 64), {"m.experts.down_proj": (4, 64, 32)}, None, (0, False)),
    ((4, 32, 47), {}, "gpt_oss", None),  # an odd fused axis: not two halves
])
def test_which_axis_holds_gate_and_up(shape, shapes, model_type, want):
    from irtools.ir.fused import fused_gate_up

    name = "m.experts.gate_up_proj" if len(shape) == 3 else "m.mlp.gate_up_proj.weight"
    assert fused_gate_up(name, shape, shapes, model_type) == want
    assert fused_gate_up("m.mlp.up_proj.weight", (96, 32)) is None


def test_split_is_idempotent():
    """Splitting split layers again changes nothing (every route may call it on what another gave)."""
    from irtools.ir.fused import split_fused

    layers = _module_route(_phi3())
    again = split_fused(layers)
    assert [layer.name for layer in again] == [layer.name for layer in layers]


def test_each_split_layer_keeps_its_own_layout():
    """Two fused layers of different layouts in one list: each part reads its own layer's axis and
    interleave (not the last layer's)."""
    from irtools.ir.fused import split_fused
    from irtools.ir.layers import WeightLayer

    rng = np.random.default_rng(0)
    dense = rng.standard_normal((8, 6)).astype(np.float32)  # [2I, H] halves along rows
    experts = rng.standard_normal((2, 6, 8)).astype(np.float32)  # gpt-oss [E, H, 2I], interleaved (the bias)
    layers = [WeightLayer("a.gate_up_proj", "a", "state_dict", "dense", "a.gate_up_proj.weight", (8, 6), 8, 6, 1, 1.0,
                          loader=lambda: [dense]),
              WeightLayer("b.experts.gate_up_proj[1]", "b", "state_dict", "dense", "b.experts.gate_up_proj",
                          (2, 6, 8), 6, 6, 1, 1.0, loader=lambda: [experts[1]], extra={"expert": 1})]
    shapes = {"b.experts.gate_up_proj_bias": (2, 8)}
    parts = {layer.name: layer for layer in split_fused(layers, shapes)}
    np.testing.assert_array_equal(parts["a.gate_up_proj.gate"].matrices()[0], dense[:4])
    np.testing.assert_array_equal(parts["a.gate_up_proj.up"].matrices()[0], dense[4:])
    np.testing.assert_array_equal(parts["b.experts.gate_up_proj[1].gate"].matrices()[0], experts[1][:, ::2])
    np.testing.assert_array_equal(parts["b.experts.gate_up_proj[1].up"].matrices()[0], experts[1][:, 1::2])
    assert (parts["a.gate_up_proj.gate"].N, parts["a.gate_up_proj.gate"].M) == (6, 4)
    assert parts["b.experts.gate_up_proj[1].up"].extra == {"expert": 1, "fused": "gate_up interleaved"}
