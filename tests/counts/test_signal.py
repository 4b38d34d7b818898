"""Signal-processing rules (DFT, STFT).

Each against an independent truth: onnxruntime's dependency probes (`tests/counts/oracle.py`),
hand-derived counts where the conventions differ from value dependence, brute force or a
written-out graph.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper as h

import irtools
from tests import builders as b
from tests.counts.oracle import F, I64, covers, our_counts, x


@covers("DFT")
@pytest.mark.parametrize("complex_input,onesided", [(False, 0), (False, 1), (True, 0)])
def test_dft_counts_as_matmul_with_its_constant_matrices(complex_input, onesided):
    """DFT along axis 1 of (B, N, 1 or 2) = x_re C - x_im S and x_re S + x_im C with constant
    cos / sin matrices (N, K), counted by the MatMul rule; onnxruntime confirms the written-out
    graph computes the DFT."""
    import onnxruntime as ort

    bsz, size = 2, 4
    k = size // 2 + 1 if onesided else size
    xs = x(bsz, size, 2 if complex_input else 1)
    angle = -2 * np.pi * np.outer(np.arange(size), np.arange(k)) / size
    t = {"X": xs, "C": np.cos(angle).astype(F), "S": np.sin(angle).astype(F), "ax": np.array([2], I64),
         "m1": np.array(-1.0, F)}
    dft = h.make_node("DFT", ["X"], ["Y"], axis=1, onesided=onesided)
    nodes = [h.make_node("Split", ["X"], ["xr", "xi"] if complex_input else ["xr"], axis=2,
                         **({"num_outputs": 2} if complex_input else {"num_outputs": 1})),
             h.make_node("Squeeze", ["xr", "ax"], ["r"]), h.make_node("MatMul", ["r", "C"], ["rc"]),
             h.make_node("MatMul", ["r", "S"], ["rs"])]
    re, im = "rc", "rs"
    if complex_input:
        nodes += [h.make_node("Squeeze", ["xi", "ax"], ["i"]), h.make_node("MatMul", ["i", "C"], ["ic"]),
                  h.make_node("MatMul", ["i", "S"], ["is"]), h.make_node("Mul", ["is", "m1"], ["nis"]),
                  h.make_node("Add", ["rc", "nis"], ["re"]), h.make_node("Add", ["rs", "ic"], ["im"])]
        re, im = "re", "im"
    nodes += [h.make_node("Unsqueeze", [re, "ax"], ["ure"]), h.make_node("Unsqueeze", [im, "ax"], ["uim"]),
              h.make_node("Concat", ["ure", "uim"], ["Y"], axis=2)]
    fused = b.model([dft], [], [b.vinfo("Y", [bsz, k, 2])], [b.tensor("X", xs)], opset=18)
    written = b.model(nodes, [], [b.vinfo("Y", [bsz, k, 2])], [b.tensor(n_, v) for n_, v in t.items()], opset=18)
    run = [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {})[0]
           for m in (fused, written)]
    np.testing.assert_allclose(run[0], run[1], rtol=1e-5, atol=1e-5)
    got = [irtools.run_passes(irtools.load(m, parameters={"X"}), ["context-counts"])["context-counts"].counts["X"]
           for m in (fused, written)]
    np.testing.assert_array_equal(*(np.ldexp(c.mantissa, c.exponent) for c in got))


@covers("STFT")
def test_stft_counts_each_sample_in_every_frame_holding_it():
    """8 samples, frames of 4 every 2 (3 frames), one-sided: 3 bins x 2 parts per frame. Samples
    0-1 and 6-7 lie in one frame, 2-5 in two: 6 or 12 contexts; a window element multiplies one
    sample of each of the 3 frames: 18 (onnxruntime confirms the output's frames and bins)."""
    import onnxruntime as ort

    node = h.make_node("STFT", ["X", "step", "win"], ["Y"], onesided=1)
    tensors = {"X": x(1, 8, 1), "step": np.array(2, I64), "win": x(4)}
    proto = b.model([node], [], [b.vinfo("Y", None)], [b.tensor(k, v) for k, v in tensors.items()], opset=17)
    y = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {})[0]
    assert y.shape == (1, 3, 3, 2)
    ours = our_counts(node, tensors, (1, 3, 3, 2), opset=17)
    np.testing.assert_array_equal(ours["X"].ravel(), [6, 6, 12, 12, 12, 12, 6, 6])
    np.testing.assert_array_equal(ours["win"], np.full(4, 18.0))
