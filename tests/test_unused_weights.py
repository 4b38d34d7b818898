"""Unused weights are facts, not failures (issue 20): a weight the forward pass never reads (a pooler
the output skips, an untied output embedding, a layer left out of the call) is analysed by the
spectral family like any other weight and listed for the reuse family with zero contexts, in torch,
Keras and Flax alike; never an error, never silently dropped.

Truth, independent of the unread-weight code: the same layer in a twin model whose forward pass
does read it (the graph route's own extraction rules), irtools' analysis of a weights-only
safetensors file holding the same tensor, the eigenvalues of W^T W computed by numpy, and the reuse
quantities of the twin model that has no unread weights at all.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

import irtools
from irtools.ir.parameters import UNREAD_LAYOUTS_KEY, UNREAD_PARAMETERS_KEY, UNREAD_REASON

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

#: The spectral row's numbers that say what matrix was analysed and what its ESD is.
NUMBERS = ("N", "M", "rf", "num_evals", "lambda_max", "alpha", "xmin", "D", "norm", "spectral_norm", "stable_rank",
           "entropy")


def _rows(analysis) -> dict[str, dict]:
    return {r["name"]: r for r in analysis.layers}


def _same_numbers(got: dict, want: dict, what: str) -> None:
    for column in NUMBERS:
        a, b = got.get(column), want.get(column)
        if isinstance(b, float) and math.isfinite(b):
            assert a == pytest.approx(b, rel=1e-6, abs=1e-9), f"{what}: {column} {a} != {b}"
        else:
            assert a == b, f"{what}: {column} {a} != {b}"


def _dense_evals(w: np.ndarray) -> np.ndarray:
    """The ESD of a weight matrix: the eigenvalues of W^T W (the smaller Gram matrix), by numpy."""
    w = np.asarray(w, dtype=np.float64)
    gram = w.T @ w if w.shape[0] >= w.shape[1] else w @ w.T
    return np.sort(np.linalg.eigvalsh(gram))


def _assert_one_note(analysis, count: int) -> None:
    """The user is told once what was done with the unread weights."""
    (note,) = [n for n in analysis.notes if UNREAD_REASON in n]
    assert note.startswith(f"{count} parameter(s) {UNREAD_REASON}"), note


def _reuse_by_name(analysis) -> dict[str, dict]:
    return {p["name"]: p for p in analysis.reuse["parameters"]}


def _assert_zero_contexts(analysis, unread: set[str]) -> None:
    """The reuse family lists each unread tensor, with no context (and the reason where the IR says it)."""
    per = _reuse_by_name(analysis)
    for name in unread:
        assert per[name]["mass_share"] == 0.0 and per[name]["log2_count_mean"] is None, name
        assert per[name].get("reason", UNREAD_REASON) == UNREAD_REASON


def _assert_same_reuse(got, want, extra_scalars: int) -> None:
    """Unread weights change no reuse quantity: they only add zero-count scalars."""
    for key in ("total_surprisal", "entropy", "expected_spread", "num_params", "graph_size", "performance_spread"):
        assert got.reuse[key] == pytest.approx(want.reuse[key], rel=1e-12), key
    assert got.reuse["zero_count_scalars"] == want.reuse["zero_count_scalars"] + extra_scalars


# -- torch ---------------------------------------------------------------------------------------
torch = pytest.importorskip("torch")


class TorchNet(torch.nn.Module):
    """An encoder-like net: `read_all=False` skips its pooler, an untied output head and embedding,
    a second conv and an LSTM (all kept as parameters of the module)."""

    def __init__(self, read_all: bool):
        super().__init__()
        self.read_all = read_all
        self.conv_a = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.conv_b = torch.nn.Conv2d(16, 16, 3, padding=1, groups=2)
        self.body = torch.nn.Linear(16, 32)
        self.pooler = torch.nn.Linear(32, 24)
        self.lm_head = torch.nn.Linear(32, 40, bias=False)
        self.out_embed = torch.nn.Embedding(40, 32)
        self.lstm = torch.nn.LSTM(32, 12)

    def forward(self, x):
        h = self.conv_a(x)
        if self.read_all:
            h = self.conv_b(h)
        h = self.body(h.mean((2, 3)))
        if not self.read_all:
            return h
        ids = torch.zeros(1, dtype=torch.long)
        seq, _ = self.lstm(h.unsqueeze(0))
        return self.pooler(h).sum() + self.lm_head(h).sum() + self.out_embed(ids).sum() + seq.sum()


TORCH_UNREAD = {"conv_b.weight": "conv_b", "pooler.weight": "pooler", "lm_head.weight": "lm_head",
                "out_embed.weight": "out_embed"}


@pytest.fixture(scope="module")
def torch_nets():
    torch.manual_seed(20)
    full = TorchNet(True).eval()
    skip = TorchNet(False).eval()
    skip.load_state_dict(full.state_dict())
    return full, skip


@pytest.fixture(scope="module")
def torch_skip_analysis(torch_nets):
    return irtools.analyze(torch_nets[1], input_shapes={"x": (1, 3, 8, 8)}, keep_eigenvalues=True)


def test_torch_unread_weights_are_rows_named_by_module_path(torch_nets, torch_skip_analysis):
    full, skip = torch_nets
    rows = _rows(torch_skip_analysis)
    reference = _rows(irtools.analyze(full, input_shapes={"x": (1, 3, 8, 8)}, metrics="spectral"))
    for parameter, layer in TORCH_UNREAD.items():
        row = rows[layer]
        assert row["parameter"] == parameter and row["unread"] is True
        # the twin that reads the layer: the graph route's rules (Gemm/MatMul, Conv per position, Gather)
        assert row["layer_type"] == reference[layer]["layer_type"]
        _same_numbers(row, reference[layer], layer)
    assert rows["conv_b"]["layer_type"] == "conv2d" and rows["conv_b"]["rf"] == 9
    assert rows["out_embed"]["layer_type"] == "embedding" and rows["pooler"]["layer_type"] == "dense"
    # the LSTM's matrices, one per gate, named as the module route names them
    gates = [f"lstm.weight_ih_l0.{g}" for g in "ifgo"] + [f"lstm.weight_hh_l0.{g}" for g in "ifgo"]
    assert all(rows[g]["unread"] is True and rows[g]["layer_type"] == "lstm" for g in gates)
    w = skip.lstm.weight_ih_l0.detach().numpy()
    i = list(rows).index("lstm.weight_ih_l0.f")
    np.testing.assert_allclose(torch_skip_analysis.eigenvalues[i], _dense_evals(w[12:24]), rtol=1e-5, atol=1e-8)
    # read rows are not marked
    assert rows["body"].get("unread") is None and rows["conv_a"].get("unread") is None


def test_torch_unread_rows_equal_numpy_and_a_weights_only_file(torch_nets, torch_skip_analysis, tmp_path):
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    _, skip = torch_nets
    state = {k: v.detach().numpy() for k, v in skip.state_dict().items()}
    names = list(_rows(torch_skip_analysis))
    for parameter in ("pooler.weight", "lm_head.weight", "out_embed.weight"):
        i = names.index(TORCH_UNREAD[parameter])
        np.testing.assert_allclose(torch_skip_analysis.eigenvalues[i], _dense_evals(state[parameter]),
                                   rtol=1e-5, atol=1e-8)
    path = tmp_path / "unread.safetensors"
    safetensors_numpy.save_file({k: state[k] for k in TORCH_UNREAD}, str(path))
    alone = _rows(irtools.analyze(str(path)))
    rows = _rows(torch_skip_analysis)
    for layer in TORCH_UNREAD.values():
        _same_numbers(rows[layer], alone[layer], layer)


def test_torch_reuse_lists_unread_weights_with_zero_contexts(torch_nets, torch_skip_analysis):
    full, skip = torch_nets
    unread = {k for k in skip.state_dict() if k.split(".")[0] in ("conv_b", "pooler", "lm_head", "out_embed", "lstm")}
    _assert_zero_contexts(torch_skip_analysis, unread)
    _assert_one_note(torch_skip_analysis, len(unread))

    class Lean(torch.nn.Module):  # the same forward pass without the unread modules
        def __init__(self):
            super().__init__()
            self.conv_a, self.body = skip.conv_a, skip.body

        def forward(self, x):
            return self.body(self.conv_a(x).mean((2, 3)))

    lean = irtools.analyze(Lean().eval(), input_shapes={"x": (1, 3, 8, 8)}, metrics="reuse")
    _assert_same_reuse(torch_skip_analysis, lean, sum(skip.state_dict()[k].numel() for k in unread))


def test_torch_both_exporters_and_the_written_file_keep_unread_weights(torch_nets, torch_skip_analysis, tmp_path):
    """The TorchScript exporter drops unread parameters too; both keep them, and an ONNX file written
    from the export (`irtools convert`) holds them, so the file route gives the same rows."""
    import onnx

    from irtools.frontends.torch import from_torch

    _, skip = torch_nets
    want = _rows(torch_skip_analysis)
    for exporter in ("dynamo", "torchscript"):
        proto = from_torch(skip, (torch.zeros(1, 3, 8, 8),), exporter=exporter)
        meta = {p.key: p.value for p in proto.metadata_props}
        assert set(json.loads(meta[UNREAD_PARAMETERS_KEY])) >= set(TORCH_UNREAD)
        assert json.loads(meta[UNREAD_LAYOUTS_KEY])["conv_b.weight"] == {"layer": "conv_b", "kind": "conv",
                                                                        "kernel": "OI", "groups": 2}
        path = tmp_path / f"{exporter}.onnx"
        onnx.save(proto, str(path))
        model = irtools.load(str(path))
        assert set(model.unread_parameters) >= set(TORCH_UNREAD)
        np.testing.assert_array_equal(model.constant_value(model.parameter("pooler.weight").value),
                                      skip.pooler.weight.detach().numpy())
        got = _rows(irtools.analyze(str(path), metrics="spectral"))
        for layer in TORCH_UNREAD.values():
            _same_numbers(got[layer], want[layer], f"{exporter}: {layer}")


def test_the_structure_only_export_keeps_unread_weights_lazily(torch_nets, torch_skip_analysis):
    """The meta-device route of checkpoint folders (`export_structure`: stand-in parameters, values read
    lazily from the checkpoint): an unread parameter is an initializer reading the checkpoint's tensor,
    so its rows and its zero contexts are the module route's."""
    from irtools.frontends.torch import export_structure

    _, skip = torch_nets
    state = {k: v.detach().numpy().copy() for k, v in skip.state_dict().items()}
    reads: list[str] = []

    class Stored:
        def __init__(self, name):
            self.name, self.shape, self.dtype = name, state[name].shape, state[name].dtype

        def load(self):
            reads.append(self.name)
            return state[self.name]

    twin = TorchNet(False).eval()
    model = export_structure(twin, {"x": torch.zeros(1, 3, 8, 8)}, {k: Stored(k) for k in state}, name="net")
    assert set(model.unread_parameters) >= set(TORCH_UNREAD) and not reads  # nothing read until a pass asks
    got = irtools.analyze(model)
    want = _rows(torch_skip_analysis)
    for layer in TORCH_UNREAD.values():
        _same_numbers(_rows(got)[layer], want[layer], layer)
    _assert_zero_contexts(got, set(TORCH_UNREAD))


def test_an_old_file_without_values_still_says_why():
    """A file whose unread parameters the exporter left out (written before they were kept) lists its
    matrices as skipped with the reason, as before: never silently lost."""
    import onnx
    from onnx import helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.metadata_props.add(key=UNREAD_PARAMETERS_KEY, value=json.dumps({"pooler.weight": [16, 16]}))
    analysis = irtools.analyze(proto, metrics="spectral")
    assert not analysis.layers
    assert any(s["parameter"] == "pooler.weight" and UNREAD_REASON in s["reason"] for s in analysis.skipped)


def test_a_corrupt_layout_is_a_one_line_error():
    import onnx
    from onnx import helper, numpy_helper

    w = numpy_helper.from_array(np.ones((16, 16), np.float32), "pooler.weight")
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])], [w])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.metadata_props.add(key="irtools.parameters", value=json.dumps(["pooler.weight"]))
    proto.metadata_props.add(key=UNREAD_PARAMETERS_KEY, value=json.dumps({"pooler.weight": [16, 16]}))
    proto.metadata_props.add(key=UNREAD_LAYOUTS_KEY, value=json.dumps({"pooler.weight": {"kind": "nonsense"}}))
    with pytest.raises(irtools.IrtoolsError, match=f"metadata '{UNREAD_LAYOUTS_KEY}' is not a JSON object"):
        irtools.analyze(proto, metrics="spectral")


# -- Keras ---------------------------------------------------------------------------------------
def _keras():
    pytest.importorskip("tensorflow")
    pytest.importorskip("tf2onnx")
    return pytest.importorskip("keras")


def _keras_net(keras, read_all: bool):
    layers = keras.layers

    class Net(keras.Model):
        def __init__(self):
            super().__init__(name="net")
            self.conv_a = layers.Conv2D(16, 3, padding="same", name="conv_a")
            self.conv_b = layers.Conv2D(16, 3, padding="same", name="conv_b")
            self.pool = layers.GlobalAveragePooling2D(name="gap")
            self.body = layers.Dense(32, name="body")
            self.pooler = layers.Dense(32, name="pooler")
            self.out_embed = layers.Embedding(40, 24, name="out_embed")

        def build(self, shape):
            self.conv_a.build(shape)
            self.conv_b.build((None, 8, 8, 16))
            self.body.build((None, 16))
            self.pooler.build((None, 32))
            self.out_embed.build((None, 1))

        def call(self, x):
            h = self.conv_a(x)
            if read_all:
                h = self.conv_b(h)
            h = self.body(self.pool(h))
            if read_all:
                h = self.pooler(h) + keras.ops.sum(self.out_embed(keras.ops.zeros((1, 1), "int32")))
            return h

    net = Net()
    net.build((None, 8, 8, 3))
    return net


@pytest.fixture(scope="module")
def keras_nets():
    keras = _keras()
    keras.utils.set_random_seed(20)
    full, skip = _keras_net(keras, True), _keras_net(keras, False)
    for a, b in zip(full.weights, skip.weights, strict=True):
        b.assign(a.numpy())
    return full, skip


def test_keras_unread_weights_are_analysed_not_refused(keras_nets):
    """The issue's Keras example: a pooler (and a conv, an output embedding) the output skips. Before,
    "the conversion lost 4 Keras weight(s)"; now rows named by their layer paths, equal to the rows
    of the twin whose forward pass reads them, and zero contexts for the reuse family."""
    full, skip = keras_nets
    x = np.zeros((1, 8, 8, 3), np.float32)
    full(x), skip(x)
    got = irtools.analyze(skip, input_shapes={"x": (1, 8, 8, 3)}, keep_eigenvalues=True)
    want = _rows(irtools.analyze(full, input_shapes={"x": (1, 8, 8, 3)}, metrics="spectral"))
    rows = _rows(got)
    for layer in ("net/conv_b", "net/pooler", "net/out_embed"):
        assert rows[layer]["unread"] is True
        assert rows[layer]["layer_type"] == want[layer]["layer_type"], layer
        _same_numbers(rows[layer], want[layer], layer)
    names = list(rows)
    for layer, w in (("net/pooler", skip.pooler.kernel), ("net/out_embed", skip.out_embed.embeddings)):
        np.testing.assert_allclose(got.eigenvalues[names.index(layer)], _dense_evals(w.numpy()), rtol=1e-5, atol=1e-8)
    unread = {w.path for layer in (skip.conv_b, skip.pooler, skip.out_embed) for w in layer.weights}
    _assert_zero_contexts(got, unread)
    _assert_one_note(got, len(unread))
    assert rows["net/conv_a"].get("unread") is None


# -- Flax ----------------------------------------------------------------------------------------
def _nnx():
    pytest.importorskip("jax2onnx")
    return pytest.importorskip("flax.nnx")


def _nnx_net(nnx, read_all: bool):
    class Net(nnx.Module):
        def __init__(self, rngs):
            self.conv_a = nnx.Conv(3, 16, (3, 3), padding="SAME", rngs=rngs)
            self.conv_b = nnx.Conv(16, 16, (3, 3), padding="SAME", rngs=rngs)
            self.body = nnx.Linear(16, 32, rngs=rngs)
            self.pooler = nnx.Linear(32, 32, rngs=rngs)
            self.out_embed = nnx.Embed(40, 24, rngs=rngs)

        def __call__(self, x):
            h = self.conv_a(x)
            if read_all:
                h = self.conv_b(h)
            h = self.body(h.mean((1, 2)))
            if read_all:
                h = self.pooler(h) + self.out_embed(np.zeros((1,), np.int32)).sum()
            return h

    return Net(nnx.Rngs(20))


@pytest.fixture(scope="module")
def nnx_skip():
    nnx = _nnx()
    x = np.random.default_rng(20).standard_normal((1, 8, 8, 3)).astype(np.float32)
    skip = _nnx_net(nnx, False)
    return nnx, x, skip, irtools.analyze((skip, None, (x,)), keep_eigenvalues=True)


FLAX_UNREAD = {"conv_b/kernel": "conv_b", "pooler/kernel": "pooler", "out_embed/embedding": "out_embed"}


def test_flax_unread_parameters_are_analysed_not_refused(nnx_skip, tmp_path):
    """Before: "the conversion lost N parameter(s) (folded or unused)". Now rows named by module path,
    equal to a weights-only file's of the same tensors (Flax keeps Keras' kernel layout), and zero contexts."""
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    _, _, skip, got = nnx_skip
    rows = _rows(got)
    values = {"conv_b/kernel": skip.conv_b.kernel[...], "pooler/kernel": skip.pooler.kernel[...],
              "out_embed/embedding": skip.out_embed.embedding[...]}
    path = tmp_path / "flax.safetensors"
    safetensors_numpy.save_file({k.replace("/", "."): np.asarray(v) for k, v in values.items()}, str(path))
    alone = _rows(irtools.analyze(str(path), layout="keras", metrics="spectral"))
    for parameter, layer in FLAX_UNREAD.items():
        assert rows[layer]["unread"] is True and rows[layer]["parameter"] == parameter
        # the weights-only route strips `.kernel` from a row name, not Flax's `.embedding`
        _same_numbers(rows[layer], alone.get(layer) or alone[parameter.replace("/", ".")], layer)
    assert rows["conv_b"]["layer_type"] == "conv2d" and rows["out_embed"]["layer_type"] == "embedding"
    names = list(rows)
    np.testing.assert_allclose(got.eigenvalues[names.index("pooler")], _dense_evals(np.asarray(values["pooler/kernel"])),
                               rtol=1e-5, atol=1e-8)
    _assert_zero_contexts(got, {*FLAX_UNREAD, "conv_b/bias", "pooler/bias"})
    _assert_one_note(got, 5)
    assert rows["conv_a"].get("unread") is None


@pytest.mark.slow
def test_flax_unread_rows_equal_the_rows_of_a_twin_that_reads_them(nnx_skip):
    nnx, x, _, got = nnx_skip
    want = _rows(irtools.analyze((_nnx_net(nnx, True), None, (x,)), metrics="spectral"))  # one seed: same weights
    rows = _rows(got)
    for layer in FLAX_UNREAD.values():
        assert rows[layer]["layer_type"] == want[layer]["layer_type"], layer
        _same_numbers(rows[layer], want[layer], layer)


def test_flax_linen_parameter_never_used_is_a_matrix_row():
    pytest.importorskip("jax2onnx")
    jax = pytest.importorskip("jax")
    nn = pytest.importorskip("flax.linen")

    class Model(nn.Module):
        @nn.compact
        def __call__(self, x):
            self.param("spare", nn.initializers.normal(1.0), (24, 20))  # created, never used
            return nn.Dense(16, name="used")(x)

    x = np.ones((1, 8), np.float32)
    model = Model()
    variables = model.init(jax.random.PRNGKey(0), x)
    got = irtools.analyze((model, variables, (x,)), keep_eigenvalues=True)
    rows = _rows(got)
    assert rows["spare"]["unread"] is True and rows["spare"]["parameter"] == "params/spare"
    np.testing.assert_allclose(got.eigenvalues[list(rows).index("spare")],
                               _dense_evals(np.asarray(variables["params"]["spare"])), rtol=1e-5, atol=1e-8)
    _assert_zero_contexts(got, {"params/spare"})


# -- a Hugging Face checkpoint folder --------------------------------------------------------------
@pytest.mark.slow
def test_checkpoint_folder_with_a_head_it_never_reads(tmp_path):
    """ESM's base model stores a contact-prediction head its forward pass never calls (only
    `predict_contacts` does). The folder's graph route (a module built on the meta device, its
    weights read lazily from the folder) keeps those tensors as parameters with zero contexts, and
    its spectral rows are the weights-only route's."""
    tf = pytest.importorskip("transformers")
    torch.manual_seed(21)
    config = tf.EsmConfig(vocab_size=33, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                          num_attention_heads=4, max_position_embeddings=40, pad_token_id=1,
                          position_embedding_type="rotary")
    folder = tmp_path / "esm"
    tf.EsmModel(config).eval().save_pretrained(folder)
    got = irtools.analyze(str(folder), seq_len=8)
    assert got.reuse is not None, got.notes
    unread = {"contact_head.regression.weight", "contact_head.regression.bias"}
    _assert_zero_contexts(got, unread)
    rows = _rows(got)
    plain = _rows(irtools.analyze(str(folder / "model.safetensors"), metrics="spectral"))
    assert set(rows) == set(plain)
    for name, row in rows.items():
        _same_numbers(row, plain[name], name)


# -- the layouts, one by one, against an ONNX graph that reads the same tensor ----------------------
def _onnx_model(nodes, inputs, initializers, metadata=None):
    import onnx
    from onnx import helper, numpy_helper

    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, s) for n, s in inputs],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(v, k) for k, v in initializers.items()])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    for key, value in (metadata or {}).items():
        proto.metadata_props.add(key=key, value=json.dumps(value))
    return proto


def _unread_only(name, value, layout):
    """A graph that never reads `name` (y = Relu(x)), holding it as a declared, unread parameter."""
    from onnx import helper

    return _onnx_model([helper.make_node("Relu", ["x"], ["y"])], [("x", [1, 4])], {name: value},
                       {"irtools.parameters": [name], UNREAD_PARAMETERS_KEY: {name: list(value.shape)},
                        UNREAD_LAYOUTS_KEY: {name: layout}})


def _reader(op, weight, x_shape, **attrs):
    from onnx import helper

    return _onnx_model([helper.make_node(op, ["x", "w"], ["y"], name="layer", **attrs)], [("x", x_shape)],
                       {"w": weight}, {"irtools.parameters": ["w"]})


RNG = np.random.default_rng(20)


@pytest.mark.parametrize("case", ["conv-OI-grouped", "conv-IO", "depthwise", "conv_transpose", "dense", "embedding"])
def test_each_layout_reads_as_the_op_that_would_read_it(case):
    """Every `kind` of `irtools.unread_layouts` gives the row the op extractor gives the same tensor
    read by that op (Conv with groups, a Keras-layout kernel transposed to ONNX's, a depthwise kernel
    as ONNX's grouped Conv holds it, ConvTranspose, MatMul, Gather)."""
    from onnx import helper

    if case == "conv-OI-grouped":
        w = RNG.standard_normal((24, 6, 3, 3)).astype(np.float32)
        unread, layout = w, {"layer": "layer", "kind": "conv", "kernel": "OI", "groups": 2}
        read = _reader("Conv", w, [1, 12, 8, 8], group=2)
    elif case == "conv-IO":
        unread = RNG.standard_normal((3, 3, 12, 20)).astype(np.float32)  # Keras / Flax: (*k, in, out)
        layout = {"layer": "layer", "kind": "conv", "kernel": "IO", "groups": 1}
        read = _reader("Conv", unread.transpose(3, 2, 0, 1).copy(), [1, 12, 8, 8])
    elif case == "depthwise":
        unread = RNG.standard_normal((3, 3, 12, 2)).astype(np.float32)  # Keras: (*k, channels, multiplier)
        layout = {"layer": "layer", "kind": "depthwise", "kernel": "IO", "groups": 12}
        onnx_w = unread.reshape(3, 3, 24, 1).transpose(2, 3, 0, 1).copy()  # channel c, multiplier m -> c * 2 + m
        read = _reader("Conv", onnx_w, [1, 12, 8, 8], group=12)
    elif case == "conv_transpose":
        unread = RNG.standard_normal((16, 10, 3, 3)).astype(np.float32)  # (in, out / groups, *k)
        layout = {"layer": "layer", "kind": "conv_transpose", "kernel": "OI", "groups": 1}
        read = _reader("ConvTranspose", unread, [1, 16, 5, 5])
    elif case == "dense":
        unread = RNG.standard_normal((24, 40)).astype(np.float32)
        layout, read = {"layer": "layer", "kind": "dense"}, _reader("MatMul", unread, [1, 24])
    else:
        unread = RNG.standard_normal((50, 16)).astype(np.float32)
        layout = {"layer": "layer", "kind": "embedding"}
        read = _onnx_model([helper.make_node("Gather", ["w", "ids"], ["y"], name="layer")], [],
                           {"w": unread, "ids": np.zeros((1, 3), np.int64)}, {"irtools.parameters": ["w"]})
    got = irtools.analyze(_unread_only("layer.weight", unread, layout), metrics="spectral")
    want = irtools.analyze(read, metrics="spectral")
    (row,), (reference,) = got.layers, want.layers
    assert row["name"] == "layer" and row["unread"] is True and row["parameter"] == "layer.weight"
    assert row["layer_type"] == reference["layer_type"]
    _same_numbers(row, reference, case)


def test_expert_tensors_read_one_expert_a_row():
    w = RNG.standard_normal((3, 20, 12)).astype(np.float32)
    got = irtools.analyze(_unread_only("moe.experts.down_proj", w, {"layer": "moe.experts.down_proj",
                                                                     "kind": "experts"}),
                          metrics="spectral", keep_eigenvalues=True)
    assert [r["name"] for r in got.layers] == [f"moe.experts.down_proj[{e}]" for e in range(3)]
    assert [r["expert"] for r in got.layers] == [0, 1, 2]
    for e, evals in enumerate(got.eigenvalues):
        np.testing.assert_allclose(evals, _dense_evals(w[e]), rtol=1e-5, atol=1e-8)


def test_a_tensor_of_no_matrix_rule_is_skipped_with_the_reason():
    w = RNG.standard_normal((4, 5, 6, 7)).astype(np.float32)
    got = irtools.analyze(_unread_only("odd", w, {"layer": "odd", "kind": "dense"}), metrics="spectral")
    assert not got.layers
    (skip,) = [s for s in got.skipped if s["parameter"] == "odd"]
    assert UNREAD_REASON in skip["reason"] and "no weight-matrix rule for a 4-D tensor" in skip["reason"]
