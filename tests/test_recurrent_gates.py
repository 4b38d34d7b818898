"""Recurrent weights as their gates on every route: Keras' LSTM / GRU kernels, which its graph computes as one
(in, gates x units) matrix, are analysed gate by gate, as ONNX's LSTM / GRU ops (PyTorch's export) give them.

The independent truths: the same weights in PyTorch (its own LSTM / GRU, exported to ONNX's recurrent ops, whose
gate rule is separate code), and each gate's block of the Keras weight cut by hand with numpy.
"""

import numpy as np
import pytest

import irtools
from irtools.ir.fused import RECURRENT_GATES_KEY, recurrent_gates, split_gates
from irtools.ir.layers import WeightLayer

SPECTRAL = ("N", "M", "num_evals", "alpha", "xmin", "D", "sigma", "log_norm", "log_spectral_norm", "alpha_weighted",
            "log_alpha_norm", "stable_rank", "matrix_rank", "num_pl_spikes")
T, I, H = 5, 12, 16


def _keras():
    return pytest.importorskip("keras")


def _torch_rows(rnn, head):
    torch = pytest.importorskip("torch")

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn, self.fc = rnn, head

        def forward(self, x):
            return self.fc(self.rnn(x)[0][:, -1])

    result = irtools.analyze((Net().eval(), (torch.randn(1, T, I),)), metrics=["spectral"])
    # `rnn.weight_ih_l0.i`: torch's tensor and its gate letter (torch's g and n are Keras' c and h)
    return {("kernel" if "weight_ih" in r["name"] else "recurrent_kernel", {"g": "c", "n": "h"}.get(r["name"][-1],
                                                                                                r["name"][-1])): r
            for r in result.layers if r["name"].startswith("rnn.")}


def _keras_rows(model):
    result = irtools.analyze(model, metrics=["spectral"])
    return {tuple(r["name"].rsplit("/", 1)[1].split(".")): r for r in result.layers if "/" in r["name"]}


def _assert_same(keras_rows, torch_rows):
    assert set(keras_rows) == set(torch_rows)
    for key, k in keras_rows.items():
        t = torch_rows[key]
        assert k["layer_type"] == t["layer_type"]
        for col in SPECTRAL:
            assert k[col] == pytest.approx(t[col], rel=1e-6), (key, col)


def test_keras_lstm_gates_are_torch_lstm_gates():
    keras, torch = _keras(), pytest.importorskip("torch")
    torch.manual_seed(0)
    lstm, fc = torch.nn.LSTM(I, H, batch_first=True), torch.nn.Linear(H, 3)
    x = keras.Input((T, I))
    layer = keras.layers.LSTM(H, name="lstm")
    model = keras.Model(x, keras.layers.Dense(3, name="fc")(layer(x)))
    # torch's (4H, in) gates i, f, g, o are Keras' (in, 4H) gates i, f, c, o: the same matrices, transposed
    layer.set_weights([lstm.weight_ih_l0.detach().numpy().T, lstm.weight_hh_l0.detach().numpy().T,
                       (lstm.bias_ih_l0 + lstm.bias_hh_l0).detach().numpy()])
    rows = _keras_rows(model)
    assert sorted(rows) == sorted((w, g) for w in ("kernel", "recurrent_kernel") for g in "ifco")
    assert [r["name"] for r in rows.values()][:4] == [f"lstm/lstm_cell/kernel.{g}" for g in "ifco"]  # Keras' order
    _assert_same(rows, _torch_rows(lstm, fc))


def test_keras_gru_gates_are_torch_gru_gates():
    keras, torch = _keras(), pytest.importorskip("torch")
    torch.manual_seed(1)
    gru, fc = torch.nn.GRU(I, H, batch_first=True), torch.nn.Linear(H, 3)
    x = keras.Input((T, I))
    layer = keras.layers.GRU(H, name="gru")  # reset_after=True: torch's formulation
    model = keras.Model(x, keras.layers.Dense(3, name="fc")(layer(x)))

    def keras_order(w):  # torch's r, z, n blocks as Keras' z, r, h
        r, z, n = np.split(w.detach().numpy(), 3)
        return np.concatenate([z, r, n]).T

    bias = np.stack([keras_order(gru.bias_ih_l0[:, None])[0], keras_order(gru.bias_hh_l0[:, None])[0]])
    layer.set_weights([keras_order(gru.weight_ih_l0), keras_order(gru.weight_hh_l0), bias])
    rows = _keras_rows(model)
    assert sorted(rows) == sorted((w, g) for w in ("kernel", "recurrent_kernel") for g in "zrh")
    _assert_same(rows, _torch_rows(gru, fc))


@pytest.mark.parametrize("wrap", ["bidirectional", "rnn_cell", "gru_reset_before", "square"])
def test_each_gate_row_is_its_block_of_the_keras_weight(wrap):
    keras = _keras()
    keras.utils.set_random_seed(2)
    x = keras.Input((T, 4 * H if wrap == "square" else I))  # square: a (4H, 4H) kernel, both axes gates x units
    if wrap == "square":
        y = keras.layers.LSTM(H, name="lstm")(x)
    elif wrap == "bidirectional":
        y = keras.layers.Bidirectional(keras.layers.LSTM(H), name="bi")(x)
    elif wrap == "rnn_cell":
        y = keras.layers.RNN(keras.layers.LSTMCell(H), name="rnn")(x)
    else:  # the recurrent kernel read as two slices: one layer of the whole weight, then its gates
        y = keras.layers.GRU(H, reset_after=False, name="gru")(x)
    model = keras.Model(x, y)
    from irtools.frontends.keras import load_keras

    weights = irtools.run_passes(load_keras(model), ["weights"])["weights"]
    values = {w.path: np.asarray(w.numpy(), dtype=np.float64) for w in model.weights}
    kernels = [p for p in values if p.endswith("kernel")]
    assert len(kernels) == (4 if wrap == "bidirectional" else 2)
    seen = set()
    for layer in weights.layers:
        letters = "zrh" if wrap == "gru_reset_before" else "ifco"
        gate = layer.name.rsplit(".", 1)[1]
        assert layer.layer_type == ("gru" if letters == "zrh" else "lstm") and gate in letters
        g = letters.index(gate)
        expected = values[layer.parameter][:, g * H:(g + 1) * H]  # cut by hand: Keras' (in, gates x units)
        (got,) = layer.matrices()
        got = np.asarray(got, dtype=np.float64)
        np.testing.assert_array_equal(got if got.shape == expected.shape else got.T, expected)
        assert (layer.N, layer.M) == (max(expected.shape), min(expected.shape))
        seen.add((layer.parameter, gate))
    assert seen == {(k, g) for k in kernels for g in letters}


@pytest.mark.parametrize("cls", ["LSTM", "GRU"])
def test_torch_graph_rows_are_the_module_routes_rows(cls):
    """PyTorch's export stacks both directions of a layer into one ONNX W with its gates reordered: each row is still
    named by torch's own tensor and gate letter, its parameter that tensor, as the module route names it."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(4)
    rnn = getattr(torch.nn, cls)(I, H, num_layers=2, bidirectional=True, batch_first=True)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = rnn

        def forward(self, x):
            return self.rnn(x)[0]

    graph = irtools.analyze((Net().eval(), (torch.randn(1, T, I),)), metrics=["spectral"])
    module = {r["name"]: r for r in irtools.analyze(Net().eval(), metrics=["spectral"]).layers}
    letters = "ifgo" if cls == "LSTM" else "rzn"
    expected = {f"rnn.weight_{w}_l{k}{d}.{g}" for w in ("ih", "hh") for k in "01" for d in ("", "_reverse")
                for g in letters}
    assert {r["name"] for r in graph.layers} == set(module) == expected
    assert not [s for s in graph.skipped if s.get("parameter", "").startswith("rnn.")]
    for row in graph.layers:
        assert row["parameter"] == row["name"].rsplit(".", 1)[0]
        for col in SPECTRAL:
            assert row[col] == pytest.approx(module[row["name"]][col], rel=1e-9), (row["name"], col)


def _layer(name, shape, kind="dense", loader=None):
    w = np.arange(np.prod(shape), dtype=np.float64).reshape(shape)
    n, m = (max(shape[:2]), min(shape[:2]))
    rf = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    if loader is None:
        loader = (lambda: [w[(slice(None), slice(None), *p)] for p in np.ndindex(*shape[2:])]) if rf > 1 \
            else (lambda: [w])
    return WeightLayer(name, name, "MatMul", kind, name, shape, n, m, rf, 1.0, loader=loader), w


def test_split_gates_cuts_the_axis_of_gates_times_units():
    rect, w = _layer("k", (12, 64))
    parts = split_gates([rect], {"k": ("ifco", 16)})
    assert [p.name for p in parts] == ["k.i", "k.f", "k.c", "k.o"]
    assert all((p.N, p.M, p.layer_type) == (16, 12, "lstm") for p in parts)
    for g, p in enumerate(parts):
        np.testing.assert_array_equal(p.matrices()[0], w[:, 16 * g:16 * (g + 1)])
    # a square kernel (in = 4 x units): the graph's output axis decides; without it the weight stays whole
    square, w = _layer("s", (64, 64))
    assert split_gates([square], {"s": ("ifco", 16)}) == [square]
    rows = split_gates([square], {"s": ("ifco", 16)}, {"s": 0})
    np.testing.assert_array_equal(rows[1].matrices()[0], w[16:32])
    # no axis of gates x units (a file's metadata that does not fit), a grouped or an already split layer: kept
    assert split_gates([rect], {"k": ("zrh", 16)}) == [rect]
    done = split_gates([rect], {"k": ("ifco", 16)})
    assert split_gates(done, {"k": ("ifco", 16)}) == done
    # a conv kernel (out, in, kh, kw): every position's slice cut along its output axis
    conv, w = _layer("c", (16, 2, 3, 3), kind="conv2d")
    rows = split_gates([conv], {"c": ("ifco", 4)})
    assert [(r.N, r.M, r.rf) for r in rows] == [(4, 2, 9)] * 4
    np.testing.assert_array_equal(rows[2].matrices()[4], w[8:12, :, 1, 1])


@pytest.mark.parametrize("text", [
    "not json", "[1, 2]", '{"k": ["ifco"]}', '{"k": ["ifco", -4]}', '{"k": ["ifco", 4.0]}', '{"k": ["iffo", 4]}',
    '{"k": ["i", 4]}', '{"k": ["i\\u0000fo", 4]}', '{"k": ["abcdefghi", 4]}', '{"k": [["i"], 4]}',
    '{"k": ["ifco", true]}', "[" * 100000,
])
def test_malformed_gate_metadata_cuts_nothing(text):
    assert recurrent_gates(text) == {}


def test_gate_metadata_in_an_onnx_file_that_does_not_fit_changes_nothing(tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((12, 64)).astype(np.float32), "k")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "k"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 12])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    plain = tmp_path / "plain.onnx"
    onnx.save(model, plain)
    before = irtools.analyze(str(plain), metrics=["spectral"]).layers
    for value, rows in ((f'{{"k": ["ifco", {2 ** 62}]}}', 1), ('{"k": "ifco"}', 1), ('{"k": ["ifco", 16]}', 4)):
        helper.set_model_props(model, {RECURRENT_GATES_KEY: value})
        path = tmp_path / "gated.onnx"
        onnx.save(model, path)
        after = irtools.analyze(str(path), metrics=["spectral"]).layers
        assert len(after) == rows
        if rows == 1:
            assert [r["alpha"] for r in after] == [r["alpha"] for r in before]


def test_keras_weights_files_cut_lstm_and_gru_kernels_by_gate(tmp_path):
    """The weights-only route (an HDF5 file, Keras' layout): Keras' default cell names say which kernels hold gates."""
    h5py = pytest.importorskip("h5py")
    rng = np.random.default_rng(3)
    tensors = {"layers/lstm/cell/vars/0": rng.standard_normal((I, 4 * H)),  # Keras 3 .weights.h5
               "layers/lstm/cell/vars/1": rng.standard_normal((H, 4 * H)),
               "model_weights/gru/gru/gru_cell/kernel:0": rng.standard_normal((I, 3 * H)),  # a legacy .h5
               "model_weights/encoder/encoder/kernel:0": rng.standard_normal((I, 4 * H)),  # a Dense: one matrix
               # Keras 3 paths name no class: the recurrent kernel's (units, gates x units) says GRU, or a plain RNN
               "layers/bidirectional/forward_layer/cell/vars/0": rng.standard_normal((I, 3 * H)),
               "layers/bidirectional/forward_layer/cell/vars/1": rng.standard_normal((H, 3 * H)),
               "layers/simple_rnn/cell/vars/0": rng.standard_normal((I, H)),
               "layers/simple_rnn/cell/vars/1": rng.standard_normal((H, H))}
    path = tmp_path / "w.weights.h5"
    with h5py.File(path, "w") as f:
        for name, value in tensors.items():
            f.create_dataset(name, data=value.astype(np.float32))
    rows = {r["name"]: r for r in irtools.analyze(str(path), metrics=["spectral"]).layers}
    assert sorted(rows) == sorted([f"layers/lstm/cell/vars/{v}.{g}" for v in "01" for g in "ifco"]
                                  + [f"model_weights/gru/gru/gru_cell/kernel.{g}" for g in "zrh"]  # ":0" dropped
                                  + [f"layers/bidirectional/forward_layer/cell/vars/{v}.{g}"
                                     for v in "01" for g in "zrh"]
                                  + ["model_weights/encoder/encoder", "layers/simple_rnn/cell/vars/0",
                                     "layers/simple_rnn/cell/vars/1"])
    for name, row in rows.items():
        tensor, _, gate = name.rpartition(".")
        if gate not in "ifcozrh" or "/encoder" in name:
            continue
        letters = "zrh" if "gru" in name or "bidirectional" in name else "ifco"
        g = letters.index(gate)
        stored = tensors.get(tensor, tensors.get(f"{tensor}:0")).astype(np.float32).astype(np.float64)
        block = stored[:, g * H:(g + 1) * H]
        assert row["layer_type"] == ("gru" if letters == "zrh" else "lstm")
        squares = np.linalg.svd(block, compute_uv=False) ** 2
        assert (row["N"], row["M"]) == (max(block.shape), min(block.shape))
        assert row["lambda_max"] == pytest.approx(squares[0], rel=1e-10)
        assert row["log_norm"] == pytest.approx(np.log10(squares.sum()), rel=1e-10)
