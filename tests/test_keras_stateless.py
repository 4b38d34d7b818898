"""The Keras frontend's stateless route (`stateless_call` traced with the weights as inputs) against
the frozen route (tf2onnx freezing the variables into constants, whose parameters are identified by
fingerprints): two independent ways of finding which ONNX tensor holds which weight must give the
same ONNX model up to node names, and the same analysis. Also: rows named by Keras layer paths,
built subclassed models, weights the forward pass never reads.
"""

import collections
import json
import os

import numpy as np
import onnxruntime as ort
import pytest
from onnx import numpy_helper

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
pytest.importorskip("tensorflow")
pytest.importorskip("tf2onnx")
keras = pytest.importorskip("keras")

import irtools  # noqa: E402
import irtools.frontends.keras as frontend  # noqa: E402


def mixed_model():
    """Conv+BN, depthwise conv+BN, a Dense on 3-D input, a layer called twice, a nested Sequential."""
    keras.utils.set_random_seed(11)
    layers = keras.layers
    inp = keras.Input((10, 10, 3), name="image")
    x = layers.Conv2D(12, 3, padding="same", use_bias=False, name="stem")(inp)
    x = layers.Activation("relu")(layers.BatchNormalization(name="stem_bn")(x))
    x = layers.DepthwiseConv2D(3, padding="same", name="dw")(x)
    x = layers.BatchNormalization(name="dw_bn")(x)
    x = layers.Reshape((100, 12))(x)
    x = layers.Dense(16, activation="relu", name="tokens")(x)  # MatMul + bias Add on 3-D input
    shared = layers.Dense(16, name="shared")
    x = shared(layers.Activation("tanh")(shared(x)))
    block = keras.Sequential([layers.Dense(12, name="d1"), layers.Dense(12, name="d2")], name="block")
    x = block(layers.GlobalAveragePooling1D()(x))
    return keras.Model(inp, layers.Dense(10, name="head")(x), name="mixed")


def _convert(model, stateless: bool, monkeypatch):
    with monkeypatch.context() as patch:
        if not stateless:
            patch.setattr(frontend, "_stateless", lambda functional: False)
        return frontend.from_keras(model)


def _run(proto, x):
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


@pytest.fixture(scope="module")
def both_routes():
    model = mixed_model()
    with pytest.MonkeyPatch.context() as monkeypatch:
        frozen = _convert(model, False, monkeypatch)
        stateless = _convert(model, True, monkeypatch)
    return model, frozen, stateless


def test_both_routes_give_the_same_onnx_model(both_routes):
    model, frozen, stateless = both_routes
    ops = [collections.Counter(n.op_type for n in p.graph.node) for p in (frozen, stateless)]
    assert ops[0] == ops[1]
    weights = {w.path for w in model.weights}
    inits = [{t.name: numpy_helper.to_array(t) for t in p.graph.initializer} for p in (frozen, stateless)]
    assert weights <= set(inits[0]) and weights <= set(inits[1])
    for name in weights:  # same layout, same values
        np.testing.assert_array_equal(inits[1][name], inits[0][name], err_msg=name)
    others = [sorted((v.shape, v.tobytes()) for k, v in i.items() if k not in weights) for i in inits]
    assert others[0] == others[1]  # the other constants (shapes, axes) under tf2onnx's generated names
    x = np.random.default_rng(11).standard_normal((1, 10, 10, 3)).astype(np.float32)
    np.testing.assert_allclose(_run(stateless, x), model(x).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(_run(stateless, x), _run(frozen, x))
    meta = [{m.key: m.value for m in p.metadata_props if m.key != "irtools.conversion_seconds"} for p in both_routes[1:]]
    assert meta[0] == meta[1]


def test_both_routes_give_the_same_analysis(both_routes):
    _, frozen, stateless = both_routes
    analyses = [irtools.analyze(irtools.load(p), metrics="spectral,reuse") for p in (frozen, stateless)]
    rows = [a.details.set_index("parameter") for a in analyses]
    assert list(rows[0].index) == list(rows[1].index) and len(rows[0]) >= 6
    for column in ("N", "M", "num_evals", "lambda_max", "alpha", "D", "norm", "stable_rank"):
        np.testing.assert_array_equal(rows[0][column].to_numpy(), rows[1][column].to_numpy(), err_msg=column)
    assert [s["parameter"] for s in analyses[0].skipped] == [s["parameter"] for s in analyses[1].skipped]
    reuse = [{p["name"]: p for p in a.reuse["parameters"]} for a in analyses]
    assert reuse[0] == reuse[1]
    assert analyses[0].reuse["total_surprisal"] == analyses[1].reuse["total_surprisal"]


def test_rows_are_named_by_keras_layer_paths(both_routes):
    """Each row's name is its layer's Keras path (the weight path less the weight's own name)."""
    _, _, stateless = both_routes
    analysis = irtools.analyze(irtools.load(stateless), metrics="spectral")
    names = dict(zip(analysis.details["parameter"], analysis.details["name"]))
    assert names["stem/kernel"] == "stem" and names["dw/kernel"] == "dw" and names["head/kernel"] == "head"
    assert names["block/d1/kernel"] == "block/d1" and names["tokens/kernel"] == "tokens"
    assert {n.name for n in stateless.graph.node if "tokens/bias" in n.input} == {"tokens/Add"}


def test_a_built_subclassed_model_needs_no_input_shape():
    class Net(keras.Model):
        def __init__(self):
            super().__init__(name="net")
            self.conv = keras.layers.Conv2D(4, 3, name="conv")
            self.fc = keras.layers.Dense(2, name="fc")

        def call(self, x):
            return self.fc(keras.ops.mean(self.conv(x), axis=(1, 2)))

    keras.utils.set_random_seed(12)
    net = Net()
    x = np.random.default_rng(12).standard_normal((1, 7, 7, 3)).astype(np.float32)
    expected = net(x).numpy()
    proto = frontend.from_keras(net)  # built on (1, 7, 7, 3): that is its input
    assert [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim] == [1, 7, 7, 3]
    np.testing.assert_allclose(_run(proto, x), expected, rtol=1e-5, atol=1e-6)


class Unused(keras.layers.Layer):
    """A layer with a weight its forward pass never reads."""

    def build(self, shape):
        self.w = self.add_weight(shape=(shape[-1], 2), name="w")
        self.spare = self.add_weight(shape=(3, 3), name="spare")

    def call(self, x):
        return keras.ops.matmul(x, self.w)


def test_a_weight_the_forward_pass_never_reads_is_a_fact_not_an_error():
    """Issue 20: the stateless route knows a weight input without a reader is never read; the weight
    stays a parameter (an initializer no node reads, its values as Keras holds them) and is listed
    as unread with its shape. The frozen route knows it from the traced TensorFlow function, which
    captures no variable it never reads: the same initializer, the same metadata."""
    keras.utils.set_random_seed(13)
    inp = keras.Input((4,))
    model = keras.Model(inp, Unused(name="unused")(inp))
    proto = frontend.from_keras(model)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["irtools.unread_parameters"]) == {"unused/spare": [3, 3]}
    assert "unused/spare" in json.loads(meta["irtools.parameters"])
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    np.testing.assert_array_equal(inits["unused/spare"], model.get_layer("unused").spare.numpy())
    assert not any("unused/spare" in n.input for n in proto.graph.node)
    x = np.random.default_rng(13).standard_normal((1, 4)).astype(np.float32)
    np.testing.assert_allclose(_run(proto, x), model(x).numpy(), rtol=1e-5, atol=1e-6)
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setattr(frontend, "_stateless", lambda functional: False)
        frozen = frontend.from_keras(model)
        frozen_meta = {p.key: p.value for p in frozen.metadata_props}
        assert frozen_meta["irtools.unread_parameters"] == meta["irtools.unread_parameters"]
        assert frozen_meta["irtools.unread_layouts"] == meta["irtools.unread_layouts"]
        frozen_inits = {t.name: numpy_helper.to_array(t) for t in frozen.graph.initializer}
        np.testing.assert_array_equal(frozen_inits["unused/spare"], inits["unused/spare"])
        np.testing.assert_allclose(_run(frozen, x), model(x).numpy(), rtol=1e-5, atol=1e-6)
        # where the capture test says nothing (no weight captured), a lost weight is still an error
        monkeypatch.setattr(frontend, "_uncaptured_weights", lambda *a: set())
        with pytest.raises(irtools.IrtoolsError, match=r"lost 1 Keras weight\(s\).*unused/spare"):
            frontend.from_keras(model)