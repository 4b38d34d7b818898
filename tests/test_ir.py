"""The analysis IR: parameter discovery, names, shapes and the array view."""

import os

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

import irtools
from irtools.ir.parameters import DECLARED_PARAMETERS_KEY
from tests import builders as b
from tests.conftest import EXAMPLE, LIGHT_MODELS


def independent_parameter_count(path: str) -> int:
    """Count learnable scalars straight from the protobuf: float initializers some node reads,
    plus float tensors built by ConstantOfShape from a constant shape initializer."""
    proto = onnx.load(path)
    g = proto.graph
    read = {name for n in g.node for name in n.input}
    inits = {t.name: t for t in g.initializer}
    total = 0
    for t in g.initializer:
        if t.data_type == T.FLOAT and t.name in read:
            total += int(np.prod(t.dims))
    for n in g.node:
        if n.op_type == "ConstantOfShape":
            value = next((a.t for a in n.attribute if a.name == "value"), None)
            if value is None or value.data_type == T.FLOAT:
                total += int(np.prod(nh.to_array(inits[n.input[0]])))
    return total


@pytest.mark.parametrize("path", LIGHT_MODELS, ids=os.path.basename)
def test_light_models_parameter_count_matches_independent_count(path):
    m = irtools.load(path)
    assert sum(p.numel for p in m.parameters) == independent_parameter_count(path)
    # every ConstantOfShape-made weight is found and its shape comes from the shape tensor
    assert any(p.source == "constant-subgraph" for p in m.parameters)
    assert all(len(p.uses) >= 1 for p in m.parameters)


@pytest.mark.parametrize(
    "name, expected",
    # published parameter counts of the architectures (weights + biases; BN adds 4 per channel)
    [("light_vgg19.onnx", 143_667_240), ("light_bvlc_alexnet.onnx", 60_965_224),
     ("light_resnet50.onnx", 25_557_032 + 53_120)],
)
def test_light_models_known_totals(name, expected):
    path = next(p for p in LIGHT_MODELS if p.endswith(name))
    assert sum(p.numel for p in irtools.load(path).parameters) == expected


def test_constant_subgraph_weight_value_is_evaluated():
    path = next(p for p in LIGHT_MODELS if p.endswith("light_squeezenet.onnx"))
    m = irtools.load(path)
    p = m.parameter("conv1_w_0")
    value = m.constant_value(p.value)
    shape = next(nh.to_array(t) for t in onnx.load(path).graph.initializer if t.name == "conv1_w_0__SHAPE")
    assert value.shape == p.shape == tuple(shape) == (64, 3, 3, 3)  # SqueezeNet 1.1 stem
    assert np.all(value == np.float32(0.02))


def test_view_like_constant_ops_evaluate_like_onnxruntime():
    """Transpose / Identity / Reshape (0 and -1 dims) of a weight are numpy views in the IR; they
    must equal what onnxruntime computes for the same nodes."""
    import onnxruntime as ort

    rng = np.random.default_rng(4)
    w = rng.standard_normal((6, 4, 2)).astype(np.float32)
    nodes = [h.make_node("Transpose", ["w"], ["t"], perm=[2, 0, 1]),
             h.make_node("Identity", ["t"], ["i"]),
             h.make_node("Reshape", ["i", "s1"], ["r1"]),
             h.make_node("Transpose", ["r1"], ["r1t"]),
             h.make_node("Reshape", ["w", "s2"], ["r2"])]
    outs = ["t", "i", "r1", "r1t", "r2"]
    proto = b.model(nodes + [h.make_node("Add", ["x", "x"], ["y"])], [b.vinfo("x", [1])],
                    [b.vinfo("y", [1])] + [h.make_empty_tensor_value_info(o) for o in outs],
                    [b.tensor("w", w), b.tensor("s1", np.array([0, -1], np.int64)),
                     b.tensor("s2", np.array([-1, 8], np.int64))])
    expected = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        outs, {"x": np.zeros(1, np.float32)})
    m = irtools.load(proto)
    values = {v.name: v for n in m.nodes for v in n.outputs}
    for name, want in zip(outs, expected, strict=True):
        got = m.constant_value(values[name])
        assert got.shape == want.shape and np.array_equal(got, want), name
        if name in ("t", "i", "r2"):  # views of the stored weight, no copy (r1 must copy: non-contiguous)
            assert not got.flags.owndata


def test_mlp_parameters_names_consumers():
    m = irtools.load(b.mlp())
    assert [p.name for p in m.parameters] == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    assert m.parameter("fc1.weight").consumer == "fc1"
    assert m.parameter("fc2.weight").uses[0] == irtools.Use("fc2", "MatMul", 1)
    # unnamed nodes get readable, unique display names
    assert sorted(m.node_names.values()) == sorted(["fc1", "Relu_0", "fc2", "Add_0"])


def test_constant_node_weights_found_through_transpose():
    m = irtools.load(b.constant_node_model())
    names = {p.name: p for p in m.parameters}
    assert set(names) == {"w_stored", "b"}
    w = names["w_stored"]
    assert w.source == "constant-node" and w.shape == (3, 4)
    assert w.uses == (irtools.Use("dense", "MatMul", 1),) and w.via == ("Transpose",)
    # the bare scalar 2.0 is structural, not a parameter
    two = next(c for c in m.constants if c.name == "two")
    assert two.reason == "scalar constant"


def test_if_subgraph_weights_found():
    m = irtools.load(b.if_model())
    names = {p.name: p for p in m.parameters}
    assert set(names) == {"then.weight", "else.weight", "shared.bias"}
    assert names["then.weight"].graph == "then_branch" and names["then.weight"].source == "initializer"
    assert names["else.weight"].graph == "else_branch" and names["else.weight"].source == "constant-node"
    assert {u.node for u in names["shared.bias"].uses} == {"then_add", "else_add"}
    assert len(m.graphs) == 3
    assert m.op_histogram()["MatMul"] == 2


def test_structural_constants_are_not_parameters():
    rng = np.random.default_rng(0)
    nodes = [
        h.make_node("Reshape", ["x", "shape"], ["r"]),
        h.make_node("Resize", ["r", "", "scales"], ["z"], mode="nearest"),
        h.make_node("Mul", ["z", "gain"], ["g"]),
        h.make_node("Pow", ["g", "three"], ["p"]),
        h.make_node("DequantizeLinear", ["wq", "wq_scale", "wq_zero"], ["w"]),
        h.make_node("Conv", ["p", "w"], ["y"], name="conv"),
    ]
    inits = [
        b.tensor("shape", np.array([1, 2, 4, 4], np.int64)),
        b.tensor("scales", np.array([1, 1, 2, 2], np.float32)),
        b.tensor("gain", rng.normal(size=(1, 2, 1, 1)).astype(np.float32)),
        b.tensor("three", np.float32(3.0)),
        b.tensor("wq", rng.integers(-8, 8, size=(3, 2, 1, 1)).astype(np.int8)),
        b.tensor("wq_scale", np.float32(0.1)),
        b.tensor("wq_zero", np.int8(0)),
    ]
    m = irtools.load(b.model(nodes, [b.vinfo("x", [1, 32])], [b.vinfo("y", [1, 3, 8, 8])], inits))
    learn = {p.name: p for p in m.parameters}
    assert set(learn) == {"gain", "w"}
    assert learn["w"].source == "dequantized" and learn["w"].shape == (3, 2, 1, 1)
    reasons = {c.name: c.reason for c in m.constants}
    assert reasons["shape"] == "int64 tensor"
    assert reasons["scales"].startswith("shape-like input 2 of Resize")
    assert reasons["three"] == "scalar constant"
    assert reasons["wq_scale"].startswith("quantization parameter 1 of DequantizeLinear")
    assert reasons["wq"] == "int8 tensor"
    np.testing.assert_allclose(m.constant_value(learn["w"].value), nh.to_array(inits[4]).astype(np.float32) * 0.1)


def test_declared_parameter_set_wins():
    proto = b.mlp()
    proto.metadata_props.add(key=DECLARED_PARAMETERS_KEY, value='["fc1.weight", "fc2.weight"]')
    m = irtools.load(proto)
    assert [p.name for p in m.parameters] == ["fc1.weight", "fc2.weight"]
    assert {c.name: c.reason for c in m.constants}["fc1.bias"] == "not in the framework's parameter set"
    m2 = irtools.load(b.mlp(), parameters={"fc2.bias"})
    assert [p.name for p in m2.parameters] == ["fc2.bias"]


def test_example_parameters_are_the_state_dict():
    m = irtools.load(EXAMPLE)
    names = [p.name for p in m.parameters]
    expected = [f"features.{i}.{k}" for i in (0, 3) for k in ("weight", "bias")]
    expected += [f"features.{i}.{k}" for i in (1, 4) for k in ("weight", "bias", "running_mean", "running_var")]
    expected += [f"classifier.{i}.{k}" for i in (1, 3) for k in ("weight", "bias")]
    assert sorted(names) == sorted(expected)
    assert sum(p.numel for p in m.parameters) == 38_378 + 96


def test_input_shape_override_makes_every_shape_static():
    m = irtools.load(EXAMPLE)
    with pytest.raises(irtools.ShapeError, match="--input-shape image="):
        m.arrays()
    m = irtools.load(EXAMPLE, input_shapes={"image": (5, 1, 8, 8)})
    a = m.arrays()
    assert a.value_shape(int(a.output_values[0])) == (5, 10)
    assert m.static_shape(m.inputs[0]) == (5, 1, 8, 8)


@pytest.mark.parametrize(
    "shapes, message",
    [({"nope": (1,)}, "not a model input"), ({"image": (1, 8, 8)}, "rank 4"), ({"image": (1, 3, 8, 8)}, "axis 1")],
)
def test_bad_input_shape_overrides(shapes, message):
    with pytest.raises(irtools.ShapeError, match=message):
        irtools.load(EXAMPLE, input_shapes=shapes)


def test_array_view_matches_the_graph():
    path = next(p for p in LIGHT_MODELS if p.endswith("light_inception_v1.onnx"))
    m = irtools.load(path)
    a = m.arrays()
    proto = onnx.load(path)
    assert a.num_nodes == len(proto.graph.node)
    pos = {name: i for i, name in enumerate(a.node_names)}
    # topological: every predecessor comes first
    for i in range(a.num_nodes):
        assert all(a.pred[a.pred_ptr[i]:a.pred_ptr[i + 1]] < i)
    # successors and predecessors are mirror images, edge for edge
    succ_edges = sorted((i, int(j)) for i in range(a.num_nodes) for j in a.succ[a.succ_ptr[i]:a.succ_ptr[i + 1]])
    pred_edges = sorted((int(j), i) for i in range(a.num_nodes) for j in a.pred[a.pred_ptr[i]:a.pred_ptr[i + 1]])
    assert succ_edges == pred_edges
    # brute force from the protobuf: edge producer->consumer for each input produced by a node
    producer = {o: n for n in proto.graph.node for o in n.output}
    disp = dict(zip(m.nodes, a.node_names))
    names_by_proto = {}
    for pn, node in zip(proto.graph.node, m.graph):
        names_by_proto[id(pn)] = disp[node]
    brute = sorted((pos[names_by_proto[id(producer[x])]], pos[names_by_proto[id(n)]])
                   for n in proto.graph.node for x in n.input if x in producer)
    assert succ_edges == brute
    # parameter table
    assert a.param_names == [p.name for p in m.parameters]
    assert int(a.param_numel.sum()) == sum(p.numel for p in m.parameters)
    for k, v in enumerate(a.param_value):
        assert a.value_param[v] == k and a.value_numel[v] == a.param_numel[k]
    assert [a.op_names[c] for c in a.node_op] == [n.op_type for n in m.nodes]


def test_external_data_is_lazy_and_checked(tmp_path):
    proto = b.mlp()
    original = nh.to_array(proto.graph.initializer[0])
    path = tmp_path / "ext.onnx"
    onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="ext.onnx.data", size_threshold=0)
    m = irtools.load(str(path))
    w = m.parameter("fc1.weight")
    assert isinstance(w.value.const_value, ir.ExternalTensor)
    np.testing.assert_array_equal(m.constant_value(w.value), original)
    (tmp_path / "ext.onnx.data").unlink()
    with pytest.raises(irtools.ModelLoadError, match="external data file of tensor 'fc1.weight': 'ext.onnx.data' is missing"):
        irtools.load(str(path))


def test_cycle_and_undefined_inputs_rejected():
    cyc = b.model([h.make_node("Relu", ["b"], ["a"], name="r1"), h.make_node("Relu", ["a"], ["b"], name="r2")],
                  [b.vinfo("x", [1])], [b.vinfo("b", [1])])
    with pytest.raises(irtools.ModelLoadError, match="cycle"):
        irtools.load(cyc)
    undefined = b.model([h.make_node("Relu", ["nowhere"], ["y"], name="r")], [b.vinfo("x", [1])], [b.vinfo("y", [1])])
    with pytest.raises(irtools.ModelLoadError, match="'nowhere'.*not defined"):
        irtools.load(undefined)


def test_unsorted_graph_is_ordered():
    proto = b.mlp()
    nodes = list(proto.graph.node)
    del proto.graph.node[:]
    proto.graph.node.extend(reversed(nodes))
    m = irtools.load(proto)
    assert [n.op_type for n in m.nodes] == ["Gemm", "Relu", "MatMul", "Add"]


def test_inspect_reads_no_external_weight_data(tmp_path, monkeypatch):
    """Parameters, shapes and the summary come from metadata: external weights stay unread."""
    proto = b.mlp()
    path = tmp_path / "big.onnx"
    onnx.save_model(proto, str(path), save_as_external_data=True, location="big.onnx.data", size_threshold=0)

    def refuse(self, *a, **k):
        raise AssertionError("external tensor data was read")

    monkeypatch.setattr(ir.ExternalTensor, "numpy", refuse)
    monkeypatch.setattr(ir.ExternalTensor, "tobytes", refuse)
    m = irtools.load(str(path))
    summary = irtools.run_passes(m, ["summary"])["summary"]
    assert summary["parameters"]["scalars"] == 5 * 4 + 5 + 5 * 3 + 3


def test_a_weight_split_into_a_sequence_is_evaluated_as_a_list(tmp_path):
    """nn.MultiheadAttention's cross-attention export splits in_proj_weight with SplitToSequence
    (parts of different sizes) and reads them with SequenceAt: the constant evaluator keeps the
    sequence as a list, feeds it to SequenceAt, and each part equals the numpy slice."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((6, 4)).astype(np.float32)
    nodes = [h.make_node("SplitToSequence", ["w", "sizes"], ["seq"], axis=0),
             h.make_node("SequenceAt", ["seq", "one"], ["w1"]),
             h.make_node("Transpose", ["w1"], ["w1t"]),
             h.make_node("MatMul", ["x", "w1t"], ["y"])]
    proto = b.model(nodes, [b.vinfo("x", [1, 4])], [b.vinfo("y", [1, 4])],
                    [b.tensor("w", w), nh.from_array(np.array([2, 4], np.int64), "sizes"),
                     nh.from_array(np.array(1, np.int64), "one")])
    m = irtools.load(proto)
    seq = m.constant_value(next(v for n in m.graph for v in n.outputs if v.name == "seq"))
    assert isinstance(seq, list) and [p.shape for p in seq] == [(2, 4), (4, 4)]
    part = m.constant_value(next(v for n in m.graph for v in n.outputs if v.name == "w1"))
    np.testing.assert_array_equal(part, w[2:])
    result = irtools.analyze(proto, metrics="spectral,reuse")
    assert result.reuse["num_params"] == w.size - 2 * 4  # the first part is read by nothing


@pytest.mark.parametrize("value", ['[1, 2]', '{"w": [8, -1]}', '{"w": "8x8"}', '{"w": [1e400]}', "[" * 5000, "{"])
def test_unread_parameter_metadata_must_be_shapes(value):
    """`irtools.unread_parameters` (written by the torch frontend) is read from files: anything but
    a JSON object of non-negative int shapes is a corrupt-file error, not an unexpected one."""
    from irtools.errors import ModelLoadError
    from irtools.ir.parameters import UNREAD_PARAMETERS_KEY

    proto = b.mlp()
    proto.metadata_props.add(key=UNREAD_PARAMETERS_KEY, value=value)
    with pytest.raises(ModelLoadError, match="not a JSON object of parameter shapes"):
        irtools.load(proto)
    proto.metadata_props[-1].value = '{"pooler.weight": [8, 8]}'
    assert irtools.load(proto).unread_parameters == {"pooler.weight": (8, 8)}
