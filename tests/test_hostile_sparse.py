"""Sparse tensors (found by the held-out sweep): a sparse initializer used to be dropped by the
IR without a word, and its values and indices were never checked. Now it becomes the dense
initializer it stands for, once its indices are checked; compared here with the dense array
written out by hand, and with the same model stored dense."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

import irtools
from irtools.errors import ModelLoadError, UnsupportedError
from tests.fuzz import formats as f

VALUES = np.array([1.5, -2.0, 3.25, 4.0], np.float32)
#: (row, col) of each value in the 12 x 12 weight: the dense truth is built from these by hand.
COORDS = [(0, 0), (3, 7), (7, 3), (11, 11)]


def _dense_truth() -> np.ndarray:
    w = np.zeros((12, 12), np.float32)
    for (r, c), v in zip(COORDS, VALUES, strict=True):
        w[r, c] = v
    return w


def _sparse_model(indices: np.ndarray, dims=(12, 12)) -> onnx.ModelProto:
    proto = f.onnx_model()
    del proto.graph.initializer[:]
    sparse = h.make_sparse_tensor(nh.from_array(VALUES, "w"), nh.from_array(indices.astype(np.int64), ""), list(dims))
    proto.graph.sparse_initializer.append(sparse)
    return proto


def _weight(model) -> np.ndarray:
    return np.asarray(model.model.graph.initializers["w"].const_value.numpy())


@pytest.mark.parametrize("form", ["linear", "coordinates"])
def test_a_sparse_initializer_loads_as_its_dense_tensor(tmp_path, form):
    coords = np.array(COORDS)
    indices = coords[:, 0] * 12 + coords[:, 1] if form == "linear" else coords
    path = f.save_onnx(_sparse_model(indices), str(tmp_path / "m.onnx"))
    np.testing.assert_array_equal(_weight(irtools.load(path)), _dense_truth())


def test_a_sparse_initializer_is_analysed_like_the_dense_one(tmp_path):
    coords = np.array(COORDS)
    sparse = f.save_onnx(_sparse_model(coords[:, 0] * 12 + coords[:, 1]), str(tmp_path / "sparse.onnx"))
    dense_proto = f.onnx_model()
    dense_proto.graph.initializer[0].CopyFrom(nh.from_array(_dense_truth(), "w"))
    dense = f.save_onnx(dense_proto, str(tmp_path / "dense.onnx"))
    got, want = (irtools.analyze(p, metrics="spectral", min_evals=1).details for p in (sparse, dense))
    assert list(got["name"]) == list(want["name"]) and len(got) == 1
    np.testing.assert_allclose(got["log_norm"], want["log_norm"], rtol=1e-12)


def test_a_constant_sparse_value_becomes_a_dense_value(tmp_path):
    coords = np.array(COORDS)
    sparse = h.make_sparse_tensor(nh.from_array(VALUES, "c"), nh.from_array(coords[:, 0] * 12 + coords[:, 1], ""),
                                  [12, 12])
    nodes = [h.make_node("Constant", [], ["w"], sparse_value=sparse), h.make_node("MatMul", ["x", "w"], ["m"]),
             h.make_node("Relu", ["m"], ["y"])]
    proto = f.onnx_model(nodes=nodes)
    del proto.graph.initializer[:]
    model = irtools.load(f.save_onnx(proto, str(tmp_path / "m.onnx")))
    node = next(n for n in model.model.graph if n.op_type == "Constant")
    assert list(node.attributes) == ["value"]
    np.testing.assert_array_equal(node.attributes["value"].value.numpy(), _dense_truth())


@pytest.mark.parametrize("indices, dims, error, message", [
    (np.array([0, 1, 2, 144]), (12, 12), ModelLoadError, "index outside its 144 elements"),
    (np.array([0, 1, 2, -1]), (12, 12), ModelLoadError, "index outside"),
    (np.array([[0, 0], [1, 1], [2, 12], [3, 3]]), (12, 12), ModelLoadError, "index outside its dims"),
    (np.array([0, 1, 2]), (12, 12), ModelLoadError, "indices of shape [3] for 4 values"),
    (np.array([0, 1, 2, 3]), (12, -12), ModelLoadError, "negative dimension"),
])
def test_sparse_tensors_whose_indices_lie_are_refused(tmp_path, indices, dims, error, message):
    path = f.save_onnx(_sparse_model(indices, dims), str(tmp_path / "m.onnx"))
    with pytest.raises(error, match=message.replace("[", r"\[").replace("]", r"\]")):
        irtools.load(path)


def test_a_sparse_tensor_of_strings_is_unsupported(tmp_path):
    proto = _sparse_model(np.arange(4))
    proto.graph.sparse_initializer[0].values.CopyFrom(h.make_tensor("w", T.STRING, [4], [b"a"] * 4))
    with pytest.raises(UnsupportedError, match="strings"):
        irtools.load(f.save_onnx(proto, str(tmp_path / "m.onnx")))
