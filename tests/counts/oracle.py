"""The shared onnxruntime oracle for the counting rules, and the record of which op each test checks.

Two independent truths, both from onnxruntime (an implementation of the ops that is not ours):

- `probe_counts`: for a single op whose output counts are all 1, an input scalar's context count
  is the number of output scalars that depend on it. With the other inputs positive, set the
  probed tensor to zero, then to a one-hot vector, and count the outputs that change. A `Case`
  is one such op (or a short chain) with its tensors; `check_case` compares our counts of every
  float input with the probe's.
- `check_twin`: a fused or quantized op beside the same computation written out in standard ops.
  Where onnxruntime has a CPU kernel, both graphs are first run on the same random tensors to show
  the written-out graph is the op; then the per-scalar counts of every float input must agree.

Where the conventions differ from value dependence on purpose (normalisation statistics and
softmax make no paths, max pooling hands every element of a window the window's count), the
tests compare with hand-derived counts instead. Every test that is the oracle of an op says so:
a `Case` by the ops of its nodes, any other test with `@covers(...)`; `test_coverage` checks
that every registered rule has one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper as h

import irtools
from tests import builders as b

F = np.float32
I32 = np.int32
I64 = np.int64
MS = "com.microsoft"

STRUCTURAL = {"sc"}  # float inputs that are not data (Resize scales): probes keep their values

R = np.random.default_rng(0)
_SIGNED = np.random.default_rng(0)


def x(*shape):
    """Positive tensor values (probes need the other inputs away from zero)."""
    return R.uniform(0.5, 1.5, size=shape).astype(F)


def sx(*shape):
    """Signed tensor values, for the fused ops run side by side with their written-out graphs."""
    return _SIGNED.uniform(-1, 1, shape).astype(F)


def exact(c) -> np.ndarray:
    """A Counts object's exact values (mantissa * 2**exponent)."""
    return np.ldexp(c.mantissa, c.exponent)


def _nodes(node) -> list[onnx.NodeProto]:
    return list(node) if isinstance(node, (list, tuple)) else [node]


def probe_counts(node, tensors: dict[str, np.ndarray], out_shape, name: str, opset: int = 17,
                 base_value: float = 1.0) -> np.ndarray:
    """Dependency counts of tensor `name`'s scalars, measured with onnxruntime (`node`: one node
    or a list whose last node's first output is the output)."""
    nodes = _nodes(node)
    inputs = [b.vinfo(k, list(v.shape), onnx.helper.np_dtype_to_tensor_dtype(v.dtype)) for k, v in tensors.items()]
    proto = b.model(nodes, inputs, [b.vinfo(nodes[-1].output[0], list(out_shape))], opset=opset)
    _domains(proto, nodes)
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    base = {k: (np.full_like(v, base_value) if v.dtype.kind == "f" and k not in STRUCTURAL else v)
            for k, v in tensors.items()}
    counts = np.zeros(tensors[name].size, dtype=np.int64)
    zero = sess.run(None, {**base, name: np.zeros_like(tensors[name])})[0]
    for i in range(tensors[name].size):
        feed = dict(base)
        one_hot = np.zeros(tensors[name].size, dtype=tensors[name].dtype)
        one_hot[i] = 1
        feed[name] = one_hot.reshape(tensors[name].shape)
        got = sess.run(None, feed)[0]
        counts[i] = int(np.count_nonzero((got != zero) & ~(np.isnan(got) & np.isnan(zero))))
    return counts.reshape(tensors[name].shape)


def our_counts(node, tensors: dict[str, np.ndarray], out_shape, opset: int = 17) -> dict[str, np.ndarray]:
    """Our counts of every float tensor (all of them parameters, stored as initializers)."""
    nodes = _nodes(node)
    inits = [b.tensor(k, v) for k, v in tensors.items()]
    proto = b.model(nodes, [], [b.vinfo(nodes[-1].output[0], list(out_shape))], inits, opset=opset)
    _domains(proto, nodes)
    floats = {k for k, v in tensors.items() if v.dtype.kind == "f" and k not in STRUCTURAL}
    m = irtools.load(proto, parameters=floats)  # every float input is a parameter here
    cc = irtools.run_passes(m, ["context-counts"])["context-counts"]
    return {k: np.ldexp(c.mantissa, c.exponent) for k, c in cc.counts.items()}


def _domains(proto: onnx.ModelProto, nodes) -> None:
    for d in sorted({n.domain for n in nodes} - {"", "ai.onnx"}):
        proto.opset_import.append(h.make_opsetid(d, 1))


def ops_of(nodes) -> set[tuple[str, str]]:
    """The (domain, op type) keys of some nodes and of their subgraphs' nodes."""
    keys = set()
    for n in _nodes(nodes):
        keys.add(("" if n.domain in ("", "ai.onnx") else n.domain, n.op_type))
        for a in n.attribute:
            for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                keys |= ops_of(list(g.node))
    return keys


@dataclass
class Case:
    """One op (or a short chain ending in the op) checked against onnxruntime's probes: every float
    input not in STRUCTURAL, probed with the other inputs at `base_value`. `probe=False`: a case
    whose counts follow a convention, checked by hand-derived values in its own test instead.
    Unpacks as (node, tensors, out_shape)."""

    node: onnx.NodeProto | list[onnx.NodeProto]
    tensors: dict[str, np.ndarray]
    out_shape: tuple[int, ...]
    opset: int = 17
    base_value: float = 1.0
    probe: bool = True

    def __iter__(self) -> Iterator:
        return iter((self.node, self.tensors, self.out_shape))

    @property
    def ops(self) -> set[tuple[str, str]]:
        return ops_of(self.node)


def probed(cases: dict[str, Case]) -> list[str]:
    """The names of the cases that are checked against the probes."""
    return [k for k, c in cases.items() if c.probe]


def check_case(case: Case, name: str = "") -> None:
    """Our counts of every float input equal onnxruntime's dependency counts (and are not all zero)."""
    ours = our_counts(case.node, case.tensors, case.out_shape, opset=case.opset)
    for k, v in case.tensors.items():
        if v.dtype.kind != "f" or k in STRUCTURAL:
            continue
        got = probe_counts(case.node, case.tensors, case.out_shape, k, opset=case.opset, base_value=case.base_value)
        np.testing.assert_array_equal(ours[k], got, err_msg=f"{name}: {k}")
        assert got.any(), f"{name}: {k} reaches no output: not a check"


# -- fused and quantized ops beside their written-out graphs ---------------------------------------
def twin_model(nodes, tensors, outputs, opset=17, feed=False):
    """Float tensors are initializers (parameters), integer ones too (ids, lengths). `outputs`:
    names, or (name, shape) where onnx cannot infer a com.microsoft op's shape. feed=True
    (an op without a CPU kernel): each float tensor k is stored as k_p and read as k_p + z, z a
    graph input, so nothing is constant-folded by onnxruntime."""
    outs = [b.vinfo(o, None) if isinstance(o, str) else b.vinfo(*o) for o in outputs]
    inits = [b.tensor(k + "_p" if feed and v.dtype == F else k, v) for k, v in tensors.items()]
    inputs = []
    if feed:
        inputs = [b.vinfo("z", [1])]
        nodes = [h.make_node("Add", [k + "_p", "z"], [k]) for k, v in tensors.items() if v.dtype == F] + list(nodes)
    m = b.model(nodes, inputs, outs, inits, opset=opset)
    m.opset_import.append(h.make_opsetid(MS, 1))
    m.ir_version = 10 if opset >= 21 else 8
    return m


def twin_counts(m, tensors, feed=False):
    params = {k + ("_p" if feed else "") for k, v in tensors.items() if v.dtype.kind == "f"}
    cc = irtools.run_passes(irtools.load(m, parameters=params), ["context-counts"])["context-counts"].counts
    return {k.removesuffix("_p") if feed else k: np.ldexp(c.mantissa, c.exponent) for k, c in cc.items()}


def run_model(m):
    return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {})


def check_twin(fused, written, tensors, outputs, opset=17, runs_on_cpu=True, compare=None):
    """The fused op computes its written-out graph (where onnxruntime runs it on the CPU) and
    counts as it: every float input's counts equal, and nonzero."""
    feed = not runs_on_cpu
    f = twin_model(fused, tensors, outputs, opset, feed)
    w = twin_model(written, tensors, outputs, opset, feed)
    if runs_on_cpu:
        for name, a, c in zip(outputs, run_model(f), run_model(w), strict=True):
            np.testing.assert_allclose(a, c, rtol=1e-4, atol=1e-5, err_msg=f"written-out graph differs on {name}")
    got, want = twin_counts(f, tensors, feed), twin_counts(w, tensors, feed)
    for name in compare or [k for k, v in tensors.items() if v.dtype.kind == "f"]:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
        assert want[name].any(), name  # a real check: the tensor has contexts


# -- which test is the oracle of which op ----------------------------------------------------------
@dataclass
class _Covered:
    tests: dict[tuple[str, str], list[Callable]] = field(default_factory=dict)


COVERED = _Covered()


def covers(*keys: tuple[str, str] | str):
    """Decorator: this test checks the rules of `keys` ((domain, op type), or a default-domain op
    type) against an independent truth (onnxruntime, brute force, a written-out graph)."""

    def decorator(test):
        for k in keys:
            key = ("", k) if isinstance(k, str) else k
            COVERED.tests.setdefault(key, []).append(test)
        return test

    return decorator
