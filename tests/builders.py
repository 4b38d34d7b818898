"""Tiny hand-built ONNX models for the tests."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh


def tensor(name: str, array) -> onnx.TensorProto:
    return nh.from_array(np.asarray(array), name)


def vinfo(name: str, shape, elem=T.FLOAT) -> onnx.ValueInfoProto:
    return h.make_tensor_value_info(name, elem, shape)


def model(nodes, inputs, outputs, initializers=(), opset=17, **kw) -> onnx.ModelProto:
    graph = h.make_graph(list(nodes), "g", list(inputs), list(outputs), list(initializers))
    m = h.make_model(graph, opset_imports=[h.make_opsetid("", opset)], **kw)
    m.ir_version = 8
    return m


def mlp(rng=None, dyn_batch=False) -> onnx.ModelProto:
    """x[.,4] -> Gemm(W1 5x4, transB) -> Relu -> MatMul(W2 5x3) + b2 -> y."""
    rng = rng or np.random.default_rng(0)
    batch = "batch" if dyn_batch else 2
    return model(
        [
            h.make_node("Gemm", ["x", "fc1.weight", "fc1.bias"], ["h"], name="fc1", transB=1),
            h.make_node("Relu", ["h"], ["r"]),
            h.make_node("MatMul", ["r", "fc2.weight"], ["m"], name="fc2"),
            h.make_node("Add", ["m", "fc2.bias"], ["y"]),
        ],
        [vinfo("x", [batch, 4])],
        [vinfo("y", [batch, 3])],
        [
            tensor("fc1.weight", rng.normal(size=(5, 4)).astype(np.float32)),
            tensor("fc1.bias", rng.normal(size=5).astype(np.float32)),
            tensor("fc2.weight", rng.normal(size=(5, 3)).astype(np.float32)),
            tensor("fc2.bias", rng.normal(size=3).astype(np.float32)),
        ],
    )


def constant_node_model(rng=None) -> onnx.ModelProto:
    """Weights stored only as Constant nodes (as PP-OCR exports do), one passing a Transpose."""
    rng = rng or np.random.default_rng(1)
    w = rng.normal(size=(3, 4)).astype(np.float32)  # stored (out, in), transposed before use
    b = rng.normal(size=3).astype(np.float32)
    return model(
        [
            h.make_node("Constant", [], ["w_stored"], name="const_w", value=tensor("w_stored", w)),
            h.make_node("Transpose", ["w_stored"], ["w_t"], perm=[1, 0]),
            h.make_node("Constant", [], ["b"], name="const_b", value=tensor("b", b)),
            h.make_node("Constant", [], ["two"], value_float=2.0),
            h.make_node("MatMul", ["x", "w_t"], ["m"], name="dense"),
            h.make_node("Add", ["m", "b"], ["a"], name="bias_add"),
            h.make_node("Mul", ["a", "two"], ["y"], name="scale"),
        ],
        [vinfo("x", [1, 4])],
        [vinfo("y", [1, 3])],
    )


def if_model(rng=None) -> onnx.ModelProto:
    """Weights inside If branches: a branch initializer, a branch Constant node and an outer weight."""
    rng = rng or np.random.default_rng(2)
    then_w = rng.normal(size=(4, 3)).astype(np.float32)
    else_w = rng.normal(size=(4, 3)).astype(np.float32)
    outer = rng.normal(size=3).astype(np.float32)
    then_g = h.make_graph(
        [h.make_node("MatMul", ["x", "then.weight"], ["t0"], name="then_mm"),
         h.make_node("Add", ["t0", "shared.bias"], ["t1"], name="then_add")],
        "then_branch", [], [vinfo("t1", [1, 3])], [tensor("then.weight", then_w)],
    )
    else_g = h.make_graph(
        [h.make_node("Constant", [], ["else.weight"], name="else_const", value=tensor("else.weight", else_w)),
         h.make_node("MatMul", ["x", "else.weight"], ["e0"], name="else_mm"),
         h.make_node("Add", ["e0", "shared.bias"], ["e1"], name="else_add")],
        "else_branch", [], [vinfo("e1", [1, 3])],
    )
    return model(
        [h.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
         h.make_node("Greater", ["s", "zero"], ["cond"]),
         h.make_node("If", ["cond"], ["y"], name="branch", then_branch=then_g, else_branch=else_g)],
        [vinfo("x", [1, 4])],
        [vinfo("y", [1, 3])],
        [tensor("zero", np.float32(0.0)), tensor("shared.bias", outer)],
    )
