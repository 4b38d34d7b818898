"""A stored weight that the graph splits into parts before its matmuls (nn.MultiheadAttention over a query other
than its keys: its (3E, E) in_proj_weight split into a query part and a key/value part) is one layer: the stored
matrix, on the graph route of both exporters as on the module route, not one part under the parameter's name."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import irtools  # noqa: E402
from irtools.frontends.torch import from_torch, has_dynamo_exporter  # noqa: E402

E = 24


class _CrossAttention(torch.nn.Module):
    """A learned probe attending over the input (SigLIP's pooling head, a DETR decoder's cross-attention),
    and, with `self_too`, a self-attention block whose in_proj_weight is read whole by one matmul."""

    def __init__(self, self_too: bool = False):
        super().__init__()
        self.probe = torch.nn.Parameter(torch.randn(1, 2, E))
        self.cross = torch.nn.MultiheadAttention(E, 4, batch_first=True)
        # sequence-first: batch-first self-attention takes torch's fast path in eval, which has no ONNX export
        self.self_attn = torch.nn.MultiheadAttention(E, 4) if self_too else None

    def forward(self, x):
        if self.self_attn is not None:
            t = x.transpose(0, 1)
            x = self.self_attn(t, t, t, need_weights=False)[0].transpose(0, 1)
        return self.cross(self.probe.expand(x.shape[0], -1, -1), x, x, need_weights=False)[0]


class _ThreeWay(torch.nn.Module):
    """Query, key and value all different: in_proj_weight in three parts (chunk)."""

    def __init__(self):
        super().__init__()
        self.attn = torch.nn.MultiheadAttention(E, 4, batch_first=True)

    def forward(self, q, k, v):
        return self.attn(q, k, v, need_weights=False)[0]


EXPORTERS = ["torchscript"] + (["dynamo"] if has_dynamo_exporter() else [])


def _squared_singular_values(w: np.ndarray) -> np.ndarray:
    return np.sort(np.linalg.svd(np.asarray(w, dtype=np.float64), compute_uv=False) ** 2)


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("build", ["cross", "three-way", "cross-and-self"])
def test_a_weight_split_before_its_matmuls_is_one_layer_of_the_stored_matrix(exporter, build):
    torch.manual_seed(0)
    if build == "three-way":
        net, inputs = _ThreeWay().eval(), (torch.randn(1, 5, E), torch.randn(1, 7, E), torch.randn(1, 7, E))
    else:
        net, inputs = _CrossAttention(self_too=build == "cross-and-self").eval(), (torch.randn(1, 7, E),)
    proto = from_torch(net, inputs, exporter=exporter)
    analysis = irtools.analyze(proto, metrics="spectral", keep_eigenvalues=True)
    rows = {r["name"]: (r, ev) for r, ev in zip(analysis.layers, analysis.eigenvalues, strict=True)}
    state = {k: v.detach().numpy() for k, v in net.state_dict().items()}
    in_proj = [k for k in state if k.endswith("in_proj_weight")]
    for key in in_proj:
        row, ev = rows[key.removesuffix(".weight")]
        assert (row["N"], row["M"], row["parameter"]) == (3 * E, E, key)
        # the stored matrix's eigenvalues (independent truth: numpy's SVD), all 3E x E of it
        np.testing.assert_allclose(ev, _squared_singular_values(state[key]), rtol=1e-9, atol=1e-12)
    # every row of the graph route is the module route's: names, shapes and numbers
    module = irtools.analyze(irtools.frontends.open_source((net, inputs)).__class__(
        "m", "x", layers=irtools.frontends.torch.module_weight_layers(net)), metrics="spectral")
    by_name = {r["name"]: r for r in module.layers}
    for name, (row, _) in rows.items():
        if name in by_name:
            for k in ("N", "M", "num_evals"):
                assert row[k] == by_name[name][k], (name, k)
            assert row["alpha"] == pytest.approx(by_name[name]["alpha"], rel=1e-9, nan_ok=True), name
    assert {k.removesuffix(".weight") for k in in_proj} <= set(by_name) & set(rows)


def test_split_qkv_cuts_the_stored_matrix_in_thirds():
    torch.manual_seed(1)
    net, inputs = _ThreeWay().eval(), tuple(torch.randn(1, 6, E) for _ in range(3))
    proto = from_torch(net, inputs, exporter="torchscript")
    analysis = irtools.analyze(proto, metrics="spectral", keep_eigenvalues=True, split_qkv=True)
    w = net.attn.in_proj_weight.detach().numpy()
    got = {r["name"]: ev for r, ev in zip(analysis.layers, analysis.eigenvalues, strict=True)}
    for k, part in enumerate("qkv"):
        ev = got[f"attn.in_proj_weight:{part}"]
        np.testing.assert_allclose(ev, _squared_singular_values(w[k * E:(k + 1) * E]), rtol=1e-9, atol=1e-12)


def test_a_weight_split_into_a_sequence_without_types_is_still_one_parameter(tmp_path):
    """An unoptimized exporter's file (torch.onnx dynamo, optimize=False) writes no type for the SplitToSequence /
    SequenceAt values between a weight and its matmuls: each part was taken for a new tensor computed from
    integers (a 'constant-subgraph' parameter with the weight's contexts, the weight itself left with none), and
    `inspect` failed on the sequence's shape. Built by hand: w (3E, E) split in a sequence of three parts."""
    import onnx
    from onnx import TensorProto, helper

    from irtools.cli import main
    from tests import builders as b

    rng = np.random.default_rng(0)
    nodes = [helper.make_node("SplitToSequence", ["w", "sizes"], ["parts"], axis=0),
             *(helper.make_node("SequenceAt", ["parts", f"i{k}"], [f"w{k}"]) for k in range(3)),
             *(helper.make_node("Transpose", [f"w{k}"], [f"t{k}"], perm=[1, 0]) for k in range(3)),
             *(helper.make_node("MatMul", ["x", f"t{k}"], [f"y{k}"]) for k in range(3)),
             helper.make_node("Sum", ["y0", "y1", "y2"], ["y"])]
    inits = [b.tensor("w", rng.standard_normal((3 * E, E))),
             onnx.numpy_helper.from_array(np.array([E, E, E], np.int64), "sizes"),
             *(onnx.numpy_helper.from_array(np.array(k, np.int64), f"i{k}") for k in range(3))]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, E])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, E])], initializer=inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    model = irtools.load(proto)
    assert [p.name for p in model.parameters if p.learnable] == ["w"]
    result = irtools.analyze(proto, min_evals=1)
    (row,) = result.layers
    assert row["parameter"] == "w" and (row["N"], row["M"]) == (3 * E, E)
    (param,) = result.reuse["parameters"]
    assert param["name"] == "w" and param["scalars"] == 3 * E * E
    path = tmp_path / "seq.onnx"
    path.write_bytes(proto.SerializeToString())
    from click.testing import CliRunner

    assert CliRunner().invoke(main, ["inspect", str(path)]).exit_code == 0
