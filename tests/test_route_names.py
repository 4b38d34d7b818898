"""One name per matrix whatever the route: a tiny transformers model (random weights, `from_config`) saved
with `save_pretrained`, analysed as (a) the model object, (b) the checkpoint folder, (c) its one safetensors
file, gives the same rows: the same names (the checkpoint's tensors, the names a user finds in the file) and
the same numbers per name.

Truths: the safetensors file itself (read by the `safetensors` library, not irtools: which tensors it holds
under which names, and each expert's matrix, whose top squared singular value numpy computes), and the
weights-only route, which reads the file's tensors one for one.
"""

from __future__ import annotations

import dataclasses
import math
import re
import warnings

import numpy as np
import pytest

import irtools

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

#: Every matrix a row, whatever its size (the tiny models' routers are 4 x 32).
ALL = dict(min_evals=1, max_evals=0, max_n=0)
#: The numbers compared per row name.
NUMBERS = ("N", "M", "num_evals", "lambda_max", "alpha", "norm", "log_norm", "spectral_norm", "stable_rank",
           "matrix_rank", "entropy")
_SMALL = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=4,
              num_key_value_heads=2, vocab_size=96, max_position_embeddings=64)


def _config(kind: str):
    """(model class, config) of a tiny model, or None where the installed transformers lacks the class."""
    T = transformers
    table = {
        "mixtral": ("MixtralForCausalLM", "MixtralConfig", dict(num_local_experts=4, num_experts_per_tok=2, **_SMALL)),
        "qwen2_moe": ("Qwen2MoeForCausalLM", "Qwen2MoeConfig",
                      dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=24,
                           shared_expert_intermediate_size=40, **_SMALL)),
        "olmoe": ("OlmoeForCausalLM", "OlmoeConfig", dict(num_experts=4, num_experts_per_tok=2, **_SMALL)),
        "llama": ("LlamaForCausalLM", "LlamaConfig", dict(tie_word_embeddings=False, **_SMALL)),
        "llama_tied": ("LlamaForCausalLM", "LlamaConfig", dict(tie_word_embeddings=True, **_SMALL)),
        "bert": ("BertModel", "BertConfig", dict(hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                                                num_attention_heads=4, vocab_size=96, max_position_embeddings=64)),
        "gpt2": ("GPT2LMHeadModel", "GPT2Config", dict(n_embd=32, n_layer=1, n_head=4, vocab_size=96, n_positions=64)),
        "t5": ("T5ForConditionalGeneration", "T5Config", dict(vocab_size=96, d_model=32, d_kv=8, d_ff=48, num_layers=1,
                                                            num_heads=4, decoder_start_token_id=0)),
        "vit": ("ViTModel", "ViTConfig", dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                              intermediate_size=48, image_size=8, patch_size=4)),
    }
    cls, cfg, kwargs = table[kind]
    if not hasattr(T, cls) or not hasattr(T, cfg):
        return None
    return getattr(T, cls), getattr(T, cfg)(**kwargs)


MOE = ("mixtral", "qwen2_moe", "olmoe")
KINDS = (*MOE, "llama", "llama_tied", "bert", "gpt2", "t5", "vit")


def _saved(kind: str, tmp_path):
    made = _config(kind)
    if made is None:
        pytest.skip(f"transformers {transformers.__version__} has no {kind} model")
    cls, config = made
    torch.manual_seed(0)
    model = cls(config).eval()
    folder = tmp_path / kind
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save_pretrained(folder)
    return model, folder


def _rows(source) -> dict[str, dict]:
    analysis = irtools.analyze(source, metrics="spectral", **ALL)
    rows = {r["name"]: r for r in analysis.layers}
    assert len(rows) == len(analysis.layers), "two rows of one name"
    return rows


def _same_numbers(a: dict, b: dict, rel: float = 1e-12) -> list[str]:
    """The (name, column) pairs whose numbers differ beyond `rel` (nan equal to nan)."""
    bad = []
    for name in a:
        for col in NUMBERS:
            x, y = a[name].get(col), b[name].get(col)
            if x is None or y is None:
                if x is not y:
                    bad.append(f"{name}.{col}: {x} vs {y}")
                continue
            x, y = float(x), float(y)
            if math.isnan(x) and math.isnan(y):
                continue
            if not math.isclose(x, y, rel_tol=rel, abs_tol=1e-300):
                bad.append(f"{name}.{col}: {x!r} vs {y!r}")
    return bad


def _folder(folder) -> tuple[dict, dict, object]:
    """The checkpoint folder's rows as `analyze` gives them (its graph's weights pass), the rows its frontend
    makes from the module's parameters (`opened.layers`, the graph left aside), and the opened source."""
    from irtools.frontends import open_source

    opened = open_source(str(folder))
    assert opened.kind == "checkpoint-folder" and opened.model is not None, opened.notes
    return _rows(opened), _rows(dataclasses.replace(opened, model=None)), opened


@pytest.mark.parametrize("kind", KINDS)
def test_model_object_folder_and_file_give_the_same_rows(kind, tmp_path):
    model, folder = _saved(kind, tmp_path)
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), "np") as f:
        stored = {k: f.get_tensor(k) for k in f.keys()}
    file_rows = _rows(str(folder / "model.safetensors"))
    # the truth: one row per stored matrix (2-D, or more dims of which two or more > 1), named by its tensor
    # without `.weight`
    matrices = {k.removesuffix(".weight") for k, v in stored.items()
                if v.ndim == 2 or sum(d > 1 for d in v.shape) >= 2}
    assert set(file_rows) == matrices, sorted(set(file_rows) ^ matrices)
    graph_rows, folder_rows, opened = _folder(folder)
    # the folder's two sets of rows hold one name each
    assert set(folder_rows) == set(graph_rows), sorted(set(folder_rows) ^ set(graph_rows))
    routes = {"object": _rows(model), "file": file_rows}
    routes["folder"] = graph_rows  # analysed on its own (a trace of the model: its weights pass)
    for label, rows in routes.items():
        assert set(rows) == set(file_rows), (label, sorted(set(rows) ^ set(file_rows)))
        assert not _same_numbers(rows, file_rows), (label, _same_numbers(rows, file_rows)[:5])
        for name, row in rows.items():  # the tensor a user finds in the file, and what the row holds
            assert row["parameter"] in stored and row["parameter"].removesuffix(".weight") == name, (label, name)
            assert row["layer_type"] == file_rows[name]["layer_type"], (label, name)
        if label == "object":  # one dtype path (the same stored values, the same code): equal, not near
            assert not _same_numbers(rows, file_rows, rel=0.0)
    assert not _same_numbers(folder_rows, file_rows)
    types = {label: {n: r["layer_type"] for n, r in rows.items()} for label, rows in routes.items()}
    assert types["object"] == types["folder"]  # the module's types, on the graph too


@pytest.mark.parametrize("kind", [*MOE, "llama_tied", "gpt2"])
def test_a_folder_whose_trace_fails_gives_the_file_rows(kind, tmp_path, monkeypatch):
    """No graph (an architecture the exporter cannot trace, as DeepSeek-V2's): the folder's rows are its
    module-route rows, under the checkpoint's names, with the stored numbers to the last bit."""
    import irtools.frontends.torch as torch_frontend

    def fails(*args, **kwargs):
        raise RuntimeError("no trace here")

    monkeypatch.setattr(torch_frontend, "export_structure", fails)
    _, folder = _saved(kind, tmp_path)
    from irtools.frontends import open_source

    opened = open_source(str(folder))
    assert opened.model is None and any("no trace here" in n for n in opened.notes)
    rows, file_rows = _rows(opened), _rows(str(folder / "model.safetensors"))
    assert set(rows) == set(file_rows), sorted(set(rows) ^ set(file_rows))
    assert not _same_numbers(rows, file_rows, rel=0.0)
    assert all(rows[n]["parameter"] == file_rows[n]["parameter"] for n in rows)


@pytest.mark.parametrize("kind", MOE)
def test_experts_are_named_and_valued_as_stored(kind, tmp_path):
    """Each expert's row on the module route is the stored expert matrix of that name (its top squared
    singular value from numpy on the file's tensor), the module's fused gate_up_proj split as stored."""
    model, folder = _saved(kind, tmp_path)
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), "np") as f:
        experts = {k: f.get_tensor(k) for k in f.keys() if ".experts." in k}
    assert experts and all(v.ndim == 2 for v in experts.values())  # stored one module per expert
    rows = _rows(model)
    for key, w in experts.items():
        row = rows[key.removesuffix(".weight")]
        want = np.linalg.svd(w.astype(np.float64), compute_uv=False)[0] ** 2
        assert row["lambda_max"] == pytest.approx(want, rel=1e-9)
        assert (row["N"], row["M"]) == (max(w.shape), min(w.shape))
    assert not [n for n in rows if "gate_up_proj" in n or "[" in n]  # no module-only name left
    # the experts' index column stays on the module route (the summary across experts)
    assert all(rows[k.removesuffix(".weight")].get("expert") is not None for k in experts)


@pytest.mark.parametrize("kind", MOE)
def test_folder_graph_rows_carry_the_checkpoint_names(kind, tmp_path):
    """The folder's graph (its reuse trace) records {module row: checkpoint row} for the converted
    parameters, every entry a stored tensor of the shape stored."""
    from safetensors import safe_open

    from irtools.ir.fused import CHECKPOINT_NAMES_KEY

    _, folder = _saved(kind, tmp_path)
    *_, opened = _folder(folder)
    import json

    names = json.loads(opened.model.model.metadata_props[CHECKPOINT_NAMES_KEY])
    with safe_open(str(folder / "model.safetensors"), "np") as f:
        shapes = {k: list(f.get_slice(k).get_shape()) for k in f.keys()}
    assert names and all(shapes.get(p) == s for _, p, s in names.values())
    assert any("gate_up_proj[" in k for k in names)


def test_checkpoint_renamed_ignores_metadata_of_other_forms():
    """A hand-made ONNX file's `irtools.checkpoint_names` that is not JSON or not {name: [str, str, [int]]}
    renames nothing; a well-formed entry renames its row (name, parameter, shape)."""
    from irtools.ir.fused import checkpoint_renamed
    from irtools.ir.layers import WeightLayer

    layer = WeightLayer("a.experts.gate_up_proj[0].gate", "n", "MatMul", "dense", "a.experts.gate_up_proj",
                        (2, 8, 4), 4, 4, 1, 1.0)
    for bad in ("{not json", "[1, 2]", '{"a.experts.gate_up_proj[0].gate": "x"}',
                '{"a.experts.gate_up_proj[0].gate": ["x", "y", [4, true]]}', None, 7):
        assert checkpoint_renamed([layer], bad)[0] is layer
    (new,) = checkpoint_renamed([layer], '{"a.experts.gate_up_proj[0].gate": ["a.experts.0.w1", '
                                         '"a.experts.0.w1.weight", [4, 4]]}')
    assert (new.name, new.parameter, new.weight_shape, new.node) == ("a.experts.0.w1", "a.experts.0.w1.weight",
                                                                     (4, 4), "n")


def test_a_plain_torch_module_keeps_its_module_names():
    from irtools.frontends.torch import converted_parameters, module_weight_layers

    net = torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.ReLU(), torch.nn.Linear(6, 4))
    assert converted_parameters(net) == []
    assert [layer.name for layer in module_weight_layers(net)] == ["0", "2"]


def test_a_bfloat16_moe_gives_the_file_rows_exactly(tmp_path):
    """Stored in bfloat16 (every route widens it to float32 as stored): the model object, the folder's rows
    and the file agree to the last bit, experts included."""
    made = _config("mixtral")
    if made is None:
        pytest.skip("no Mixtral in this transformers")
    cls, config = made
    torch.manual_seed(1)
    model = cls(config).eval().to(torch.bfloat16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save_pretrained(tmp_path)
    file_rows = _rows(str(tmp_path / "model.safetensors"))
    assert any(".experts.3.w1" in n for n in file_rows)
    rows = _rows(model)
    assert set(rows) == set(file_rows)
    assert not _same_numbers(rows, file_rows, rel=0.0)
    graph_rows, folder_rows, opened = _folder(tmp_path)
    assert set(graph_rows) == set(folder_rows)
    assert set(graph_rows) == set(file_rows)
    assert not _same_numbers(graph_rows, file_rows, rel=1e-12)


def test_checkpoint_named_pairs_by_value_and_never_makes_two_rows_of_one_name():
    """Rows renamed to the stored row of the equal matrix (a transposed copy counts), each stored row used
    once; a name another row already has is not given again."""
    from irtools.frontends.torch import checkpoint_named
    from irtools.ir.layers import WeightLayer

    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((6, 4)), rng.standard_normal((6, 4))

    def row(name, parameter, w):
        return WeightLayer(name, name, "x", "dense", parameter, w.shape, 6, 4, 1, 1.0, loader=lambda w=w: [w])

    module = [row("m.fused[0]", "m.fused", a), row("m.fused[1]", "m.fused", b), row("kept", "kept", a)]
    stored = [row("m.1.w", "m.1.w.weight", b), row("m.0.w", "m.0.w.weight", a.T)]
    got = checkpoint_named(module, {"m.fused": stored})
    assert [(r.name, r.parameter) for r in got] == [("m.0.w", "m.0.w.weight"), ("m.1.w", "m.1.w.weight"),
                                                    ("kept", "kept")]
    clash = checkpoint_named(module, {"m.fused": [row("kept", "kept.weight", a)]})
    assert [r.name for r in clash] == ["m.fused[0]", "m.fused[1]", "kept"]


@pytest.mark.parametrize("kind", ["mixtral", "llama_tied"])
def test_a_model_object_exported_with_inputs_gives_the_file_rows(kind, tmp_path):
    """A model object with example inputs goes the graph route (its ONNX export): the export records the
    checkpoint names of its converted parameters (`irtools.checkpoint_names`), each a stored tensor of the
    stored shape, and the graph's rows are the file's."""
    import json

    from safetensors import safe_open

    from irtools.frontends.torch import from_torch
    from irtools.ir.fused import CHECKPOINT_NAMES_KEY

    model, folder = _saved(kind, tmp_path)
    model.config.use_cache = False  # a cache object is no ONNX output
    ids = torch.zeros(1, 8, dtype=torch.long)
    meta = {p.key: p.value for p in from_torch(model, (ids,)).metadata_props}
    with safe_open(str(folder / "model.safetensors"), "np") as f:
        shapes = {k: list(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118  (safe_open is no mapping)
    names = json.loads(meta.get(CHECKPOINT_NAMES_KEY, "{}"))
    assert bool(names) == (kind == "mixtral")
    assert all(shapes.get(p) == s for _, p, s in names.values())
    rows, file_rows = _rows((model, (ids,))), _rows(str(folder / "model.safetensors"))
    assert set(rows) == set(file_rows), sorted(set(rows) ^ set(file_rows))
    assert not _same_numbers(rows, file_rows)
