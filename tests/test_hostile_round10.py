"""Hostile files, round 10: sizes a file states that irtools trusted, each fixed as a class.

- a compiled kernel indexed file data by the file's own numbers: MatMulNBits' N, K, block_size and bits were
  read as given, so a 527-byte model read memory past its arrays (NaNs that changed from run to run, a
  segfault at `--max-n 0`). Every size the kernel uses is now checked against the stored arrays first
  (`quant.matmul_nbits_problem`), and a weight that does not fit is a skipped entry with its reason;
- a dequantizer broadcast where ONNX defines no broadcast: a scale of the wrong length made a [4000, 1, 3, 3]
  weight a [4000, 4000, 3, 3] one (2.5 GB, 45 s from 56 KB). `quant.dequantize_problem` now holds every
  DequantizeLinear (the graph's, the quantized ops') to the shapes ONNX defines;
- expansions of stored bytes without the ratio rule: a sparse ONNX tensor of one value declared 16000 x 16000
  (115 bytes to 3 GB), and HDF5 datasets of fill values, each under the free amount but 400 of them in 1 MB
  (minutes of analysis), or one in a `.keras` archive (13.7 GB of Keras variables from 1.2 KB). One rule,
  `formats.common.expands_too_far`, now holds zip entries, npz members, HDF5 datasets (one by one and in all,
  standalone and inside `.keras`) and sparse tensors;
- a quantized checkpoint tensor with a zero dimension divided by zero in its format's block arithmetic and
  refused the whole checkpoint with `unexpected ZeroDivisionError`: now that tensor's skipped entry;
- `printable` escaped a hand-made list of characters and let bidi marks, zero-width characters and the BOM
  through: it now escapes by Unicode category (`str.isprintable`).
"""

from __future__ import annotations

import json
import sys
import unicodedata
import zipfile

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import irtools
from tests.test_hostile_round8 import _one_line
from tests.test_hostile_round9 import _cli


def _model(nodes, inputs, outputs, initializers, domains=()) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    *(helper.make_opsetid(d, 1) for d in domains)])
    model.ir_version = 8
    return model


def _vinfo(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _weights(model: onnx.ModelProto):
    return irtools.get_pass("weights")(irtools.load(model))


# -- 1. MatMulNBits: the kernel's sizes are the stored arrays' ----------------------------------------------
def _nbits(n, k, packed_shape, scales, **attrs):
    rng = np.random.default_rng(0)
    b = numpy_helper.from_array(rng.integers(0, 256, packed_shape, dtype=np.uint8), "B")
    s = numpy_helper.from_array(np.ones(scales, np.float32), "S")
    attrs = {"N": n, "K": k, "block_size": 32, "bits": 4, **attrs}
    attrs = {a: v for a, v in attrs.items() if v is not None}
    node = helper.make_node("MatMulNBits", ["a", "B", "S"], ["y"], domain="com.microsoft", name="mmnb", **attrs)
    return _model([node], [_vinfo("a", [1, k])], [_vinfo("y", [1, n])], [b, s], ["com.microsoft"])


@pytest.mark.parametrize("case, attrs, match", [
    ("K past the stored blocks", dict(n=16, k=49984, packed_shape=(16, 1, 16), scales=16), "B holds 256 bytes"),
    ("N past the stored rows", dict(n=64, k=32, packed_shape=(16, 1, 16), scales=16), "B holds 256 bytes"),
    ("too few scales", dict(n=16, k=64, packed_shape=(16, 2, 16), scales=16), "16 scales"),
    ("no N", dict(n=None, k=32, packed_shape=(16, 1, 16), scales=16), "whole numbers"),
    ("bits 3", dict(n=16, k=32, packed_shape=(16, 1, 12), scales=16, bits=3), "bits=3"),
    ("bits 0", dict(n=16, k=32, packed_shape=(16, 1, 16), scales=16, bits=0), "bits=0"),
    ("block 0", dict(n=16, k=32, packed_shape=(16, 1, 16), scales=16, block_size=0), "block_size=0"),
    ("block 24", dict(n=16, k=48, packed_shape=(16, 2, 12), scales=32, block_size=24), "block_size=24"),
])
def test_matmul_nbits_sizes_that_are_not_the_stored_arrays_are_a_skipped_entry(case, attrs, match):
    """Before: rows of NaNs read past the arrays (or a segfault), KeyError 'N', a reshape ValueError."""
    result = _weights(_nbits(**attrs))
    assert result.layers == []
    (entry,) = result.skipped
    assert entry["op_type"] == "MatMulNBits" and "not unpacked" in entry["reason"] and match in entry["reason"], entry


def test_matmul_nbits_that_fits_is_still_unpacked_and_the_kernel_refuses_what_does_not():
    from irtools.ir.quant import dequantize_matmul_nbits

    (layer,) = _weights(_nbits(16, 64, (16, 2, 16), 32)).layers
    assert layer.matrices()[0].shape == (16, 64) and np.isfinite(layer.matrices()[0]).all()
    with pytest.raises(ValueError, match="B holds 256 bytes"):  # the unpacking itself, called with a lie
        dequantize_matmul_nbits(np.zeros((16, 1, 16), np.uint8), np.ones(16, np.float32), None, 16, 8192, 32, 4)


def test_matmul_nbits_through_the_cli_is_a_skipped_row_at_any_max_n(tmp_path):
    path = tmp_path / "mmnb.onnx"
    path.write_bytes(_nbits(16, 8388608, (16, 1, 16), 16).SerializeToString())
    result = _cli("analyze", path, "--metrics", "spectral", "--max-n", "0", "--format", "json")
    assert result.exit_code == 0, result.output
    (entry,) = json.loads(result.stdout)["skipped"]
    assert "not unpacked" in entry["reason"]


# -- 2. DequantizeLinear: the shapes ONNX defines, never a broadcast -----------------------------------------
def _qdq_conv(scale_len, axis):
    q = numpy_helper.from_array(np.ones((40, 1, 3, 3), np.int8), "Wq")
    s = numpy_helper.from_array(np.linspace(0.1, 1, scale_len).astype(np.float32), "Ws")
    z = numpy_helper.from_array(np.zeros(scale_len, np.int8), "Wz")
    nodes = [helper.make_node("DequantizeLinear", ["Wq", "Ws", "Wz"], ["W"], axis=axis, name="dq"),
             helper.make_node("Conv", ["x", "W"], ["y"], name="conv")]
    return _model(nodes, [_vinfo("x", [1, 1, 8, 8])], [_vinfo("y", [1, 40, 6, 6])], [q, s, z])


def test_a_dequantize_linear_scale_of_the_wrong_length_is_one_line_not_a_broadcast(tmp_path):
    """Before: the (40,) scale on axis 1 (of size 1) made the weight (40, 40, 3, 3): 2.5 GB and 45 s at 4000."""
    path = tmp_path / "dq.onnx"
    path.write_bytes(_qdq_conv(40, axis=1).SerializeToString())
    line = _one_line(_cli("analyze", path, "--metrics", "spectral", "--min-evals", "1"), "DequantizeLinear")
    assert "expected (1,)" in line
    # the same weight with its scale on the axis it fits is analysed: one layer of 40 x 1 per position
    (layer,) = _weights(_qdq_conv(40, axis=0)).layers
    assert layer.weight_shape == (40, 1, 3, 3) and layer.rf == 9


def test_dequantize_problem_holds_every_shape_onnx_defines_and_no_other():
    from irtools.ir.quant import dequantize_linear, dequantize_problem

    q = (6, 4)
    fits = [((), None, 1, 0), ((1,), (1,), 0, 0), ((6,), (6,), 0, 0), ((4,), (4,), 1, 0), ((4,), None, -1, 0),
            ((2, 4), (2, 4), 0, 4), ((6, 2), None, 1, 3)]
    for scale, zero, axis, block in fits:
        assert dequantize_problem(q, scale, zero, axis, block) is None, (scale, zero, axis, block)
        out = dequantize_linear(np.ones(q, np.int8), np.ones(scale), None if zero is None else np.zeros(zero),
                                axis, block)
        assert out.shape == q
    unfit = [((4,), None, 0, 0), ((6, 1), None, 0, 0), ((6,), (4,), 0, 0), ((6,), None, 2, 0),
             ((3, 4), None, 0, 4), ((1, 1), None, 0, 2)]
    for scale, zero, axis, block in unfit:
        assert dequantize_problem(q, scale, zero, axis, block), (scale, zero, axis, block)
        with pytest.raises(ValueError):
            dequantize_linear(np.ones(q, np.int8), np.ones(scale), None if zero is None else np.zeros(zero),
                              axis, block)


def test_a_quantized_op_whose_scale_does_not_fit_its_weight_is_a_skipped_entry():
    """QLinearMatMul's per-channel scale must have one value per output column."""
    w = numpy_helper.from_array(np.ones((32, 24), np.int8), "w")
    one = numpy_helper.from_array(np.array(0.1, np.float32), "one")
    zero8 = numpy_helper.from_array(np.array(0, np.int8), "z8")
    for n_scales, fits in ((24, True), (7, False)):
        ws = numpy_helper.from_array(np.full(n_scales, 0.5, np.float32), "ws")
        wz = numpy_helper.from_array(np.zeros(n_scales, np.int8), "wz")
        node = helper.make_node("QLinearMatMul", ["xq", "one", "z8", "w", "ws", "wz", "one", "z8"], ["yq"], name="qmm")
        model = _model([node], [helper.make_tensor_value_info("xq", TensorProto.INT8, [1, 32])],
                       [helper.make_tensor_value_info("yq", TensorProto.INT8, [1, 24])], [w, ws, wz, one, zero8])
        result = _weights(model)
        if fits:
            assert [layer.weight_shape for layer in result.layers] == [(32, 24)]
        else:
            assert result.layers == [] and "not dequantized" in result.skipped[0]["reason"], result.skipped


# -- 3. expansions of stored bytes: one ratio rule ------------------------------------------------------------
def test_a_sparse_tensor_of_one_value_declared_huge_is_refused_as_an_expanding_constant(tmp_path):
    """Before: 115 bytes densified to 3 GB (the budget was the only check)."""
    values = numpy_helper.from_array(np.array([1.0], np.float32), "W")
    indices = numpy_helper.from_array(np.array([5], np.int64), "W_idx")
    sparse = helper.make_sparse_tensor(values, indices, [16000, 16000])
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")], "g",
                              [_vinfo("x", [1, 16000])], [_vinfo("y", [1, 16000])], sparse_initializer=[sparse])
    path = tmp_path / "sparse.onnx"
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    _one_line(_cli("analyze", path, "--metrics", "spectral"), "expanding constant")


def test_a_pruned_sparse_weight_still_loads():
    rng = np.random.default_rng(1)
    dense = np.where(rng.random((64, 48)) < 0.05, rng.standard_normal((64, 48)), 0).astype(np.float32)
    idx = np.flatnonzero(dense)
    sparse = helper.make_sparse_tensor(numpy_helper.from_array(dense.ravel()[idx], "W"),
                                       numpy_helper.from_array(idx.astype(np.int64), "W_i"), [64, 48])
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")], "g",
                              [_vinfo("x", [1, 64])], [_vinfo("y", [1, 48])], sparse_initializer=[sparse])
    (layer,) = _weights(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])).layers
    np.testing.assert_array_equal(layer.matrices()[0], dense)


def _fill_datasets(h5py, f, count, shape):
    for i in range(count):
        f.create_dataset(f"layers/dense_{i}/vars/0", shape=shape, dtype="f4", fillvalue=0.5)


def test_many_hdf5_datasets_each_under_the_free_amount_are_a_bomb_together(tmp_path):
    """Before: 400 datasets of 2048 x 2048 fill values in 1 MB each passed the per-dataset rule: 4 minutes."""
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "fill.weights.h5"
    with h5py.File(path, "w") as f:
        _fill_datasets(h5py, f, 400, (2048, 2048))
    _one_line(_cli("inspect", path), "datasets declare 6,710,886,400 bytes in all")
    small = tmp_path / "ok.weights.h5"  # real weights, stored: read as before
    with h5py.File(small, "w") as f:
        f.create_dataset("layers/dense/vars/0", data=np.eye(32, dtype=np.float32))
    assert _cli("inspect", small).exit_code == 0


def test_a_keras_archive_whose_weights_are_fill_values_is_refused_before_keras_loads(tmp_path):
    """Before: 1.2 KB made Keras build 1.6 GB of variables (13.7 GB at peak) for `inspect`."""
    h5py = pytest.importorskip("h5py")
    weights = tmp_path / "model.weights.h5"
    with h5py.File(weights, "w") as f:
        _fill_datasets(h5py, f, 1, (20000, 20000))
    path = tmp_path / "bomb.keras"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("config.json", json.dumps({"class_name": "Sequential", "config": {}}))
        z.writestr("metadata.json", json.dumps({"keras_version": "3.0.0"}))
        z.write(weights, "model.weights.h5")
    before = set(sys.modules)
    line = _one_line(_cli("inspect", path), "declares 1600000000 bytes but the file stores")
    assert "layers/dense_0/vars/0" in line
    assert "tensorflow" not in set(sys.modules) - before  # refused before TensorFlow was imported


# -- 4. a quantized checkpoint tensor with a zero dimension -----------------------------------------------
@pytest.mark.parametrize("scheme", ["gptq", "fp8"])
def test_a_quantized_tensor_with_a_zero_dimension_is_its_own_skipped_entry(tmp_path, scheme):
    """Before: `unexpected ZeroDivisionError` for the whole checkpoint."""
    from safetensors.numpy import save_file

    ml_dtypes = pytest.importorskip("ml_dtypes")
    tensors = {"m.weight": np.eye(16, dtype=np.float32)}
    if scheme == "gptq":
        tensors.update({"l.qweight": np.zeros((0, 8), np.int32), "l.scales": np.ones((1, 8), np.float16),
                        "l.qzeros": np.zeros((1, 1), np.int32)})
        config = {"quant_method": "gptq", "bits": 4}
    else:
        tensors.update({"l.weight": np.zeros((32, 0), ml_dtypes.float8_e4m3fn),
                        "l.weight_scale_inv": np.ones((), np.float32)})
        config = {"quant_method": "fp8"}
    save_file(tensors, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "quantization_config": config}))
    from irtools.frontends import open_source

    opened = open_source(str(tmp_path))
    assert [layer.parameter for layer in opened.layers] == ["m.weight"]
    reasons = [s["reason"] for s in opened.skipped]
    assert any("zero dimension" in r for r in reasons), reasons


# -- 5. printable by Unicode category ---------------------------------------------------------------------
def test_printable_escapes_every_control_format_separator_and_surrogate_character():
    """Independent truth: unicodedata's categories. Every Cc, Cf, Zl, Zp, Cs, Co code point (and every space
    but ' ') comes out as ASCII escapes; letters, marks, digits, symbols and punctuation stay as they are."""
    from irtools.errors import printable

    escaped = {"Cc", "Cf", "Zl", "Zp", "Zs", "Cs", "Co"}
    for cp in range(0x110000):
        c = chr(cp)
        cat = unicodedata.category(c)
        out = printable(f"a{c}b")
        if c == " " or cat not in escaped | {"Cn"}:
            assert out == f"a{c}b", (hex(cp), cat)
        elif cat in escaped:
            assert out != f"a{c}b" and out[1:-1].isascii() and out[1:-1].startswith("\\"), (hex(cp), cat, out)
    for mark in ("\u200e", "\u200f", "\u061c", "\u200b", "\ufeff", "\u2066", "\u00a0"):  # the ones seen through
        assert printable(mark) == mark.encode("unicode_escape").decode("ascii")
