"""Which layers irtools analyses, against WeightWatcher 0.7.7 on the same torch modules.

Each deliberate difference is asserted, not tolerated:
- tied weights (T5 / BART `shared` = `embed_tokens` = `lm_head`): WeightWatcher reports every alias,
  irtools one layer under the parameter's name (`named_parameters`' first name);
- 1-D convolutions (Whisper `conv1`/`conv2`, the wav2vec2 feature extractor): irtools analyses
  them, WeightWatcher 0.7.7 does not;
- a weight-normalised conv (wav2vec2 `pos_conv_embed`) is analysed as the weight the conv uses
  (g * v / ||v||), named after the module (WeightWatcher 0.7.7 raises on the parametrization);
- DeBERTa-v2's `rel_embeddings` (read whole, through a LayerNorm) gets a row (`layer_type`
  "matrix", WeightWatcher's "embedding").
Where both analyse a layer, alpha agrees to 1e-6. And the weights pass's invariant: every
learnable parameter that must appear yields a layer or a skipped entry with its reason.
"""

import json
import logging
import warnings

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import irtools

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
ww = pytest.importorskip("weightwatcher")

from irtools.frontends.torch import ALIASES_KEY, load_torch  # noqa: E402

# -- tiny transformers models (transformers 5.x config classes, random weights, no download): each
# returns (module, example inputs); widths >= 32, so that every matrix WeightWatcher fits has at
# least 32 eigenvalues
WIDTH, FFN, HEADS, VOCAB = 32, 64, 2, 96


def _seed():
    torch.manual_seed(0)


def t5():
    """T5 with tied embeddings: `shared` = encoder/decoder `embed_tokens` = `lm_head`."""
    import transformers as T

    class T5(T.T5ForConditionalGeneration):
        def forward(self, input_ids, decoder_input_ids):
            return super().forward(input_ids=input_ids, decoder_input_ids=decoder_input_ids).logits

    _seed()
    cfg = T.T5Config(vocab_size=VOCAB, d_model=WIDTH, d_kv=16, d_ff=FFN, num_layers=1, num_decoder_layers=1,
                     num_heads=HEADS, relative_attention_num_buckets=8, relative_attention_max_distance=16,
                     decoder_start_token_id=0, tie_word_embeddings=True)
    return T5(cfg).eval(), (torch.ones(1, 5, dtype=torch.long), torch.ones(1, 3, dtype=torch.long))


def bart():
    """BART: `shared` = encoder/decoder `embed_tokens`."""
    import transformers as T

    class Bart(T.BartModel):
        def forward(self, input_ids):
            return super().forward(input_ids=input_ids, use_cache=False).last_hidden_state

    _seed()
    cfg = T.BartConfig(vocab_size=VOCAB, d_model=WIDTH, encoder_layers=1, decoder_layers=1,
                       encoder_attention_heads=HEADS, decoder_attention_heads=HEADS, encoder_ffn_dim=FFN,
                       decoder_ffn_dim=FFN, max_position_embeddings=40, use_cache=False)
    return Bart(cfg).eval(), (torch.ones(1, 5, dtype=torch.long),)


def whisper_encoder():
    """Whisper's encoder: `conv1` / `conv2` are 1-D convolutions."""
    import transformers as T

    _seed()
    cfg = T.WhisperConfig(vocab_size=VOCAB, num_mel_bins=16, d_model=WIDTH, encoder_layers=1, decoder_layers=1,
                          encoder_attention_heads=HEADS, decoder_attention_heads=HEADS, encoder_ffn_dim=FFN,
                          decoder_ffn_dim=FFN, max_source_positions=40, max_target_positions=16,
                          pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    return WhisperEncoder(cfg).eval(), (torch.ones(1, 16, 80),)


def wav2vec2():
    """wav2vec2: a 1-D conv feature extractor and a weight-normalised `pos_conv_embed`."""
    import transformers as T

    _seed()
    cfg = T.Wav2Vec2Config(hidden_size=WIDTH, num_hidden_layers=1, num_attention_heads=HEADS,
                           intermediate_size=FFN, conv_dim=(32, 32), conv_stride=(5, 2), conv_kernel=(10, 3),
                           num_conv_pos_embeddings=4, num_conv_pos_embedding_groups=2, vocab_size=10)
    model = T.Wav2Vec2Model(cfg).eval()
    with torch.no_grad():  # a fresh weight norm has g = ||v||, i.e. effective weight = v: make them differ
        g = model.encoder.pos_conv_embed.conv.parametrizations.weight.original0
        g.mul_(torch.rand(g.shape) + 0.5)
    return model, (torch.ones(1, 400),)


def deberta_v2():
    """DeBERTa-v2: `rel_embeddings` read whole (through a LayerNorm), `pos_key_proj` / `pos_query_proj`."""
    import transformers as T

    _seed()
    cfg = T.DebertaV2Config(vocab_size=VOCAB, hidden_size=WIDTH, num_hidden_layers=1, num_attention_heads=HEADS,
                            intermediate_size=FFN, max_position_embeddings=40, relative_attention=True,
                            position_buckets=16, pos_att_type=["p2c", "c2p"], max_relative_positions=32,
                            norm_rel_ebd="layer_norm")
    return T.DebertaV2Model(cfg).eval(), (torch.ones(1, 5, dtype=torch.long),)


HF_MODELS = {"t5": t5, "bart": bart, "whisper_encoder": whisper_encoder, "wav2vec2": wav2vec2, "deberta_v2": deberta_v2}



def _canonical(module) -> dict[int, str]:
    """{id(parameter): its first name in named_parameters()} (how torch itself names a tied weight)."""
    names: dict[int, str] = {}
    for name, p in module.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), name)
    return names


def _ww_details(module):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("weightwatcher").setLevel(logging.ERROR)
        return ww.WeightWatcher(model=module).analyze()


def _without_parametrizations(module):
    """`module`, its parametrized weights made plain parameters holding the effective weight."""
    for m in module.modules():
        for name in list(getattr(m, "parametrizations", {}) or {}):
            torch.nn.utils.parametrize.remove_parametrizations(m, name, leave_parametrized=True)
    return module


# Whisper's encoder and BART repeat what wav2vec2 (1-D convs) and T5 (tied embeddings) test: slow set.
SLOW = {"bart", "whisper_encoder"}


@pytest.fixture(scope="module", params=[pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n
                                        for n in sorted(HF_MODELS)])
def analysed(request):
    build = HF_MODELS[request.param]
    module, args = build()
    model = load_torch(module, args)
    weights = irtools.run_passes(model, ["weights"])["weights"]
    analysis = irtools.analyze(model, metrics="spectral")
    # WeightWatcher 0.7.7 raises on a parametrized weight: it reads a second, identical build whose
    # parametrizations are removed (removing them edits the class the two copies of one build share)
    plain = _without_parametrizations(build()[0])
    return request.param, module, plain, analysis, weights, model, _ww_details(plain)


def test_layer_set_and_alphas_match_weightwatcher_with_the_documented_differences(analysed):
    name, module, plain, analysis, _, _, details = analysed
    canonical = _canonical(plain)
    ww_rows = {}
    for row in details.itertuples():
        key = canonical[id(plain.get_submodule(row.longname).weight)]
        ww_rows.setdefault(key, []).append(row)
    conv1d = {canonical[id(m.weight)] for m in plain.modules() if isinstance(m, torch.nn.Conv1d)}
    ours = {r.parameter: r for r in analysis.details.itertuples()}
    # the same layers, plus the 1-D convolutions WeightWatcher 0.7.7 leaves out
    assert set(ours) == set(ww_rows) | conv1d
    assert not conv1d & set(ww_rows)
    for key, rows in ww_rows.items():
        mine = ours[key]
        for row in rows:  # every alias of a tied weight is the same matrix: the same numbers
            assert (mine.N, mine.M) == (row.N, row.M)
            assert mine.alpha == pytest.approx(row.alpha, abs=1e-6), key
            assert mine.lambda_max == pytest.approx(row.lambda_max, rel=1e-9), key
    if name in ("t5", "bart"):
        aliases = [k for k, rows in ww_rows.items() if len(rows) > 1]
        assert aliases == ["shared.weight"]
        assert len(ww_rows["shared.weight"]) == (4 if name == "t5" else 3)  # + lm_head for T5
    if name == "deberta_v2":
        assert ours["encoder.rel_embeddings.weight"].layer_type == "matrix"
        assert all(r.parameter for r in analysis.details.itertuples())


def test_tied_weights_are_one_layer_shared_by_every_node(analysed):
    name, module, _, _, weights, model, _ = analysed
    groups: dict[int, list[str]] = {}
    for k, v in module.state_dict(keep_vars=True).items():
        groups.setdefault(id(v), []).append(k)
    tied = [names for names in groups.values() if len(names) > 1]
    if not tied:
        pytest.skip(f"{name} has no tied weights")
    for names in tied:
        layers = [layer for layer in weights.layers if layer.parameter == names[0]]
        assert len(layers) == 1
        assert not any(layer.parameter in names[1:] for layer in weights.layers)
        aliases = json.loads(model.model.metadata_props[ALIASES_KEY])
        assert {a: aliases[a] for a in names[1:]} == dict.fromkeys(names[1:], names[0])
        # each alias that computes somewhere is a node the one layer lists
        assert len(layers[0].shared_with) >= 1


def test_weight_normalised_conv_is_its_effective_weight(analysed):
    name, module, _, analysis, weights, _, _ = analysed
    if name != "wav2vec2":
        pytest.skip("wav2vec2 holds the weight-normalised conv")
    conv = module.encoder.pos_conv_embed.conv
    with torch.no_grad():
        effective = conv.weight.detach().numpy()  # torch computes g * v / ||v|| here
    raw = conv.parametrizations.weight.original1.detach().numpy()
    (layer,) = [x for x in weights.layers if x.parameter == "encoder.pos_conv_embed.conv.weight"]
    assert set(layer.sources) == {"encoder.pos_conv_embed.conv.parametrizations.weight.original0",
                                  "encoder.pos_conv_embed.conv.parametrizations.weight.original1"}
    mats = layer.matrices()
    assert len(mats) == effective.shape[2]
    for k, w in enumerate(mats):
        np.testing.assert_allclose(w, effective[:, :, k], rtol=1e-5, atol=1e-7)
    assert not np.allclose(mats[0], raw[:, :, 0])
    assert not any("original" in r.parameter for r in analysis.details.itertuples())


def _must_appear(shape) -> bool:
    return len(shape) >= 2 and sum(d > 1 for d in shape) >= 2


def assert_every_parameter_accounted_for(model, weights):
    """The invariant, checked from the outside: each parameter with >= 2 non-trivial dims is a
    layer's weight (or one of its sources) or named by a skipped entry with a reason."""
    covered = {s for layer in weights.layers for s in (layer.parameter, *layer.sources)}
    skipped = {s["parameter"]: s["reason"] for s in weights.skipped if s["parameter"]}
    for p in model.parameters:
        if _must_appear(p.shape):
            assert p.name in covered or (p.name in skipped and skipped[p.name]), p.name


def test_every_parameter_yields_a_layer_or_a_skipped_entry(analysed):
    _, _, _, _, weights, model, _ = analysed
    assert_every_parameter_accounted_for(model, weights)


def _onnx_model(nodes, inits, inputs, outputs):
    graph = helper.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(a, n) for n, a in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_parameters_no_rule_analyses_are_matrices_or_skipped_with_reasons():
    """An ONNX model whose weights reach ops the weights pass has no rule for (Einsum, Mul):
    a 2-D table read whole becomes a 'matrix' layer, a 3-D one a skipped entry naming its reader."""
    rng = np.random.default_rng(0)
    inits = {"w3": rng.standard_normal((4, 12, 10)).astype(np.float32),
             "table": rng.standard_normal((16, 10)).astype(np.float32),
             "scale": rng.standard_normal((10,)).astype(np.float32)}
    nodes = [helper.make_node("Einsum", ["x", "w3"], ["h"], equation="bi,hji->bhj", name="proj"),
             helper.make_node("Mul", ["table", "scale"], ["t2"], name="scale_table"),
             helper.make_node("ReduceMean", ["t2"], ["tm"], keepdims=0, axes=[0], name="mean"),
             helper.make_node("Add", ["x", "tm"], ["y"], name="add")]
    proto = _onnx_model(nodes, inits, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 10])],
                        [helper.make_tensor_value_info("h", TensorProto.FLOAT, [1, 4, 12]),
                         helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])])
    model = irtools.load(proto)
    weights = irtools.run_passes(model, ["weights"])["weights"]
    (table,) = [layer for layer in weights.layers if layer.parameter == "table"]
    assert table.layer_type == "matrix" and (table.N, table.M) == (16, 10)
    np.testing.assert_array_equal(table.matrices()[0], inits["table"])
    # a 3-D weight an Einsum contracts (Funnel's r_kernel): the matrix of the product, contracted axis (i)
    # against the free ones (h, j): w3[h, j, i] as a 10 x 48 matrix
    (w3,) = [layer for layer in weights.layers if layer.parameter == "w3"]
    assert (w3.layer_type, w3.op_type, w3.N, w3.M) == ("matrix", "Einsum", 48, 10)
    np.testing.assert_array_equal(w3.matrices()[0], inits["w3"].transpose(2, 0, 1).reshape(10, 48))
    assert not any(s["parameter"] == "w3" for s in weights.skipped)
    assert not any(layer.parameter == "scale" for layer in weights.layers)  # 1-D: not a matrix
    assert_every_parameter_accounted_for(model, weights)


def test_a_bias_kept_per_head_is_no_layer_but_an_added_table_is():
    """Flax DenseGeneral / Keras EinsumDense keep biases as (heads, head_dim): read in a Gemm's bias
    slot (through a Reshape), or added and named a bias, it is a bias like torch's 1-D ones (no row,
    nothing skipped); a learned (1, seq, d) table added to the input (ViT's position embedding)
    stays a matrix row."""
    import onnx
    from onnx import helper as oh

    from irtools.passes.weights import is_split_bias
    from tests import builders as b

    rng = np.random.default_rng(0)
    nodes = [oh.make_node("Reshape", ["x", "flat"], ["x2"]),
             oh.make_node("Reshape", ["q.bias", "flat1"], ["qb"]),
             oh.make_node("Gemm", ["x2", "q.kernel", "qb"], ["q"]),
             oh.make_node("Reshape", ["q", "heads"], ["q4"]),
             oh.make_node("Add", ["q4", "k/bias"], ["k4"]),
             oh.make_node("Reshape", ["k4", "seq"], ["k3"]),
             oh.make_node("Add", ["k3", "pos_embedding"], ["y"])]
    inits = [b.tensor("q.kernel", rng.standard_normal((64, 64))), b.tensor("q.bias", rng.standard_normal((8, 8))),
             b.tensor("k/bias", rng.standard_normal((8, 8))), b.tensor("pos_embedding", rng.standard_normal((1, 10, 64))),
             onnx.numpy_helper.from_array(np.array([10, 64], np.int64), "flat"),
             onnx.numpy_helper.from_array(np.array([64], np.int64), "flat1"),
             onnx.numpy_helper.from_array(np.array([10, 8, 8], np.int64), "heads"),
             onnx.numpy_helper.from_array(np.array([1, 10, 64], np.int64), "seq")]
    proto = b.model(nodes, [b.vinfo("x", [1, 10, 64])], [b.vinfo("y", [1, 10, 64])], inits)
    model = irtools.load(proto)
    split = {p.name: is_split_bias(p) for p in model.parameters}
    assert split == {"q.kernel": False, "q.bias": True, "k/bias": True, "pos_embedding": False}
    result = irtools.analyze(proto, metrics="spectral")
    assert {row["parameter"] for row in result.layers} == {"q.kernel", "pos_embedding"}
    assert not {entry["parameter"] for entry in result.skipped} & {"q.bias", "k/bias"}


def test_a_table_named_bias_that_is_read_by_index_before_it_is_added_is_a_matrix_row():
    """Swin's and BEiT's `relative_position_bias_table` (positions x heads) is gathered by a constant index, then
    added to the attention scores: named a bias and only added, it was taken for a per-head bias and had neither
    a row nor a skipped entry (on the module route it had a row). Built by hand: Gather of a constant index,
    views, Add; the same table added as stored stays a bias."""
    import onnx
    from onnx import helper as oh

    from irtools.passes.weights import is_split_bias
    from tests import builders as b

    rng = np.random.default_rng(3)
    index = rng.integers(0, 49, size=(16 * 16,)).astype(np.int64)
    nodes = [oh.make_node("Gather", ["attn.relative_position_bias_table", "index"], ["g"]),
             oh.make_node("Reshape", ["g", "grid"], ["g3"]),
             oh.make_node("Transpose", ["g3"], ["bias"], perm=[2, 0, 1]),
             oh.make_node("Add", ["scores", "bias"], ["s2"]),
             oh.make_node("Add", ["s2", "attn.head_bias"], ["y"])]
    inits = [b.tensor("attn.relative_position_bias_table", rng.standard_normal((49, 8))),
             b.tensor("attn.head_bias", rng.standard_normal((16, 16))),
             onnx.numpy_helper.from_array(index, "index"),
             onnx.numpy_helper.from_array(np.array([16, 16, 8], np.int64), "grid")]
    proto = b.model(nodes, [b.vinfo("scores", [8, 16, 16])], [b.vinfo("y", [8, 16, 16])], inits)
    model = irtools.load(proto)
    assert {p.name: is_split_bias(p) for p in model.parameters} == {
        "attn.relative_position_bias_table": False, "attn.head_bias": True}
    result = irtools.analyze(proto, metrics="spectral", min_evals=1)
    (row,) = result.layers
    assert row["parameter"] == "attn.relative_position_bias_table" and (row["N"], row["M"]) == (49, 8)
