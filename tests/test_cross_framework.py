"""Cross-framework auditing: the same weights built in PyTorch, Keras and Flax give the same numbers.

A small CNN (Conv + BatchNorm + ReLU, a residual add, max pooling, global pooling, Dense) and an
MLP are built in each framework, the Keras weights are copied into the PyTorch model (layouts
transposed) and into the Flax linen model (same HWIO / (in, out) layouts), each goes through
irtools' own frontend, and the per-layer spectral metrics, the per-parameter sorted context
counts and the reuse summary are compared. The Flax half runs where jax, flax and jax2onnx are
installed.
"""

import importlib.util

import numpy as np
import pytest

import irtools

torch = pytest.importorskip("torch")
keras = pytest.importorskip("keras")
HAVE_FLAX = all(importlib.util.find_spec(m) is not None for m in ("jax", "flax", "jax2onnx"))

SPECTRAL = ("N", "M", "num_evals", "alpha", "xmin", "D", "sigma", "log_norm", "log_spectral_norm",
            "alpha_weighted", "log_alpha_norm", "stable_rank", "matrix_rank", "num_pl_spikes")
REUSE = ("total_surprisal", "entropy", "expected_spread", "num_params", "num_input_nodes", "num_output_nodes",
         "graph_size", "performance_surprisal", "performance_spread")


def keras_cnn():
    keras.utils.set_random_seed(0)
    x = keras.Input((10, 10, 3))
    h = keras.layers.Conv2D(24, 3, padding="same", name="c1")(x)
    h = keras.layers.BatchNormalization(epsilon=1e-5, name="bn1")(h)
    h = keras.layers.ReLU()(h)
    r = keras.layers.Conv2D(24, 3, padding="same", name="c2")(h)
    r = keras.layers.BatchNormalization(epsilon=1e-5, name="bn2")(r)
    h = keras.layers.ReLU()(keras.layers.Add()([h, r]))
    h = keras.layers.MaxPooling2D(2)(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    out = keras.layers.Dense(12, name="fc")(h)
    model = keras.Model(x, out)
    rng = np.random.default_rng(0)  # trained-looking BatchNorm statistics, not the fresh 0/1
    for name in ("bn1", "bn2"):
        layer = model.get_layer(name)
        layer.set_weights([rng.uniform(0.5, 1.5, 24), rng.normal(size=24), rng.normal(size=24),
                           rng.uniform(0.5, 2.0, 24)])
    return model


class TorchCNN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.bn1 = torch.nn.Conv2d(3, 24, 3, padding=1), torch.nn.BatchNorm2d(24, eps=1e-5)
        self.c2, self.bn2 = torch.nn.Conv2d(24, 24, 3, padding=1), torch.nn.BatchNorm2d(24, eps=1e-5)
        self.fc = torch.nn.Linear(24, 12)

    def forward(self, x):
        h = torch.relu(self.bn1(self.c1(x)))
        h = torch.relu(h + self.bn2(self.c2(h)))
        h = torch.nn.functional.max_pool2d(h, 2)
        return self.fc(h.mean(dim=(2, 3)))


def copy_keras_to_torch(model, net):
    with torch.no_grad():
        for name in ("c1", "c2"):
            kernel, bias = model.get_layer(name).get_weights()
            getattr(net, name).weight.copy_(torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy()))
            getattr(net, name).bias.copy_(torch.from_numpy(bias))
        for name in ("bn1", "bn2"):
            gamma, beta, mean, var = model.get_layer(name).get_weights()
            bn = getattr(net, name)
            bn.weight.copy_(torch.from_numpy(gamma)), bn.bias.copy_(torch.from_numpy(beta))
            bn.running_mean.copy_(torch.from_numpy(mean)), bn.running_var.copy_(torch.from_numpy(var))
        kernel, bias = model.get_layer("fc").get_weights()
        net.fc.weight.copy_(torch.from_numpy(kernel.T.copy()))
        net.fc.bias.copy_(torch.from_numpy(bias))
    return net.eval()


def keras_mlp():
    keras.utils.set_random_seed(1)
    x = keras.Input((20,))
    h = keras.layers.Dense(40, activation="relu", name="d1")(x)
    h = keras.layers.Dense(30, activation="tanh", name="d2")(h)
    return keras.Model(x, keras.layers.Dense(10, name="d3")(h))


def torch_mlp_from(model):
    net = torch.nn.Sequential(torch.nn.Linear(20, 40), torch.nn.ReLU(), torch.nn.Linear(40, 30), torch.nn.Tanh(),
                              torch.nn.Linear(30, 10))
    with torch.no_grad():
        for i, name in zip((0, 2, 4), ("d1", "d2", "d3"), strict=True):
            kernel, bias = model.get_layer(name).get_weights()
            net[i].weight.copy_(torch.from_numpy(kernel.T.copy()))
            net[i].bias.copy_(torch.from_numpy(bias))
    return net.eval()


def flax_cnn_from(model):
    """The Flax linen CNN with the Keras weights: Conv kernels are HWIO and Dense kernels (in, out) in both."""
    from tests.flax_models import CNN

    params, stats = {}, {}
    for name in ("c1", "c2", "fc"):
        kernel, bias = model.get_layer(name).get_weights()
        params[name] = {"kernel": kernel, "bias": bias}
    for name in ("bn1", "bn2"):
        gamma, beta, mean, var = model.get_layer(name).get_weights()
        params[name] = {"scale": gamma, "bias": beta}
        stats[name] = {"mean": mean, "var": var}
    net = CNN(width=params["c1"]["kernel"].shape[-1], classes=params["fc"]["kernel"].shape[-1])
    return net, {"params": params, "batch_stats": stats}


def flax_mlp_from(model):
    import flax.linen as nn

    class MLP(nn.Module):
        @nn.compact
        def __call__(self, x):
            h = nn.relu(nn.Dense(40, name="d1")(x))
            h = nn.tanh(nn.Dense(30, name="d2")(h))
            return nn.Dense(10, name="d3")(h)

    params = {}
    for name in ("d1", "d2", "d3"):
        kernel, bias = model.get_layer(name).get_weights()
        params[name] = {"kernel": kernel, "bias": bias}
    return MLP(), {"params": params}


def flax_model(kind, k):
    """The Flax model with the Keras model `k`'s weights, as an IRModel; outputs checked against JAX."""
    import onnxruntime as ort

    from irtools.frontends.jax import from_flax

    module, variables = flax_cnn_from(k) if kind == "cnn" else flax_mlp_from(k)
    shape = (1, 10, 10, 3) if kind == "cnn" else (1, 20)
    x = np.random.default_rng(2).standard_normal(shape).astype(np.float32)
    proto = from_flax(module, variables, (x,))
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    np.testing.assert_allclose(got, np.asarray(module.apply(variables, x)), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got, np.asarray(k(x)), rtol=1e-4, atol=1e-4)  # and the Keras model's output
    return irtools.load(proto)


def both(kind):
    from irtools.frontends.keras import from_keras
    from irtools.frontends.torch import from_torch

    if kind == "cnn":
        k = keras_cnn()
        t = copy_keras_to_torch(k, TorchCNN())
        k_proto = from_keras(k)
        t_proto = from_torch(t, input_shapes={"x": (1, 3, 10, 10)})
        k_shape = {k_proto.graph.input[0].name: (1, 10, 10, 3)}
    else:
        k = keras_mlp()
        t = torch_mlp_from(k)
        k_proto = from_keras(k)
        t_proto = from_torch(t, input_shapes={"x": (1, 20)})
        k_shape = {k_proto.graph.input[0].name: (1, 20)}
    models = [irtools.load(k_proto, input_shapes=k_shape), irtools.load(t_proto)]
    if HAVE_FLAX:
        models.append(flax_model(kind, k))
    return models


def assert_same_numbers(k_model, t_model, kind):
    a = irtools.analyze(k_model)
    b = irtools.analyze(t_model)
    assert len(a.details) == len(b.details) > 0
    for (_, x), (_, y) in zip(a.details.iterrows(), b.details.iterrows(), strict=True):
        for col in SPECTRAL:
            assert x[col] == pytest.approx(y[col], rel=1e-6), (x["name"], y["name"], col)
    for key in REUSE:
        assert a.reuse[key] == pytest.approx(b.reuse[key], rel=1e-9), key
    # per parameter, the sorted counts are the same (Keras and PyTorch name them differently)
    ka = irtools.run_passes(k_model, ["context-counts"])["context-counts"].counts
    tb = irtools.run_passes(t_model, ["context-counts"])["context-counts"].counts
    sig = lambda counts: sorted(tuple(np.sort(c.log2().ravel()).round(9)) for c in counts.values())  # noqa: E731
    assert sig(ka) == sig(tb)
    assert len(ka) == len(tb) == (14 if kind == "cnn" else 6)


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_same_weights_same_numbers_whatever_the_framework(kind):
    k_model, *others = both(kind)
    assert len(others) == (2 if HAVE_FLAX else 1)
    for other in others:  # PyTorch, then Flax
        assert_same_numbers(k_model, other, kind)
