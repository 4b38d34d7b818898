"""A second, deliberately naive implementation of context counting for the tests.

It unrolls a small ONNX model into an explicit scalar DAG (one node per activation element
and per parameter scalar, one edge per multiply-accumulate, written with plain loops per op
from the op's definition) and counts paths to the output scalars by memoised recursion, the
seed's `recursive_count` definition.
"""

from __future__ import annotations

import math
import sys
from collections import defaultdict

import numpy as np
import onnx
from onnx import numpy_helper as nh


def _attrs(node):
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def scalar_dag(proto: onnx.ModelProto):
    """Return (edges, params, outputs): edges[src] = list of dst scalar ids (with multiplicity)."""
    g = proto.graph
    inits = {t.name: nh.to_array(t) for t in g.initializer}
    shapes = {k: v.shape for k, v in inits.items()}
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        shapes.setdefault(vi.name, tuple(d.dim_value for d in vi.type.tensor_type.shape.dim))
    inferred = onnx.shape_inference.infer_shapes(proto)
    for vi in inferred.graph.value_info:
        shapes[vi.name] = tuple(d.dim_value for d in vi.type.tensor_type.shape.dim)
    edges: dict = defaultdict(list)

    def ids(name):
        return np.arange(math.prod(shapes[name])).reshape(shapes[name])

    def link(a, i, b, j):
        edges[(a, int(i))].append((b, int(j)))

    for node in g.node:
        at = _attrs(node)
        op, ins, out = node.op_type, list(node.input), node.output[0]
        y = ids(out)
        if op in ("Relu", "Identity", "Sigmoid"):
            for j in y.ravel():
                link(ins[0], j, out, j)
        elif op in ("Add", "Mul", "Sub"):
            for src in ins:
                xs = np.broadcast_to(ids(src), y.shape)
                for i, j in zip(xs.ravel(), y.ravel()):
                    link(src, i, out, j)
        elif op == "BatchNormalization":
            for j in y.ravel():
                link(ins[0], j, out, j)
            for (_, c, *_), j in np.ndenumerate(y):
                for p in ins[1:5]:
                    link(p, c, out, j)
        elif op in ("Conv", "MaxPool", "AveragePool"):
            x_shape = shapes[ins[0]]
            k = list(at["kernel_shape"]) if "kernel_shape" in at else list(shapes[ins[1]][2:])
            s = list(at.get("strides", [1] * len(k)))
            d = list(at.get("dilations", [1] * len(k)))
            p = list(at.get("pads", [0] * 2 * len(k)))
            groups = at.get("group", 1)
            cin, cout = x_shape[1], y.shape[1]
            for (n, co, oh, ow), j in np.ndenumerate(y):
                for kh in range(k[0]):
                    for kw in range(k[1]):
                        ih, iw = oh * s[0] - p[0] + kh * d[0], ow * s[1] - p[1] + kw * d[1]
                        if not (0 <= ih < x_shape[2] and 0 <= iw < x_shape[3]):
                            continue
                        if op == "Conv":
                            per_in, per_out = cin // groups, cout // groups
                            g_ = co // per_out
                            for cl in range(per_in):
                                ci = g_ * per_in + cl
                                link(ins[0], ids(ins[0])[n, ci, ih, iw], out, j)
                                link(ins[1], ids(ins[1])[co, cl, kh, kw], out, j)
                        else:
                            link(ins[0], ids(ins[0])[n, co, ih, iw], out, j)
                if op == "Conv" and len(ins) > 2:
                    link(ins[2], co, out, j)
        elif op == "GlobalAveragePool":
            x = ids(ins[0])
            for (n, c, *_), j in np.ndenumerate(y):
                for i in x[n, c].ravel():
                    link(ins[0], i, out, j)
        elif op in ("Flatten", "Reshape"):
            for j in y.ravel():
                link(ins[0], j, out, j)
        elif op == "MatMul" and (len(shapes[ins[0]]) > 2 or len(shapes[ins[1]]) > 2):
            batch = y.shape[:-2]
            k_dim = shapes[ins[0]][-1]
            a = np.broadcast_to(ids(ins[0]), batch + shapes[ins[0]][-2:])
            b_ = np.broadcast_to(ids(ins[1]), batch + shapes[ins[1]][-2:])
            for idx in np.ndindex(y.shape):
                *bt, m, n_ = idx
                for kk in range(k_dim):
                    link(ins[0], a[(*bt, m, kk)], out, y[idx])
                    link(ins[1], b_[(*bt, kk, n_)], out, y[idx])
        elif op == "Transpose":
            src = ids(ins[0]).transpose(at["perm"])
            for i, j in zip(src.ravel(), y.ravel()):
                link(ins[0], i, out, j)
        elif op == "Softmax":  # an activation: element to element (conventions.md)
            for j in y.ravel():
                link(ins[0], j, out, j)
        elif op == "LayerNormalization":  # last axis: statistics make no paths
            for idx in np.ndindex(y.shape):
                link(ins[0], y[idx], out, y[idx])
                for p in ins[1:3]:
                    link(p, idx[-1], out, y[idx])
        elif op in ("Gemm", "MatMul"):
            a, b_ = ids(ins[0]), ids(ins[1])
            if at.get("transB", 0):
                b_ = b_.T
            for (m, n_), j in np.ndenumerate(y):
                for kk in range(a.shape[1]):
                    link(ins[0], a[m, kk], out, j)
                    link(ins[1], b_[kk, n_], out, j)
            if len(ins) > 2:
                cb = np.broadcast_to(ids(ins[2]), y.shape)
                for i, j in zip(cb.ravel(), y.ravel()):
                    link(ins[2], i, out, j)
        elif op == "Concat":
            axis = at["axis"]
            start = 0
            for src in ins:
                x = ids(src)
                for idx in np.ndindex(x.shape):
                    pos = list(idx)
                    pos[axis] += start
                    link(src, x[idx], out, y[tuple(pos)])
                start += x.shape[axis]
        elif op == "ReduceSum":
            for i in ids(ins[0]).ravel():
                link(ins[0], i, out, 0)
        else:
            raise NotImplementedError(op)
    params = {k: v.shape for k, v in inits.items() if v.dtype.kind == "f"}
    outputs = [o.name for o in g.output]
    return edges, params, {o: shapes[o] for o in outputs}


def brute_force_counts(proto: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Exact integer path counts from every parameter scalar to the output scalars."""
    edges, params, outputs = scalar_dag(proto)
    memo: dict = {}

    def paths(v) -> int:
        if v in memo:
            return memo[v]
        total = 1 if v[0] in outputs else 0
        for w in edges.get(v, ()):
            total += paths(w)
        memo[v] = total
        return total

    result = {}
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 100_000))
    try:
        for name, shape in params.items():
            result[name] = np.array([paths((name, i)) for i in range(math.prod(shape))], dtype=object).reshape(shape)
    finally:
        sys.setrecursionlimit(limit)
    return result
