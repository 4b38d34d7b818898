"""Quantized graphs made by onnxruntime's own quantizers count like their float originals.

Quantization keeps a model's structure: QLinearConv is a Conv, MatMulInteger a MatMul, a QDQ
pair passes values on, MatMulNBits is a MatMul with int4 weights. So every parameter of a
quantized model must get exactly the per-scalar context counts of the float parameter it
stands for (an independent truth: the float graph, counted by the ordinary rules), and the
spectral family must analyse the dequantized weights: within half a quantization step of the
float weights, and for MatMulNBits equal to what onnxruntime itself computes with.
"""

from __future__ import annotations

import re

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto as T
from onnx import helper as h

import irtools
from tests import builders as b
from tests.counts.oracle import covers

F = np.float32
quantization = pytest.importorskip("onnxruntime.quantization")


def _cnn(rng):
    """Conv -> Relu -> strided Conv -> swish (Sigmoid, Mul) -> Add -> AveragePool -> GAP -> Gemm."""
    nodes = [h.make_node("Conv", ["x", "c1.w", "c1.b"], ["a"], pads=[1, 1, 1, 1]), h.make_node("Relu", ["a"], ["r"]),
             h.make_node("Conv", ["r", "c2.w", "c2.b"], ["a2"], pads=[1, 1, 1, 1], strides=[2, 2]),
             h.make_node("Sigmoid", ["a2"], ["s"]), h.make_node("Mul", ["a2", "s"], ["sw"]),
             h.make_node("Add", ["sw", "sw"], ["ad"]), h.make_node("AveragePool", ["ad"], ["ap"], kernel_shape=[2, 2]),
             h.make_node("Concat", ["ap", "ap"], ["cat"], axis=1),
             h.make_node("GlobalAveragePool", ["cat"], ["g"]), h.make_node("Flatten", ["g"], ["f"]),
             h.make_node("Gemm", ["f", "fc.w", "fc.b"], ["y"], transB=1)]
    inits = {"c1.w": (4, 3, 3, 3), "c1.b": (4,), "c2.w": (8, 4, 3, 3), "c2.b": (8,), "fc.w": (5, 16), "fc.b": (5,)}
    return b.model(nodes, [b.vinfo("x", [1, 3, 8, 8])], [b.vinfo("y", [1, 5])],
                   [b.tensor(k, rng.standard_normal(s).astype(F)) for k, s in inits.items()]), {"x": (1, 3, 8, 8)}


def _mlp(rng):
    """A transformer-like MLP block: MatMul + bias -> Relu -> MatMul + bias -> residual -> MatMul -> Softmax."""
    nodes = [h.make_node("MatMul", ["x", "l1.w"], ["a"]), h.make_node("Add", ["a", "l1.b"], ["ab"]),
             h.make_node("Relu", ["ab"], ["r"]), h.make_node("MatMul", ["r", "l2.w"], ["c"]),
             h.make_node("Add", ["c", "l2.b"], ["cb"]), h.make_node("Add", ["cb", "x"], ["res"]),
             h.make_node("MatMul", ["res", "l3.w"], ["d"]), h.make_node("Softmax", ["d"], ["y"], axis=-1)]
    inits = {"l1.w": (32, 48), "l1.b": (48,), "l2.w": (48, 32), "l2.b": (32,), "l3.w": (32, 48)}
    return b.model(nodes, [b.vinfo("x", [1, 4, 32])], [b.vinfo("y", [1, 4, 48])],
                   [b.tensor(k, rng.standard_normal(s).astype(F)) for k, s in inits.items()]), {"x": (1, 4, 32)}


class _Reader(quantization.CalibrationDataReader):
    def __init__(self, shapes):
        rng = np.random.default_rng(1)
        self.feeds = iter([{k: rng.standard_normal(v).astype(F) for k, v in shapes.items()} for _ in range(3)])

    def get_next(self):
        return next(self.feeds, None)


VARIANTS = ["dynamic-int8", "dynamic-uint8", "qoperator", "qoperator-per-channel", "qdq-per-channel"]


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    """{(model, variant): path}, made by onnxruntime's quantizers."""
    q = quantization
    d = tmp_path_factory.mktemp("quant")
    rng = np.random.default_rng(0)
    out = {}
    for name, (proto, shapes) in {"cnn": _cnn(rng), "mlp": _mlp(rng)}.items():
        src = str(d / f"{name}.onnx")
        onnx.save(proto, src)
        out[name, "float"] = src
        made = {
            "dynamic-int8": lambda s, t: q.quantize_dynamic(s, t, weight_type=q.QuantType.QInt8),
            "dynamic-uint8": lambda s, t: q.quantize_dynamic(s, t, weight_type=q.QuantType.QUInt8),
            "qoperator": lambda s, t, sh=shapes: q.quantize_static(s, t, _Reader(sh), quant_format=q.QuantFormat.QOperator),
            "qoperator-per-channel": lambda s, t, sh=shapes: q.quantize_static(
                s, t, _Reader(sh), quant_format=q.QuantFormat.QOperator, per_channel=True),
            "qdq-per-channel": lambda s, t, sh=shapes: q.quantize_static(s, t, _Reader(sh), quant_format=q.QuantFormat.QDQ,
                                                                           per_channel=True),
        }
        for variant, make in made.items():
            out[name, variant] = str(d / f"{name}_{variant}.onnx")
            make(src, out[name, variant])
    nbits = pytest.importorskip("onnxruntime.quantization.matmul_nbits_quantizer")
    for sym in (True, False):
        mq = nbits.MatMulNBitsQuantizer(onnx.load(out["mlp", "float"]), block_size=16, is_symmetric=sym)
        mq.process()
        out["mlp", f"int4-{'sym' if sym else 'asym'}"] = path = str(d / f"mlp_int4_{sym}.onnx")
        onnx.save(mq.model.model, path)
    # the same int4 blocks as QDQ: DequantizeLinear (opset 21) with block_size and INT4/UINT4 tensors
    cfg = nbits.DefaultWeightOnlyQuantConfig(block_size=16, is_symmetric=False, quant_format=q.QuantFormat.QDQ)
    mq = nbits.MatMulNBitsQuantizer(onnx.load(out["mlp", "float"]), algo_config=cfg)
    mq.process()
    out["mlp", "int4-qdq-blocked"] = path = str(d / "mlp_int4_qdq.onnx")
    onnx.save(mq.model.model, path)
    return out


SUFFIX = re.compile(r"(_Transposed)?(_quantized|_DequantizeLinear_Output|_Q4|_DQ_Q4_output)$")


def _counts(path):
    cc = irtools.run_passes(irtools.load(path), ["context-counts"])["context-counts"].counts
    return {SUFFIX.sub("", k): np.ldexp(c.mantissa, c.exponent) for k, c in cc.items()}


def _ops(path):
    return {(n.domain + "::" if n.domain else "") + n.op_type for n in onnx.load(path).graph.node}


@covers("QLinearConv",
        "QLinearMatMul",
        "ConvInteger",
        "MatMulInteger",
        "DynamicQuantizeLinear",
        ("com.microsoft", "QGemm"),
        ("com.microsoft", "QLinearAdd"),
        ("com.microsoft", "QLinearMul"),
        ("com.microsoft", "QLinearSigmoid"),
        ("com.microsoft", "QLinearAveragePool"),
        ("com.microsoft", "QLinearConcat"),
        ("com.microsoft", "QLinearGlobalAveragePool"),
        ("com.microsoft", "QLinearSoftmax"),
        ("com.microsoft", "MatMulNBits"))
@pytest.mark.parametrize("model,variant", [(m, v) for m in ("cnn", "mlp") for v in VARIANTS]
                         + [("mlp", "int4-sym"), ("mlp", "int4-asym"), ("mlp", "int4-qdq-blocked")])
def test_quantized_model_counts_like_its_float_original(quantized, model, variant):
    want = _counts(quantized[model, "float"])
    got = _counts(quantized[model, variant])
    assert _ops(quantized[model, variant]) - _ops(quantized[model, "float"]), "the quantizer changed nothing"
    # every float parameter is found, with its counts (QOperator folds a bias into QLinearAdd; QDQ
    # keeps float biases: all of them are there)
    assert set(got) == set(want), (sorted(got), sorted(want))
    for name, w in want.items():
        g = got[name].reshape(w.shape) if got[name].size == w.size else got[name]
        if name.endswith("w") and g.shape != w.shape:  # a weight stored transposed (dynamic Gemm -> B^T)
            g = g.T
        np.testing.assert_array_equal(g, w, err_msg=f"{variant}: {name}")


def test_quantized_operator_formats_are_the_ops_under_test(quantized):
    ops = set().union(*(_ops(quantized[k]) for k in quantized))
    for op in ("QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "DynamicQuantizeLinear",
               "com.microsoft::QGemm", "com.microsoft::QLinearAdd", "com.microsoft::QLinearMul",
               "com.microsoft::QLinearSigmoid", "com.microsoft::QLinearAveragePool", "com.microsoft::QLinearConcat",
               "com.microsoft::QLinearGlobalAveragePool", "com.microsoft::QLinearSoftmax", "com.microsoft::MatMulNBits",
               "QuantizeLinear", "DequantizeLinear"):
        assert op in ops, op


@pytest.mark.parametrize("variant", VARIANTS)
def test_spectral_layers_are_the_dequantized_weights(quantized, variant):
    """Each quantized weight layer is found, named after its float parameter, and its values are
    the float weights to within half a quantization step (round to nearest)."""
    for model in ("cnn", "mlp"):
        floats = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(quantized[model, "float"]).graph.initializer}
        m = irtools.load(quantized[model, variant])
        layers = irtools.run_passes(m, ["weights"])["weights"].layers
        names = {SUFFIX.sub("", layer.parameter): layer for layer in layers}
        want = {k for k, v in floats.items() if v.ndim >= 2}
        assert set(names) == want, (variant, model, sorted(names))
        for name, layer in names.items():
            w = floats[name].astype(np.float64)
            if w.ndim == 4:  # one (out, in) slice per kernel position, in row-major order
                got = np.stack(layer.loader(), axis=-1).reshape(w.shape)
            else:
                got = layer.loader()[0]
            if got.shape != w.shape:
                got = got.T
            step = (w.max() - w.min()) / 127  # the coarsest step any of these quantizers uses
            assert np.abs(got - w).max() <= step / 2 + 1e-6, (variant, name, np.abs(got - w).max(), step)
            assert np.abs(got - w).max() > 0  # dequantized, not the float original


@pytest.mark.parametrize("sym", ["sym", "asym"])
def test_int4_weights_are_what_onnxruntime_computes_with(quantized, sym):
    """MatMulNBits on an identity input returns its dequantized weight (transposed): onnxruntime's
    own unpacking of the int4 values, scales and zero points."""
    path = quantized["mlp", f"int4-{sym}"]
    proto = onnx.load(path)
    layers = irtools.run_passes(irtools.load(path), ["weights"])["weights"].layers
    inits = {t.name: t for t in proto.graph.initializer}
    nbits = [x for x in layers if x.op_type == "MatMulNBits"]
    assert len(nbits) == 3
    for node, layer in zip([x for x in proto.graph.node if x.op_type == "MatMulNBits"], nbits, strict=True):
        k = next(a.i for a in node.attribute if a.name == "K")
        n_out = next(a.i for a in node.attribute if a.name == "N")
        single = h.make_node("MatMulNBits", ["A", *node.input[1:]], ["Y"], domain="com.microsoft",
                             **{a.name: onnx.helper.get_attribute_value(a) for a in node.attribute})
        probe = b.model([single], [b.vinfo("A", [k, k])], [b.vinfo("Y", [k, n_out])],
                        [inits[i] for i in node.input[1:] if i in inits])
        probe.opset_import.append(h.make_opsetid("com.microsoft", 1))
        sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
        truth = sess.run(None, {"A": np.eye(k, dtype=F)})[0].T  # (N, K)
        np.testing.assert_allclose(layer.loader()[0], truth, rtol=1e-6, atol=1e-6)


def test_blocked_int4_dequantize_linear_is_what_onnxruntime_computes(quantized):
    """Blocked DequantizeLinear (block_size along axis 0, INT4/UINT4 values, zero points): the
    weights the spectral family analyses are onnxruntime's DequantizeLinear outputs."""
    path = quantized["mlp", "int4-qdq-blocked"]
    proto = onnx.load(path)
    dq = [n for n in proto.graph.node if n.op_type == "DequantizeLinear"]
    assert dq and all(any(a.name == "block_size" and a.i == 16 for a in n.attribute) for n in dq)
    graph = h.make_graph(dq, "dq", [], [b.vinfo(n.output[0], None) for n in dq], list(proto.graph.initializer))
    probe = h.make_model(graph, opset_imports=list(proto.opset_import))
    probe.ir_version = proto.ir_version
    truth = dict(zip([n.output[0] for n in dq], ort.InferenceSession(
        probe.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {}), strict=True))
    layers = irtools.run_passes(irtools.load(path), ["weights"])["weights"].layers
    assert len(layers) == 3
    for layer in layers:
        np.testing.assert_allclose(layer.loader()[0], truth[layer.parameter], rtol=1e-6, atol=1e-7)


@covers(("com.microsoft", "QAttention"))
def test_quantized_fused_attention_counts_like_the_float_one(tmp_path):
    """onnxruntime's dynamic quantizer turns com.microsoft Attention into QAttention (int8 QKV
    weight): same counts as the float graph, and the spectral layer is the dequantized weight."""
    rng = np.random.default_rng(3)
    w, bias = rng.standard_normal((8, 24)).astype(F), rng.standard_normal(24).astype(F)
    proto = b.model([h.make_node("Attention", ["x", "qkv.w", "qkv.b"], ["y"], domain="com.microsoft", num_heads=2)],
                    [b.vinfo("x", [1, 4, 8])], [b.vinfo("y", [1, 4, 8])], [b.tensor("qkv.w", w), b.tensor("qkv.b", bias)])
    proto.opset_import.append(h.make_opsetid("com.microsoft", 1))
    src, dst = str(tmp_path / "attn.onnx"), str(tmp_path / "attn_q.onnx")
    onnx.save(proto, src)
    quantization.quantize_dynamic(src, dst, weight_type=quantization.QuantType.QInt8)
    assert "com.microsoft::QAttention" in _ops(dst)
    want, got = _counts(src), _counts(dst)
    np.testing.assert_array_equal(got["qkv.w"], want["qkv.w"])
    layers = {SUFFIX.sub("", x.parameter): x for x in irtools.run_passes(irtools.load(dst), ["weights"])["weights"].layers}
    deq = layers["qkv.w"].loader()[0]
    step = 2 * np.abs(w).max() / 254  # signed int8, symmetric range
    assert 0 < np.abs(deq - w).max() <= step / 2 + 1e-6
    floats = irtools.run_passes(irtools.load(src), ["weights"])["weights"].layers
    np.testing.assert_array_equal(floats[0].loader()[0], w)  # the float Attention's weight is a layer too


def _bidirectional_lstm(first_gate_scale: float = 1.0, hidden: int = 4, inp: int = 3):
    """A float bidirectional LSTM (hidden 4, input 3) and its W and R; the first gate's W rows times
    `first_gate_scale`."""
    rng = np.random.default_rng(4)
    w, r = rng.standard_normal((2, 4 * hidden, inp)).astype(F), rng.standard_normal((2, 4 * hidden, hidden)).astype(F)
    w[:, :hidden] *= first_gate_scale
    node = h.make_node("LSTM", ["X", "W", "R", "B"], ["Y", "Y_h"], hidden_size=hidden, direction="bidirectional")
    proto = b.model([node], [b.vinfo("X", [5, 1, inp])], [b.vinfo("Y", [5, 2, 1, hidden])],
                    [b.tensor("W", w), b.tensor("R", r), b.tensor("B", rng.standard_normal((2, 8 * hidden)).astype(F))],
                    opset=14)
    return proto, w, r


@covers(("com.microsoft", "DynamicQuantizeLSTM"))
def test_int8_lstm_counts_like_the_float_lstm(tmp_path):
    """onnxruntime's dynamic quantizer turns an LSTM into com.microsoft DynamicQuantizeLSTM with
    int8 W and R stored transposed: the counts are the float LSTM's (transposed), and the
    spectral family's gate matrices are the float ones to within half a quantization step."""
    proto, w, r = _bidirectional_lstm()
    src, dst = str(tmp_path / "lstm.onnx"), str(tmp_path / "lstm_q.onnx")
    onnx.save(proto, src)
    quantization.quantize_dynamic(src, dst, weight_type=quantization.QuantType.QInt8)
    assert "com.microsoft::DynamicQuantizeLSTM" in _ops(dst)
    want, got = _counts(src), _counts(dst)
    for name in ("W", "R"):
        np.testing.assert_array_equal(got[name], want[name].transpose(0, 2, 1), err_msg=name)
    np.testing.assert_array_equal(got["B"], want["B"])
    floats = {x.name.split(":")[-1]: x for x in irtools.run_passes(irtools.load(src), ["weights"])["weights"].layers}
    quant = {x.name.split(":")[-1]: x for x in irtools.run_passes(irtools.load(dst), ["weights"])["weights"].layers}
    gate_layers = {k for k in quant if k[0] in "WR"}
    assert set(floats) == set(quant) and len(gate_layers) == 16  # W and R, 2 directions, 4 gates (and B)
    for key in gate_layers:
        layer = quant[key]
        got_w, want_w = layer.loader()[0], floats[key].loader()[0]
        step = 2 * np.abs(w if key.startswith("W") else r).max() / 254
        assert got_w.shape == want_w.shape and 0 < np.abs(got_w - want_w).max() <= step / 2 + 1e-6, key


def test_int8_lstm_quantized_per_channel_gives_each_gate_its_own_scale(tmp_path):
    """onnxruntime's per-channel dynamic quantizer writes DynamicQuantizeLSTM scales and zero points of shape
    (directions, 4 * hidden): one per output column of the transposed W and R. Each gate matrix is the float one
    to within half of its own columns' step (one gate's rows are 20x the others: a single scale would lose them).
    Before, the (2, 16) scale was broadcast against W's axis 0."""
    proto, _, _ = _bidirectional_lstm(first_gate_scale=20)
    src, dst = str(tmp_path / "lstm.onnx"), str(tmp_path / "lstm_pc.onnx")
    onnx.save(proto, src)
    quantization.quantize_dynamic(src, dst, weight_type=quantization.QuantType.QInt8, per_channel=True)
    scales = {i.name: tuple(i.dims) for i in onnx.load(dst).graph.initializer if i.name.endswith("_scale")}
    assert scales == {"W_scale": (2, 16), "R_scale": (2, 16)}
    floats = {x.name.split(":")[-1]: x for x in irtools.run_passes(irtools.load(src), ["weights"])["weights"].layers}
    quant = {x.name.split(":")[-1]: x for x in irtools.run_passes(irtools.load(dst), ["weights"])["weights"].layers}
    gate_layers = {k for k in quant if k[0] in "WR"}
    assert len(gate_layers) == 16 and gate_layers <= set(floats)
    for key in gate_layers:
        got_w, want_w = quant[key].loader()[0], floats[key].loader()[0]
        step = 2 * np.abs(want_w).max(axis=1, keepdims=True) / 254  # per output row of the gate: its own scale
        assert got_w.shape == want_w.shape and (np.abs(got_w - want_w) <= step / 2 + 1e-6).all(), key


I8, U8 = np.int8, np.uint8
MSQ = "com.microsoft"


def _twin_counts(nodes, inputs, inits, out_shape, params, value_info=()):
    proto = b.model(nodes, inputs, [b.vinfo("y", out_shape)], [b.tensor(k, v) for k, v in inits.items()], opset=17)
    proto.graph.value_info.extend(value_info)  # shapes of com.microsoft outputs that onnx cannot infer
    proto.opset_import.append(h.make_opsetid(MSQ, 1))
    cc = irtools.run_passes(irtools.load(proto, parameters=params), ["context-counts"])["context-counts"].counts
    return {k: np.ldexp(c.mantissa, c.exponent) for k, c in cc.items()}


def _scales(**extra):
    return {"s": np.array(0.1, F), "zp": np.array(0, U8), "ws": np.array(0.05, F), "wz": np.array(0, I8), **extra}


TWINS = {  # quantized op (activation from the input) and its float twin: the weights' counts agree
    "dynamic-quantize-matmul": (
        [h.make_node("DynamicQuantizeMatMul", ["a", "w", "ws", "wz", "bias"], ["y"], domain=MSQ)],
        [h.make_node("MatMul", ["a", "w"], ["m"]), h.make_node("Add", ["m", "bias"], ["y"])],
        lambda r: {"w": r.integers(-5, 5, (4, 3)).astype(I8), "bias": r.standard_normal(3).astype(F)},
        ("a", [2, 4], T.FLOAT), [2, 3]),
    "matmul-integer-to-float": (
        [h.make_node("MatMulIntegerToFloat", ["a", "w", "s", "ws", "zp", "wz", "bias"], ["y"], domain=MSQ)],
        [h.make_node("MatMul", ["a", "w"], ["m"]), h.make_node("Add", ["m", "bias"], ["y"])],
        lambda r: {"w": r.integers(-5, 5, (4, 3)).astype(I8), "bias": r.standard_normal(3).astype(F)},
        ("a", [2, 4], T.UINT8), [2, 3]),
    "qlinear-conv-transpose": (
        [h.make_node("QLinearConvTranspose", ["a", "s", "zp", "w", "ws", "wz", "s", "zp", "bias"], ["y"], domain=MSQ,
                     kernel_shape=[2, 2], strides=[2, 1])],
        [h.make_node("ConvTranspose", ["a", "w", "bias"], ["y"], kernel_shape=[2, 2], strides=[2, 1])],
        lambda r: {"w": r.integers(-5, 5, (2, 3, 2, 2)).astype(I8), "bias": r.integers(-5, 5, 3).astype(np.int32)},
        ("a", [1, 2, 3, 3], T.UINT8), [1, 3, 6, 4]),
}


@covers(("com.microsoft", "DynamicQuantizeMatMul"),
        ("com.microsoft", "MatMulIntegerToFloat"),
        ("com.microsoft", "QLinearConvTranspose"))
@pytest.mark.parametrize("case", list(TWINS))
def test_quantized_ops_count_as_their_float_twins(case):
    """The op on an input activation, its int8 weight and bias stored: the weight and bias get
    the counts of the float twin's (no CPU kernel is needed: nothing is constant-folded)."""
    quant, twin, make, (name, shape, dtype), out_shape = TWINS[case]
    weights = make(np.random.default_rng(5))
    got = _twin_counts(quant, [b.vinfo(name, shape, dtype)], {**_scales(), **weights}, out_shape, None)
    want = _twin_counts(twin, [b.vinfo(name, shape, T.FLOAT)], {k: v.astype(F) for k, v in weights.items()},
                        out_shape, set(weights))
    for k in weights:
        np.testing.assert_array_equal(got[k], want[k], err_msg=f"{case}: {k}")
        assert want[k].any()


QLINEAR_UNARY = {  # op on a quantized activation -> its float twin
    "qlinear-leaky-relu": (lambda q: h.make_node("QLinearLeakyRelu", [q, "s", "zp", "s", "zp"], ["qy"], domain=MSQ,
                                                 alpha=0.1),
                           lambda f: h.make_node("LeakyRelu", [f], ["y"], alpha=0.1), [2, 3, 4]),
    "qlinear-reduce-mean": (lambda q: h.make_node("QLinearReduceMean", [q, "s", "zp", "s", "zp"], ["qy"], domain=MSQ,
                                                  axes=[1], keepdims=1),
                            lambda f: h.make_node("ReduceMean", [f], ["y"], axes=[1], keepdims=1), [2, 1, 4]),
    "qlinear-where": (lambda q: h.make_node("QLinearWhere", ["c", q, "s", "zp", q, "s", "zp", "s", "zp"], ["qy"],
                                            domain=MSQ),
                      lambda f: h.make_node("Where", ["c", f, f], ["y"]), [2, 3, 4]),
}


@covers(("com.microsoft", "QLinearLeakyRelu"),
        ("com.microsoft", "QLinearReduceMean"),
        ("com.microsoft", "QLinearWhere"))
@pytest.mark.parametrize("case", list(QLINEAR_UNARY))
def test_qlinear_ops_on_a_parameter_path_count_as_float(case):
    """p (a parameter) + input -> QuantizeLinear -> op -> DequantizeLinear counts p as the float
    op on p + input does (Quantize/DequantizeLinear pass values on)."""
    quant, twin, out_shape = QLINEAR_UNARY[case]
    p = {"p": np.random.default_rng(6).standard_normal((2, 3, 4)).astype(F)}
    inputs = [b.vinfo("z", [1]), b.vinfo("c", [2, 3, 4], T.BOOL)]
    got = _twin_counts([h.make_node("Add", ["p", "z"], ["a"]), h.make_node("QuantizeLinear", ["a", "s", "zp"], ["qa"]),
                        quant("qa"), h.make_node("DequantizeLinear", ["qy", "s", "zp"], ["y"])],
                       inputs, {**_scales(), **p}, out_shape, {"p"}, [b.vinfo("qy", out_shape, T.UINT8)])
    want = _twin_counts([h.make_node("Add", ["p", "z"], ["a"]), twin("a")], inputs, p, out_shape, {"p"})
    np.testing.assert_array_equal(got["p"], want["p"])
    assert want["p"].any()
