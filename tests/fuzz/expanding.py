"""Small ONNX files that declare huge work (issue #23): shape-expanding ops of constants, constant
doubling chains, unbounded loops, nested branches, model-local functions that call each other
twice, and long chains. Each builder returns a ModelProto of at most a few MB; what it declares
(elements, nodes, iterations) is a parameter, so the fuzz suite can draw it and the explicit
tests can take the sizes the campaign used."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

OPSET = 17


def _model(nodes, extra_outputs=(), initializers=(), functions=(), opset: int = OPSET, extra_opsets=(),
           weight: str | None = None) -> onnx.ModelProto:
    """x[1, 4] -> Relu -> y, beside `nodes` whose values `extra_outputs` (name, elem) are outputs too;
    with `weight`, also MatMul(x, weight) -> out: the computed constant is read as a layer's weight,
    so the weights pass evaluates it (a value of shape [4, N])."""
    nodes = [h.make_node("Relu", ["x"], ["y"], name="relu"), *nodes]
    outputs = [h.make_tensor_value_info("y", T.FLOAT, [1, 4])]
    outputs += [h.make_tensor_value_info(name, elem, None) for name, elem in extra_outputs]
    if weight is not None:
        nodes.append(h.make_node("MatMul", ["x", weight], ["out"], name="dense"))
        outputs.append(h.make_tensor_value_info("out", T.FLOAT, None))
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, [1, 4])], outputs, list(initializers))
    m = h.make_model(g, opset_imports=[h.make_opsetid("", opset), *extra_opsets], functions=list(functions))
    m.ir_version = 8
    return m


def _ints(name: str, values) -> onnx.NodeProto:
    return h.make_node("Constant", [], [name], value=nh.from_array(np.asarray(values, np.int64), name))


def _as_weight(nodes, value: str, numel: int) -> list:
    """`nodes` and a Reshape of `value` (numel elements) to [4, numel / 4], named "big"."""
    return [*nodes, _ints("rows", [4, max(numel // 4, 1)]), h.make_node("Reshape", [value, "rows"], ["big"],
                                                                         name="as_weight")]


def constant_of_shape(dims=(4, 1 << 28)) -> onnx.ModelProto:
    """ConstantOfShape of a constant shape, read as a weight: 4 GiB from 200 bytes by default."""
    return _model([_ints("shape", list(dims)), h.make_node("ConstantOfShape", ["shape"], ["big"], name="cos")],
                  weight="big")


def expand(dims=(4, 1 << 28)) -> onnx.ModelProto:
    one = h.make_node("Constant", [], ["one"], value=nh.from_array(np.ones((1, 1), np.float32), "one"))
    return _model([one, _ints("shape", list(dims)), h.make_node("Expand", ["one", "shape"], ["big"], name="expand")],
                  weight="big")


def tile(repeats=(4, 1 << 28)) -> onnx.ModelProto:
    one = h.make_node("Constant", [], ["one"], value=nh.from_array(np.ones((1, 1), np.float32), "one"))
    return _model([one, _ints("reps", list(repeats)), h.make_node("Tile", ["one", "reps"], ["big"], name="tile")],
                  weight="big")


def window(op: str = "HannWindow", size: int = 1 << 30) -> onnx.ModelProto:
    nodes = _as_weight([_ints("n", size), h.make_node(op, ["n"], ["win"], name="window")], "win", size)
    return _model(nodes, weight="big")


def range_op(limit: int = 1 << 30) -> onnx.ModelProto:
    consts = [h.make_node("Constant", [], [n], value=nh.from_array(np.array(v, np.float32), n))
              for n, v in (("start", 0.0), ("limit", float(limit)), ("delta", 1.0))]
    nodes = _as_weight([*consts, h.make_node("Range", ["start", "limit", "delta"], ["r"], name="range")], "r", limit)
    return _model(nodes, weight="big")


def matmul_of_vectors(n: int = 20_000) -> onnx.ModelProto:
    """[n, 1] @ [1, n] of stored constants: 8n bytes of file, n^2 elements of output."""
    rng = np.random.default_rng(0)
    a = nh.from_array(rng.standard_normal((n, 1)).astype(np.float32), "a")
    b = nh.from_array(rng.standard_normal((1, n)).astype(np.float32), "b")
    nodes = _as_weight([h.make_node("MatMul", ["a", "b"], ["outer"], name="outer")], "outer", n * n)
    return _model(nodes, initializers=[a, b], weight="big")


def concat_doubling(times: int = 30, start: int = 256) -> onnx.ModelProto:
    """c0 a [4, start] constant, c(k+1) = Concat(ck, ck) on axis 1: 4 start 2^times elements."""
    nodes = [h.make_node("Constant", [], ["c0"], value=nh.from_array(np.ones((4, start), np.float32), "c0"))]
    for k in range(times):
        nodes.append(h.make_node("Concat", [f"c{k}", f"c{k}"], [f"c{k + 1}"], name=f"double{k}", axis=1))
    return _model(nodes, weight=f"c{times}")


def loop(trip_count: int = 1 << 62) -> onnx.ModelProto:
    """A Loop of `trip_count` iterations (a constant) whose body adds one to a carried [1, 4]."""
    body = h.make_graph(
        [h.make_node("Identity", ["cond_in"], ["cond_out"]), h.make_node("Add", ["v_in", "one"], ["v_out"])],
        "body",
        [h.make_tensor_value_info("i", T.INT64, []), h.make_tensor_value_info("cond_in", T.BOOL, []),
         h.make_tensor_value_info("v_in", T.FLOAT, [1, 4])],
        [h.make_tensor_value_info("cond_out", T.BOOL, []), h.make_tensor_value_info("v_out", T.FLOAT, [1, 4])],
        [nh.from_array(np.ones((1, 4), np.float32), "one")])
    nodes = [_ints("trip", trip_count),
             h.make_node("Constant", [], ["cond"], value=nh.from_array(np.array(True), "cond")),
             h.make_node("Loop", ["trip", "cond", "x"], ["looped"], name="loop", body=body)]
    return _model(nodes, [("looped", T.FLOAT)])


def nested_if(depth: int = 16) -> onnx.ModelProto:
    """An If whose two branches are Ifs, `depth` levels: 2^depth leaves (a complete binary tree)."""
    counter = iter(range(1 << 30))

    def branch(level: int) -> onnx.GraphProto:
        k = next(counter)
        if level == 0:
            nodes = [h.make_node("Add", ["x", "x"], [f"leaf{k}"])]
        else:
            nodes = [h.make_node("If", ["cond"], [f"leaf{k}"], then_branch=branch(level - 1),
                                 else_branch=branch(level - 1))]
        return h.make_graph(nodes, f"b{k}", [], [h.make_tensor_value_info(f"leaf{k}", T.FLOAT, [1, 4])])

    cond = h.make_node("ReduceSum", ["x"], ["s"], keepdims=0)
    greater = [h.make_node("Constant", [], ["zero"], value=nh.from_array(np.array(0, np.float32), "zero")),
               h.make_node("Greater", ["s", "zero"], ["cond"])]
    top = h.make_node("If", ["cond"], ["branched"], name="if", then_branch=branch(depth - 1),
                      else_branch=branch(depth - 1))
    return _model([cond, *greater, top], [("branched", T.FLOAT)])


def doubling_functions(depth: int = 41, domain: str = "local") -> onnx.ModelProto:
    """Model-local functions f0(x) = Relu(x), fk(x) = f(k-1)(f(k-1)(x)): the graph calls f(depth-1),
    which inlines to 2^(depth-1) nodes from a file of a few KB."""
    functions = [h.make_function(domain, "f0", ["a"], ["b"], [h.make_node("Relu", ["a"], ["b"])],
                                 [h.make_opsetid("", OPSET)])]
    for k in range(1, depth):
        functions.append(h.make_function(
            domain, f"f{k}", ["a"], ["b"],
            [h.make_node(f"f{k - 1}", ["a"], ["t"], domain=domain),
             h.make_node(f"f{k - 1}", ["t"], ["b"], domain=domain)],
            [h.make_opsetid("", OPSET), h.make_opsetid(domain, 1)]))
    call = h.make_node(f"f{depth - 1}", ["x"], ["called"], name="call", domain=domain)
    return _model([call], [("called", T.FLOAT)], functions=functions, extra_opsets=[h.make_opsetid(domain, 1)])


def chain(length: int = 1_000_000) -> onnx.ModelProto:
    """x -> Relu -> Relu -> ... (`length` nodes) -> y: about 25 bytes a node."""
    nodes = [h.make_node("Relu", ["x" if k == 0 else f"v{k - 1}"], [f"v{k}" if k < length - 1 else "y"])
             for k in range(length)]
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, [1, 4])],
                     [h.make_tensor_value_info("y", T.FLOAT, [1, 4])])
    m = h.make_model(g, opset_imports=[h.make_opsetid("", OPSET)])
    m.ir_version = 8
    return m


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def chain_bytes(length: int = 1_000_000) -> bytes:
    """`chain(length)` serialised, written field by field (a million `make_node` calls take ~10 s):
    the same bytes onnx writes for it, checked against `chain(n).SerializeToString()` in the tests."""
    proto = chain(1)
    head = proto.SerializeToString()
    graph = proto.graph
    tail = b"".join(_field(f, x.SerializeToString()) for f, xs in ((11, graph.input), (12, graph.output)) for x in xs)
    names = [b"x", *(b"v%d" % k for k in range(length - 1)), b"y"]  # a name is under 128 bytes: 1-byte lengths
    nodes = b"".join(b"\x0a%c\x0a%c%s\x12%c%s\x22\x04Relu" % (10 + len(a) + len(b), len(a), a, len(b), b)
                     for a, b in zip(names, names[1:]))
    body = nodes + _field(2, graph.name.encode()) + tail
    rest = head[:head.index(_field(7, graph.SerializeToString()))]
    after = head[len(rest) + len(_field(7, graph.SerializeToString())):]
    return rest + _field(7, body) + after


def negative_constant_of_shape() -> onnx.ModelProto:
    """ConstantOfShape of a negative dim: onnxruntime fails (and logs) when it is evaluated."""
    return constant_of_shape((-3, 4))


#: name -> (builder, keyword arguments at the campaign's size): every one declares far more work
#: than any default limit allows and must be refused, fast, on one line.
ATTACKS = {
    "constant_of_shape": (constant_of_shape, {}),
    "expand": (expand, {}),
    "tile": (tile, {}),
    "hann_window": (window, {"op": "HannWindow"}),
    "blackman_window": (window, {"op": "BlackmanWindow"}),
    "range": (range_op, {}),
    "matmul_of_vectors": (matmul_of_vectors, {}),
    "concat_doubling": (concat_doubling, {}),
    "loop_2_62": (loop, {}),
    "nested_if": (nested_if, {}),
    "doubling_functions": (doubling_functions, {}),
    "chain": (chain, {}),
}
