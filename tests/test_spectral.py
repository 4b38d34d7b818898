"""Weight extraction and per-layer spectral metrics against independent truth."""

import json
import math
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import scipy.linalg
from click.testing import CliRunner
from onnx import TensorProto as T
from onnx import helper as h

import irtools
from irtools.backends.cpu import squared_singular_values
from irtools.cli import main
from tests import builders as b
from tests.conftest import EXAMPLE, LIGHT_MODELS

RNG = np.random.default_rng(0)


def rand(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def spectral(proto_or_path, **opts):
    m = irtools.load(proto_or_path)
    irtools.get_pass("weights", **{k: opts.pop(k) for k in ("conv_slices", "split_qkv") if k in opts})(m)
    return m, irtools.get_pass("spectral", **opts)(m)


def svd_evals(w):
    return np.sort(scipy.linalg.svd(np.asarray(w, np.float64), compute_uv=False) ** 2)


# -- against WeightWatcher 0.7.x --------------------------------------------------------
WW_COLUMNS = ("alpha", "xmin", "D", "sigma", "log_norm", "log_spectral_norm", "alpha_weighted", "log_alpha_norm",
              "stable_rank", "lambda_max", "xmax", "entropy")


def weightwatcher_and_ours(net, inputs, path, **spectral_opts):
    """WeightWatcher 0.7.7's rows for a torch module and irtools' rows for its ONNX export."""
    torch = pytest.importorskip("torch")
    ww = pytest.importorskip("weightwatcher")
    import contextlib
    import io
    import logging

    logging.getLogger("weightwatcher").setLevel(logging.ERROR)
    torch.onnx.export(net, inputs, path, dynamo=False, do_constant_folding=False,
                      training=torch.onnx.TrainingMode.PRESERVE, opset_version=17)
    with contextlib.redirect_stdout(io.StringIO()):  # its small-sample fit prints
        reference = ww.WeightWatcher(model=net).analyze()
    _, ours = spectral(path, **spectral_opts)
    return reference, ours.details()


def assert_rows_match(reference, ours):
    for _, ref in reference.iterrows():
        row = ours[ours.parameter == ref["longname"] + ".weight"]
        assert len(row) == 1, ref["longname"]
        row = row.iloc[0]
        for col in WW_COLUMNS:
            assert row[col] == pytest.approx(ref[col], rel=1e-6), (ref["longname"], col)
        for col in ("num_evals", "num_pl_spikes", "matrix_rank", "N", "M"):
            assert int(row[col]) == int(ref[col]), (ref["longname"], col)


def test_matches_weightwatcher_on_the_same_torch_weights(tmp_path):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(100, 32)
            self.features = torch.nn.Sequential(
                torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(16, 32, 3, padding=1),
                torch.nn.ReLU(), torch.nn.Conv2d(32, 64, 1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                torch.nn.Flatten())
            self.fc1, self.fc2, self.fc3 = torch.nn.Linear(96, 128), torch.nn.Linear(128, 64), torch.nn.Linear(64, 10)

        def forward(self, x, tok):
            z = torch.cat([self.features(x), self.emb(tok).mean(1)], 1)
            return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(z)))))

    net = Net().eval()
    reference, ours = weightwatcher_and_ours(net, (torch.zeros(1, 3, 8, 8), torch.zeros(1, 4, dtype=torch.long)),
                                             str(tmp_path / "net.onnx"))
    assert len(reference) == 7
    assert_rows_match(reference, ours)


def small_layer_net(torch, seed):
    """Layers with fewer than 20 eigenvalues, as in MobileNetV2/EfficientNet/MobileViT/SegFormer:
    depthwise 3x3 convolutions (9 eigenvalues), squeeze-excite reduce/expand (240x10, 10x240),
    narrow projections and a head (12, 15, 19 eigenvalues)."""
    torch.manual_seed(seed)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = torch.nn.Conv2d(3, 240, 1)
            self.dw = torch.nn.Conv2d(240, 240, 3, padding=1, groups=240)
            self.se_reduce, self.se_expand = torch.nn.Conv2d(240, 10, 1), torch.nn.Conv2d(10, 240, 1)
            self.proj = torch.nn.Conv2d(240, 12, 1)
            self.fc1, self.fc2, self.head = torch.nn.Linear(12, 15), torch.nn.Linear(15, 19), torch.nn.Linear(19, 64)
            with torch.no_grad():  # heavier tails than a fresh init, as trained layers have
                for m in (self.se_reduce, self.se_expand, self.proj, self.fc1, self.fc2, self.dw):
                    m.weight.mul_(torch.distributions.StudentT(2.5).sample(m.weight.shape))

        def forward(self, x):
            h = self.dw(self.stem(x))
            s = torch.sigmoid(self.se_expand(torch.relu(self.se_reduce(h.mean((2, 3), keepdim=True)))))
            z = self.proj(h * s).mean((2, 3))
            return self.head(torch.relu(self.fc2(torch.relu(self.fc1(z)))))

    return Net().eval()


def test_small_layers_match_weightwatcher_and_j_rule_on_request(tmp_path):
    """Issue #13: layers under 20 eigenvalues report WeightWatcher's argmin-D xmin by default;
    small_n_xmin="J" keeps its intermediate J choice, which differs on some of them."""
    torch = pytest.importorskip("torch")
    changed = 0
    for seed in range(2):
        net = small_layer_net(torch, seed)
        path = str(tmp_path / f"small{seed}.onnx")
        reference, ours = weightwatcher_and_ours(net, (torch.zeros(1, 3, 4, 4),), path)
        assert len(reference) == 7 and (reference.num_evals < 20).all()  # the 3-channel stem is skipped
        assert_rows_match(reference, ours)
        _, j_rows = spectral(path, small_n_xmin="J")
        j_rows = j_rows.details()
        small = ours.num_evals < 20
        assert (j_rows.xmin[~small] == ours.xmin[~small]).all()
        assert (j_rows.D[small] >= ours.D[small]).all()  # argmin D is never beaten on D
        changed += int((j_rows.xmin[small] != ours.xmin[small]).sum())
    assert changed >= 1


# -- extraction -------------------------------------------------------------------------
def test_torch_and_tf_layouts_give_the_same_layer():
    w = rand(40, 24)  # torch Linear stores (out, in); TF/JAX store (in, out)
    torch_style = b.model([h.make_node("Gemm", ["x", "w"], ["y"], transB=1)], [b.vinfo("x", [1, 24])],
                          [b.vinfo("y", [1, 40])], [b.tensor("w", w)])
    tf_style = b.model([h.make_node("MatMul", ["x", "w"], ["y"])], [b.vinfo("x", [1, 24])],
                       [b.vinfo("y", [1, 40])], [b.tensor("w", w.T.copy())])
    a = irtools.analyze(torch_style, metrics="spectral").details.iloc[0]
    c = irtools.analyze(tf_style, metrics="spectral").details.iloc[0]
    for col in ("N", "M", "alpha", "xmin", "D", "log_norm", "log_spectral_norm", "alpha_weighted", "stable_rank"):
        assert a[col] == pytest.approx(c[col], rel=1e-12), col
    np.testing.assert_allclose(a["lambda_max"], svd_evals(w)[-1], rtol=1e-12)


def test_conv_is_pooled_over_kernel_positions_and_sliced_on_request():
    w = rand(24, 12, 3, 2)
    proto = b.model([h.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3, 2], name="conv")],
                    [b.vinfo("x", [1, 12, 5, 5])], [b.vinfo("y", [1, 24, 3, 4])], [b.tensor("w", w)])
    truth = np.sort(np.concatenate([svd_evals(w[:, :, i, j]) for i in range(3) for j in range(2)])) * 0.5
    _, r = spectral(proto)
    (row,) = r.rows
    assert (row["N"], row["M"], row["rf"], row["num_evals"]) == (24, 12, 6, 72)
    assert row["lambda_max"] == pytest.approx(truth[-1], rel=1e-12)
    assert row["norm"] == pytest.approx(truth.sum(), rel=1e-12)  # = 0.5 * ||W||_F^2
    assert row["norm"] == pytest.approx(0.5 * float((w.astype(np.float64) ** 2).sum()), rel=1e-12)
    _, sliced = spectral(proto, conv_slices=True, min_evals=1)
    assert [x["name"] for x in sliced.rows] == [f"conv[{i},{j}]" for i in range(3) for j in range(2)]
    top = svd_evals(w[:, :, 2, 1])[-1] * 6 / 2  # per-slice scale rf / 2 (WeightWatcher's k / sqrt(2))
    assert sliced.rows[-1]["lambda_max"] == pytest.approx(top, rel=1e-12)


def test_conv1d_and_grouped_conv_are_extracted():
    w1 = rand(16, 8, 5)
    wg = rand(16, 4, 3, 3)  # groups=2: (out, in/groups, kh, kw)
    proto = b.model(
        [h.make_node("Conv", ["x", "w1"], ["c"], kernel_shape=[5], name="c1d"),
         h.make_node("Unsqueeze", ["c", "ax"], ["c4"]),
         h.make_node("Conv", ["c4", "wg"], ["y"], kernel_shape=[1, 3], group=2, pads=[0, 1, 0, 1], name="cg")],
        [b.vinfo("x", [1, 8, 9])], [b.vinfo("y", [1, 16, 1, 5])],
        [b.tensor("w1", w1), b.tensor("ax", np.array([2], np.int64)), b.tensor("wg", wg[:, :, :1, :])])
    _, r = spectral(proto, min_evals=1)
    rows = {x["name"]: x for x in r.rows}
    assert rows["c1d"]["layer_type"] == "conv1d" and rows["c1d"]["num_evals"] == 8 * 5
    truth = np.sort(np.concatenate([svd_evals(w1[:, :, k]) for k in range(5)])) * 0.5
    assert rows["c1d"]["lambda_max"] == pytest.approx(truth[-1], rel=1e-12)
    assert rows["cg"]["M"] == 4 and rows["cg"]["rf"] == 3


def test_lstm_gates_and_embedding():
    hidden, inp = 12, 10
    W, R = rand(1, 4 * hidden, inp), rand(1, 4 * hidden, hidden)
    table = rand(50, 16)
    proto = b.model(
        [h.make_node("Gather", ["table", "ids"], ["e"], name="embed"),
         h.make_node("LSTM", ["x", "W", "R"], ["ys", "hs"], hidden_size=hidden, name="lstm")],
        [b.vinfo("x", [3, 1, inp]), b.vinfo("ids", [1, 4], T.INT64)],
        [b.vinfo("hs", [1, 1, hidden]), b.vinfo("e", [1, 4, 16])],
        [b.tensor("W", W), b.tensor("R", R), b.tensor("table", table)])
    m, r = spectral(proto, min_evals=1)
    rows = {x["name"]: x for x in r.rows}
    assert rows["embed"]["layer_type"] == "embedding" and rows["embed"]["parameter"] == "table"
    assert rows["embed"]["lambda_max"] == pytest.approx(svd_evals(table)[-1], rel=1e-12)
    for g, gate in enumerate("iofc"):
        row = rows[f"lstm:W[0].{gate}"]
        assert row["parameter"] == "W" and (row["N"], row["M"]) == (12, 10)
        assert row["lambda_max"] == pytest.approx(svd_evals(W[0, g * hidden:(g + 1) * hidden])[-1], rel=1e-12)
        assert rows[f"lstm:R[0].{gate}"]["M"] == 12
    assert len(rows) == 9


def test_fused_qkv_split_on_request():
    d = 16
    w = rand(d, 3 * d)
    proto = b.model([h.make_node("MatMul", ["x", "w"], ["y"], name="qkv")], [b.vinfo("x", [1, d])],
                    [b.vinfo("y", [1, 3 * d])], [b.tensor("w", w)])
    _, whole = spectral(proto)
    _, split = spectral(proto, split_qkv=True)
    assert [x["name"] for x in whole.rows] == ["qkv"]
    assert [x["name"] for x in split.rows] == ["qkv:q", "qkv:k", "qkv:v"]
    assert split.rows[1]["lambda_max"] == pytest.approx(svd_evals(w[:, d:2 * d])[-1], rel=1e-12)


def _ort_run(proto, feeds):
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]


@pytest.mark.parametrize("mode", ["per-tensor", "per-axis", "uint8-zero-point", "blocked"])
def test_dequantize_linear_weights_match_onnxruntime(mode):
    q = RNG.integers(-100, 100, size=(20, 12)).astype(np.int8)
    scale, zero, extra = np.float32(0.02), None, {}
    if mode == "per-axis":
        scale = RNG.uniform(0.01, 0.05, size=12).astype(np.float32)
    if mode == "blocked":  # opset 21: blocks of 4 along axis 1
        scale = RNG.uniform(0.01, 0.05, size=(20, 3)).astype(np.float32)
        extra = {"block_size": 4}
    if mode == "uint8-zero-point":
        q = RNG.integers(0, 255, size=(20, 12)).astype(np.uint8)
        zero = np.uint8(128)
    inits = [b.tensor("q", q), b.tensor("s", scale)] + ([b.tensor("z", zero)] if zero is not None else [])
    dq = h.make_node("DequantizeLinear", ["q", "s"] + (["z"] if zero is not None else []), ["w"], axis=1, **extra)
    proto = b.model([dq, h.make_node("MatMul", ["x", "w"], ["y"], name="mm")], [b.vinfo("x", [20, 20])],
                    [b.vinfo("y", [20, 12])], inits, opset=21 if extra else 19)
    truth = _ort_run(proto, {"x": np.eye(20, dtype=np.float32)})  # I @ W = the dequantized W
    m = irtools.load(proto)
    (layer,) = irtools.get_pass("weights")(m).layers
    assert layer.parameter == "w"
    np.testing.assert_allclose(layer.matrices()[0], truth, rtol=1e-5, atol=1e-6)  # ort works in float32


def test_matmul_nbits_weights_match_onnxruntime():
    n, k, block = 16, 32, 16
    packed = RNG.integers(0, 256, size=(n, k // block, block // 2)).astype(np.uint8)
    scales = RNG.uniform(0.01, 0.1, size=n * (k // block)).astype(np.float32)
    node = h.make_node("MatMulNBits", ["x", "B", "scales"], ["y"], domain="com.microsoft", K=k, N=n, bits=4,
                       block_size=block, name="qmm")
    graph = h.make_graph([node], "g", [b.vinfo("x", [k, k])], [b.vinfo("y", [k, n])],
                         [b.tensor("B", packed), b.tensor("scales", scales)])
    proto = h.make_model(graph, opset_imports=[h.make_opsetid("", 17), h.make_opsetid("com.microsoft", 1)])
    proto.ir_version = 8
    truth = _ort_run(proto, {"x": np.eye(k, dtype=np.float32)})  # I @ B^T = B^T
    m = irtools.load(proto)
    (layer,) = irtools.get_pass("weights")(m).layers
    np.testing.assert_allclose(layer.matrices()[0], truth.T, rtol=1e-5, atol=1e-6)


# -- limits, failures, degenerate spectra -------------------------------------------------
def test_skip_rules_list_reasons_and_flags_lift_them():
    proto = b.mlp()  # fc1 is 5x4 (4 eigenvalues), fc2 5x3
    _, r = spectral(proto)
    assert r.rows == [] and {s["name"]: s["reason"] for s in r.skipped} == {
        "fc1": "4 eigenvalues < min_evals 8", "fc2": "3 eigenvalues < min_evals 8"}
    _, r = spectral(proto, min_evals=1)
    assert [x["name"] for x in r.rows] == ["fc1", "fc2"]
    wide = b.model([h.make_node("MatMul", ["x", "w"], ["y"], name="wide")], [b.vinfo("x", [1, 20])],
                   [b.vinfo("y", [1, 60])], [b.tensor("w", rand(20, 60))])
    _, r = spectral(wide, max_n=50)
    assert r.skipped[0]["reason"] == "N = 60 > max_N 50"
    _, r = spectral(wide, max_evals=10)
    assert r.skipped[0]["reason"] == "20 eigenvalues > max_evals 10"


@pytest.mark.parametrize("path", [p for p in LIGHT_MODELS if "squeezenet" in p or "inception_v1" in p],
                         ids=os.path.basename)
def test_constant_weight_models_are_flagged_degenerate(path):
    a = irtools.analyze(path, metrics="spectral")
    assert len(a.details) > 0
    assert set(a.details.warning) == {"degenerate"}
    assert a.details.alpha.isna().all()
    assert a.summary["alpha_layers"] == 0 and math.isnan(a.summary["alpha"])
    assert a.summary["log_norm_layers"] == len(a.details)  # norms still exist


def test_failed_fits_are_left_out_of_the_means():
    good = rand(64, 32)
    zero = np.zeros((16, 16), np.float32)
    proto = b.model([h.make_node("MatMul", ["x", "g"], ["a"], name="good"),
                     h.make_node("MatMul", ["a", "z"], ["y"], name="zero")],
                    [b.vinfo("x", [1, 64])], [b.vinfo("y", [1, 16])],
                    [b.tensor("g", good), b.tensor("z", zero[:32])])
    a = irtools.analyze(proto, metrics="spectral")
    rows = a.details.set_index("name")
    assert rows.loc["zero", "warning"] == "degenerate" and math.isnan(rows.loc["zero", "alpha"])
    assert a.summary["alpha"] == pytest.approx(rows.loc["good", "alpha"]) and a.summary["alpha_layers"] == 1


def test_gram_route_agrees_with_svd():
    for shape in ((300, 100), (100, 100), (64, 200)):
        w = rand(*shape).astype(np.float64)
        g = squared_singular_values(w, "gram")
        s = squared_singular_values(w, "svd")
        np.testing.assert_allclose(g.evals[-20:], s.evals[-20:], rtol=1e-10)
        assert np.count_nonzero(g.evals > g.noise_floor) == np.count_nonzero(s.evals > s.noise_floor) == min(shape)
    low = rand(120, 3).astype(np.float64) @ rand(3, 80).astype(np.float64)  # rank 3 in float64
    for method in ("gram", "svd"):
        sp = squared_singular_values(low, method)
        assert np.count_nonzero(sp.evals > sp.noise_floor) == 3


@pytest.mark.parametrize("syrk", ["numpy's OpenBLAS", "scipy"])
@pytest.mark.parametrize("shape", [(1000, 70), (70, 1000), (257, 256), "strided"])
def test_blocked_gram_of_float32_weights_equals_the_float64_product(monkeypatch, shape, syrk):
    """Large float32 weights are accumulated from float64 blocks with syrk; force that route on
    small matrices (blocks of 3-14 rows or columns, the last one short) and compare with the plain
    product: C-ordered, transposed views (column blocks), and neither."""
    from irtools.backends import cpu

    monkeypatch.setattr(cpu, "_BLOCKED_GRAM_ELEMENTS", 1000)
    monkeypatch.setattr(cpu, "_BLOCK_ELEMENTS", 1000)
    if syrk == "scipy":
        monkeypatch.setattr(cpu, "_numpy_dsyrk", lambda: None)
    else:
        assert cpu._numpy_dsyrk() is not None  # numpy's PyPI wheels ship OpenBLAS with ILP64 cblas
    if shape == "strided":
        w = rand(600, 140).astype(np.float32)[::2, ::2]
        assert not (w.flags.c_contiguous or w.flags.f_contiguous)
    else:
        w = rand(*shape).astype(np.float32)
    tall = w if w.shape[0] >= w.shape[1] else w.T
    gram, lower = cpu._gram(tall)
    assert not lower
    exact = tall.astype(np.float64).T @ tall.astype(np.float64)
    iu = np.triu_indices(tall.shape[1])
    np.testing.assert_allclose(gram[iu], exact[iu], rtol=1e-12, atol=1e-12 * np.abs(exact).max())
    ev = squared_singular_values(w, "gram").evals
    sv = np.linalg.svd(w.astype(np.float64), compute_uv=False) ** 2
    np.testing.assert_allclose(ev, np.sort(sv), rtol=0, atol=1e-12 * sv.max())


def test_randomize_adds_rand_distance():
    a = irtools.analyze(b.model([h.make_node("MatMul", ["x", "w"], ["y"], name="mm")], [b.vinfo("x", [1, 64])],
                                [b.vinfo("y", [1, 32])], [b.tensor("w", rand(64, 32))]),
                        metrics="spectral", randomize=True)
    row = a.details.iloc[0]
    assert 0 < row["rand_distance"] < 1 and a.summary["rand_distance_layers"] == 1


# -- CLI ----------------------------------------------------------------------------------
def test_analyze_cli_formats(tmp_path):
    out = tmp_path / "a.json"
    res = CliRunner().invoke(main, ["analyze", EXAMPLE, "--input-shape", "image=1,1,8,8", "--format", "json",
                                    "-o", str(out)])
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert set(data) == {"model", "layers", "summary", "skipped", "reuse"}
    assert [r["parameter"] for r in data["layers"]] == ["features.0.weight", "features.3.weight",
                                                        "classifier.1.weight", "classifier.3.weight"]
    assert data["summary"]["layers"] == 4 and data["reuse"]["num_params"] == 38_474
    res = CliRunner().invoke(main, ["analyze", EXAMPLE, "--format", "csv"])
    assert res.exit_code == 0
    header = res.stdout.splitlines()[0].split(",")
    assert header[:3] == ["layer_id", "name", "node"] and "alpha" in header and "log_spectral_norm" in header
    res = CliRunner().invoke(main, ["analyze", EXAMPLE])  # symbolic batch: fixed to 1, with a note
    assert res.exit_code == 0 and "batch dimension 'batch' fixed to 1" in res.output and "alpha" in res.output
    assert "total surprisal" in res.output
    res = CliRunner().invoke(main, ["analyze", EXAMPLE, "--metrics", "reuse", "--format", "csv",
                                    "--input-shape", "image=1,1,8,8"])
    assert res.exit_code == 2 and "add spectral to --metrics" in res.output


def test_position_embedding_with_constant_indices_is_an_embedding():
    table = rand(64, 16)
    proto = b.model([h.make_node("Gather", ["pos_table", "positions"], ["p"], name="pos"),
                     h.make_node("Add", ["x", "p"], ["y"])],
                    [b.vinfo("x", [1, 4, 16])], [b.vinfo("y", [1, 4, 16])],
                    [b.tensor("pos_table", table), b.tensor("positions", np.arange(4, dtype=np.int64)[None])])
    _, r = spectral(proto)
    (row,) = r.rows
    assert (row["name"], row["layer_type"], row["parameter"]) == ("pos", "embedding", "pos_table")
    assert row["lambda_max"] == pytest.approx(svd_evals(table)[-1], rel=1e-12)


def test_mp_fit_matches_weightwatcher():
    torch = pytest.importorskip("torch")
    ww = pytest.importorskip("weightwatcher")
    import logging

    logging.getLogger("weightwatcher").setLevel(logging.ERROR)
    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Linear(48, 96), torch.nn.ReLU(), torch.nn.Linear(96, 64),
                              torch.nn.Linear(64, 64))
    with torch.no_grad():  # plant spikes above the random bulk
        for layer, rank in ((net[0], 3), (net[2], 1)):
            u, v = torch.randn(layer.out_features, rank), torch.randn(rank, layer.in_features)
            layer.weight += 0.3 * u @ v
    import io

    buf = io.BytesIO()
    torch.onnx.export(net, (torch.zeros(1, 48),), buf, dynamo=False, opset_version=17)
    reference = ww.WeightWatcher(model=net).analyze(mp_fit=True)
    ours = irtools.analyze(onnx.load_from_string(buf.getvalue()), metrics="spectral", mp_fit=True)
    assert list(ours.details.num_spikes) == list(reference.num_spikes) and reference.num_spikes.sum() >= 4
    np.testing.assert_allclose(ours.details.mp_softrank, reference.mp_softrank, rtol=1e-6)
    np.testing.assert_allclose(ours.details.sigma_mp, reference.sigma_mp, rtol=1e-6)
    assert ours.summary["mp_softrank"] == pytest.approx(reference.mp_softrank.mean(), rel=1e-6)


def test_schedule_gives_every_core_only_to_layers_bigger_than_a_fair_share():
    from types import SimpleNamespace

    from irtools.passes.spectral import schedule

    def layer(n, m, rf=1):
        return SimpleNamespace(N=n, M=m, rf=rf)

    vgg = [(0, layer(25088, 4096)), (1, layer(4096, 4096)), (2, layer(4096, 1000))] + \
          [(3 + i, layer(512, 512, 9)) for i in range(8)]
    big, small = schedule(vgg, 2)
    assert [i for i, _ in big] == [0, 1] and len(small) == 9
    bert = [(0, layer(30522, 768))] + [(1 + i, layer(3072, 768)) for i in range(12)] + \
           [(13 + i, layer(768, 768)) for i in range(24)]
    big, small = schedule(bert, 2)
    assert big == [] and [i for i, _ in small][:1] == [0]  # the embedding joins the pool, first
    costs = [it[1].rf * it[1].N * it[1].M ** 2 for it in small]
    assert costs == sorted(costs, reverse=True)  # longest first
    assert schedule([(0, layer(8, 8))], 2) == ([(0, layer(8, 8))], [])
    assert schedule(bert, 1)[1] == [] and len(schedule(bert, 1)[0]) == len(bert)


@pytest.mark.parametrize("randomize", [False, True])
def test_fits_deferred_while_numba_loads_give_the_same_rows(monkeypatch, randomize):
    """While the fit kernels are still loading, workers keep computing eigenvalues and the fits
    run at the end: force that path for every layer and compare with the direct one."""
    import irtools.passes.spectral as ps

    model = b.model([h.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
                     h.make_node("MatMul", ["h", "w2"], ["y"], name="mm2")],
                    [b.vinfo("x", [1, 64])], [b.vinfo("y", [1, 24])],
                    [b.tensor("w1", rand(64, 48)), b.tensor("w2", rand(48, 24))])
    direct = irtools.analyze(model, metrics="spectral", randomize=randomize)
    seen = []
    monkeypatch.setattr(ps, "kernels_ready", lambda: False)
    monkeypatch.setattr(ps, "warm_up", lambda: None)
    deferred = irtools.analyze(model, metrics="spectral", randomize=randomize,
                               progress=lambda done, total, name: seen.append((done, total)))
    assert deferred.layers == direct.layers and deferred.summary == direct.summary
    assert seen == [(1, 2), (2, 2)]


def test_mp_fit_of_a_zero_layer_is_nan_and_the_rest_is_fitted(tmp_path):
    """A zero-initialised layer has no Marchenko-Pastur bulk: NaN columns, not a ZeroDivisionError."""
    path = tmp_path / "w.npz"
    rng = np.random.default_rng(0)
    np.savez(path, **{"a.weight": np.zeros((40, 20), np.float32),
                      "b.weight": rng.standard_normal((60, 30)).astype(np.float32)})
    details = irtools.analyze(str(path), metrics="spectral", mp_fit=True).details.set_index("parameter")
    assert np.isnan(details.loc["a.weight", ["num_spikes", "sigma_mp", "mp_softrank"]].astype(float)).all()
    assert 0 < details.loc["b.weight", "mp_softrank"] <= 1.5 and details.loc["b.weight", "sigma_mp"] > 0


@pytest.mark.parametrize(("cap", "expected"), [("1", 1), ("", None), ("0", None), ("many", None)])
def test_irtools_threads_caps_the_layers_analysed_at_once(monkeypatch, cap, expected):
    """`irtools audit` sets IRTOOLS_THREADS to each model's share of the cores: the pass then runs
    that many layer threads, and ignores a value that is not a positive integer."""
    import irtools.passes.spectral as ps
    from irtools.audit.task import THREAD_VARIABLES

    assert ps.THREADS_VARIABLE in THREAD_VARIABLES  # the audit sets it with the BLAS variables
    ps.warm_up()  # the fit kernels loaded, as after any earlier test: no second pool for deferred fits
    monkeypatch.setattr(ps.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setenv(ps.THREADS_VARIABLE, cap)
    pools = []
    real = ps.each_on_threads
    monkeypatch.setattr(ps, "each_on_threads", lambda fn, items, n, take: pools.append(n) or real(fn, items, n, take))
    model = b.model([h.make_node("MatMul", ["x", f"w{i}"], [f"y{i}"], name=f"mm{i}") for i in range(4)],
                    [b.vinfo("x", [1, 16])], [b.vinfo(f"y{i}", [1, 12]) for i in range(4)],
                    [b.tensor(f"w{i}", rand(16, 12)) for i in range(4)])
    result = irtools.analyze(model, metrics="spectral")
    assert len(result.layers) == 4
    assert pools == ([] if expected == 1 else [expected or 4])  # one thread: the layers run in turn, no pool


def _mp_log_alpha_norm(evals, alpha):
    import mpmath

    with mpmath.workdps(60):
        return float(mpmath.log10(mpmath.fsum(mpmath.mpf(float(x)) ** mpmath.mpf(alpha) for x in evals)))


def test_log_alpha_norm_is_computed_in_log_space_without_overflow(recwarn):
    """log10(sum(lambda ** alpha)) where the direct sum overflows float64 (an alpha of 90 on
    eigenvalues up to 3e4, as on Keras EfficientNetB0): finite and equal to 60-digit mpmath; where
    the direct formula is finite, the same value to round-off. No RuntimeWarning."""
    from irtools.passes.spectral.metrics import layer_metrics, log_alpha_norm

    rng = np.random.default_rng(3)
    big = np.sort(np.concatenate([[0.0, 1e-300], rng.uniform(1e-3, 3e4, 300)]))
    with np.errstate(over="ignore"):
        assert np.isinf(np.sum(big**90.0))  # what the direct formula gives
    assert log_alpha_norm(big, 90.0) == pytest.approx(_mp_log_alpha_norm(big, 90.0), rel=1e-14)
    # a hand value: 2 ** 2 + 4 ** 2 = 20
    assert log_alpha_norm(np.array([0.0, 2.0, 4.0]), 2.0) == pytest.approx(math.log10(20.0), rel=1e-15)
    for alpha in (1.3, 2.5, 4.0, 7.5, 30.0):
        evals = np.sort(rng.lognormal(0.0, 2.0, 500))
        direct = math.log10(float(np.sum(evals**alpha)))
        assert math.isfinite(direct)
        assert log_alpha_norm(evals, alpha) == pytest.approx(direct, rel=1e-12, abs=1e-12)
        assert log_alpha_norm(evals, alpha) == pytest.approx(_mp_log_alpha_norm(evals, alpha), rel=1e-13)
    assert math.isnan(log_alpha_norm(big, math.nan)) and math.isnan(log_alpha_norm(np.zeros(4), 2.0))
    # in a layer's row: a heavy top gives a large alpha on large eigenvalues; no overflow warning
    evals = np.sort(np.concatenate([rng.uniform(1e3, 1.2e3, 200), [5e4]]))
    row = layer_metrics(evals, 400, 201, 0.0, 201)
    assert math.isfinite(row["log_alpha_norm"])
    assert row["log_alpha_norm"] == pytest.approx(_mp_log_alpha_norm(evals, row["alpha"]), rel=1e-13)
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


def test_stacked_slices_give_each_matrixs_own_spectrum():
    """Same-shape matrices solved in one stack (a 7x7 conv's 64 x 3 slices, SVD route) have the
    eigenvalues and noise floors of solving each alone, bit for bit; a slice with a NaN is
    non-finite alone, the others unaffected."""
    from irtools.backends.cpu import CPUBackend, stacked_squared_singular_values

    w = rand(64, 3, 7, 7)
    w[5, 1, 2, 3] = np.nan
    slices = [w[:, :, i, j] for i in range(7) for j in range(7)]
    alone = [squared_singular_values(s) for s in slices]
    for got in (stacked_squared_singular_values(slices), CPUBackend().spectra(slices)):
        assert len(got) == 49
        for g, a in zip(got, alone, strict=True):
            assert np.array_equal(g.evals, a.evals, equal_nan=True)
            assert g.noise_floor == a.noise_floor or (math.isnan(g.noise_floor) and math.isnan(a.noise_floor))
    assert np.isnan(alone[2 * 7 + 3].evals).all() and np.isfinite(alone[0].evals).all()
    assert np.allclose(alone[0].evals, svd_evals(slices[0]), rtol=1e-12)
    square = [rand(40, 40) for _ in range(3)]  # the Gram route: each alone (as measured faster)
    assert [np.array_equal(g.evals, a.evals) for g, a in
            zip(stacked_squared_singular_values(square), CPUBackend().spectra(square))] == [True] * 3


def _reference_row(w: np.ndarray, eigen_scale: float, method: str = "auto") -> dict:
    """A layer's metrics computed the straightforward way, matrix by matrix: each (N, M) slice
    transposed to N >= M and copied to float64; eigvalsh(W^T W) clipped at 0 (the Gram route, "auto"),
    or the sorted squared singular values ("svd"); the pooled ESD sorted and scaled; each
    metric by its formula (conventions.md section 2) on that ESD."""
    from irtools.passes.spectral.powerlaw import fit_power_law

    eps = np.finfo(np.float64).eps
    slices = [w] if w.ndim == 2 else [w[:, :, i, j] for i in range(w.shape[2]) for j in range(w.shape[3])]
    parts, floors = [], []
    for s in slices:
        s = s.T if s.shape[0] < s.shape[1] else s
        n, m = s.shape
        s64 = np.asarray(s, dtype=np.float64)
        if method != "svd":
            ev = np.clip(np.linalg.eigvalsh(s64.T @ s64), 0.0, None)
            floors.append(float(ev[-1]) * max((n * eps) ** 2, 4.0 * m * eps))
        else:
            ev = np.sort(np.linalg.svd(s64, compute_uv=False) ** 2)
            floors.append(float(ev[-1]) * (n * eps) ** 2)
        parts.append(ev)
    evals = np.sort(np.concatenate(parts)) * eigen_scale
    noise = max(floors) * eigen_scale
    top, total = float(evals[-1]), float(evals.sum())
    rank = int(np.count_nonzero(evals > noise))
    p = evals / total + 1e-10
    fit = fit_power_law(evals)
    return {"N": n, "M": m, "num_evals": evals.size, "lambda_max": top, "norm": total,
            "log_norm": math.log10(total), "spectral_norm": top, "log_spectral_norm": math.log10(top),
            "stable_rank": total / top, "matrix_rank": rank,
            "entropy": float(-np.sum(p * np.log(p)) / math.log(rank + 1e-10)),
            "alpha": fit.alpha, "xmin": fit.xmin, "xmax": fit.xmax, "D": fit.D, "sigma": fit.sigma,
            "num_pl_spikes": int(np.count_nonzero(evals >= fit.xmin)),
            "alpha_weighted": fit.alpha * math.log10(top),
            "log_alpha_norm": fit.alpha * math.log10(top) + math.log10(float(np.sum((evals / top) ** fit.alpha))),
            "num_nonfinite": 0}


@pytest.mark.parametrize("method", ["auto", "svd"])
def test_rows_equal_a_straightforward_reference_bit_for_bit(method):
    """The pass's fast paths (stacked eigensolves of a conv's small slices, numpy's LAPACK gufuncs called
    directly, one floating-point context per layer, vectorised ranks and noise floors, bounded fit
    scans) give every number of the row that the plain matrix-by-matrix computation gives, exactly, on
    the Gram route ("auto") and the reference's SVD route; a layer with a NaN is reported non-finite with
    its count and leaves the others unchanged."""
    from frontends.formats.common import StoredArray
    from frontends.formats.layers import weight_layers

    rng = np.random.default_rng(3)
    weights = {"conv3to64.weight": rng.standard_normal((64, 3, 3, 3)),  # 9 small slices in one stack
               "conv7x7.weight": rng.standard_normal((64, 3, 7, 7)),
               "conv64.weight": rng.standard_t(4, (64, 48, 3, 3)),  # Gram route, 9 slices
               "pointwise.weight": rng.standard_normal((128, 64, 1, 1)),
               "fc.weight": rng.standard_t(3, (40, 200)),  # wide: transposed
               "narrow.weight": rng.standard_normal((300, 20)),
               "broken.weight": rng.standard_normal((50, 40, 3, 3))}
    weights = {k: (v / math.sqrt(v.shape[1])).astype(np.float32) for k, v in weights.items()}
    weights["broken.weight"][3, 5, 1, 2] = np.nan
    weights["broken.weight"][7, 0, 0, 0] = np.inf
    layers = weight_layers({k: StoredArray(v.shape, v.dtype, lambda v=v: v) for k, v in weights.items()})
    from irtools.passes.spectral import SpectralPass

    result = SpectralPass(method=method).analyse(layers)
    rows = {r["name"]: r for r in result.rows}
    assert set(rows) == {k.removesuffix(".weight") for k in weights}
    for name, w in weights.items():
        row = rows[name.removesuffix(".weight")]
        if name == "broken.weight":
            assert row["warning"] == "non-finite" and row["num_nonfinite"] == 2 and math.isnan(row["alpha"])
            continue
        ref = _reference_row(w, 0.5 if w.ndim == 4 else 1.0, method)
        assert row["fit_status"] == "success"
        assert {k: row[k] for k in ref} == ref, name


@pytest.mark.parametrize("sizes", [(4, 4, 4), (4, 2, 6), (5,)])
def test_layer_eigen_ranks_are_each_matrixs_own(sizes):
    """The pooled ESD is sorted and scaled, its noise floor the largest matrix's, and the max rank
    that of the matrix with most eigenvalues above its own floor, for one-shape and mixed spectra."""
    from irtools.backends.base import Spectrum
    from irtools.passes.spectral import layer_eigen

    rng = np.random.default_rng(len(sizes))
    spectra = [Spectrum(np.sort(rng.uniform(0, 1, s)), float(rng.uniform(0.2, 0.6))) for s in sizes]
    layer = type("L", (), {"eigen_scale": 0.5})()
    state = layer_eigen(0, layer, [], spectra, False)
    assert np.array_equal(state.evals, np.sort(np.concatenate([s.evals for s in spectra])) * 0.5)
    assert state.noise == max(s.noise_floor for s in spectra) * 0.5
    assert state.max_rank == max(sum(1 for e in s.evals if e > s.noise_floor) for s in spectra)


def test_big_valid_work_is_announced_with_an_estimate(capsys):
    """A 12000 x 12000 layer (inside every limit) says at once what it is and about how long it takes; a small
    model says nothing (issue 23)."""
    from types import SimpleNamespace

    from irtools.backends.cpu import CPUBackend
    from irtools.passes.spectral import _announce, estimate_seconds

    big = SimpleNamespace(N=12000, M=12000, rf=1)
    small = SimpleNamespace(N=64, M=32, rf=9)
    assert estimate_seconds([big]) > 60 * estimate_seconds([small]) * 1000
    _announce([small], CPUBackend())
    assert capsys.readouterr().err == ""
    _announce([small, big], CPUBackend())
    err = capsys.readouterr().err
    assert err.startswith("irtools: note: spectral: 2 layer(s), the largest 12000 x 12000 (about ") and err.count("\n") == 1


def _hex_rows(rows):
    return [{k: v.hex() if isinstance(v, float) else v for k, v in row.items()} for row in rows]


@pytest.mark.parametrize("workers", [1, 2])
def test_same_shape_layers_analysed_as_a_group_give_each_layers_own_row(monkeypatch, workers):
    """Small layers of one shape go through one stacked eigensolve and the rows' vectorised metrics and
    batched fits (`_Group`): every row equals, bit for bit, the straightforward matrix-by-matrix reference
    and the pass run one layer at a time (grouping off), for groups that mix fitted, all-zero, rank-one,
    under-20-eigenvalue and NaN layers, fp16 weights, and the SVD and Gram routes; kept eigenvalues too."""
    import irtools.passes.spectral as ps

    from frontends.formats.common import StoredArray
    from frontends.formats.layers import weight_layers

    rng = np.random.default_rng(11)
    weights = {}
    for tag, shape, count in (("conv", (64, 48, 3, 3), 5), ("pointwise", (128, 64, 1, 1), 4),
                              ("rgb", (64, 3, 3, 3), 4), ("fc", (40, 200), 3), ("small", (30, 10), 3)):
        for j in range(count):
            w = rng.standard_t(3 + j, shape) / math.sqrt(shape[1])
            weights[f"{tag}{j}.weight"] = w.astype(np.float32)
    weights["conv4.weight"][...] = 0.0  # all zero
    weights["pointwise3.weight"][...] = 0.25  # rank one
    weights["conv2.weight"][1, 2, 0, 1] = np.nan  # its group is solved layer by layer
    weights["fc1.weight"] = weights["fc1.weight"].astype(np.float16)
    layers = weight_layers({k: StoredArray(v.shape, v.dtype, lambda v=v: v) for k, v in weights.items()})
    groups = ps.group_small_layers(list(enumerate(layers)), workers)
    sizes = sorted(len(layer.items) if isinstance(layer, ps._Group) else 1 for _, layer in groups)
    assert sizes == ([3, 3, 4, 4, 5] if workers == 1 else [1, 1, 2, 2, 2, 2, 2, 2, 2, 3])  # a layer alone is no group
    grouped = ps.SpectralPass(workers=workers, keep_evals=True).analyse(layers)
    monkeypatch.setattr(ps, "GROUP_LAYER_ELEMENTS", -1)
    alone = ps.SpectralPass(workers=workers, keep_evals=True).analyse(layers)
    assert _hex_rows(grouped.rows) == _hex_rows(alone.rows)
    assert [list(r) for r in grouped.rows] == [list(r) for r in alone.rows]  # the columns' order too
    assert all(np.array_equal(a, b) for a, b in zip(grouped.eigenvalues, alone.eigenvalues, strict=True))
    statuses = {r["name"]: r["fit_status"] for r in grouped.rows}
    assert statuses["conv4"].startswith("degenerate") and statuses["pointwise3"].startswith("degenerate")
    assert statuses["small0"] == "success" and grouped.rows[0]["num_evals"] == 48 * 9
    assert grouped.rows[2]["warning"] == "non-finite"
    for name, w in weights.items():
        row = next(r for r in grouped.rows if r["name"] == name.removesuffix(".weight"))
        if row["fit_status"] != "success":
            continue
        ref = _reference_row(np.asarray(w, np.float32), 0.5 if w.ndim == 4 else 1.0)
        assert {k: row[k] for k in ref} == ref, name


def test_layers_of_one_gram_size_are_grouped_across_heights(monkeypatch):
    """On the Gram route layers of one M and rf but different N (VGG's conv 64->64 and 64->128, ResNet's
    1x1 256->128 and 128->512) are one group, and each row keeps its own N and equals, bit for bit, the
    pass one layer at a time, at every M (30 x 10 and 40 x 10 too); `--method svd` groups by shape alone."""
    import irtools.passes.spectral as ps

    from frontends.formats.common import StoredArray
    from frontends.formats.layers import weight_layers

    rng = np.random.default_rng(21)
    shapes = [(64, 48, 3, 3), (96, 48, 3, 3), (48, 80, 3, 3), (64, 48, 3, 3), (128, 40, 1, 1), (40, 72, 1, 1),
              (30, 10), (40, 10), (30, 10)]
    weights = {f"l{j}.weight": (rng.standard_t(4, shape) / math.sqrt(shape[1])).astype(np.float32)
               for j, shape in enumerate(shapes)}
    layers = weight_layers({k: StoredArray(v.shape, v.dtype, lambda v=v: v) for k, v in weights.items()})
    groups = ps.group_small_layers(list(enumerate(layers)), 1)
    members = sorted(sorted(k for k, _ in layer.items) for _, layer in groups if isinstance(layer, ps._Group))
    assert members == [[0, 1, 2, 3], [4, 5], [6, 7, 8]]
    svd = ps.group_small_layers(list(enumerate(layers)), 1, "svd")
    assert sorted(sorted(k for k, _ in layer.items) for _, layer in svd if isinstance(layer, ps._Group)) == [
        [0, 3], [6, 8]]
    grouped = ps.SpectralPass(workers=1, keep_evals=True).analyse(layers)
    assert [r["N"] for r in grouped.rows] == [64, 96, 80, 64, 128, 72, 30, 40, 30]
    monkeypatch.setattr(ps, "GROUP_LAYER_ELEMENTS", -1)
    alone = ps.SpectralPass(workers=1, keep_evals=True).analyse(layers)
    assert _hex_rows(grouped.rows) == _hex_rows(alone.rows)
    assert all(np.array_equal(a, b) for a, b in zip(grouped.eigenvalues, alone.eigenvalues, strict=True))


def test_stacked_spectra_are_each_matrixs_own_or_none():
    """`stacked_spectra` (the group path's eigensolve) gives each matrix the eigenvalues and noise floor
    of `squared_singular_values` alone, bit for bit, on both routes and for wide matrices; None for
    matrices of different shapes or with a NaN (those are solved one at a time)."""
    from irtools.backends.base import EigenBackend
    from irtools.backends.cpu import CPUBackend, stacked_spectra

    rng = np.random.default_rng(12)
    for shape in ((64, 3), (200, 40), (40, 200), (96, 96)):
        mats = [rng.standard_normal(shape).astype(np.float32) for _ in range(6)]
        ev, floors = stacked_spectra(mats)
        for k, w in enumerate(mats):
            alone = squared_singular_values(w)
            assert np.array_equal(ev[k], alone.evals) and floors[k] == alone.noise_floor, shape
        assert np.array_equal(CPUBackend().stacked_spectra(mats)[0], ev)
    assert stacked_spectra([rand(50, 40), rand(40, 50), rand(50, 41)]) is None
    # the Gram route needs one Gram size only: matrices of several heights, each its own floor
    mixed = [rand(50, 40), rand(40, 70), rand(90, 40), rand(50, 40)]
    ev, floors = stacked_spectra(mixed)
    for k, w in enumerate(mixed):
        alone = squared_singular_values(w)
        assert np.array_equal(ev[k], alone.evals) and floors[k] == alone.noise_floor, k
    assert stacked_spectra([rand(50, 10), rand(60, 10)], "svd") is None  # the SVD route: one shape only
    broken = [rand(50, 40) for _ in range(3)]
    broken[1][3, 3] = np.nan
    assert stacked_spectra(broken) is None and stacked_spectra([]) is None
    wide = [rand(300, 200) for _ in range(3)]  # a Gram of 320 KB: one per LAPACK call
    wide[2][0, 0] = np.inf
    assert stacked_spectra(wide) is None
    assert EigenBackend.stacked_spectra(CPUBackend(), broken) is None  # the default: nothing stacked


def test_summary_means_are_numpys_means():
    """The summary's means (`_mean`, numpy's sum divided by the count) equal `np.mean` bit for bit."""
    from irtools.passes.spectral.metrics import _mean, summarize

    rng = np.random.default_rng(13)
    for n in [*range(1, 40), 100, 257]:
        vals = (rng.standard_normal(n) * 10 ** rng.uniform(-6, 6, n)).tolist()
        assert _mean(vals) == float(np.mean(vals)), n
    rows = [{"alpha": a, "log_norm": 1.0 / (k + 3), "fit_status": "success"}
            for k, a in enumerate([2.5, math.nan, 3.25, 4.0])]
    summary = summarize(rows)
    assert summary["alpha"] == float(np.mean([2.5, 3.25, 4.0])) and summary["alpha_layers"] == 3
    assert summary["log_norm"] == float(np.mean([1 / 3, 1 / 4, 1 / 5, 1 / 6]))
    assert math.isnan(summary["stable_rank"]) and summary["stable_rank_layers"] == 0


def test_plain_rows_shortcut_gives_the_general_codes_bits():
    """`layer_metrics`' shortcut for the plain standard fit (one sorted tail slice, searches for the counts,
    ufunc reductions) gives every column the general code gives from `fit_power_law`'s fit, exactly, on
    spectra of many sizes, scales and tails: rank-deficient ones (zeros under the cut), heavy and light
    tails, a scale near the cut; and the cases it does not take (too few above the cut, degenerate) are
    the general code's."""
    from irtools.passes.spectral.metrics import _plain_row, layer_metrics
    from irtools.passes.spectral.powerlaw import fit_power_law

    rng = np.random.default_rng(11)
    taken = 0
    for k in range(300):
        m = int(rng.integers(10, 400))
        n = m + int(rng.integers(0, 300))
        w = rng.standard_t(float(rng.choice([2.5, 4, 30])), (n, m)) * 10.0 ** rng.uniform(-3, 2)
        if k % 5 == 0:  # rank-deficient: zero eigenvalues (and round-off ones) under the cut
            w[:, : m // 3] = w[:, m // 3: 2 * (m // 3)]
        evals = np.sort(squared_singular_values(w).evals)
        if k % 7 == 0:
            evals = np.sort(np.concatenate([evals, np.zeros(5)]))
        args = (evals, n, m, 1e-10 * float(evals[-1]), m)
        fast = layer_metrics(*args, presorted=True)
        general = layer_metrics(*args, fit=fit_power_law(evals))
        assert fast == general, k
        taken += _plain_row(*args) is not None
    assert taken > 250  # the shortcut is the common case
    # not taken: 12 eigenvalues above the cut (the small-sample rule), all equal, all zero
    for evals in (np.sort(rng.uniform(1, 2, 12)), np.full(30, 2.0), np.zeros(30)):
        assert _plain_row(evals, 30, 30, 0.0, 30) is None
    assert layer_metrics(np.full(30, 2.0), 30, 30, 0.0, 30, presorted=True)["warning"] == "degenerate"
    assert layer_metrics(np.zeros(30), 30, 30, 0.0, 30, presorted=True)["warning"] == "degenerate"
