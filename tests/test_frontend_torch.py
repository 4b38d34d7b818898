"""The PyTorch frontend and `irtools convert`."""

import json
import os
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner

import irtools
import irtools.frontends
from irtools.cli import main
from irtools.ir.parameters import DECLARED_PARAMETERS_KEY

torch = pytest.importorskip("torch")

HERE = os.path.dirname(os.path.abspath(__file__))
MODELS = os.path.join(HERE, "data", "torch_models.py")
sys.path.insert(0, os.path.join(HERE, "data"))
import torch_models  # noqa: E402


def test_every_float_state_dict_tensor_keeps_its_name_and_value():
    """A freshly initialised BatchNorm has bias == running_mean (zeros): the exporter must not merge them."""
    from irtools.frontends.torch import from_torch

    net = torch_models.small_cnn()
    proto = from_torch(net, input_shapes={"x": (1, 3, 8, 8)})
    state = {k: v for k, v in net.state_dict().items() if v.is_floating_point()}
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    assert set(state) <= set(inits)
    for k, v in state.items():
        np.testing.assert_array_equal(inits[k], v.numpy())
    meta = {p.key: p.value for p in proto.metadata_props}
    assert sorted(json.loads(meta[DECLARED_PARAMETERS_KEY])) == sorted(state)
    model = irtools.load(proto)
    assert sorted(p.name for p in model.parameters) == sorted(state)
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    got = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, net(torch.from_numpy(x)).numpy(), atol=1e-5)
    # the module's weights are left as they were
    for k, v in net.state_dict().items():
        if v.is_floating_point():
            assert torch.equal(v, state[k])


def test_analyze_a_callable_reference():
    res = CliRunner().invoke(main, ["analyze", f"{MODELS}:small_cnn", "--input-shape", "x=1,3,8,8", "--format", "json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert [r["parameter"] for r in data["layers"]] == ["0.weight", "3.weight"]
    state = torch_models.small_cnn().state_dict()
    assert data["reuse"]["num_params"] == sum(v.numel() for v in state.values() if v.is_floating_point())
    # without example inputs there is no graph, but the spectral family needs none: the same rows, from
    # the module's parameters, named by module path, and the reason reuse is missing is the frontend's note
    opened = irtools.frontends.open_source(f"{MODELS}:small_cnn")
    assert not opened.has_graph and any("needs example inputs" in n for n in opened.notes)
    res = CliRunner().invoke(main, ["analyze", f"{MODELS}:small_cnn", "--metrics", "spectral", "--format", "json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)["layers"]
    assert [(r["name"], r["parameter"]) for r in rows] == [(r["name"], r["parameter"]) for r in data["layers"]] == \
        [("0", "0.weight"), ("3", "3.weight")]
    assert [r["alpha"] for r in rows] == pytest.approx([r["alpha"] for r in data["layers"]], rel=1e-9)


def test_convert_checks_outputs_and_writes_whole_files(tmp_path, monkeypatch):
    out = tmp_path / "mlp.onnx"
    res = CliRunner().invoke(main, ["convert", f"{MODELS}:mlp_with_inputs", "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert "max abs difference" in res.output and out.exists()
    onnx.checker.check_model(str(out))
    import irtools.convert as conv

    real = conv._run_ort
    monkeypatch.setattr(conv, "_run_ort", lambda proto, feeds: [a + 1.0 for a in real(proto, feeds)])
    bad = tmp_path / "bad.onnx"
    res = CliRunner().invoke(main, ["convert", f"{MODELS}:mlp_with_inputs", "-o", str(bad)])
    assert res.exit_code == 2 and "differ by 1" in res.output and "nothing was written" in res.output
    assert not bad.exists() and sorted(os.listdir(tmp_path)) == ["mlp.onnx"]


def test_convert_onnx_source_and_bad_sources(tmp_path):
    from tests.conftest import EXAMPLE

    res = CliRunner().invoke(main, ["convert", EXAMPLE, "-o", str(tmp_path / "copy.onnx"), "--input-shape",
                                    "image=2,1,8,8"])
    assert res.exit_code == 0 and "difference source vs onnxruntime: 0" in res.output
    proc = subprocess.run([sys.executable, "-m", "irtools", "convert", f"{MODELS}:broken", "-o",
                           str(tmp_path / "x.onnx")], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "raised RuntimeError: no model today" in proc.stderr and not (tmp_path / "x.onnx").exists()


# -- saved programs: .pt2 ExportedProgram and TorchScript -------------------------------------------
@pytest.fixture(scope="module")
def saved_programs(tmp_path_factory):
    d = tmp_path_factory.mktemp("programs")
    net = torch_models.small_cnn().eval()
    x = torch.zeros(1, 3, 8, 8)
    torch.export.save(torch.export.export(net, (x,)), str(d / "cnn.pt2"))
    torch.jit.script(net).save(str(d / "cnn_script.pt"))
    torch.jit.trace(net, x).save(str(d / "cnn_trace.ts"))
    return net, {"pt2": str(d / "cnn.pt2"), "script": str(d / "cnn_script.pt"), "trace": str(d / "cnn_trace.ts")}


@pytest.mark.parametrize("kind", ["pt2", "script", "trace"])
def test_saved_program_keeps_state_dict_names_values_and_outputs(saved_programs, kind):
    from irtools.frontends.torch import from_saved_program

    net, paths = saved_programs
    shapes = None if kind == "pt2" else {"x": (1, 3, 8, 8)}  # a .pt2 carries its example inputs
    proto = from_saved_program(paths[kind], input_shapes=shapes, trust=True)
    state = {k: v for k, v in net.state_dict().items() if v.is_floating_point()}
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    for k, v in state.items():  # bit-equal, running statistics included
        assert inits[k].tobytes() == v.numpy().tobytes(), k
    meta = {p.key: p.value for p in proto.metadata_props}
    assert sorted(json.loads(meta[DECLARED_PARAMETERS_KEY])) == sorted(state)
    assert sorted(p.name for p in irtools.load(proto).parameters) == sorted(state)
    x = np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32)
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, net(torch.from_numpy(x)).numpy(), atol=1e-5)


def test_saved_programs_are_refused_without_trust_before_loading(saved_programs, tmp_path, monkeypatch):
    net, paths = saved_programs

    def never(*a, **k):
        raise AssertionError("loaded an untrusted file")

    monkeypatch.setattr(torch.export, "load", never)
    monkeypatch.setattr(torch.jit, "load", never)
    for path in paths.values():
        for args in (["convert", path, "-o", str(tmp_path / "o.onnx"), "--input-shape", "x=1,3,8,8"],
                     ["analyze", path, "--input-shape", "x=1,3,8,8"]):
            res = CliRunner().invoke(main, args)
            assert res.exit_code == 2, res.output
            assert res.output.count("\n") == 1 and "refused" in res.output and "--trust" in res.output
    assert not (tmp_path / "o.onnx").exists()
    with pytest.raises(irtools.IrtoolsError, match="refused"):
        irtools.analyze(paths["pt2"])


def test_saved_programs_convert_and_analyze_with_trust(saved_programs, tmp_path):
    net, paths = saved_programs
    out = tmp_path / "cnn.onnx"
    res = CliRunner().invoke(main, ["convert", paths["pt2"], "--trust", "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert "max abs difference" in res.output and out.exists()
    ref = CliRunner().invoke(main, ["analyze", f"{MODELS}:small_cnn", "--input-shape", "x=1,3,8,8", "--format", "json"])
    expected = json.loads(ref.stdout)
    for path in (paths["pt2"], paths["script"]):
        res = CliRunner().invoke(main, ["analyze", path, "--trust", "--input-shape", "x=1,3,8,8", "--format", "json"])
        assert res.exit_code == 0, res.output
        data = json.loads(res.stdout)
        assert [(r["parameter"], r["alpha"]) for r in data["layers"]] == \
            [(r["parameter"], r["alpha"]) for r in expected["layers"]]
        assert data["reuse"]["num_params"] == expected["reuse"]["num_params"]


def test_a_state_dict_has_no_graph_to_convert(tmp_path):
    path = tmp_path / "sd.pt"
    torch.save(torch_models.small_cnn().state_dict(), path)
    res = CliRunner().invoke(main, ["convert", str(path), "-o", str(tmp_path / "o.onnx"), "--trust"])
    assert res.exit_code == 2 and res.output.count("\n") == 1 and "holds no graph" in res.output


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_both_exporters_keep_the_real_weights(exporter):
    """The dynamo exporter runs without its optimizer (which would fold BatchNorm into Conv)."""
    from irtools.frontends.torch import from_torch

    if exporter == "dynamo":
        pytest.importorskip("onnxscript")
    net = torch_models.small_cnn()
    with torch.no_grad():  # statistics unlike a fresh BatchNorm's, so folding would change values
        net[1].running_mean.uniform_(-1, 1)
        net[1].running_var.uniform_(0.5, 2)
    proto = from_torch(net, input_shapes={"x": (1, 3, 8, 8)}, exporter=exporter)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["irtools.exporter"] == exporter
    state = {k: v for k, v in net.state_dict().items() if v.is_floating_point()}
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    for k, v in state.items():
        assert inits[k].tobytes() == v.numpy().tobytes(), k
    bn = [n for n in proto.graph.node if n.op_type == "BatchNormalization"]
    assert [list(n.input[1:]) for n in bn] == [["1.weight", "1.bias", "1.running_mean", "1.running_var"]]
    x = np.random.default_rng(3).standard_normal((1, 3, 8, 8)).astype(np.float32)
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        np.testing.assert_allclose(sess.run(None, {sess.get_inputs()[0].name: x})[0],
                                   net(torch.from_numpy(x)).numpy(), atol=1e-5)


def test_dynamo_export_refuses_a_parameter_folded_into_a_constant():
    """A parameter the exported program does not read as a graph input but whose value reaches
    the output anyway (here through a tensor cached outside the module's parameters, as LeViT
    caches its attention biases) is refused by the dynamo path: it is not 'unread'. Unread ones
    (never an input's user) are accepted; see tests/test_torch_zoo.py."""
    pytest.importorskip("onnxscript")
    from irtools.errors import IrtoolsError
    from irtools.frontends.torch import _check_dropped_unread

    _check_dropped_unread(["pooler.weight"], ({"pooler.weight", "a.weight"}, {"a.weight"}), {})
    _check_dropped_unread(["tied.weight"], ({"head.weight"}, set()), {"head.weight": "tied.weight"})
    for lifted, used in [({"a.weight"}, {"a.weight"}), (set(), set())]:  # read, or never lifted (folded)
        with pytest.raises(IrtoolsError, match="dropped parameter 'a.weight'"):
            _check_dropped_unread(["a.weight"], (lifted, used), {})
    with pytest.raises(IrtoolsError, match="dropped parameter"):
        _check_dropped_unread(["a.weight"], None, {})


def test_transformers_moe_exports_with_its_default_experts_implementation():
    """transformers' default experts implementation (grouped_mm) calls a custom op no ONNX exporter
    converts; the frontend exports batched_mm (the same matmuls) and gives the model back as it was.
    The exported graph computes what the module computes."""
    pytest.importorskip("onnxscript")
    tf = pytest.importorskip("transformers")
    from irtools.frontends.torch import from_torch

    cfg = tf.Qwen2MoeConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                            num_attention_heads=2, num_key_value_heads=1, num_experts=4, num_experts_per_tok=2,
                            moe_intermediate_size=16, shared_expert_intermediate_size=16, use_cache=False)
    torch.manual_seed(0)
    model = tf.Qwen2MoeModel(cfg).eval()
    before = model.get_experts_implementation()

    class Hidden(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, ids):
            return self.model(input_ids=ids).last_hidden_state

    ids = torch.tensor([[3, 1, 4, 1, 5, 9]])
    proto = from_torch(Hidden(), (ids,), exporter="dynamo")
    assert model.get_experts_implementation() == before
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        want = Hidden()(ids).numpy()
    np.testing.assert_allclose(sess.run(None, {sess.get_inputs()[0].name: ids.numpy()})[0], want, atol=1e-5)


class _Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.query = torch.nn.Linear(16, 16)

    def forward(self, h):
        return self.query(h)


class _Encoder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.ModuleList(_Block() for _ in range(2))

    def forward(self, h):
        for block in self.layer:
            h = block(h)
        return h


class _Blocks(torch.nn.Module):
    """Nested containers: `features.0` (Sequential child), `encoder.layer.0.query` (ModuleList child)."""

    def __init__(self):
        super().__init__()
        self.features = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), torch.nn.ReLU(), torch.nn.Conv2d(16, 16, 3))
        self.encoder = _Encoder()

    def forward(self, x):
        return self.encoder(self.features(x).flatten(2).transpose(1, 2))  # (1, positions, 16): Linear is MatMul


@pytest.mark.parametrize("folding", [False, True], ids=["state-dict-names", "exporter-renamed"])
def test_a_torch_exported_onnx_file_names_layers_by_module_path(tmp_path, folding):
    """A file the TorchScript exporter wrote: with constant folding, the Linear weights are stored transposed
    as `onnx::MatMul_*` and only the node scope (`/encoder/layer.0/query/MatMul`) knows the module; either
    way the rows are the module paths the module route gives."""
    torch.manual_seed(0)
    net = _Blocks().eval()
    path = tmp_path / "blocks.onnx"
    torch.onnx.export(net, (torch.randn(1, 3, 12, 12),), str(path), dynamo=False, do_constant_folding=folding)
    inits = {t.name for t in onnx.load(str(path)).graph.initializer}
    assert any(n.startswith("onnx::MatMul") for n in inits) == folding
    rows = irtools.analyze(str(path), metrics="spectral").layers
    want = ["features.0", "features.2", "encoder.layer.0.query", "encoder.layer.1.query"]
    assert sorted(r["name"] for r in rows) == sorted(want)
    from irtools.frontends.torch import module_weight_layers  # the module route: the same names

    assert sorted(layer.name for layer in module_weight_layers(net)) == sorted(want)


class _Cache:
    """A cache object in the output (transformers' DynamicCache): the TorchScript exporter refuses it."""


class _Unexportable(torch.nn.Module):
    """Python control flow on a value (torch.export cannot guard on it) and a cache object in the output."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(40, 16)
        self.proj = torch.nn.Linear(16, 16)

    def forward(self, ids):
        h = self.proj(self.embed(ids))
        if h.sum().item() > 0:
            h = h * 2
        return h, _Cache()


def test_an_export_failure_costs_only_the_reuse_family_and_says_the_dynamo_reason():
    torch.manual_seed(0)
    net = _Unexportable().eval()
    opened = irtools.frontends.open_source((net, (torch.arange(6).reshape(1, 6),)))
    assert not opened.has_graph
    (note,) = opened.notes
    assert note.startswith("reuse metrics left out: torch.onnx.export (dynamo) failed: ") and "\n" not in note
    assert "the TorchScript fallback also failed" in note
    assert [(layer.name, layer.layer_type) for layer in opened.layers] == [("embed", "embedding"), ("proj", "dense")]
    np.testing.assert_array_equal(opened.layers[1].matrices()[0], net.proj.weight.detach().numpy())


class _StdConv(torch.nn.Module):
    """timm's ScaledStdConv2d: the kernel used is the standardised parameter x gain x scale."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(8, 16, 3)
        self.conv.gain = torch.nn.Parameter(torch.rand(16, 1, 1, 1) + 0.5)

    def forward(self, x):
        w = self.conv.weight
        w = (w - w.mean((1, 2, 3), keepdim=True)) / (w.std((1, 2, 3), keepdim=True) + 1e-5)
        return torch.nn.functional.conv2d(x, w * self.conv.gain * 0.25, self.conv.bias)


def test_a_weight_standardised_conv_row_says_it_analyses_the_computed_kernel():
    torch.manual_seed(0)
    net = _StdConv().eval()
    opened = irtools.frontends.open_source((net, (torch.randn(1, 8, 10, 10),)))
    weights = irtools.run_passes(opened.model, ["weights"])["weights"]
    (layer,) = weights.layers
    assert layer.name == "conv:effective" and layer.parameter == "conv.weight"
    assert layer.extra["analysed"] == "computed from conv.weight, conv.gain"
    w = net.conv.weight.detach()
    want = ((w - w.mean((1, 2, 3), keepdim=True)) / (w.std((1, 2, 3), keepdim=True) + 1e-5)) * net.conv.gain * 0.25
    got = np.stack(layer.matrices(), -1).reshape(16, 8, 3, 3)
    np.testing.assert_allclose(got, want.detach().numpy(), rtol=1e-4, atol=1e-6)
    # the module route analyses the stored parameter, under the plain module path
    from irtools.frontends.torch import module_weight_layers

    (raw,) = module_weight_layers(net)
    assert raw.name == "conv" and raw.parameter == "conv.weight"
