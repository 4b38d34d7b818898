"""Normalisation rules (x element to element, affine vectors per channel).

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
from tests.counts.oracle import Case, F, I64, check_case, covers, our_counts, x


CASES = {  # normalisation statistics make no paths: checked by hand-derived counts, not probes
    "instance-norm": Case(
        h.make_node("InstanceNormalization", ["X", "s", "bb"], ["Y"]),
        {"X": x(2, 3, 4), "s": x(3), "bb": x(3)},
        (2, 3, 4),
        probe=False),
}


@covers("InstanceNormalization")
def test_instance_norm_statistics_make_no_paths():
    """conventions.md: normalisations act element to element; scale and shift count per channel."""
    node, tensors, out_shape = CASES["instance-norm"]
    ours = our_counts(node, tensors, out_shape)
    np.testing.assert_array_equal(ours["X"], np.ones((2, 3, 4)))
    np.testing.assert_array_equal(ours["s"], [2 * 4] * 3)  # every output element of its channel
    np.testing.assert_array_equal(ours["bb"], [2 * 4] * 3)


def test_group_norm_parameters_behind_unsqueeze_are_never_folded_into_an_activation():
    """TorchScript's GroupNorm: InstanceNormalization (unit scale) -> Mul(Unsqueeze(w)) ->
    Add(Unsqueeze(b)) -> GELU written out (x * 0.5 * (1 + erf(x / sqrt 2))). w and b are used by
    every output element of their channel: 1 x 4 = 4 contexts each, never 0."""
    c, length = 3, 4
    rng = np.random.default_rng(4)
    nodes = [
        h.make_node("InstanceNormalization", ["x", "ones", "zeros"], ["n"]),
        h.make_node("Unsqueeze", ["gn.weight", "ax"], ["wu"]), h.make_node("Mul", ["n", "wu"], ["s"]),
        h.make_node("Unsqueeze", ["gn.bias", "ax"], ["bu"]), h.make_node("Add", ["s", "bu"], ["g"]),
        h.make_node("Div", ["g", "sqrt2"], ["d"]), h.make_node("Erf", ["d"], ["e"]),
        h.make_node("Add", ["e", "one"], ["e1"]), h.make_node("Mul", ["g", "e1"], ["p"]),
        h.make_node("Mul", ["p", "half"], ["y"]),
    ]
    inits = [b.tensor("ones", np.ones(c, F)), b.tensor("zeros", np.zeros(c, F)), b.tensor("ax", np.array([1], I64)),
             b.tensor("gn.weight", rng.standard_normal(c).astype(F)), b.tensor("gn.bias", rng.standard_normal(c).astype(F)),
             b.tensor("sqrt2", np.array(1.4142135, F)), b.tensor("one", np.array(1.0, F)),
             b.tensor("half", np.array(0.5, F))]
    proto = b.model(nodes, [b.vinfo("x", [1, c, length])], [b.vinfo("y", [1, c, length])], inits)
    m = irtools.load(proto, parameters={"gn.weight", "gn.bias"})
    cc = irtools.run_passes(m, ["context-counts"])["context-counts"].counts
    for name in ("gn.weight", "gn.bias"):
        np.testing.assert_array_equal(np.ldexp(cc[name].mantissa, cc[name].exponent), np.full(c, float(length)))


CASES["rms-normalization"] = Case(h.make_node("RMSNormalization", ["X", "g"], ["Y"]), {"X": x(2, 3), "g": x(3)}, (2, 3),
                                  opset=23)


def test_rms_normalization_matches_onnxruntime_dependencies():
    """Without a mean, a one-hot row moves only its own element: the probes see the convention."""
    check_case(CASES["rms-normalization"], "rms-normalization")


@covers("LayerNormalization", "SimplifiedLayerNormalization", ("com.microsoft", "SimplifiedLayerNormalization"),
        "GroupNormalization", "BatchNormalization")
@pytest.mark.parametrize("op", ["LayerNormalization", "SimplifiedLayerNormalization", "ms-SimplifiedLayerNormalization",
                                "GroupNormalization-21", "GroupNormalization-18", "BatchNormalization"])
def test_normalisations_count_x_element_to_element_and_their_vectors_per_feature(op):
    """conventions.md: a normalisation acts element to element (its statistics make no paths); a
    scale or shift element reaches every output of its feature (channel, or group at opset 18)."""
    if op in ("LayerNormalization", "SimplifiedLayerNormalization", "ms-SimplifiedLayerNormalization"):
        names = ["X", "g", "bb"] if op == "LayerNormalization" else ["X", "g"]
        domain = "com.microsoft" if op.startswith("ms-") else ""
        node = h.make_node(op.removeprefix("ms-"), names, ["Y"], axis=-1, domain=domain)
        t = {"X": x(2, 3, 4), "g": x(4), "bb": x(4)}
        ours, per = our_counts(node, {k: t[k] for k in names}, (2, 3, 4)), 2 * 3
    elif op.startswith("GroupNormalization"):
        opset = int(op.rsplit("-", 1)[1])
        size = 4 if opset >= 21 else 2  # per channel from opset 21, per group before
        node = h.make_node("GroupNormalization", ["X", "g", "bb"], ["Y"], num_groups=2)
        names, t = ["X", "g", "bb"], {"X": x(2, 4, 3), "g": x(size), "bb": x(size)}
        ours = our_counts(node, t, (2, 4, 3), opset=opset)
        per = 2 * 3 * (4 // size)  # batch x spatial x channels per element
    else:
        node = h.make_node("BatchNormalization", ["X", "g", "bb", "mean", "var"], ["Y"])
        names, t = ["X", "g", "bb", "mean", "var"], {"X": x(2, 3, 4), "g": x(3), "bb": x(3), "mean": x(3), "var": x(3)}
        ours, per = our_counts(node, t, (2, 3, 4)), 2 * 4
    np.testing.assert_array_equal(ours["X"], np.ones(t["X"].shape))
    for k in names[1:]:
        np.testing.assert_array_equal(ours[k], np.full(t[k].shape, float(per)), err_msg=k)
