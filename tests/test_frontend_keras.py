"""Keras frontend: the IR's parameter set is exactly `model.weights`, outputs match onnxruntime."""

import json
import os
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

import irtools  # noqa: E402
from irtools.frontends.keras import conversion_patches, from_keras, load_keras  # noqa: E402
from irtools.ir.parameters import DECLARED_PARAMETERS_KEY  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def small_cnn(size=12):
    """Conv2D + BatchNormalization + swish + DepthwiseConv2D + residual Add + GAP + Dense."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((size, size, 3), name="image")
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(inp)
    x = keras.layers.BatchNormalization(name="stem_bn")(x)
    x = keras.layers.Activation("swish", name="stem_act")(x)
    y = keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw")(x)
    y = keras.layers.BatchNormalization(name="dw_bn")(y)
    y = keras.layers.Activation("swish")(y)
    y = keras.layers.Conv2D(8, 1, padding="same", name="project")(y)  # zero bias at init
    x = keras.layers.Add(name="residual")([x, y])
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    out = keras.layers.Dense(4, activation="softmax", name="head")(x)
    return keras.Model(inp, out)


def mlp():
    keras.utils.set_random_seed(1)
    inp = keras.Input((6,), name="features")
    x = keras.layers.Dense(5, activation="relu", name="hidden")(inp)
    x = keras.layers.Dense(3, name="out")(x)
    return keras.Model(inp, x)


def run_onnx(proto, x):
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def assert_parameters_are_model_weights(ir_model, model):
    expected = {w.path: int(np.prod(w.shape)) for w in model.weights}
    got = {p.name: p.numel for p in ir_model.parameters}
    assert got == expected
    assert len(ir_model.parameters) == len(model.weights)


def test_small_cnn_keeps_model_weights_and_outputs():
    model = small_cnn()
    proto = from_keras(model)
    ir_model = irtools.load(proto)
    assert_parameters_are_model_weights(ir_model, model)
    # BatchNormalization stays one ONNX node with its four Keras vectors, never folded into the conv.
    bns = [n for n in proto.graph.node if n.op_type == "BatchNormalization"]
    assert sorted(list(n.input[1:]) for n in bns) == [
        ["dw_bn/gamma", "dw_bn/beta", "dw_bn/moving_mean", "dw_bn/moving_variance"],
        ["stem_bn/gamma", "stem_bn/beta", "stem_bn/moving_mean", "stem_bn/moving_variance"],
    ]
    # the depthwise kernel is stored transposed to (C, 1, kh, kw) under its Keras name
    assert ir_model.parameter("dw/kernel").shape == (8, 1, 3, 3)
    # the all-zero bias and the fresh (equal) batch-norm vectors survive as separate parameters
    assert not np.any(model.get_layer("project").bias.numpy())
    metadata = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(metadata[DECLARED_PARAMETERS_KEY]) == [w.path for w in model.weights]
    x = np.random.default_rng(0).standard_normal((1, 12, 12, 3)).astype(np.float32)
    np.testing.assert_allclose(run_onnx(proto, x), model(x).numpy(), rtol=1e-5, atol=1e-6)


def test_values_are_the_keras_weights_and_the_model_is_unchanged():
    model = small_cnn()
    before = [w.numpy().copy() for w in model.weights]
    proto = from_keras(model)
    for w, b in zip(model.weights, before):
        np.testing.assert_array_equal(w.numpy(), b)  # fingerprints were taken out again
    stored = {i.name: np.frombuffer(i.raw_data, np.float32) if i.raw_data else np.array(i.float_data, np.float32)
              for i in proto.graph.initializer}
    for w in model.weights:
        np.testing.assert_array_equal(np.sort(stored[w.path]), np.sort(w.numpy().ravel()))
    kernel = model.get_layer("stem_conv").kernel.numpy()  # (kh, kw, in, out) -> ONNX (out, in, kh, kw)
    np.testing.assert_array_equal(stored["stem_conv/kernel"].reshape(8, 3, 3, 3), kernel.transpose(3, 2, 0, 1))


def test_mlp_and_reuse_pass():
    model = mlp()
    ir_model = load_keras(model)
    assert_parameters_are_model_weights(ir_model, model)
    reuse = irtools.run_passes(ir_model, ["reuse"])["reuse"]
    # 6 -> 5 -> 3 dense: hidden kernel 3 contexts each, hidden bias 3, out kernel and bias 1
    assert reuse["num_params"] == 6 * 5 + 5 + 5 * 3 + 3
    counts = ir_model.results["context-counts"].counts
    assert np.all(counts["hidden/kernel"].log2() == np.log2(3))
    assert np.all(counts["out/bias"].log2() == 0)
    assert reuse["num_input_nodes"] == 6 and reuse["num_output_nodes"] == 3
    x = np.random.default_rng(1).standard_normal((1, 6)).astype(np.float32)
    np.testing.assert_allclose(run_onnx(from_keras(model), x), model(x).numpy(), rtol=1e-5, atol=1e-6)


def test_small_cnn_context_counts():
    model = small_cnn()
    ir_model = irtools.load(from_keras(model, (1, 12, 12, 3)))
    reuse = irtools.run_passes(ir_model, ["reuse"])["reuse"]
    counts = ir_model.results["context-counts"].counts
    assert reuse["num_params"] == sum(int(np.prod(w.shape)) for w in model.weights)
    assert reuse["zero_count_scalars"] == 0
    assert reuse["num_input_nodes"] == 12 * 12 * 3 and reuse["num_output_nodes"] == 4
    assert abs(reuse["entropy"] + reuse["expected_spread"] - reuse["log2_total_contexts"]) < 1e-9
    # swish counts once: every BN vector scalar of the stem gets the same count, that of the
    # stem output elements of its channel
    stem = counts["stem_bn/gamma"].log2()
    assert np.allclose(stem, stem[0])
    for name in ("stem_bn/beta", "stem_bn/moving_mean", "stem_bn/moving_variance"):
        np.testing.assert_array_equal(counts[name].log2(), stem)


def test_input_shape_forms_and_dynamic_input():
    model = mlp()
    for shape in [(1, 6), (6,), {"features": (1, 6)}, [(1, 6)]]:
        proto = from_keras(model, shape)
        assert [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim] == [1, 6]
    keras.utils.set_random_seed(0)
    inp = keras.Input((None, None, 3))
    dyn = keras.Model(inp, keras.layers.Conv2D(2, 3)(inp))
    with pytest.raises(irtools.IrtoolsError, match="dynamic shape"):
        from_keras(dyn)
    ir_model = load_keras(dyn, (1, 7, 7, 3))
    assert {p.name for p in ir_model.parameters} == {w.path for w in dyn.weights}


def test_shared_layer_is_one_parameter():
    keras.utils.set_random_seed(2)
    inp = keras.Input((6, 6, 4))
    conv = keras.layers.Conv2D(4, 3, padding="same", name="shared")
    x = conv(conv(inp))
    out = keras.layers.Dense(2, name="head")(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inp, out)
    proto = from_keras(model)
    ir_model = irtools.load(proto)
    assert_parameters_are_model_weights(ir_model, model)
    x = np.random.default_rng(2).standard_normal((1, 6, 6, 4)).astype(np.float32)
    np.testing.assert_allclose(run_onnx(proto, x), model(x).numpy(), rtol=1e-5, atol=1e-6)
    uses = [n for n in proto.graph.node if "shared/kernel" in n.input]
    assert len(uses) == 2
    irtools.run_passes(ir_model, ["reuse"])


def test_sequential_and_subclassed_models():
    keras.utils.set_random_seed(3)
    seq = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3, activation="relu"), keras.layers.Dropout(0.5),
                            keras.layers.Dense(2)])

    class Sub(keras.Model):
        def __init__(self):
            super().__init__()
            self.conv = keras.layers.Conv2D(4, 3, padding="same")
            self.bn = keras.layers.BatchNormalization()
            self.head = keras.layers.Dense(2)

        def call(self, x):
            x = keras.activations.swish(self.bn(self.conv(x)))
            return self.head(keras.ops.mean(x, axis=(1, 2)))

    sub = Sub()  # not built: from_keras builds it on input_shape
    for model, shape in [(seq, None), (sub, (1, 6, 6, 3))]:
        proto = from_keras(model, shape)
        ir_model = irtools.load(proto)
        assert_parameters_are_model_weights(ir_model, model)
        x = np.random.default_rng(4).standard_normal(shape or (1, 5)).astype(np.float32)
        np.testing.assert_allclose(run_onnx(proto, x), model(x).numpy(), rtol=1e-5, atol=1e-6)
        irtools.run_passes(ir_model, ["reuse"])
    with pytest.raises(irtools.IrtoolsError, match="no defined inputs"):
        from_keras(Sub())


class Tied(keras.layers.Layer):
    """Uses its weight as it is and transposed: one parameter, two views of it in ONNX."""

    def build(self, shape):
        self.w = self.add_weight(shape=(shape[-1], 3), name="w")

    def call(self, x):
        return keras.ops.matmul(keras.ops.matmul(x, self.w), keras.ops.transpose(self.w))


class Scaled(keras.layers.Layer):
    """Computes with its weight before using it: the conversion folds it into a new constant."""

    def build(self, shape):
        self.w = self.add_weight(shape=(shape[-1], 3), name="w")

    def call(self, x):
        return keras.ops.matmul(x, self.w * 2.0)


def test_weight_used_in_two_layouts_is_one_parameter():
    keras.utils.set_random_seed(5)
    inp = keras.Input((4,))
    model = keras.Model(inp, Tied(name="tied")(inp))
    proto = from_keras(model)
    ir_model = irtools.load(proto)
    assert [p.name for p in ir_model.parameters] == ["tied/w"]
    x = np.random.default_rng(5).standard_normal((1, 4)).astype(np.float32)
    np.testing.assert_allclose(run_onnx(proto, x), model(x).numpy(), rtol=1e-5, atol=1e-6)
    irtools.run_passes(ir_model, ["reuse"])
    # w[i, j] reaches the 4 outputs through h_j, and output i once more through w^T: 5 contexts
    np.testing.assert_allclose(ir_model.results["context-counts"].counts["tied/w"].log2(), np.log2(5))


def test_arithmetic_on_a_weight_keeps_the_weight():
    """`x @ (w * 2)`: traced with the weights as inputs, `w * 2` stays a computation on the parameter
    (a frozen conversion folded it into a constant that no longer says which weight it was)."""
    keras.utils.set_random_seed(6)
    inp = keras.Input((4,))
    model = keras.Model(inp, Scaled(name="scaled")(inp))
    proto = from_keras(model)
    ir_model = irtools.load(proto)
    assert_parameters_are_model_weights(ir_model, model)
    assert any(n.op_type == "Mul" and "scaled/w" in n.input for n in proto.graph.node)
    x = np.random.default_rng(6).standard_normal((1, 4)).astype(np.float32)
    np.testing.assert_allclose(run_onnx(proto, x), model(x).numpy(), rtol=1e-5, atol=1e-6)


def test_frozen_conversion_refuses_a_weight_folded_into_a_constant(monkeypatch):
    """The frozen route (a SavedModel's traced graph) fingerprints the weights: a constant computed
    from one is an error naming the cause, and the real values are put back."""
    import irtools.frontends.keras as frontend

    monkeypatch.setattr(frontend, "_stateless", lambda functional: False)
    keras.utils.set_random_seed(6)
    inp = keras.Input((4,))
    model = keras.Model(inp, Scaled(name="scaled")(inp))
    before = model.weights[0].numpy().copy()
    with pytest.raises(irtools.IrtoolsError, match="computed from weights"):
        from_keras(model)
    np.testing.assert_array_equal(model.weights[0].numpy(), before)  # real values are back


def test_negative_constants_of_the_model_are_not_mistaken_for_weights():
    """Every negative float32 decodes to *some* fingerprint index; a real constant such as the
    offset -1 of Rescaling (or a -0.5 array) must stay a constant, not fail the conversion."""
    keras.utils.set_random_seed(7)
    inp = keras.Input((6,))
    x = keras.layers.Rescaling(scale=1 / 127.5, offset=-1.0)(inp)
    x = keras.layers.Dense(5, name="fc")(x)
    out = keras.layers.Lambda(lambda t: t - keras.ops.convert_to_tensor(np.full(5, 0.5, np.float32)))(x)
    model = keras.Model(inp, out)
    proto = from_keras(model)
    ir_model = irtools.load(proto)
    assert_parameters_are_model_weights(ir_model, model)
    data = np.random.default_rng(7).uniform(0, 255, (1, 6)).astype(np.float32)
    np.testing.assert_allclose(run_onnx(proto, data), model(data).numpy(), rtol=1e-5, atol=1e-5)


def test_patches_are_restored():
    from tf2onnx import tf_loader
    from tf2onnx.optimizer import back_to_back_optimizer

    bn, grappler = tf.nn.batch_normalization, tf_loader.tf_optimize_grappler
    assert ("Conv", "BatchNormalization") in back_to_back_optimizer._func_map
    with pytest.raises(RuntimeError):
        with conversion_patches():
            assert tf.nn.batch_normalization is not bn
            assert tf_loader.tf_optimize_grappler is not grappler
            assert ("Conv", "BatchNormalization") not in back_to_back_optimizer._func_map
            raise RuntimeError("boom")
    assert tf.nn.batch_normalization is bn and tf_loader.tf_optimize_grappler is grappler
    assert ("Conv", "BatchNormalization") in back_to_back_optimizer._func_map
    from_keras(small_cnn())
    assert tf.nn.batch_normalization is bn and tf_loader.tf_optimize_grappler is grappler


def test_missing_tensorflow_is_a_one_line_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow", None)
    with pytest.raises(irtools.IrtoolsError, match=r"TensorFlow is not installed: pip install irtools\[tf\]"):
        from_keras(object())


def test_importing_the_frontend_does_not_import_tensorflow():
    for module in ("irtools.frontends.keras", "irtools.frontends.keras_files"):  # either first: no import cycle
        code = f"import sys, irtools, {module}; assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules"
        subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


# The public reference implementation of the reusability prior (gozepolat/priors,
# reusability/analysis, run unchanged on its EfficientNetV2-B0 plan at default_size=32):
# S_G, H, E, P_G, P'_G and N_G. At 32x32 the last stages have 1x1 maps, so 67,872 kernel
# taps fall only into padding: both leave them out of N_G.
REFERENCE_B0_32 = {
    "total_surprisal": 3329816095.3745193,
    "entropy": 10.234381964813911,
    "expected_spread": 621.4453398794299,
    "performance_surprisal": 20.450970162020308,
    "performance_spread": 20.865942425004718,
    "num_params": 7132440,
}


def test_efficientnetv2b0_matches_the_reference_implementation():
    keras.utils.set_random_seed(0)
    model = keras.applications.EfficientNetV2B0(weights=None, include_preprocessing=False, input_shape=(32, 32, 3))
    proto = from_keras(model)
    ir_model = irtools.load(proto)
    assert_parameters_are_model_weights(ir_model, model)
    assert sum(p.numel for p in ir_model.parameters) == 7_200_312
    reuse = irtools.run_passes(ir_model, ["reuse"])["reuse"]
    assert reuse["zero_count_scalars"] == 7_200_312 - 7_132_440
    assert reuse["num_input_nodes"] == 32 * 32 * 3 and reuse["num_output_nodes"] == 1000
    for key, expected in REFERENCE_B0_32.items():
        assert reuse[key] == pytest.approx(expected, rel=1e-9), key
    x = np.random.default_rng(3).random((1, 32, 32, 3), dtype=np.float32)
    np.testing.assert_allclose(run_onnx(proto, x), model(x).numpy(), rtol=1e-4, atol=1e-6)


# -- model files: .keras, .h5, SavedModel -------------------------------------------------------
@pytest.fixture(scope="module")
def keras_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("keras_files")
    model = small_cnn()
    model.save(str(d / "cnn.keras"))
    model.save(str(d / "cnn.h5"))
    model.export(str(d / "cnn_saved_model"), verbose=False)
    return model, {"keras": str(d / "cnn.keras"), "h5": str(d / "cnn.h5"), "saved_model": str(d / "cnn_saved_model")}


@pytest.mark.parametrize("kind", ["keras", "h5", "saved_model"])
def test_model_files_keep_model_weights_bit_equal_and_outputs(keras_files, kind):
    from irtools.frontends.keras import from_keras_file

    model, paths = keras_files
    proto = from_keras_file(paths[kind], trust=kind == "saved_model")
    # a SavedModel's variables carry TensorFlow's names: the Keras path with "/" -> "_"
    name = (lambda w: w.path.replace("/", "_")) if kind == "saved_model" else (lambda w: w.path)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert sorted(json.loads(meta[DECLARED_PARAMETERS_KEY])) == sorted(name(w) for w in model.weights)
    ir_model = irtools.load(proto)
    assert {p.name: p.numel for p in ir_model.parameters} == {name(w): int(np.prod(w.shape)) for w in model.weights}
    stored = {i.name: np.frombuffer(i.raw_data, np.float32) if i.raw_data else np.array(i.float_data, np.float32)
              for i in proto.graph.initializer}
    for w in model.weights:  # the same scalars, bit for bit (layouts may be permuted)
        assert np.sort(stored[name(w)]).tobytes() == np.sort(w.numpy().ravel()).tobytes(), w.path
    x = np.random.default_rng(2).standard_normal((1, 12, 12, 3)).astype(np.float32)
    np.testing.assert_allclose(run_onnx(proto, x), model(x).numpy(), rtol=1e-5, atol=1e-6)


def test_model_files_through_the_cli(keras_files, tmp_path):
    from click.testing import CliRunner

    from irtools.cli import main

    model, paths = keras_files
    expected = irtools.analyze(model)  # the in-memory model
    for kind in ("keras", "h5"):
        res = CliRunner().invoke(main, ["analyze", paths[kind], "--format", "json"])
        assert res.exit_code == 0, res.output
        data = json.loads(res.stdout)
        assert [(r["parameter"], r["alpha"]) for r in data["layers"]] == \
            list(zip(expected.details["parameter"], expected.details["alpha"]))
        assert data["reuse"]["num_params"] == expected.reuse["num_params"] == sum(
            int(np.prod(w.shape)) for w in model.weights)
    out = tmp_path / "sm.onnx"
    for command in (["convert", paths["saved_model"], "-o", str(out)], ["analyze", paths["saved_model"]]):
        res = CliRunner().invoke(main, command)  # a TensorFlow graph runs ops: only with --trust
        assert res.exit_code == 2 and res.output.count("\n") == 1 and "refused" in res.output, res.output
    assert not out.exists()
    res = CliRunner().invoke(main, ["convert", paths["saved_model"], "--trust", "-o", str(out)])
    assert res.exit_code == 0 and out.exists(), res.output


def test_lambda_layer_code_is_refused(tmp_path):
    """safe_mode: a Lambda layer's Python bytecode in a .keras or legacy .h5 file is never deserialized."""
    import warnings

    from click.testing import CliRunner

    from irtools.cli import main

    inp = keras.Input((4,))
    model = keras.Model(inp, keras.layers.Lambda(lambda t: t * 2.0)(keras.layers.Dense(3, name="d")(inp)))
    for suffix in (".keras", ".h5"):
        path = str(tmp_path / f"lam{suffix}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.save(path)
        for command in (["analyze", path], ["convert", path, "-o", str(tmp_path / "o.onnx")]):
            res = CliRunner().invoke(main, command)
            assert res.exit_code == 2 and res.output.count("\n") == 1, res.output
            assert res.output.startswith("irtools: error:") and "lambda" in res.output.lower()
    assert not (tmp_path / "o.onnx").exists()


def grouped_cnn():
    """ConvNeXt's depthwise form Conv2D(groups=C), a 2-group Conv2D and an input Normalization."""
    keras.utils.set_random_seed(3)
    inp = keras.Input((10, 10, 4), name="image")
    norm = keras.layers.Normalization(axis=-1, name="norm")  # adapted statistics: weights, as in EfficientNet
    x = norm(inp)
    x = keras.layers.Conv2D(4, 7, padding="same", groups=4, name="dw7")(x)
    x = keras.layers.Conv2D(8, 3, padding="same", groups=2, name="g2")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inp, keras.layers.Dense(3, name="head")(x))
    norm.adapt(np.random.default_rng(3).standard_normal((16, 10, 10, 4)).astype(np.float32) * 2 + 1)
    return model


def test_grouped_convs_convert_and_every_kernel_is_analysed():
    """Keras runs grouped convs through XLA, which tf2onnx cannot convert (it left the kernel inside
    an unsupported node and the spectral pass silently lost it)."""
    model = grouped_cnn()
    proto = from_keras(model)
    x = np.random.default_rng(0).standard_normal((1, 10, 10, 4)).astype(np.float32)
    np.testing.assert_allclose(run_onnx(proto, x), model(x).numpy(), rtol=1e-4, atol=1e-5)
    groups = {n.input[1]: next(a.i for a in n.attribute if a.name == "group") for n in proto.graph.node
              if n.op_type == "Conv"}
    assert groups == {"dw7/kernel": 4, "g2/kernel": 2}
    weights = irtools.run_passes(irtools.load(proto), ["weights"])["weights"]
    layers = {layer.parameter: layer for layer in weights.layers}
    assert set(layers) == {"dw7/kernel", "g2/kernel", "head/kernel"}
    assert (layers["dw7/kernel"].N, layers["dw7/kernel"].M, layers["dw7/kernel"].rf) == (4, 1, 49)
    (w,) = [w.numpy() for w in model.weights if w.path == "dw7/kernel"]  # (7, 7, 1, 4)
    mats = layers["dw7/kernel"].matrices()
    np.testing.assert_array_equal(mats[0][:, 0], w[0, 0, 0, :])


def test_normalization_statistics_are_structural_constants():
    """Keras' Normalization copies mean and variance into constants when built: the forward pass
    never reads the variables, so they are declared structural, with the reason, not an error."""
    from irtools.frontends.keras import STRUCTURAL_WEIGHTS_KEY

    model = grouped_cnn()
    proto = from_keras(model)
    meta = {p.key: p.value for p in proto.metadata_props}
    structural = json.loads(meta[STRUCTURAL_WEIGHTS_KEY])
    float_weights = {w.path for w in model.weights if np.dtype(w.dtype).kind == "f"}
    norm = {w.path for w in model.get_layer("norm").weights if np.dtype(w.dtype).kind == "f"}
    assert set(structural) == norm and all("Normalization" in r for r in structural.values())
    assert set(json.loads(meta[DECLARED_PARAMETERS_KEY])) == float_weights - norm


def test_an_op_tf2onnx_leaves_unconverted_is_an_error():
    """With the grouped-conv patch undone, the XLA call stays a TF op: a one-line error, not a model."""
    import keras.src.backend.tensorflow.nn as keras_nn

    original = keras_nn.conv
    model = grouped_cnn()
    with pytest.MonkeyPatch.context() as mp:
        import irtools.frontends.keras_patches as patches

        mp.setattr(patches, "_plain_conv", lambda tf, nn: original)
        with pytest.raises(irtools.IrtoolsError, match=r"could not convert TensorFlow op\(s\) (Stateful)?PartitionedCall"):
            from_keras(model)


def _cli(args, debug=False):
    """irtools in a child process with the user's environment (no TF_CPP_MIN_LOG_LEVEL of ours)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TF_CPP", "ABSL"))}
    return subprocess.run([sys.executable, "-m", "irtools", *args, *(["--debug"] if debug else [])],
                          capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)


def test_a_full_h5_model_with_a_lambda_layer_fails_on_one_line(tmp_path):
    """TensorFlow's C++ log lines (oneDNN, the CUDA stub, absl's "before InitializeLog") and
    absl's Python warnings printed 5 lines before the error (issue #23): one voice on stderr.
    --debug shows TensorFlow's own lines again."""
    inp = keras.Input((4,))
    x = keras.layers.Lambda(lambda t: t * 2)(keras.layers.Dense(3)(inp))
    path = str(tmp_path / "lambda.h5")
    keras.Model(inp, x).save(path)
    proc = _cli(["analyze", path])
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("irtools: error: "), proc.stderr
    assert "Lambda" in proc.stderr
    debug = _cli(["analyze", path], debug=True)
    assert debug.returncode != 0 and len(debug.stderr.splitlines()) > 1


def test_native_stderr_capture_passes_irtools_lines_and_drops_the_rest(capfd):
    from irtools.frontends.keras import native_stderr_captured

    argv, sys.argv = sys.argv, ["irtools"]
    try:
        with native_stderr_captured():
            os.write(2, b"I0000 port.cc:153] oneDNN custom operations are on\n")
            os.write(2, b"irtools: note: kept\n")
    finally:
        sys.argv = argv
    assert capfd.readouterr().err == "irtools: note: kept\n"


def test_every_patch_in_the_table_is_applied_and_restored_even_on_error():
    """`CONVERSION_PATCHES` and the weight-arithmetic rows: inside, each target's attribute (or
    key) is the replacement; after an exception, every one is the original object again."""
    import contextlib

    from irtools.frontends import keras as kf

    rows = (*kf.CONVERSION_PATCHES, *kf._weight_arithmetic_patches(16))
    missing = object()
    before = []
    for row in rows:
        target = row.target(tf)
        if target is None:
            before.append(None)
            continue
        before.append(target.get(row.name, missing) if isinstance(target, dict) else getattr(target, row.name))
    with pytest.raises(RuntimeError, match="boom"), contextlib.ExitStack() as stack:
        kf._apply(stack, rows, tf)
        for row, old in zip(rows, before, strict=True):
            target = row.target(tf)
            if target is None:
                continue
            now = target.get(row.name, missing) if isinstance(target, dict) else getattr(target, row.name)
            assert (now is missing) if row.make is kf.REMOVE else (now is not old), row.why
        raise RuntimeError("boom")
    for row, old in zip(rows, before, strict=True):
        target = row.target(tf)
        if target is not None:
            assert (target.get(row.name, missing) if isinstance(target, dict) else getattr(target, row.name)) is old


def test_shared_frontend_helpers_have_modules_of_their_own():
    """The fingerprint codec round-trips element indices; jax and keras use the same objects."""
    from irtools.frontends import _fingerprint as fp
    from irtools.frontends import _onnx_edit as edit
    from irtools.frontends import jax as jf
    from irtools.frontends import keras as kf

    class W:
        shape = (3, 2)

    arrays = list(fp.fingerprint_arrays([W(), W()], [0, 6, 12]))
    assert [a.shape for a in arrays] == [(3, 2), (3, 2)]
    np.testing.assert_array_equal(fp.decode(arrays[1]).reshape(-1), np.arange(6, 12))
    assert fp.decode(np.ones(3, np.float32)) is None
    assert jf.fingerprint_occurrences is fp.fingerprint_occurrences and jf.rewrite is edit.rewrite
    assert kf._rename_values is edit.rename_values  # the alias frontends.torch still imports
