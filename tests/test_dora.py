"""DoRA adapters (frontends/peft.py, issue 21): merged into their base, the weight PEFT's own
`merge_and_unload()` gives, W' = m * (W + s·B A) / ||W + s·B A|| per output unit; without a base, the row
is the low-rank direction update s·B A and the magnitude is skipped with its reason.

Truth is PEFT itself: a PeftModel with use_dora=True on a tiny random Llama (transformers `from_config`),
GPT-2 (fan_in_fan_out Conv1D) and a Conv2d net, its lora_B and magnitudes perturbed so that neither the
update nor the rescaling is the identity, merged by `merge_and_unload()`.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")
pytest.importorskip("transformers")
pytest.importorskip("safetensors")

import irtools  # noqa: E402
from irtools.finetune import compare, open_merged  # noqa: E402
from irtools.frontends import open_source  # noqa: E402


def _perturb(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name or "lora_embedding_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
            elif "lora_magnitude_vector" in name:  # m starts as ||W||: move it, or the rescaling is near 1
                p.mul_(1 + 0.5 * torch.rand(p.shape, generator=g))


def _dora(tmp_path, base, targets, seed=0, **config):
    """(PEFT's merged model, adapter folder, base safetensors file) of a DoRA adapter on `base`."""
    from safetensors.torch import save_file

    base_file = tmp_path / "base.safetensors"
    save_file({k: v.detach().clone().contiguous() for k, v in base.state_dict().items()}, str(base_file))
    model = peft.get_peft_model(base, peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets, use_dora=True,
                                                      **config))
    _perturb(model, seed)
    folder = tmp_path / "adapter"
    model.save_pretrained(folder)
    return model.merge_and_unload(), str(folder), str(base_file)


def _llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, vocab_size=48))


LLAMA_TARGETS = ["q_proj", "v_proj", "down_proj", "embed_tokens"]


def test_merged_dora_is_peft_merge_and_unload_on_a_tiny_llama(tmp_path):
    truth, folder, base_file = _dora(tmp_path, _llama(), LLAMA_TARGETS)
    merged = open_merged(folder, base_file)
    layers = {layer.name: layer for layer in merged.layers}
    want = {k: v.detach().double().numpy() for k, v in truth.state_dict().items()}
    adapted = [n for n in layers if n.endswith(("q_proj", "v_proj", "down_proj")) or n == "model.embed_tokens"]
    assert len(adapted) == 7  # 2 x (q, v, down) + the embedding (Linear (out, in), and Embedding (tokens, dim))
    for name in adapted:
        assert layers[name].extra.get("dora") is True and layers[name].extra["r"] == 4
        (got,) = layers[name].matrices()
        np.testing.assert_allclose(got, want[name + ".weight"], rtol=1e-6, atol=1e-6, err_msg=name)
    # the rescaling matters: W + ΔW alone is not PEFT's merged weight
    q = "model.layers.0.self_attn.q_proj"
    from irtools.frontends import peft as peft_frontend

    config, tensors, _ = peft_frontend.read_adapter(folder)
    updates = {u.module: u for u in peft_frontend.adapter_updates(config, tensors)[0]}
    base_w = open_source(base_file).layers
    base_q = next(layer for layer in base_w if layer.name == q).matrices()[0]
    assert np.abs(base_q + updates[q].delta() - want[q + ".weight"]).max() > 1e-3
    # the layers the adapter does not touch are the base's
    np.testing.assert_allclose(layers["model.layers.1.mlp.up_proj"].matrices()[0],
                               want["model.layers.1.mlp.up_proj.weight"], rtol=0, atol=0)
    assert not any("magnitude" in s["reason"] for s in merged.skipped)
    assert any("DoRA" in n for n in merged.notes)


def test_merged_dora_fan_in_fan_out_and_conv(tmp_path):
    """GPT-2's Conv1D stores (in, out): the norm runs over its rows, the magnitude along its columns; a
    Conv2d's norm is over (in, kh, kw) per output channel, across all the kernel-position slices."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(1)
    gpt2 = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=50, n_positions=16))
    (tmp_path / "g").mkdir()
    truth, folder, base_file = _dora(tmp_path / "g", gpt2, ["c_attn"], fan_in_fan_out=True)
    (got,) = {layer.name: layer for layer in open_merged(folder, base_file).layers}[
        "transformer.h.0.attn.c_attn"].matrices()
    np.testing.assert_allclose(got, truth.transformer.h[0].attn.c_attn.weight.detach().double().numpy(),
                               rtol=1e-6, atol=1e-6)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(6, 16, 3)

        def forward(self, x):
            return self.conv(x)

    torch.manual_seed(2)
    (tmp_path / "c").mkdir()
    truth, folder, base_file = _dora(tmp_path / "c", Net(), ["conv"])
    slices = {layer.name: layer for layer in open_merged(folder, base_file).layers}["conv"].matrices()
    want = truth.conv.weight.detach().double().numpy()
    assert len(slices) == 9
    for k, (i, j) in enumerate(np.ndindex(3, 3)):
        np.testing.assert_allclose(slices[k], want[:, :, i, j], rtol=1e-6, atol=1e-6)


def test_dora_against_its_base_analyses_the_merged_difference(tmp_path):
    """`analyze ADAPTER --base BASE`: the rows are W' - W of PEFT's merged weight (a full-rank matrix, not
    the rank-r B·A), checked against the same analysis of a file holding that difference."""
    from safetensors.numpy import save_file

    truth, folder, base_file = _dora(tmp_path, _llama(), ["q_proj", "v_proj"])
    from safetensors.numpy import load_file

    base_sd = load_file(base_file)
    delta = {k: truth.state_dict()[k].detach().double().numpy() - base_sd[k].astype(np.float64)
             for k in base_sd if k.endswith(("q_proj.weight", "v_proj.weight"))}
    save_file(delta, str(tmp_path / "delta.safetensors"))
    got = compare(folder, base_file, min_evals=2)
    ref = irtools.analyze(str(tmp_path / "delta.safetensors"), metrics="spectral", min_evals=2)
    rows, want = {r["name"]: r for r in got.layers}, {r["name"]: r for r in ref.layers}
    assert set(rows) == set(want) and len(rows) == 4
    for name, row in rows.items():
        assert row["num_evals"] == want[name]["num_evals"] > 4  # full rank, not r = 4
        for key in ("lambda_max", "log_norm", "stable_rank"):
            assert row[key] == pytest.approx(want[name][key], rel=1e-6), (name, key)
        assert row["dist_raw"] == pytest.approx(np.linalg.norm(delta[name + ".weight"]), rel=1e-6)


def test_dora_without_a_base_is_the_low_rank_update_and_says_so(tmp_path):
    _, folder, _ = _dora(tmp_path, _llama(), ["q_proj", "v_proj"])
    sd = json.load(open(f"{folder}/adapter_config.json"))
    assert sd["use_dora"] is True
    analysis = irtools.analyze(folder, metrics="spectral", min_evals=2, keep_eigenvalues=True)
    assert len(analysis.layers) == 4 and all(row["num_evals"] == 4 for row in analysis.layers)
    skipped = [s for s in analysis.skipped if "magnitude" in s["name"]]
    assert len(skipped) == 4 and all("needs the base weight" in s["reason"] and "--base" in s["reason"]
                                     for s in skipped)
    assert any("low-rank direction update" in n for n in analysis.notes)
    # the row's eigenvalues are those of s·B·A (the B·A of the folder, not the rescaled weight)
    from safetensors.numpy import load_file

    t = load_file(f"{folder}/adapter_model.safetensors")
    key = "base_model.model.model.layers.0.self_attn.q_proj"
    delta = 2.0 * t[f"{key}.lora_B.weight"].astype(np.float64) @ t[f"{key}.lora_A.weight"].astype(np.float64)
    row, evals = next((r, e) for r, e in zip(analysis.layers, analysis.eigenvalues)
                      if r["name"] == "model.layers.0.self_attn.q_proj")
    assert row["scale"] == 2.0
    np.testing.assert_allclose(np.sort(evals), np.sort(np.linalg.svd(delta, compute_uv=False) ** 2)[-4:], rtol=1e-9)


def test_peft_model_object_merges_as_its_folder(tmp_path):
    """A PeftModel object (its active adapter) gives the same merged DoRA weights as its saved folder."""
    from safetensors.torch import save_file

    base = _llama()
    base_file = tmp_path / "base.safetensors"
    save_file({k: v.detach().clone().contiguous() for k, v in base.state_dict().items()}, str(base_file))
    model = peft.get_peft_model(base, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                      use_dora=True))
    _perturb(model, 3)
    model.save_pretrained(tmp_path / "adapter")
    from_object = {layer.name: layer for layer in open_merged(model, str(base_file)).layers}
    from_folder = {layer.name: layer for layer in open_merged(str(tmp_path / "adapter"), str(base_file)).layers}
    assert sorted(n for n, layer in from_object.items() if layer.extra.get("dora")) == \
        sorted(n for n, layer in from_folder.items() if layer.extra.get("dora")) != []
    for name, layer in from_folder.items():
        np.testing.assert_allclose(from_object[name].matrices()[0], layer.matrices()[0], rtol=1e-12, atol=0)


def test_a_magnitude_that_does_not_fit_is_refused_for_its_module(tmp_path):
    """A magnitude vector whose length is not the module's output count: the module is not merged (W + ΔW
    without its rescaling is not the DoRA weight), its tensors skipped with the reason; the others merge."""
    from safetensors.numpy import load_file, save_file

    _, folder, base_file = _dora(tmp_path, _llama(), ["q_proj", "v_proj"])
    weights = f"{folder}/adapter_model.safetensors"
    t = load_file(weights)
    key = "base_model.model.model.layers.0.self_attn.v_proj.lora_magnitude_vector"
    t[key] = t[key][:-1].copy()
    save_file(t, weights)
    merged = open_merged(folder, base_file)
    dora = sorted(layer.name for layer in merged.layers if layer.extra.get("dora"))
    assert dora == ["model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.q_proj",
                    "model.layers.1.self_attn.v_proj"]
    reasons = [s["reason"] for s in merged.skipped if "layers.0.self_attn.v_proj" in s["name"]]
    assert len(reasons) == 3 and all("15 values for 16 outputs" in r for r in reasons)
