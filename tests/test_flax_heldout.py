"""Held-out Flax/JAX architectures (tests/flax_heldout_models.py) through the JAX frontend and both families.

Independent truth for each model: the ONNX graph run by onnxruntime gives JAX's outputs; the
declared parameters are exactly the pytree's float leaves; every leaf with two dimensions > 1 is
a spectral row or a skipped entry; rows of weight ops are named by the module path of their
parameter; and JAX's own gradients of a random projection of the outputs: every parameter scalar
with a nonzero gradient has contexts, and the parameter and input/output sizes are JAX's.
A few models run in CI; the rest of the zoo with `-m slow`.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

jax = pytest.importorskip("jax")
pytest.importorskip("jax2onnx")
pytest.importorskip("flax")
ort = pytest.importorskip("onnxruntime")
jnp = jax.numpy

from irtools.frontends.jax import (  # noqa: E402
    PARAMETER_DTYPES_KEY,
    _is_float_leaf,
    _leaves,
    flax_source,
    from_flax,
    module_path,
)

import irtools  # noqa: E402
from irtools.ir.parameters import DECLARED_PARAMETERS_KEY  # noqa: E402
from tests.flax_heldout_models import REGISTRY  # noqa: E402

#: Models the fast set converts: the fixes they guard (opset-17 RMSNorm, ConvTranspose names,
#: recurrent carries and unrolled scans, narrow dtypes); the slow rest adds lifted transforms
#: without Flax shims (nn.remat / nn.vmap / nn.scan) and float64 numpy leaves.
FAST = ["linen-norms", "linen-conv-variants", "linen-rnn-lstmcell", "linen-bfloat16-params"]
#: Known gaps: marked xfail, strict, so a fix shows.
KNOWN = {"nnx-lstm": "nnx.RNN: the nnx scan cannot be traced by jax2onnx (trace levels)"}


class Converted:
    def __init__(self, name: str):
        self.name = name
        self.source = flax_source(REGISTRY[name]())
        self.proto = from_flax(self.source)
        self.model = irtools.load(self.proto)
        named, _ = _leaves(jax, self.source.params, self.source.strip)
        self.floats = {n: np.asarray(leaf) for n, leaf in named if _is_float_leaf(jax, leaf)}
        self.meta = {p.key: p.value for p in self.proto.metadata_props}

    def gradients(self) -> dict[str, np.ndarray]:
        """d <outputs, R> / d leaf, R fixed random, by JAX."""
        src = self.source
        outs = jax.tree_util.tree_leaves(src.fn(src.params, *src.inputs))
        rng = np.random.default_rng(1)
        weights = [jnp.asarray(rng.standard_normal(np.shape(o)), jnp.float32) for o in outs]

        def projection(params):
            leaves = jax.tree_util.tree_leaves(src.fn(params, *src.inputs))
            return sum((jnp.asarray(o, jnp.float32) * w).sum() for o, w in zip(leaves, weights))

        grads, _ = _leaves(jax, jax.grad(projection, allow_int=True)(src.params), src.strip)
        return {n: np.asarray(g, np.float64) for n, g in grads if n in self.floats}


_CACHE: dict[str, Converted] = {}


def converted(name: str) -> Converted:
    if name not in _CACHE:
        _CACHE[name] = Converted(name)
    return _CACHE[name]


def check(name: str) -> None:
    c = converted(name)
    # outputs: onnxruntime against JAX
    sess = ort.InferenceSession(c.proto.SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run(None, {i.name: x for i, x in zip(sess.get_inputs(), c.source.inputs)})
    want = c.source(*c.source.inputs)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        tol = 1e-5 if np.dtype(w.dtype).itemsize >= 4 else 3e-2  # bfloat16 / float16 arithmetic, summed in any order
        np.testing.assert_allclose(np.asarray(g, np.float64), np.asarray(w, np.float64), rtol=10 * tol, atol=tol)
    # parameters: the pytree's float leaves, values as float32
    assert sorted(json.loads(c.meta[DECLARED_PARAMETERS_KEY])) == sorted(c.floats)
    assert {p.name: p.numel for p in c.model.parameters} == {n: v.size for n, v in c.floats.items()}
    # spectral: nothing lost, weight-op rows named by module path
    analysis = irtools.analyze(c.model, metrics="spectral")
    rows = {r["parameter"]: r for r in analysis.layers}
    skipped = {s["parameter"] for s in analysis.skipped}
    for leaf, value in c.floats.items():
        if leaf.endswith("/bias"):  # (heads, head_dim) biases of DenseGeneral / attention: added, no matrix
            assert leaf not in rows, f"{name}: bias {leaf} analysed as a matrix"
        elif sum(d > 1 for d in value.shape) >= 2:
            assert leaf in rows or leaf in skipped, f"{name}: {leaf} is neither a layer nor skipped"
    for parameter, row in rows.items():
        if row["layer_type"] != "matrix":  # a 2-D parameter no op rule reads is named after itself
            assert row["name"].split(":")[0] == module_path(parameter), (parameter, row["name"])
    # reuse: JAX's gradients say which scalars reach the outputs
    counts = irtools.run_passes(c.model, ["context-counts"])["context-counts"]
    reuse = irtools.run_passes(c.model, ["reuse"])["reuse"]
    assert reuse["num_params"] == sum(v.size for v in c.floats.values())
    assert counts.num_input_scalars == sum(int(np.size(x)) for x in c.source.inputs)
    assert counts.num_output_scalars == sum(int(np.size(w)) for w in want)
    for leaf, grad in c.gradients().items():
        k = counts.counts[leaf]
        contexts = np.ldexp(k.mantissa, k.exponent).reshape(grad.shape)
        used = grad != 0
        assert (contexts[used] > 0).all(), f"{name}: {int((contexts[used] == 0).sum())} scalars of {leaf} " \
                                           "have a nonzero gradient but no context"


def _param(name):
    marks = [] if name in FAST else [pytest.mark.slow]
    if name in KNOWN:
        marks.append(pytest.mark.xfail(reason=KNOWN[name], strict=True))
    return pytest.param(name, marks=marks)


@pytest.mark.parametrize("name", [_param(n) for n in REGISTRY])
def test_heldout_model(name):
    check(name)


def test_opset17_reductions_take_axes_as_attributes():
    """jax2onnx writes RMSNorm's ReduceMean in the opset-18 form; the frontend rewrites it."""
    proto = converted("linen-norms").proto
    assert next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) == 17
    means = [n for n in proto.graph.node if n.op_type == "ReduceMean"]
    assert means and all(len(n.input) == 1 and [a.name for a in n.attribute if a.name == "axes"] for n in means)


def test_conv_transpose_layers_are_named_by_module_and_kernel_preparation_after_it():
    proto = converted("linen-conv-variants").proto
    by_name = {n.name: n for n in proto.graph.node}
    for module in ("up", "up_valid"):
        assert by_name[module].op_type == "ConvTranspose"
        prepared = [n for n in proto.graph.node if n.name.startswith(f"{module}/")]
        assert prepared and all(n.op_type != "ConvTranspose" for n in prepared)
    assert by_name["depthwise"].op_type == "Conv" and by_name["circular"].op_type == "Conv"


def test_narrow_parameters_keep_their_exact_values():
    c = converted("linen-bfloat16-params")
    assert set(json.loads(c.meta[PARAMETER_DTYPES_KEY]).values()) == {"bfloat16"}
    values = {t.name: onnx.numpy_helper.to_array(t) for t in c.proto.graph.initializer}
    for leaf, value in c.floats.items():
        assert str(value.dtype) == "bfloat16" and values[leaf].dtype == np.float32
        np.testing.assert_array_equal(values[leaf], value.astype(np.float32))


@pytest.mark.parametrize("name", ["linen-rnn-lstmcell", "linen-rnn-grucell", "linen-bidirectional-lstm"])
def test_recurrent_rows_of_a_model_object_are_named_by_module_path(name):
    """`irtools.analyze((module, variables, inputs))`: each recurrent kernel's row is its module's path
    (`LSTMCell_0/hi`), not the node of the zero-state step's bias Add or a later step's `LSTMCell_0/hi/Gemm`."""
    result = irtools.analyze(REGISTRY[name](), metrics=["spectral"], min_evals=1)
    assert result.layers
    for row in result.layers:
        assert row["name"] == module_path(row["parameter"]), (row["parameter"], row["name"])
