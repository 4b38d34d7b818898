"""PEFT adapters (frontends/peft.py): ΔW = scale · B·A per adapted module, against hand-built truth.

Truth is built by hand from the factors PEFT stores (A, B), lora_alpha and r, and checked against what
PEFT itself computes (`get_delta_weight`) and what the adapter folder route analyses.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")

import irtools  # noqa: E402
from irtools.errors import IrtoolsError  # noqa: E402
from irtools.frontends import open_source  # noqa: E402
from irtools.frontends import peft as peft_frontend  # noqa: E402
from irtools.finetune import open_merged  # noqa: E402


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 16, 3)
        self.fc1 = torch.nn.Linear(40, 48)
        self.fc2 = torch.nn.Linear(48, 24)
        self.emb = torch.nn.Embedding(30, 40)

    def forward(self, x, ids):
        return self.fc2(self.fc1(self.emb(ids))) + self.conv(x).mean()


def make_adapter(tmp_path, seed=0, **config):
    """A PeftModel on `Net` with lora_B made non-zero, saved to tmp_path/adapter; returns (model, folder)."""
    torch.manual_seed(seed)
    base = Net()
    cfg = peft.LoraConfig(**{"r": 8, "lora_alpha": 16, "target_modules": ["fc1", "fc2", "conv"], **config})
    model = peft.get_peft_model(base, cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name or "lora_embedding_A" in name:
                p.normal_()
    folder = tmp_path / "adapter"
    model.save_pretrained(folder)
    return model, str(folder)


def factors(model, module):
    sd = {k: v.detach().double().numpy() for k, v in model.state_dict().items()}
    return sd[f"base_model.model.{module}.lora_A.default.weight"], sd[f"base_model.model.{module}.lora_B.default.weight"]


def top_evals(w, r):
    return np.sort(np.linalg.svd(w, compute_uv=False) ** 2)[-r:]


def rows_by_name(analysis):
    return {row["name"]: (row, ev) for row, ev in zip(analysis.layers, analysis.eigenvalues)}


@pytest.mark.parametrize("config, scales", [
    ({}, {"fc1": 16 / 8, "fc2": 16 / 8, "conv": 16 / 8}),
    ({"use_rslora": True, "r": 9, "lora_alpha": 6}, {"fc1": 6 / 3, "fc2": 6 / 3, "conv": 6 / 3}),
    ({"r": 10, "rank_pattern": {"fc2": 12}, "alpha_pattern": {"fc1": 5}}, {"fc1": 5 / 10, "fc2": 16 / 12, "conv": 16 / 10}),
])
def test_folder_rows_are_the_scaled_updates(tmp_path, config, scales):
    model, folder = make_adapter(tmp_path, **config)
    analysis = irtools.analyze(folder, metrics="spectral", keep_eigenvalues=True)
    rows = rows_by_name(analysis)
    assert sorted(rows) == ["conv", "fc1", "fc2"]
    for module, scale in scales.items():
        row, evals = rows[module]
        a, b = factors(model, module)
        r = a.shape[0]
        assert row["r"] == r and row["scale"] == pytest.approx(scale, rel=1e-12)
        # the scale PEFT applies
        assert row["scale"] == pytest.approx(model.base_model.model.get_submodule(module).scaling["default"])
        if module == "conv":  # ΔW[o, i, kh, kw] = s sum_r B[o, r] A[r, i, kh, kw]; slices pooled, r evals each
            delta = scale * np.einsum("or,rikl->oikl", b[:, :, 0, 0], a)
            assert (row["N"], row["M"], row["rf"], row["num_evals"]) == (16, 3, 9, 9 * min(r, 3))
            truth = np.sort(np.concatenate([top_evals(delta[:, :, i, j], min(r, 3)) for i in range(3)
                                            for j in range(3)])) * 0.5
        else:
            delta = scale * b @ a
            truth = top_evals(delta, r)
            assert (row["N"], row["M"], row["num_evals"]) == (max(delta.shape), min(delta.shape), r)
        peft_delta = model.base_model.model.get_submodule(module).get_delta_weight("default").detach().double().numpy()
        np.testing.assert_allclose(peft_delta, delta, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(evals, truth, rtol=1e-9)


def test_peft_model_object_matches_folder(tmp_path):
    model, folder = make_adapter(tmp_path)
    from_folder = irtools.analyze(folder, metrics="spectral").details.sort_values("name", ignore_index=True)
    from_object = irtools.analyze(model, metrics="spectral").details.sort_values("name", ignore_index=True)
    assert list(from_object["name"]) == list(from_folder["name"])
    np.testing.assert_allclose(from_object["alpha"], from_folder["alpha"], rtol=1e-9)
    np.testing.assert_allclose(from_object["lambda_max"], from_folder["lambda_max"], rtol=1e-9)


def test_rank_under_min_evals_is_skipped_as_weightwatcher(tmp_path):
    _, folder = make_adapter(tmp_path, r=4)
    analysis = irtools.analyze(folder, metrics="spectral")
    assert [row["name"] for row in analysis.layers] == ["conv"]  # r = 4 > 3: rank 3 per slice, 27 evals
    reasons = {s["name"]: s["reason"] for s in analysis.skipped}
    assert "4 eigenvalues < min_evals 8" in reasons["fc1"]
    assert sorted(irtools.analyze(folder, metrics="spectral", min_evals=2).details["name"]) == ["conv", "fc1", "fc2"]


def test_fan_in_fan_out_and_embedding(tmp_path):
    """GPT-2's Conv1D stores (in, out): ΔW = (B A)^T; an Embedding's ΔW = (B A)^T of lora_embedding_*."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(1)
    base = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=50, n_positions=16))
    model = peft.get_peft_model(base, peft.LoraConfig(r=8, lora_alpha=4, target_modules=["c_attn", "wte"],
                                                      fan_in_fan_out=True))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name or "lora_embedding_B" in name:
                p.normal_()
    folder = tmp_path / "gpt2"
    model.save_pretrained(folder)
    opened = open_source(str(folder))
    by_name = {layer.name: layer for layer in opened.layers}
    assert set(by_name) == {"transformer.h.0.attn.c_attn", "transformer.wte"}
    config, tensors, _ = peft_frontend.read_adapter(str(folder))
    updates = {u.module: u for u in peft_frontend.adapter_updates(config, tensors)[0]}
    for module in by_name:
        peft_delta = model.base_model.model.get_submodule(module).get_delta_weight("default").detach().double().numpy()
        np.testing.assert_allclose(updates[module].delta(), peft_delta, rtol=1e-5, atol=1e-6)
        assert updates[module].shape == peft_delta.shape
    assert updates["transformer.wte"].kind == "embedding" and updates["transformer.h.0.attn.c_attn"].fan_in_fan_out


def test_merged_is_w_plus_delta(tmp_path):
    model, folder = make_adapter(tmp_path, r=8)
    base_file = tmp_path / "base.safetensors"
    from safetensors.torch import save_file

    base_sd = {k.replace("base_model.model.", "").replace(".base_layer", ""): v.detach().clone().contiguous()
               for k, v in model.state_dict().items() if "lora_" not in k}
    save_file(base_sd, str(base_file))
    merged = open_merged(folder, str(base_file))
    layers = {layer.name: layer for layer in merged.layers}
    assert set(layers) == {"conv", "fc1", "fc2", "emb"}
    assert layers["fc1"].extra == {"r": 8, "scale": 2.0} and layers["emb"].extra == {}
    truth = model.merge_and_unload()
    np.testing.assert_allclose(layers["fc1"].matrices()[0], truth.fc1.weight.detach().double().numpy(), rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(layers["conv"].matrices()[4], truth.conv.weight.detach().double().numpy()[:, :, 1, 1],
                               rtol=1e-5, atol=1e-6)
    # the base named in adapter_config.json, when it is a local path
    cfg_path = os.path.join(folder, "adapter_config.json")
    cfg = json.load(open(cfg_path))
    cfg["base_model_name_or_path"] = str(base_file)
    json.dump(cfg, open(cfg_path, "w"))
    assert len(open_merged(folder).layers) == 4
    cfg["base_model_name_or_path"] = "meta-llama/Llama-3.2-1B"
    json.dump(cfg, open(cfg_path, "w"))
    with pytest.raises(IrtoolsError, match="no base to merge"):
        open_merged(folder)


def test_dora_and_other_types_are_skipped_with_reasons(tmp_path):
    _, folder = make_adapter(tmp_path, use_dora=True, target_modules=["fc1", "fc2"])
    opened = open_source(folder)
    assert sorted(layer.name for layer in opened.layers) == ["fc1", "fc2"]
    reasons = [s["reason"] for s in opened.skipped]
    assert len(reasons) == 2 and all("DoRA magnitude" in r for r in reasons)
    torch.manual_seed(0)
    ia3 = peft.get_peft_model(Net(), peft.IA3Config(target_modules=["fc1", "fc2"], feedforward_modules=["fc2"]))
    ia3_folder = tmp_path / "ia3"
    ia3.save_pretrained(ia3_folder)
    opened = open_source(str(ia3_folder))
    assert opened.layers == [] and len(opened.skipped) == 2
    assert all("IA3" in s["reason"] for s in opened.skipped)


def test_bad_config_is_one_line_error(tmp_path):
    _, folder = make_adapter(tmp_path)
    cfg_path = os.path.join(folder, "adapter_config.json")
    open(cfg_path, "w").write("{not json")
    with pytest.raises(IrtoolsError, match="not valid JSON"):
        open_source(folder)
    open(cfg_path, "w").write(json.dumps({"peft_type": "LORA", "r": "eight"}))
    with pytest.raises(IrtoolsError, match="r must be a positive integer"):
        open_source(folder)


def test_a_config_rank_other_than_the_stored_one_is_said(tmp_path):
    """adapter_config.json edited to r = 4 while the tensors hold rank 8 (PEFT itself would refuse to load
    it): each row is analysed at the stored rank with that rank's scale (alpha / 8, by hand), and one note
    says the two disagree; an agreeing config gets no such note."""
    model, folder = make_adapter(tmp_path)
    assert not any("store another rank" in n for n in open_source(folder).notes)
    cfg_path = os.path.join(folder, "adapter_config.json")
    cfg = json.load(open(cfg_path))
    cfg["r"] = 4
    json.dump(cfg, open(cfg_path, "w"))
    opened = open_source(folder)
    (note,) = [n for n in opened.notes if "store another rank" in n]
    assert "r = 8 stored, 4 in the config" in note and note.startswith("3 adapted module(s)")
    layers = {layer.name: layer for layer in opened.layers}
    a, b = factors(model, "fc1")
    assert layers["fc1"].extra == {"r": 8, "scale": 16 / 8}
    np.testing.assert_allclose(np.sort(np.linalg.svd(layers["fc1"].matrices()[0], compute_uv=False))[-8:],
                               np.sort(np.linalg.svd(16 / 8 * b @ a, compute_uv=False))[-8:], rtol=1e-9)


def test_scale_rule_by_hand():
    config = peft_frontend.AdapterConfig(r=16, lora_alpha=32, rank_pattern={"layers.1.v_proj": 4},
                                         alpha_pattern={r"layers\.\d\.q_proj": 8})
    assert config.rank_alpha("model.layers.1.v_proj") == (4, 32)
    assert config.rank_alpha("model.layers.11.v_proj") == (16, 32)  # "(.*\.)?layers.1.v_proj$" needs the dot
    assert config.rank_alpha("model.layers.3.q_proj") == (16, 8)
    assert config.scale(16, 32) == 2.0
    config.use_rslora = True
    assert config.scale(16, 32) == pytest.approx(32 / math.sqrt(16))


def test_skipped_tensors_reach_the_analysis(tmp_path):
    _, folder = make_adapter(tmp_path, use_dora=True, target_modules=["fc1", "fc2"])
    analysis = irtools.analyze(folder, metrics="spectral")
    assert sorted(s["name"] for s in analysis.skipped if "DoRA" in s["reason"]) == \
        ["fc1.lora_magnitude_vector", "fc2.lora_magnitude_vector"]
