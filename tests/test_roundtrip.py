"""Saving the IR back to ONNX: the checker accepts it and onnxruntime gives identical outputs."""

import hashlib
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import irtools
from tests import builders as b
from tests.conftest import EXAMPLE, LIGHT_MODELS


def outputs(path_or_bytes, feeds):
    sess = ort.InferenceSession(path_or_bytes, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def random_feeds(model: irtools.IRModel, rng, fixed=None):
    feeds = {}
    for v in model.inputs:
        shape = (fixed or {}).get(v.name) or model.static_shape(v)
        feeds[v.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


CASES = {
    "example": lambda tmp: EXAMPLE,
    "resnet50": lambda tmp: next(p for p in LIGHT_MODELS if p.endswith("light_resnet50.onnx")),
    "densenet121": lambda tmp: next(p for p in LIGHT_MODELS if p.endswith("light_densenet121.onnx")),
    "if": lambda tmp: _write(b.if_model(), tmp / "if.onnx"),
    "constant-nodes": lambda tmp: _write(b.constant_node_model(), tmp / "const.onnx"),
}


def _write(proto, path):
    onnx.save(proto, str(path))
    return str(path)


@pytest.mark.parametrize("case", list(CASES))
def test_save_round_trip_identical_outputs(tmp_path, case):
    src = CASES[case](tmp_path)
    before = hashlib.sha256(open(src, "rb").read()).hexdigest()
    m = irtools.load(src)
    out = tmp_path / "saved.onnx"
    m.save(str(out))
    onnx.checker.check_model(str(out), full_check=True)
    rng = np.random.default_rng(0)
    fixed = {"image": (3, 1, 8, 8)} if case == "example" else None
    for _ in range(2 if case == "if" else 1):  # both If branches: sum(x) > 0 and < 0
        feeds = random_feeds(m, rng, fixed)
        if case == "if":
            feeds["x"] = np.abs(feeds["x"]) * (1 if _ == 0 else -1)
        for a, c in zip(outputs(src, feeds), outputs(str(out), feeds), strict=True):
            np.testing.assert_array_equal(a, c)
    # the saved model is the same model: same parameters under the same names
    again = irtools.load(str(out))
    assert [(p.name, p.shape) for p in again.parameters] == [(p.name, p.shape) for p in m.parameters]
    assert hashlib.sha256(open(src, "rb").read()).hexdigest() == before


def test_save_is_atomic_and_refuses_the_input(tmp_path):
    path = _write(b.mlp(), tmp_path / "m.onnx")
    m = irtools.load(path)
    with pytest.raises(irtools.IrtoolsError, match="overwrite the input"):
        m.save(path)
    with pytest.raises(irtools.IrtoolsError, match="does not exist"):
        m.save(str(tmp_path / "missing-dir" / "x.onnx"))
    assert sorted(os.listdir(tmp_path)) == ["m.onnx"]  # no temporary files left behind


def test_save_with_external_data(tmp_path):
    """Models too large for one protobuf are saved with their weights in OUT.data."""
    src = _write(b.mlp(), tmp_path / "m.onnx")
    out = tmp_path / "out" / "big.onnx"
    out.parent.mkdir()
    irtools.load(src).save(str(out), external_data_threshold=0)
    assert sorted(os.listdir(out.parent)) == ["big.onnx", "big.onnx.data"]
    onnx.checker.check_model(str(out), full_check=True)
    feeds = {"x": np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)}
    np.testing.assert_array_equal(outputs(src, feeds)[0], outputs(str(out), feeds)[0])
    again = irtools.load(str(out))
    assert all(p.value.const_value is not None for p in again.parameters)
