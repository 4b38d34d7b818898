"""Context-count speed: our reverse accumulation vs the seed's recursive algorithm, and scaling with depth.

Run: OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 python benchmarks/context_counts.py
Prints, side by side in one run, (1) wall time of both algorithms on residual chains of
growing depth (the seed's `recursive_count` enumerates every path, so it doubles with each
residual block), and (2) our time on ResNet-50/101/152-depth models at 224x224 against
their edge (multiply-accumulate) counts, to show cost linear in edges.
"""

from __future__ import annotations

import math
import os
import sys
import time

import numpy as np
import onnx
from onnx import TensorProto as T
from onnx import helper as h

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import irtools  # noqa: E402


def residual_chain(depth: int, width: int = 2) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    nodes, inits, cur = [], [], "x"
    for k in range(depth):
        inits.append(onnx.numpy_helper.from_array(rng.standard_normal((width, width)).astype(np.float32), f"w{k}"))
        nodes += [h.make_node("MatMul", [cur, f"w{k}"], [f"h{k}"]), h.make_node("Add", [cur, f"h{k}"], [f"x{k}"])]
        cur = f"x{k}"
    graph = h.make_graph(nodes, "chain", [h.make_tensor_value_info("x", T.FLOAT, [1, width])],
                         [h.make_tensor_value_info(cur, T.FLOAT, [1, width])], inits)
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])


def seed_recursive_count(proto: onnx.ModelProto) -> dict:
    """The seed's illustrative algorithm on the scalar graph: one increment per path."""
    from tests.brute_force import scalar_dag

    edges, params, outputs = scalar_dag(proto)
    sources: dict = {}
    for src, dsts in edges.items():
        for d in dsts:
            sources.setdefault(d, []).append(src)
    count: dict = {}

    def recursive_count(node):
        count[node] = count.get(node, 0) + 1
        for s in sources.get(node, ()):
            recursive_count(s)

    for name, shape in outputs.items():
        for i in range(math.prod(shape)):
            recursive_count((name, i))
    return {k: v for k, v in count.items() if k[0] in params}


def resnet(blocks: list[int]) -> onnx.ModelProto:
    """A bottleneck ResNet at 224x224 whose weights are made by ConstantOfShape (small file)."""
    nodes, inits = [], []
    counter = [0]

    def const(shape):
        name = f"p{counter[0]}"
        counter[0] += 1
        inits.append(onnx.numpy_helper.from_array(np.array(shape, np.int64), name + "_shape"))
        nodes.append(h.make_node("ConstantOfShape", [name + "_shape"], [name],
                                 value=h.make_tensor("v", T.FLOAT, [1], [0.02])))
        return name

    def conv_bn(x, cin, cout, k, s, relu=True):
        out = f"t{counter[0]}"
        nodes.append(h.make_node("Conv", [x, const([cout, cin, k, k])], [out + "c"], kernel_shape=[k, k],
                                 strides=[s, s], pads=[k // 2] * 4))
        nodes.append(h.make_node("BatchNormalization", [out + "c"] + [const([cout]) for _ in range(4)], [out + "b"]))
        if relu:
            nodes.append(h.make_node("Relu", [out + "b"], [out]))
            return out
        return out + "b"

    x = conv_bn("x", 3, 64, 7, 2)
    nodes.append(h.make_node("MaxPool", [x], ["pool"], kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4))
    x, cin = "pool", 64
    for stage, n in enumerate(blocks):
        width = 64 * 2**stage
        for i in range(n):
            s = 2 if (i == 0 and stage > 0) else 1
            y = conv_bn(x, cin, width, 1, 1)
            y = conv_bn(y, width, width, 3, s)
            y = conv_bn(y, width, 4 * width, 1, 1, relu=False)
            sc = conv_bn(x, cin, 4 * width, 1, s, relu=False) if i == 0 else x
            out = f"res{stage}_{i}"
            nodes += [h.make_node("Add", [y, sc], [out + "a"]), h.make_node("Relu", [out + "a"], [out])]
            x, cin = out, 4 * width
    nodes += [h.make_node("GlobalAveragePool", [x], ["gap"]), h.make_node("Flatten", ["gap"], ["flat"]),
              h.make_node("Gemm", ["flat", const([1000, cin]), const([1000])], ["logits"], transB=1)]
    graph = h.make_graph(nodes, "resnet", [h.make_tensor_value_info("x", T.FLOAT, [1, 3, 224, 224])],
                         [h.make_tensor_value_info("logits", T.FLOAT, [1, 1000])], inits)
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])


def macs(model: irtools.IRModel) -> int:
    """Edges of the scalar graph that matter: multiply-accumulates of Conv and Gemm."""
    total = 0
    for n in model.nodes:
        if n.op_type in ("Conv", "Gemm"):
            w = model.static_shape(n.inputs[1])
            total += math.prod(model.static_shape(n.outputs[0])) * math.prod(w[1:])
    return total


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def main() -> None:
    threads = {k: os.environ.get(k, "unset") for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS")}
    print(f"thread settings: {threads}; cpus: {os.cpu_count()}")
    # warm the numba kernels once so compile time is not charged to the first model
    irtools.run_passes(irtools.load(resnet([1, 1, 1, 1])), ["context-counts"])

    print("\n(1) residual chains, width 2: reverse accumulation vs the seed's recursive_count")
    print(f"{'depth':>5} {'paths/param(max)':>17} {'ours s':>9} {'recursive s':>12} {'ratio':>9}")
    budget = float(os.environ.get("RECURSIVE_BUDGET_S", "20"))
    for depth in (2, 4, 6, 8, 10, 12, 14, 16, 18):
        proto = residual_chain(depth)
        cc, ours = timed(lambda: irtools.run_passes(irtools.load(proto), ["context-counts"])["context-counts"])
        top = max(float(np.ldexp(c.mantissa, c.exponent).max()) for c in cc.counts.values())
        if budget > 0:
            rec, slow = timed(lambda: seed_recursive_count(proto))
            assert all(rec[(k, i)] == int(np.ldexp(c.mantissa, c.exponent).ravel()[i])
                       for k, c in cc.counts.items() for i in range(c.mantissa.size)), "counts disagree"
            print(f"{depth:>5} {top:>17.0f} {ours:>9.4f} {slow:>12.4f} {slow / ours:>8.1f}x")
            if slow > budget:
                budget = 0  # the next depth would take about 4x longer
        else:
            print(f"{depth:>5} {top:>17.0f} {ours:>9.4f} {'(skipped)':>12}")

    print("\n(2) ResNet-depth models at 224x224 (ConstantOfShape weights): cost per multiply-accumulate")
    print(f"{'model':>10} {'nodes':>6} {'params':>11} {'MACs':>14} {'count s':>8} {'ns/MAC':>7} {'S_G':>14}")
    for name, blocks in (("ResNet-50", [3, 4, 6, 3]), ("ResNet-101", [3, 4, 23, 3]), ("ResNet-152", [3, 8, 36, 3])):
        proto = resnet(blocks)
        model = irtools.load(proto)
        r, secs = timed(lambda: irtools.run_passes(model, ["reuse"])["reuse"])
        m = macs(model)
        print(f"{name:>10} {len(model.nodes):>6} {r['num_params']:>11,} {m:>14,} {secs:>8.2f} "
              f"{1e9 * secs / m:>7.2f} {r['total_surprisal']:>14.6g}")


if __name__ == "__main__":
    main()
