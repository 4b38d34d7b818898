"""JAX/Flax frontend: the IR's parameters are the pytree's leaves, by path and value; outputs match onnxruntime."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner

jax = pytest.importorskip("jax")
pytest.importorskip("jax2onnx")
nn = pytest.importorskip("flax.linen")
nnx = pytest.importorskip("flax.nnx")
jnp = jax.numpy

import irtools  # noqa: E402
from irtools.frontends.jax import flax_source, from_flax, is_flax_source, load_flax  # noqa: E402
from irtools.cli import main  # noqa: E402
from irtools.ir.parameters import DECLARED_PARAMETERS_KEY  # noqa: E402
from tests.flax_models import CNN  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(20)(x))
        x = nn.tanh(nn.Dense(16)(x))
        return nn.Dense(10)(x)


def trained_stats(variables, seed=0):
    """Trained-looking BatchNorm statistics and scales instead of the fresh 0/1."""
    rng = np.random.default_rng(seed)
    v = jax.tree_util.tree_map(np.asarray, variables)
    v = jax.tree_util.tree_map(lambda a: a, v)  # plain nested dicts of numpy arrays
    for bn in ("bn1", "bn2"):
        n = v["params"][bn]["scale"].shape[0]
        v["params"][bn]["scale"] = rng.uniform(0.5, 1.5, n).astype(np.float32)
        v["params"][bn]["bias"] = rng.normal(size=n).astype(np.float32)
        v["batch_stats"][bn]["mean"] = rng.normal(size=n).astype(np.float32)
        v["batch_stats"][bn]["var"] = rng.uniform(0.5, 2.0, n).astype(np.float32)
    return v


def flat(tree):
    """{"a/b/c": leaf} for a nested dict pytree (an independent path spelling)."""
    out = {}

    def walk(prefix, node):
        if isinstance(node, dict):
            for k, child in node.items():
                walk(f"{prefix}/{k}" if prefix else str(k), child)
        else:
            out[prefix] = np.asarray(node)

    walk("", tree)
    return out


def run_onnx(proto, *xs):
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {i.name: x for i, x in zip(sess.get_inputs(), xs)})[0]


def initializers(proto):
    return {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}


@pytest.fixture(scope="module")
def mlp():
    model = MLP()
    x = np.random.default_rng(0).standard_normal((2, 12)).astype(np.float32)
    return model, flat_dict(model.init(jax.random.PRNGKey(0), x)), x


@pytest.fixture(scope="module")
def cnn():
    model = CNN()
    x = np.random.default_rng(1).standard_normal((1, 8, 8, 3)).astype(np.float32)
    return model, trained_stats(flat_dict(model.init(jax.random.PRNGKey(1), x))), x


def flat_dict(variables):
    return jax.tree_util.tree_map(np.asarray, dict(variables)) if not hasattr(variables, "unfreeze") else \
        jax.tree_util.tree_map(np.asarray, variables.unfreeze())


def assert_parameters_are_the_pytree(proto, variables):
    leaves = flat(variables)
    declared = json.loads({p.key: p.value for p in proto.metadata_props}[DECLARED_PARAMETERS_KEY])
    assert sorted(declared) == sorted(leaves)
    inits = initializers(proto)
    for name, leaf in leaves.items():  # the framework's layout and bit-equal values
        assert inits[name].shape == leaf.shape, name
        np.testing.assert_array_equal(inits[name].view(np.uint32), leaf.astype(np.float32).view(np.uint32))
    ir_model = irtools.load(proto)
    assert {p.name: p.numel for p in ir_model.parameters} == {k: v.size for k, v in leaves.items()}
    return ir_model


def test_linen_mlp_parameters_values_and_outputs(mlp):
    model, variables, x = mlp
    proto = from_flax(model, variables, x)
    ir_model = assert_parameters_are_the_pytree(proto, variables)
    assert {p.name for p in ir_model.parameters} >= {"params/Dense_0/kernel", "params/Dense_2/bias"}
    np.testing.assert_allclose(run_onnx(proto, x), np.asarray(model.apply(variables, x)), rtol=1e-5, atol=1e-5)
    # spectral metrics of each Dense kernel against numpy's singular values of the stored (in, out) matrix
    a = irtools.analyze(ir_model, metrics="spectral")
    assert len(a.details) == 3
    assert sorted(a.details["parameter"]) == [f"params/Dense_{i}/kernel" for i in range(3)]
    for _, row in a.details.iterrows():
        w = flat(variables)[row["parameter"]].astype(np.float64)
        s = np.linalg.svd(w, compute_uv=False)
        assert (row["N"], row["M"]) == (max(w.shape), min(w.shape))
        assert row["log_spectral_norm"] == pytest.approx(np.log10(s[0] ** 2), rel=1e-6)
        assert row["stable_rank"] == pytest.approx(np.sum(s ** 2) / s[0] ** 2, rel=1e-6)
    reuse = irtools.run_passes(ir_model, ["reuse"])["reuse"]
    assert reuse["num_params"] == 12 * 20 + 20 + 20 * 16 + 16 + 16 * 10 + 10
    assert reuse["num_input_nodes"] == 2 * 12 and reuse["num_output_nodes"] == 2 * 10


def test_linen_cnn_keeps_batchnorm_and_hwio_kernels(cnn):
    model, variables, x = cnn
    proto = from_flax(model, variables, x)
    assert_parameters_are_the_pytree(proto, variables)
    # the recorded intermediate shapes are ONNX's own (jax2onnx writes NHWC shapes for NCHW values)
    recorded = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in proto.graph.value_info}
    assert recorded["relu_out_1"] == [1, 6, 8, 8] and recorded["MaxPool_0"] == [1, 6, 4, 4]
    onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    bns = [list(n.input[1:]) for n in proto.graph.node if n.op_type == "BatchNormalization"]
    assert sorted(bns) == [[f"params/{b}/scale", f"params/{b}/bias", f"batch_stats/{b}/mean", f"batch_stats/{b}/var"]
                           for b in ("bn1", "bn2")]
    # the exporter's OIHW copy of the HWIO kernel is computed from it, not stored
    producers = {o: n for n in proto.graph.node for o in n.output}
    for conv in (n for n in proto.graph.node if n.op_type == "Conv"):
        t = producers[conv.input[1]]
        assert t.op_type == "Transpose" and t.input[0] in ("params/c1/kernel", "params/c2/kernel")
    expected = np.asarray(model.apply(variables, x))
    np.testing.assert_allclose(run_onnx(proto, x), expected, rtol=1e-5, atol=1e-5)
    # the conv's spectral matrices are the kernel positions of the HWIO kernel: [i, o] per (h, w)
    a = irtools.analyze(irtools.load(proto), metrics="spectral")
    row = a.details.set_index("parameter").loc["params/c2/kernel"]
    w = variables["params"]["c2"]["kernel"].astype(np.float64)
    evals = np.concatenate([np.linalg.svd(w[i, j], compute_uv=False) ** 2 for i in range(3) for j in range(3)])
    assert (row["N"], row["M"], row["num_evals"]) == (6, 6, 54)
    assert row["log_norm"] == pytest.approx(np.log10(evals.sum() * 0.5), rel=1e-6)  # WW's conv2d_norm: x 1/2
    reuse = irtools.run_passes(irtools.load(proto), ["reuse"])["reuse"]
    assert reuse["num_params"] == sum(v.size for v in flat(variables).values())
    assert reuse["num_input_nodes"] == 8 * 8 * 3 and reuse["num_output_nodes"] == 4


def test_nnx_module_paths_without_value(mlp):
    class Net(nnx.Module):
        def __init__(self, rngs):
            self.c = nnx.Conv(3, 4, (3, 3), padding="SAME", rngs=rngs)
            self.bn = nnx.BatchNorm(4, rngs=rngs)
            self.fc = nnx.Linear(4, 2, rngs=rngs)

        def __call__(self, x):
            return self.fc(nnx.relu(self.bn(self.c(x))).mean(axis=(1, 2)))

    net = Net(nnx.Rngs(0))
    x = np.random.default_rng(2).standard_normal((1, 5, 5, 3)).astype(np.float32)
    assert is_flax_source(net) and is_flax_source((net, None, x))
    proto = from_flax(net, inputs=(x,))
    names = ["bn/bias", "bn/mean", "bn/scale", "bn/var", "c/bias", "c/kernel", "fc/bias", "fc/kernel"]
    assert sorted(json.loads({p.key: p.value for p in proto.metadata_props}[DECLARED_PARAMETERS_KEY])) == names
    inits = initializers(proto)
    np.testing.assert_array_equal(inits["c/kernel"], np.asarray(net.c.kernel[...]))
    np.testing.assert_array_equal(inits["fc/kernel"], np.asarray(net.fc.kernel[...]))
    net.eval()
    np.testing.assert_allclose(run_onnx(proto, x), np.asarray(net(x)), rtol=1e-5, atol=1e-5)


def test_plain_function_shared_parameter_and_input_shapes():
    rng = np.random.default_rng(3)
    params = {"w": rng.standard_normal((4, 4)).astype(np.float32), "b": np.zeros(4, np.float32),
              "step": np.int32(7)}  # non-float leaves are not parameters

    def apply(p, x):  # one matrix used twice, once transposed
        return jnp.tanh(x @ p["w"] + p["b"]) @ p["w"].T

    proto = from_flax(apply, params, input_shapes={"features": (2, 4)})
    assert [i.name for i in proto.graph.input] == ["features"]
    assert json.loads({p.key: p.value for p in proto.metadata_props}[DECLARED_PARAMETERS_KEY]) == ["b", "w"]
    ir_model = irtools.load(proto)
    assert sorted(p.name for p in ir_model.parameters) == ["b", "w"]
    assert ir_model.parameter("b").numel == 4  # the all-zero bias survives as itself
    x = rng.standard_normal((2, 4)).astype(np.float32)
    np.testing.assert_allclose(run_onnx(proto, x), np.asarray(apply(params, x)), rtol=1e-5, atol=1e-5)


def test_folded_parameter_is_an_error_an_unused_one_a_fact():
    """A leaf no live equation of the traced function reads (issue 20) stays a parameter, listed as
    unread (tests/test_unused_weights.py checks its analysis); one folded into a constant is an error."""
    params = {"w": np.ones((3, 3), np.float32), "unused": np.full(2, 0.5, np.float32)}

    def apply(p, x):
        dead = p["unused"] * 2.0  # an equation whose result nothing needs: still unread
        del dead
        return x @ p["w"]

    proto = from_flax(apply, params, input_shapes={"x": (1, 3)})
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["irtools.unread_parameters"]) == {"unused": [2]}
    assert json.loads(meta[DECLARED_PARAMETERS_KEY]) == ["unused", "w"]
    np.testing.assert_array_equal(irtools.load(proto).constant_value(
        irtools.load(proto).parameter("unused").value), params["unused"])

    def folded(p, x):  # computed eagerly from the parameter while tracing, besides a direct use
        return x @ p["w"] + x @ jnp.asarray(np.asarray(p["w"]) * 2.0)

    with pytest.raises(irtools.IrtoolsError, match="computed from weights"):
        from_flax(folded, {"w": np.ones((3, 3), np.float32)}, input_shapes={"x": (1, 3)})


def test_negative_constants_of_the_function_are_not_parameters():
    w = np.random.default_rng(4).standard_normal((3, 3)).astype(np.float32)
    cut = np.array([-0.25, -1.5, -3e-3], np.float32)  # negative floats decode as fingerprint bit patterns too

    def apply(p, x):
        return jnp.maximum(x @ p["w"], cut)

    proto = from_flax(apply, {"w": w}, input_shapes={"x": (2, 3)})
    assert [p.name for p in irtools.load(proto).parameters] == ["w"]
    x = np.random.default_rng(5).standard_normal((2, 3)).astype(np.float32)
    np.testing.assert_allclose(run_onnx(proto, x), np.maximum(x @ w, cut), rtol=1e-5, atol=1e-6)


def test_bad_sources_are_one_line_errors(mlp):
    with pytest.raises(irtools.IrtoolsError, match="needs its parameter pytree"):
        flax_source(lambda p, x: x)
    with pytest.raises(irtools.IrtoolsError, match="needs example inputs"):
        from_flax(mlp[0], mlp[1])
    with pytest.raises(irtools.IrtoolsError, match="only float32, float16 and bfloat16 parameters.*'w' is float8_e4m3fn"):
        from_flax(lambda p, x: x @ p["w"], {"w": np.ones((2, 2), jnp.int8).view(jnp.float8_e4m3fn)},
                  input_shapes={"x": (1, 2)})


def test_missing_jax_is_a_one_line_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "jax", None)
    with pytest.raises(irtools.IrtoolsError, match=r"^JAX/Flax is not installed: pip install irtools\[jax\]$"):
        from_flax(lambda p, x: x, {}, input_shapes={"x": (1,)})


def test_missing_jax_in_convert_is_a_one_line_hint(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "jax", None)
    result = CliRunner().invoke(main, ["convert", f"{tmp_path / 'm.py'}:build", "--framework", "jax",
                                       "-o", str(tmp_path / "out.onnx")])
    assert result.exit_code == 2
    assert result.output == "irtools: error: JAX/Flax is not installed: pip install irtools[jax]\n"


def test_importing_the_frontend_does_not_import_jax():
    code = ("import sys, irtools, irtools.frontends.jax; assert irtools.frontends.jax.is_flax_source((print, {'w': 1}))\n"
            "assert not {'jax', 'flax', 'jax2onnx'} & set(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


FACTORY = """
import jax, numpy as np
import flax.linen as nn

class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(10)(nn.relu(nn.Dense(16)(x)))

def build():
    model = MLP()
    x = np.zeros((1, 12), np.float32)
    return model.apply, model.init(jax.random.PRNGKey(0), x), (x,)

def build_nnx():
    from flax import nnx
    return nnx.Linear(4, 2, rngs=nnx.Rngs(0)), None, (np.zeros((1, 4), np.float32),)

def broken():
    # a wrong output on purpose: traced (for ONNX) it adds -0.5, run eagerly it does not
    def apply(p, x):
        return x @ p["w"] - (0.5 if isinstance(x, jax.core.Tracer) else 0.0)

    return apply, {"w": np.ones((2, 2), np.float32)}, (np.zeros((1, 2), np.float32),)
"""


def test_cli_convert_and_analyze_a_flax_factory(tmp_path):
    path = tmp_path / "my_flax.py"
    path.write_text(textwrap.dedent(FACTORY))
    out = tmp_path / "out.onnx"
    runner = CliRunner()
    for framework in ("jax", "auto"):
        result = runner.invoke(main, ["convert", f"{path}:build", "--framework", framework, "-o", str(out)])
        assert result.exit_code == 0, result.output
        assert "max abs difference" in result.output
        proto = onnx.load(str(out))
        declared = json.loads({p.key: p.value for p in proto.metadata_props}[DECLARED_PARAMETERS_KEY])
        assert sorted(declared) == ["params/Dense_0/bias", "params/Dense_0/kernel", "params/Dense_1/bias",
                                    "params/Dense_1/kernel"]
        out.unlink()
    result = runner.invoke(main, ["convert", f"{path}:build_nnx", "--framework", "jax", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(initializers(onnx.load(str(out)))) == ["bias", "kernel"]
    a = irtools.analyze(f"{path}:build")
    assert sorted(a.details["parameter"]) == ["params/Dense_0/kernel", "params/Dense_1/kernel"]
    assert a.reuse["num_params"] == 12 * 16 + 16 + 16 * 10 + 10


def test_cli_convert_refuses_a_mismatch_and_writes_nothing(tmp_path):
    path = tmp_path / "my_flax.py"
    path.write_text(textwrap.dedent(FACTORY))
    out = tmp_path / "out.onnx"
    result = CliRunner().invoke(main, ["convert", f"{path}:broken", "--framework", "jax", "-o", str(out),
                                       "--tolerance", "1e-6"])
    assert result.exit_code == 2 and "differ by 0.5 " in result.output and "Traceback" not in result.output
    assert sorted(f for f in os.listdir(tmp_path) if f != "__pycache__") == ["my_flax.py"]  # no output, no temp


def test_load_flax_is_from_flax_then_load(mlp):
    model, variables, x = mlp
    ir_model = load_flax(model.apply, variables, x)
    assert sorted(p.name for p in ir_model.parameters) == sorted(flat(variables))


def test_attention_kernels_keep_their_3d_layout_through_reshape_views():
    class Attention(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.MultiHeadDotProductAttention(num_heads=2, qkv_features=16)(x)

    model = Attention()
    x = np.random.default_rng(6).standard_normal((1, 5, 16)).astype(np.float32)
    variables = flat_dict(model.init(jax.random.PRNGKey(0), x))
    proto = from_flax(model, variables, x)
    ir_model = assert_parameters_are_the_pytree(proto, variables)
    assert ir_model.parameter("params/MultiHeadDotProductAttention_0/query/kernel").shape == (16, 2, 8)
    readers = {n.input[0]: n.op_type for n in proto.graph.node if n.input}
    assert readers["params/MultiHeadDotProductAttention_0/query/kernel"] == "Reshape"
    np.testing.assert_allclose(run_onnx(proto, x), np.asarray(model.apply(variables, x)), rtol=1e-5, atol=1e-5)


def test_shims_accept_every_call_form_of_the_original():
    """jax2onnx's shims take keyword-only arguments where the originals take them positionally
    (`nn.avg_pool(x, (2, 2), strides=(2, 2))`); the adapter binds to the original's signature."""
    from irtools.frontends.jax import _call_as_original

    def avg_pool(inputs, window_shape, strides=None, padding="VALID", count_include_pad=True):
        raise AssertionError("the original is not called while tracing")

    seen = []

    def shim(x, *, window_shape, strides=None, padding="VALID", count_include_pad=True):
        seen.append((x, window_shape, strides, padding, count_include_pad))
        return "traced"

    call = _call_as_original(avg_pool, shim)
    assert call("x", (2, 2), strides=(1, 1)) == "traced"
    call("x", (3, 3), (2, 2), "SAME")
    call(inputs="x", window_shape=(4, 4))
    assert seen == [("x", (2, 2), (1, 1), "VALID", True), ("x", (3, 3), (2, 2), "SAME", True),
                    ("x", (4, 4), None, "VALID", True)]
    with pytest.raises(TypeError):  # a call the original refuses still fails
        call("x", (2, 2), bogus=1)

    class Layer:  # a patched method: `self` passes through
        def __call__(self, inputs, deterministic=None):
            raise AssertionError

    def method_shim(self, x, *, deterministic=None):
        return (x, deterministic)

    Layer.__call__ = _call_as_original(Layer.__call__, method_shim)
    assert Layer()("x", True) == ("x", True)


def test_linen_avg_pool_with_a_positional_window_converts():
    import flax.linen as nn

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.Conv(4, (3, 3), name="conv")(x)
            x = nn.avg_pool(x, (2, 2), strides=(2, 2))
            x = nn.max_pool(x, (2, 2), (2, 2))
            return nn.Dense(3, name="head")(x.reshape((1, -1)))

    x = np.random.default_rng(0).standard_normal((1, 8, 8, 3)).astype(np.float32)
    variables = Net().init(jax.random.PRNGKey(0), x)
    proto = from_flax(Net(), variables, (x,))
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, {sess.get_inputs()[0].name: x})[0], Net().apply(variables, x),
                               rtol=1e-5, atol=1e-6)
    named = {n.name: n.op_type for n in proto.graph.node}
    assert named.get("conv") == "Conv" and named.get("head") in ("Gemm", "MatMul")
