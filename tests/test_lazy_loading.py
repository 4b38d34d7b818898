"""Large initializers are memory-mapped from the model file instead of parsed; nothing else changes."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

import irtools
from irtools.errors import ModelLoadError
from irtools.ir.loading import LAZY_MIN_BYTES, read_model
from tests.builders import model, tensor, vinfo


def big_model() -> onnx.ModelProto:
    """Initializers of several kinds around the 64 KB threshold, a Constant node and a bf16 one."""
    rng = np.random.default_rng(0)
    w32 = rng.standard_normal((256, 128)).astype(np.float32)  # 128 KB: mapped
    w16 = rng.standard_normal((128, 512)).astype(np.float16)  # 128 KB: mapped
    q8 = rng.integers(-128, 127, (128, 640), dtype=np.int8)  # 80 KB: mapped
    small = rng.standard_normal((128,)).astype(np.float32)  # 512 B: parsed
    listed = h.make_tensor("listed", T.FLOAT, [128, 200], rng.standard_normal(128 * 200).tolist())  # float_data
    bf16 = h.make_tensor("bf16", T.BFLOAT16, [200, 200], np.zeros(40000, np.uint16).tobytes(), raw=True)
    const = rng.standard_normal((128, 128)).astype(np.float32)  # a Constant node's 64 KB tensor
    return model(
        [
            h.make_node("MatMul", ["x", "w32"], ["a"], name="mm32"),  # [2,128]
            h.make_node("Cast", ["w16"], ["w16f"], to=T.FLOAT),
            h.make_node("MatMul", ["a", "w16f"], ["b"], name="mm16"),  # [2,512]
            h.make_node("Cast", ["q8"], ["q8f"], to=T.FLOAT),
            h.make_node("MatMul", ["a", "q8f"], ["c"], name="mm8"),  # [2,640]
            h.make_node("Constant", [], ["k"], value=tensor("k", const)),
            h.make_node("MatMul", ["a", "k"], ["d"], name="mmk"),
            h.make_node("Add", ["d", "small"], ["e"]),
            h.make_node("MatMul", ["e", "listed"], ["f"], name="mml"),
        ],
        [vinfo("x", [2, 256])],
        [vinfo("b", [2, 512]), vinfo("c", [2, 640]), vinfo("f", [2, 200])],
        [tensor("w32", w32), tensor("w16", w16), tensor("q8", q8), tensor("small", small), listed, bf16],
    )


def test_large_initializers_are_mapped_with_their_exact_values(tmp_path):
    path = str(tmp_path / "m.onnx")
    onnx.save(big_model(), path)
    before = open(path, "rb").read()
    proto, mapped = read_model(path)
    assert set(mapped) == {"w32", "w16", "q8"}  # raw data of a numpy type, >= 64 KB, in the main graph
    assert LAZY_MIN_BYTES == 1 << 16
    ref = {t.name: nh.to_array(t) for t in onnx.load(path).graph.initializer}
    m = irtools.load(path)
    got = {v.name: v.const_value.numpy() for v in m.graph.initializers.values()}
    assert got.keys() == ref.keys()
    for name in ref:
        assert got[name].dtype == ref[name].dtype and np.array_equal(got[name], ref[name]), name
    # the analysis reads the mapped weights: the MatMul weight's lambda_max is numpy's
    analysis = irtools.analyze(m, metrics="spectral")
    row = analysis.details.set_index("parameter").loc["w32"]
    assert row["lambda_max"] == pytest.approx(np.linalg.svd(ref["w32"].astype(np.float64), compute_uv=False)[0] ** 2,
                                              rel=1e-10)
    # saved elsewhere, the weights are written out (not left pointing at the input file)
    out = str(tmp_path / "sub")
    (tmp_path / "sub").mkdir()
    m.save(out + "/copy.onnx")
    saved = onnx.load(out + "/copy.onnx", load_external_data=False)
    assert all(t.data_location == T.DEFAULT for t in saved.graph.initializer)
    feeds = {"x": np.random.default_rng(1).standard_normal((2, 256)).astype(np.float32)}
    for x, y in zip(ort.InferenceSession(path).run(None, feeds), ort.InferenceSession(out + "/copy.onnx").run(None, feeds),
                    strict=True):
        assert np.array_equal(x, y)
    assert open(path, "rb").read() == before


def test_damaged_large_files_still_give_one_line_errors(tmp_path):
    data = big_model().SerializeToString()
    assert len(data) > 4 * LAZY_MIN_BYTES  # large enough for the lazy scan
    for name, damaged in [("truncated.onnx", data[: len(data) // 2]),
                          ("garbage-tail.onnx", data[:-10] + b"\xff" * 10),
                          ("not-onnx.onnx", bytes(range(256)) * 2048)]:
        path = tmp_path / name
        path.write_bytes(damaged)
        with pytest.raises(ModelLoadError) as err:
            irtools.load(str(path))
        assert "\n" not in str(err.value)
