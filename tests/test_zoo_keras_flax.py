"""The Keras and Flax zoo (tests/zoo_keras_flax.py) through `irtools.analyze`: both metric families.

Checked against the frameworks' own weights, not against irtools: every Keras / Flax kernel
(>= 2-D weight) is a layer's parameter or a skipped entry; each row's largest eigenvalue is the
squared largest singular value of the framework's kernel (a conv's kh*kw slices pooled and
halved, WeightWatcher's convention; a depthwise kernel's (C, 1) slices); Flax rows are named by
module path; the declared parameters are exactly the framework's float weights (Keras:
Normalization statistics declared structural); and the reuse family comes out.

Keras conversions take tens of seconds each: two run in the fast set, the rest are marked slow;
each architecture is converted and analysed once (module-scoped fixture) for all its tests.
"""

import json

import numpy as np
import pytest

import irtools
from tests import zoo_keras_flax as zoo


def _lambda_max(kernel: np.ndarray, equation: str | None = None) -> float:
    """Largest eigenvalue of the layer's ESD from the framework's kernel (independent of irtools):
    Dense (in, out) as it is; channels-last conv kernels (kh, kw, in, out) as kh*kw slices pooled,
    eigenvalues halved (Keras depthwise (kh, kw, C, 1) and Conv2D(groups=C) (kh, kw, 1, C) kernels:
    C x 1 slices, one eigenvalue each); an EinsumDense kernel as the matrix its `equation` contracts
    (a (d_model, heads, head_dim) query kernel: d_model x heads*head_dim)."""
    w = np.asarray(kernel, dtype=np.float64)
    if equation:  # EinsumDense (MultiHeadAttention's projections): contracted axes x the others
        operand, kernel_axes = equation.split("->")[0].split(",")
        contracted = sum(1 for axis in kernel_axes if axis in operand)
        w = w.reshape(int(np.prod(w.shape[:contracted])), -1)
    if w.ndim == 2:
        return float(np.linalg.svd(w, compute_uv=False)[0] ** 2)
    return 0.5 * max(float(np.linalg.svd(w[pos], compute_uv=False)[0] ** 2) for pos in np.ndindex(*w.shape[:-2]))


def _check_rows_against_kernels(analysis, kernels: dict, equations: dict | None = None):
    rows: dict = {}
    for r in analysis.details.itertuples():
        rows.setdefault(r.parameter, []).append(r)
    skipped = {s["parameter"] for s in analysis.skipped}
    for name, kernel in kernels.items():
        assert name in rows or name in skipped, f"{name}: neither a layer nor skipped"
        if name not in rows:
            continue
        if len(rows[name]) == 1:
            expected = _lambda_max(kernel, (equations or {}).get(name))
            assert rows[name][0].lambda_max == pytest.approx(expected, rel=1e-6), name
            continue
        # a recurrent kernel, one row per gate: Keras' (in, gates x units) cut on its last axis, in Keras' order
        assert all(r.name.rpartition(".")[2] in "ifcozrh" for r in rows[name]), name
        for r, block in zip(rows[name], np.split(kernel, len(rows[name]), axis=-1)):
            assert r.lambda_max == pytest.approx(_lambda_max(block), rel=1e-6), r.name
    return rows


# -- Keras ---------------------------------------------------------------------------------------
def _keras_param(name):
    return pytest.param(name, marks=()) if name in zoo.KERAS_FAST else pytest.param(name, marks=pytest.mark.slow)


@pytest.fixture(scope="module", params=[_keras_param(n) for n in zoo.KERAS_ZOO])
def keras_run(request):
    pytest.importorskip("tensorflow")
    pytest.importorskip("tf2onnx")
    from irtools.frontends.keras import STRUCTURAL_WEIGHTS_KEY, from_keras

    model = zoo.KERAS_ZOO[request.param]()
    proto = from_keras(model)
    ir_model = irtools.load(proto)
    analysis = irtools.analyze(ir_model)
    meta = {p.key: p.value for p in proto.metadata_props}
    weights = [(w.path, np.asarray(w.numpy()), getattr(layer, "equation", None))
               for layer in model._flatten_layers(include_self=False, recursive=True)  # noqa: SLF001
               for w in layer._trainable_variables + layer._non_trainable_variables]  # noqa: SLF001
    return request.param, weights, json.loads(meta.get(STRUCTURAL_WEIGHTS_KEY, "{}")), ir_model, analysis


def test_keras_declared_parameters_are_the_models_float_weights(keras_run):
    _, weights, structural, ir_model, _ = keras_run
    floats = {path: a for path, a, _ in weights if a.dtype.kind == "f"}
    assert set(structural) <= set(floats)
    assert all("Normalization" in reason for reason in structural.values())
    assert {p.name for p in ir_model.parameters} == set(floats) - set(structural)
    assert sum(p.numel for p in ir_model.parameters) == sum(a.size for n, a in floats.items() if n not in structural)


def test_keras_spectral_rows_match_the_kernels(keras_run):
    """Every kernel is a row (its lambda_max from the kernel itself) or a skipped entry; a bias kept
    per head (EinsumDense's (heads, head_dim)) is no row, like every 1-D bias."""
    name, weights, _, _, analysis = keras_run
    biases = {path for path, _, _ in weights if path.endswith("/bias")}
    kernels = {path: a for path, a, _ in weights
               if a.ndim >= 2 and sum(d > 1 for d in a.shape) >= 2 and path not in biases}
    assert not biases & {r.parameter for r in analysis.details.itertuples()}
    rows = _check_rows_against_kernels(analysis, kernels, {path: eq for path, _, eq in weights if eq})
    assert len(rows) >= (2 if name in zoo.KERAS_HAND else 10)


def test_keras_rows_are_named_by_layer_path(keras_run):
    """A row's name is the Keras path of the layer owning its weight (`block/d1` for `block/d1/kernel`)."""
    _, _, _, _, analysis = keras_run
    for row in analysis.details.itertuples():
        layer = row.parameter.rpartition("/")[0]
        assert row.name == layer or row.name.startswith(f"{layer}/"), (row.name, row.parameter)


# Architectures whose reuse family waits for a counting rule (another part of issue #13): the op
# the note must name. A model listed here that counts, or one not listed that does not, fails.
REUSE_GAPS: dict[str, str] = {}


def _check_reuse(name, analysis, expected_scalars):
    if name in REUSE_GAPS:
        if analysis.reuse is None:
            assert any(f"no counting rule for {REUSE_GAPS[name]}" in n for n in analysis.notes), analysis.notes
            return
        pytest.fail(f"{name} counts now: remove it from REUSE_GAPS")
    assert analysis.reuse is not None, analysis.notes
    assert sum(p["scalars"] for p in analysis.reuse["parameters"]) == expected_scalars
    assert 0 < analysis.reuse["num_params"] <= expected_scalars
    assert np.isfinite(analysis.reuse["total_surprisal"]) and analysis.reuse["total_surprisal"] > 0


def test_keras_reuse_family_comes_out(keras_run):
    name, _, _, ir_model, analysis = keras_run
    _check_reuse(name, analysis, sum(p.numel for p in ir_model.parameters))


# -- Flax ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module", params=sorted(zoo.FLAX_ZOO))
def flax_run(request):
    jax = pytest.importorskip("jax")
    pytest.importorskip("jax2onnx")
    from irtools.frontends.jax import flax_source, from_flax

    source = flax_source(zoo.FLAX_ZOO[request.param]())
    proto = from_flax(source)
    ir_model = irtools.load(proto)
    analysis = irtools.analyze(ir_model)
    leaves = jax.tree_util.tree_flatten_with_path(source.params)[0]
    strip = set(source.strip)
    params = {}
    for path, leaf in leaves:
        if not jax.numpy.issubdtype(leaf.dtype, jax.numpy.floating):
            continue  # nnx state also holds RNG keys and counts
        keys = [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]
        while len(keys) > 1 and keys[-1] in strip:
            keys.pop()
        params["/".join(keys)] = np.asarray(leaf)
    return request.param, source.kind, params, ir_model, analysis


def test_flax_spectral_rows_match_the_kernels_and_are_named_by_module_path(flax_run):
    _, kind, params, ir_model, analysis = flax_run
    assert {p.name for p in ir_model.parameters} == set(params)
    kernels = {n: a for n, a in params.items() if a.ndim >= 2}
    rows = _check_rows_against_kernels(analysis, kernels)
    assert set(rows) == set(kernels)
    for parameter, (row, *more) in rows.items():
        assert not more, parameter  # one row per Flax kernel
        keys = parameter.split("/")
        module = keys[1:-1] if kind == "linen" else keys[:-1]  # linen: drop the 'params' collection
        assert row.name == "/".join(module)


def test_flax_reuse_family_comes_out(flax_run):
    name, _, params, _, analysis = flax_run
    _check_reuse(name, analysis, sum(a.size for a in params.values()))
