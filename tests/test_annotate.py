"""`irtools annotate`: metrics land in the node and model metadata; the model is otherwise unchanged."""

from __future__ import annotations

import json
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import helper as h
from onnx import numpy_helper as nh

from irtools.cli import main
from tests.builders import model, tensor, vinfo
from tests.conftest import EXAMPLE


def run(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def props(obj) -> dict[str, str]:
    return {p.key: p.value for p in obj.metadata_props}


def dense_model(rng=None) -> onnx.ModelProto:
    """x[2,32] -> Gemm(W1 64x32, transB) -> Relu -> MatMul(W2 64x4) -> y; W2 has 4 eigenvalues (skipped)."""
    rng = rng or np.random.default_rng(3)
    m = model(
        [
            h.make_node("Gemm", ["x", "fc1.weight", "fc1.bias"], ["h"], name="fc1", transB=1),
            h.make_node("Relu", ["h"], ["r"], name="act"),
            h.make_node("MatMul", ["r", "fc2.weight"], ["y"], name="fc2"),
        ],
        [vinfo("x", [2, 32])],
        [vinfo("y", [2, 4])],
        [
            tensor("fc1.weight", (rng.standard_normal((64, 32)) ** 3).astype(np.float32)),
            tensor("fc1.bias", rng.standard_normal(64).astype(np.float32)),
            tensor("fc2.weight", rng.standard_normal((64, 4)).astype(np.float32)),
        ],
    )
    onnx.helper.set_model_props(m, {"author": "tests"})
    return m


def assert_same_model(a: onnx.ModelProto, b: onnx.ModelProto) -> None:
    """Same nodes (op, name, inputs, outputs, attributes), inputs, outputs and bit-equal weights."""
    for na, nb in zip(a.graph.node, b.graph.node, strict=True):
        assert (na.op_type, na.name, list(na.input), list(na.output)) == (nb.op_type, nb.name, list(nb.input),
                                                                           list(nb.output))
        assert [x.SerializeToString() for x in na.attribute] == [x.SerializeToString() for x in nb.attribute]
    assert [i.SerializeToString() for i in a.graph.input] == [i.SerializeToString() for i in b.graph.input]
    assert [o.SerializeToString() for o in a.graph.output] == [o.SerializeToString() for o in b.graph.output]
    wa = {t.name: nh.to_array(t) for t in a.graph.initializer}
    wb = {t.name: nh.to_array(t) for t in b.graph.initializer}
    assert wa.keys() == wb.keys()
    for k in wa:
        assert wa[k].dtype == wb[k].dtype and np.array_equal(wa[k], wb[k]), k


def assert_same_outputs(a: str, b: str, feeds: dict) -> None:
    ra = ort.InferenceSession(a, providers=["CPUExecutionProvider"]).run(None, feeds)
    rb = ort.InferenceSession(b, providers=["CPUExecutionProvider"]).run(None, feeds)
    for x, y in zip(ra, rb, strict=True):
        assert np.array_equal(x, y)


def test_dense_metrics_match_numpy_and_model_is_unchanged(tmp_path, save):
    src = save(dense_model())
    before = open(src, "rb").read()
    out = str(tmp_path / "annotated.onnx")
    res = run("annotate", src, "-o", out)
    assert res.exit_code == 0, res.output
    assert open(src, "rb").read() == before  # the input is never modified
    ann = onnx.load(out)
    onnx.checker.check_model(ann, full_check=True)
    assert_same_model(onnx.load(src), ann)
    feeds = {"x": np.random.default_rng(0).standard_normal((2, 32)).astype(np.float32)}
    assert_same_outputs(src, out, feeds)

    nodes = {n.name: props(n) for n in ann.graph.node}
    fc1 = nodes["fc1"]
    w = nh.to_array(next(t for t in ann.graph.initializer if t.name == "fc1.weight")).astype(np.float64)
    ev = np.linalg.svd(w, compute_uv=False) ** 2  # independent: numpy's SVD of the stored weight
    assert fc1["irtools.parameter"] == "fc1.weight"
    assert (int(fc1["irtools.N"]), int(fc1["irtools.M"])) == (64, 32)
    assert float(fc1["irtools.lambda_max"]) == pytest.approx(ev.max(), rel=1e-10)
    assert float(fc1["irtools.log_spectral_norm"]) == pytest.approx(np.log10(ev.max()), rel=1e-10)
    assert float(fc1["irtools.log_norm"]) == pytest.approx(np.log10(ev.sum()), rel=1e-10)
    assert float(fc1["irtools.stable_rank"]) == pytest.approx(ev.sum() / ev.max(), rel=1e-10)
    assert int(fc1["irtools.matrix_rank"]) == 32
    alpha = float(fc1["irtools.alpha"])
    assert float(fc1["irtools.alpha_weighted"]) == pytest.approx(alpha * np.log10(ev.max()), rel=1e-10)
    # fc2 (4 eigenvalues) is skipped and says why; the activation gets nothing
    assert "eigenvalues" in nodes["fc2"]["irtools.skipped"] and "irtools.alpha" not in nodes["fc2"]
    assert not any(k.startswith("irtools.") for k in nodes["act"])
    # every parameter's consumer carries its context counts: fc1's weights reach 4 outputs per
    # sample through fc2 (a dense 64x4 matrix): log2 of 2 samples x 4 outputs = 3; fc2's weights
    # reach one output per sample: log2 2 = 1
    assert "min 3, mean 3, max 3;" in fc1["irtools.contexts.fc1.weight"]
    assert "min 1, mean 1, max 1;" in nodes["fc2"]["irtools.contexts.fc2.weight"]

    meta = props(ann)
    assert meta["author"] == "tests"  # metadata that was there stays
    summary = json.loads(meta["irtools.summary"])
    assert summary["alpha"] == pytest.approx(alpha) and summary["alpha_layers"] == 1
    assert float(meta["irtools.summary.alpha"]) == summary["alpha"]
    reuse = json.loads(meta["irtools.reuse"])
    assert reuse["num_params"] == 64 * 32 + 64 + 64 * 4
    assert "metrics on 1 nodes" in res.output and "1 skipped" in res.output


def test_example_metrics_round_trip_exactly_and_reannotation_replaces(tmp_path):
    import irtools

    out1, out2 = str(tmp_path / "a1.onnx"), str(tmp_path / "a2.onnx")
    assert run("annotate", EXAMPLE, "--input-shape", "image=1,1,8,8", "-o", out1).exit_code == 0
    analysis = irtools.analyze(EXAMPLE, input_shapes={"image": (1, 1, 8, 8)})
    ann = onnx.load(out1)
    nodes = {n.name: props(n) for n in ann.graph.node}
    assert len(analysis.details) == 4
    for row in analysis.details.to_dict(orient="records"):
        p = nodes[row["node"]]
        for col in ("alpha", "xmin", "D", "sigma", "log_norm", "stable_rank", "entropy"):
            assert float(p[f"irtools.{col}"]) == row[col], (row["node"], col)  # repr round-trips exactly
        assert p.get("irtools.warning", "") == row["warning"]
    # annotating the annotated model gives the same metadata, with no key twice
    assert run("annotate", out1, "--input-shape", "image=1,1,8,8", "-o", out2).exit_code == 0
    again = onnx.load(out2)
    for n1, n2 in zip(ann.graph.node, again.graph.node, strict=True):
        keys = [p.key for p in n2.metadata_props]
        assert len(keys) == len(set(keys)) and props(n1) == props(n2)
    assert props(ann) == props(again)
    x = np.random.default_rng(1).standard_normal((1, 1, 8, 8)).astype(np.float32)
    assert_same_outputs(EXAMPLE, out2, {"image": x})


def test_bad_inputs_are_one_line_errors_and_write_nothing(tmp_path, save):
    src = save(dense_model())
    res = run("annotate", src, "-o", src)
    assert res.exit_code == 2 and "overwrite the input" in res.output and len(res.output.strip().splitlines()) == 1
    out = str(tmp_path / "out.onnx")
    res = run("annotate", str(tmp_path / "missing.onnx"), "-o", out)
    assert res.exit_code == 2 and "no such file" in res.output
    weights = str(tmp_path / "w.npz")
    np.savez(weights, w=np.ones((8, 8), np.float32))
    res = run("annotate", weights, "-o", out)
    assert res.exit_code == 2 and "only weights" in res.output
    res = run("annotate", "pkg.module:build", "-o", out)  # any source with a graph is annotated once converted
    assert res.exit_code == 2 and "cannot load pkg.module:build" in res.output
    # a failure after the analysis started (reuse asked for, but the graph has an op with no
    # counting rule) leaves no file behind
    bad = model([h.make_node("Gemm", ["x", "w"], ["h"], name="fc", transB=1),
                 h.make_node("Frob", ["h"], ["v"], name="frob", domain="com.example")],
                [vinfo("x", [2, 16])], [vinfo("v", [2, 16])],
                [tensor("w", np.random.default_rng(0).standard_normal((16, 16)).astype(np.float32))])
    bad.opset_import.append(h.make_opsetid("com.example", 1))
    res = run("annotate", save(bad, "bad.onnx"), "--metrics", "spectral,reuse", "-o", out)
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1
    assert not os.path.exists(out)
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".irtools-")]


def test_any_source_with_a_graph_is_annotated_after_conversion(tmp_path):
    """annotate goes through the source table: a PyTorch factory is converted and written as annotated ONNX
    whose outputs are the module's own."""
    torch = pytest.importorskip("torch")
    factory = os.path.join(os.path.dirname(__file__), "data", "torch_models.py")
    out = str(tmp_path / "annotated.onnx")
    res = run("annotate", f"{factory}:small_cnn", "--input-shape", "x=1,3,16,16", "--no-limits", "-o", out)
    assert res.exit_code == 0, res.output
    m = onnx.load(out)
    assert {p.key for p in m.metadata_props} >= {"irtools.summary", "irtools.reuse"}
    keys = {p.key for n in m.graph.node for p in n.metadata_props}
    assert "irtools.alpha" in keys and any(k.startswith("irtools.contexts.") for k in keys)
    from tests.data.torch_models import small_cnn

    x = np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)
    with torch.no_grad():
        expected = small_cnn().eval()(torch.from_numpy(x)).numpy()
    got = ort.InferenceSession(out, providers=["CPUExecutionProvider"]).run(None, {m.graph.input[0].name: x})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
