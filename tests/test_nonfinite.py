"""Issue #12: a NaN or Inf weight is a finding (warning non-finite, its count), not a crash."""

import json
import math

import numpy as np
import pytest
import scipy.linalg
from click.testing import CliRunner
from onnx import TensorProto as T
from onnx import helper as h

import irtools
from irtools.backends.cpu import squared_singular_values
from irtools.cli import main
from tests import builders as b

RNG = np.random.default_rng(12)


def chain(weights, elem=T.FLOAT):
    """x -> MatMul(w0) -> MatMul(w1) -> ... -> y, each node named after its weight."""
    nodes, prev = [], "x"
    for i, (name, _) in enumerate(weights):
        out = "y" if i == len(weights) - 1 else f"h{i}"
        nodes.append(h.make_node("MatMul", [prev, name], [out], name=name))
        prev = out
    first, last = weights[0][1], weights[-1][1]
    return b.model(nodes, [b.vinfo("x", [1, first.shape[0]], elem)], [b.vinfo("y", [1, last.shape[1]], elem)],
                   [b.tensor(n, w) for n, w in weights])


def poisoned(shape, nan=0, inf=0, dtype=np.float32):
    w = RNG.standard_normal(shape).astype(dtype)
    flat = w.reshape(-1)
    spots = RNG.choice(flat.size, nan + inf, replace=False)
    flat[spots[:nan]] = np.nan
    flat[spots[nan:]] = np.where(RNG.random(inf) < 0.5, np.inf, -np.inf)
    return w


@pytest.mark.parametrize("device", ["cpu", "torch-cpu"])
def test_non_finite_layers_are_flagged_and_the_rest_analysed(device):
    """On the CPU backend and on the CUDA backend's array code (torch's CPU device)."""
    clean_small = RNG.standard_normal((20, 16)).astype(np.float32)
    clean_big = RNG.standard_normal((64, 48)).astype(np.float32)
    weights = [("clean_small", clean_small),            # SVD route (smaller side < 32)
               ("nan_small", poisoned((16, 12), nan=1)),  # SVD route
               ("inf_big", poisoned((12, 64), inf=3)),     # Gram route
               ("mixed_big", poisoned((64, 40), nan=2, inf=5)),
               ("clean_big", clean_big)]
    model = irtools.load(chain(weights))
    irtools.get_pass("weights")(model)
    if device == "torch-cpu":
        pytest.importorskip("torch")
        from irtools.backends.cuda import CUDABackend

        device = CUDABackend(device="cpu")
    a = irtools.get_pass("spectral", backend=device)(model)
    rows = a.details().set_index("name")
    assert list(rows.warning[["nan_small", "inf_big", "mixed_big"]]) == ["non-finite"] * 3
    assert list(rows.num_nonfinite) == [0, 1, 3, 7, 0]
    for name in ("nan_small", "inf_big", "mixed_big"):
        row = rows.loc[name]
        assert math.isnan(row.alpha) and math.isnan(row.log_norm) and math.isnan(row.lambda_max)
        assert f"{row.num_nonfinite} non-finite" in row.fit_status
        assert row.N == max(dict(weights)[name].shape) and row.M == min(dict(weights)[name].shape)
    for name, w in (("clean_small", clean_small), ("clean_big", clean_big)):
        truth = np.sort(scipy.linalg.svd(w.astype(np.float64), compute_uv=False) ** 2)
        assert rows.loc[name, "lambda_max"] == pytest.approx(truth[-1], rel=1e-12)
        assert rows.loc[name, "num_nonfinite"] == 0 and rows.loc[name, "fit_status"] == "success"
    summary = a.summary
    assert summary["warnings"]["non-finite"] == 3 and summary["layers"] == 5
    assert summary["alpha_layers"] == 2 and summary["log_norm_layers"] == 2
    assert summary["alpha"] == pytest.approx(rows.alpha[["clean_small", "clean_big"]].mean())


@pytest.mark.parametrize("method", ["svd", "gram"])
def test_backend_returns_nan_spectra_for_non_finite_matrices(method):
    for w in (poisoned((30, 20), nan=1), poisoned((20, 30), inf=1), poisoned((40, 40), nan=1, inf=1, dtype=np.float64)):
        sp = squared_singular_values(w, method)
        assert sp.evals.shape == (min(w.shape),) and np.isnan(sp.evals).all()


def test_blocked_gram_of_large_float32_weights_with_inf(monkeypatch):
    """Large float32 weights take the block-accumulated Gram route; an Inf is still caught."""
    from irtools.backends import cpu

    monkeypatch.setattr(cpu, "_BLOCKED_GRAM_ELEMENTS", 1000)
    monkeypatch.setattr(cpu, "_BLOCK_ELEMENTS", 1000)
    for w in (poisoned((300, 40), inf=1), poisoned((40, 300), nan=1).T):
        assert np.isnan(squared_singular_values(w, "gram").evals).all()
    assert np.isfinite(squared_singular_values(RNG.standard_normal((300, 40)).astype(np.float32), "gram").evals).all()


def test_conv_with_one_nan_and_float64_overflow():
    """A pooled conv layer with one NaN in one kernel position; float64 weights whose Gram
    overflows are flagged too (count 0, the reason says overflow)."""
    conv = RNG.standard_normal((24, 12, 3, 3)).astype(np.float32)
    conv[5, 3, 2, 1] = np.nan
    proto = b.model([h.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3, 3], name="conv")],
                    [b.vinfo("x", [1, 12, 5, 5])], [b.vinfo("y", [1, 24, 3, 3])], [b.tensor("w", conv)])
    (row,) = irtools.analyze(proto, metrics="spectral").layers
    assert (row["warning"], row["num_nonfinite"], row["num_evals"]) == ("non-finite", 1, 108)
    big = RNG.standard_normal((40, 36)) * 1e200
    (row,) = irtools.analyze(chain([("big", big)], T.DOUBLE), metrics="spectral").layers
    assert row["warning"] == "non-finite" and row["num_nonfinite"] == 0 and "overflows" in row["fit_status"]


def test_cli_reports_non_finite_layers(tmp_path, save):
    path = save(chain([("good", RNG.standard_normal((40, 36)).astype(np.float32)),
                       ("bad", poisoned((36, 30), nan=4))]))
    out = tmp_path / "a.json"
    res = CliRunner().invoke(main, ["analyze", path, "--metrics", "spectral", "--format", "json", "-o", str(out)])
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    bad = [r for r in data["layers"] if r["name"] == "bad"][0]
    assert bad["warning"] == "non-finite" and bad["num_nonfinite"] == 4 and bad["alpha"] is None
    assert data["summary"]["warnings"]["non-finite"] == 1 and data["summary"]["alpha_layers"] == 1
    res = CliRunner().invoke(main, ["analyze", path, "--metrics", "spectral"])
    assert res.exit_code == 0 and "non-finite" in res.output


def test_html_report_and_kept_eigenvalues_with_a_non_finite_layer(tmp_path, save):
    """Reports that plot every layer's ESD get an empty spectrum for the non-finite layer."""
    path = save(chain([("good", RNG.standard_normal((40, 36)).astype(np.float32)),
                       ("bad", poisoned((36, 30), inf=2))]))
    a = irtools.analyze(path, metrics="spectral", keep_eigenvalues=True)
    assert [e.size for e in a.eigenvalues] == [36, 0]
    out = tmp_path / "r.html"
    res = CliRunner().invoke(main, ["report", path, "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert "non-finite" in out.read_text()
