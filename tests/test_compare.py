"""`irtools compare`: metrics per model, ranks and Kendall tau / R^2 against accuracies."""

import itertools
import json

import numpy as np
import pytest
from click.testing import CliRunner
from onnx import helper as h

import irtools
from irtools.cli import main
from tests import builders as b


def mlp_file(tmp_path, name, seed, width):
    rng = np.random.default_rng(seed)
    proto = b.model([h.make_node("MatMul", ["x", "w1"], ["a"]), h.make_node("Relu", ["a"], ["r"]),
                     h.make_node("MatMul", ["r", "w2"], ["y"])],
                    [b.vinfo("x", [1, 32])], [b.vinfo("y", [1, 16])],
                    [b.tensor("w1", rng.standard_t(3, size=(32, width)).astype(np.float32)),
                     b.tensor("w2", rng.standard_normal((width, 16)).astype(np.float32))])
    path = tmp_path / f"{name}.onnx"
    import onnx

    onnx.save(proto, str(path))
    return str(path)


def kendall_by_hand(x, y):
    pairs = list(itertools.combinations(range(len(x)), 2))
    s = sum(np.sign(x[i] - x[j]) * np.sign(y[i] - y[j]) for i, j in pairs)
    return s / len(pairs)


def test_compare_scores_metrics_against_accuracies(tmp_path):
    paths = [mlp_file(tmp_path, f"m{k}", k, w) for k, w in enumerate((24, 40, 64, 96))]
    accuracies = {"m0": 70.0, "m1": 74.0, "m2": 71.5, "m3": 77.0}
    res = CliRunner().invoke(main, ["compare", *paths, *[f"--accuracy={k}={v}" for k, v in accuracies.items()],
                                    "--format", "json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    rows = data["models"]
    for path, row in zip(paths, rows, strict=True):  # the same numbers as analysing each model alone
        a = irtools.analyze(path)
        assert row["alpha"] == pytest.approx(a.summary["alpha"]) and row["P_G"] == pytest.approx(
            a.reuse["performance_surprisal"])
        assert row["accuracy"] == accuracies[path.rsplit("/", 1)[1][:-5]]
    acc = np.array([r["accuracy"] for r in rows])
    for metric in ("alpha", "log_norm", "P_G"):
        x = np.array([r[metric] for r in rows])
        assert data["scores"][metric]["kendall_tau"] == pytest.approx(kendall_by_hand(x, acc))
        r2 = np.corrcoef(x, acc)[0, 1] ** 2
        assert data["scores"][metric]["r2"] == pytest.approx(r2)
        assert data["ranks"][metric] == [p for _, p in sorted(zip(x, paths, strict=True), reverse=True)]
    res = CliRunner().invoke(main, ["compare", *paths[:2]])
    assert res.exit_code == 0 and "alpha_weighted" in res.stdout and "alpha_hat" not in res.stdout


def test_compare_bad_input(tmp_path):
    paths = [mlp_file(tmp_path, f"m{k}", k, 24) for k in range(2)]
    for args, message in (([paths[0]], "at least two models"),
                          ([*paths, "--accuracy", "nope=1"], "names no compared model"),
                          ([*paths, "--accuracy", "m0=high"], "expected NAME=VALUE")):
        res = CliRunner().invoke(main, ["compare", *args])
        assert res.exit_code == 2 and message in res.output, res.output


def test_compare_weights_files_in_keras_layout(tmp_path):
    """`--layout keras` reaches the analysis: (kh, kw, in, out) kernels are read as 16 x 32 slices."""
    paths = []
    for k in range(2):
        rng = np.random.default_rng(10 + k)
        path = tmp_path / f"w{k}.npz"
        np.savez(path, **{"conv/kernel": rng.standard_t(3, size=(3, 3, 16, 32)).astype(np.float32),
                          "dense/kernel": rng.standard_t(4, size=(32, 24)).astype(np.float32)})
        paths.append(str(path))
    res = CliRunner().invoke(main, ["compare", *paths, "--layout", "keras", "--format", "json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)["models"]
    for path, row in zip(paths, rows, strict=True):
        keras = irtools.analyze(path, layout="keras")
        torch = irtools.analyze(path, layout="torch")
        assert list(keras.details["N"]) != list(torch.details["N"])  # the layouts do read different matrices
        assert row["alpha"] == pytest.approx(keras.summary["alpha"], rel=1e-12)
