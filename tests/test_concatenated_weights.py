"""Parameters concatenated at run time into one matmul operand are analysed as the stored matrices they are.

x @ [A | B] is [x @ A | x @ B]: Flax's OptimizedLSTMCell concatenates its four gate kernels, a custom attention
its q, k and v weights. The independent truths: numpy's singular values of each stored part, the module route's
rows (the state dict's tensors one by one) and Flax's plain LSTMCell, which applies the same kernels one by one.
"""

import importlib.util

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import irtools

HAVE_FLAX = all(importlib.util.find_spec(m) is not None for m in ("jax", "flax", "jax2onnx"))
SPECTRAL = ("N", "M", "num_evals", "alpha", "xmin", "D", "log_norm", "log_spectral_norm", "stable_rank",
            "matrix_rank")


def _file(tmp_path, parts, axis, extra_node=None):
    """x @ Concat(parts, axis) as an ONNX file; `extra_node` (name, node) replaces the last part by a computed one."""
    inits = [numpy_helper.from_array(w.astype(np.float32), name) for name, w in parts.items()]
    names = list(parts)
    nodes = []
    if extra_node is not None:
        nodes.append(extra_node)
        names[-1] = extra_node.output[0]
    nodes += [helper.make_node("Concat", names, ["w"], axis=axis), helper.make_node("MatMul", ["x", "w"], ["y"])]
    shapes = [w.shape for w in parts.values()]
    rows = shapes[0][0] if axis == 1 else sum(s[0] for s in shapes)
    cols = sum(s[1] for s in shapes) if axis == 1 else shapes[0][1]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, rows])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, cols])], inits)
    path = tmp_path / "concat.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return str(path)


@pytest.mark.parametrize("axis", [0, 1])
def test_each_concatenated_parameter_is_its_own_matrix(tmp_path, axis):
    rng = np.random.default_rng(0)
    shapes = [(24, 10), (24, 12), (24, 9)] if axis == 1 else [(10, 24), (12, 24), (9, 24)]
    parts = {f"cell/{g}/kernel": rng.standard_normal(s) for g, s in zip("abc", shapes)}
    result = irtools.analyze(_file(tmp_path, parts, axis), metrics=["spectral", "reuse"])
    rows = {r["parameter"]: r for r in result.layers}
    assert set(rows) == set(parts) and not result.skipped
    assert [r["name"] for r in result.layers] == ["cell/a", "cell/b", "cell/c"]
    for name, w in parts.items():
        squares = np.linalg.svd(w.astype(np.float32).astype(np.float64), compute_uv=False) ** 2
        assert (rows[name]["N"], rows[name]["M"]) == (max(w.shape), min(w.shape))
        assert rows[name]["lambda_max"] == pytest.approx(squares[0], rel=1e-10)
        assert rows[name]["log_norm"] == pytest.approx(np.log10(squares.sum()), rel=1e-10)
    # the reuse family counts each stored scalar once, concatenated or not
    assert result.reuse["num_params"] == sum(w.size for w in parts.values())


def test_concatenated_parts_of_one_module_path_get_distinct_row_names(tmp_path):
    """Parts whose module paths are one name (`mm/w` and `mm/kernel` are both `mm`, the node's own name too) still
    make one row each, each under a name of its own."""
    rng = np.random.default_rng(4)
    parts = {"mm/w": rng.standard_normal((16, 10)), "mm/kernel": rng.standard_normal((16, 12)),
             "mm/weight": rng.standard_normal((16, 9))}
    path = _file(tmp_path, parts, 1)
    model = onnx.load(path)
    model.graph.node[-1].name = "mm"
    onnx.save(model, path)
    rows = irtools.analyze(path, metrics=["spectral"]).layers
    assert sorted(r["parameter"] for r in rows) == sorted(parts)
    assert len({r["name"] for r in rows}) == 3


def test_a_concatenation_with_a_computed_part_stays_one_computed_matrix(tmp_path):
    rng = np.random.default_rng(1)
    parts = {"a/kernel": rng.standard_normal((16, 10)), "b/kernel": rng.standard_normal((16, 10))}
    # the second part is b x 2: not a stored matrix, so the concatenation is analysed as the computed weight
    scale = helper.make_node("Mul", ["b/kernel", "two"], ["b2"])
    path = _file(tmp_path, parts, 1, extra_node=scale)
    model = onnx.load(path)
    model.graph.initializer.append(numpy_helper.from_array(np.array(2.0, np.float32), "two"))
    onnx.save(model, path)
    result = irtools.analyze(path, metrics=["spectral"])
    assert len(result.layers) == 1
    row = result.layers[0]
    assert (row["N"], row["M"]) == (20, 16) and "computed from" in row["analysed"]
    whole = np.concatenate([parts["a/kernel"], 2 * parts["b/kernel"].astype(np.float32)], axis=1)
    squares = np.linalg.svd(whole.astype(np.float32).astype(np.float64), compute_uv=False) ** 2
    assert row["lambda_max"] == pytest.approx(squares[0], rel=1e-6)


def test_torch_weights_concatenated_in_forward_are_the_module_routes_rows():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)

    class Attention(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.k, self.v = (torch.nn.Linear(24, 24, bias=False) for _ in range(3))
            self.out = torch.nn.Linear(24, 24)

        def forward(self, x):  # one fused projection from three stored weights
            fused = torch.cat([self.q.weight, self.k.weight, self.v.weight])
            q, k, v = torch.nn.functional.linear(x, fused).chunk(3, -1)
            a = torch.softmax(q @ k.transpose(-1, -2) / 24 ** 0.5, -1)
            return self.out(a @ v)

    net = Attention().eval()
    graph = {r["name"]: r for r in irtools.analyze((net, (torch.randn(1, 5, 24),)), metrics=["spectral"]).layers}
    assert set(graph) == {"q", "k", "v", "out"}
    module = {r["name"]: r for r in irtools.analyze(net, metrics=["spectral"]).layers}  # no inputs: each tensor
    for name, row in graph.items():
        for col in SPECTRAL:
            assert row[col] == pytest.approx(module[name][col], rel=1e-9), (name, col)


@pytest.mark.skipif(not HAVE_FLAX, reason="needs jax, flax and jax2onnx")
def test_flax_optimized_lstm_cell_rows_are_lstm_cell_rows():
    """OptimizedLSTMCell concatenates the kernels LSTMCell applies one by one: the same weights, the same rows."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    def net(cell_class):
        class Net(nn.Module):
            @nn.compact
            def __call__(self, x):
                cell = cell_class(16, name="cell")
                carry = cell.initialize_carry(jax.random.PRNGKey(0), x[:, 0].shape)
                for t in range(x.shape[1]):
                    carry, y = cell(carry, x[:, t])
                return nn.Dense(3, name="head")(y)

        return Net()

    x = jnp.asarray(np.random.default_rng(2).standard_normal((1, 4, 12)), jnp.float32)
    plain = net(nn.LSTMCell)
    variables = plain.init(jax.random.PRNGKey(1), x)
    # the recurrent kernels random rather than orthogonal (a flat spectrum's fit is degenerate on both routes)
    rng = np.random.default_rng(3)
    variables = jax.tree_util.tree_map(lambda a: jnp.asarray(rng.standard_normal(a.shape), jnp.float32), variables)
    rows = {}
    for cls in (nn.LSTMCell, nn.OptimizedLSTMCell):
        result = irtools.analyze((net(cls), variables, (x,)), metrics=["spectral"])
        rows[cls.__name__] = {r["parameter"]: r for r in result.layers}
        assert not [s for s in result.skipped if "analysed as part" in s["reason"]]
    assert set(rows["OptimizedLSTMCell"]) == set(rows["LSTMCell"]) == {
        f"params/cell/{w}{g}/kernel" for w in "ih" for g in "ifgo"}
    for parameter, row in rows["OptimizedLSTMCell"].items():
        # one name on both: the module path (LSTMCell's recurrent kernels were named after the zero-state first
        # step's Gemm, `cell/hi/Gemm_3`)
        assert row["name"] == rows["LSTMCell"][parameter]["name"] == parameter[len("params/"):-len("/kernel")]
        for col in SPECTRAL:
            assert row[col] == pytest.approx(rows["LSTMCell"][parameter][col], rel=1e-9), (parameter, col)


@pytest.mark.skipif(not HAVE_FLAX, reason="needs jax, flax and jax2onnx")
def test_a_flax_kernel_computed_from_its_modules_own_factors_keeps_the_modules_name():
    """x @ (a @ b) inside one module: the product of its own parameters is the weight it applies (the row is `lora`,
    not the exporter's `node_Gemm_1`), while a zero-state step's product (`test_flax_optimized...`) is not."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    class LowRank(nn.Module):
        @nn.compact
        def __call__(self, x):
            a = self.param("a", nn.initializers.normal(1.0), (x.shape[-1], 4))
            b = self.param("b", nn.initializers.normal(1.0), (4, 16))
            return x @ (a @ b)

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(3, name="head")(LowRank(name="lora")(x))

    x = jnp.asarray(np.random.default_rng(5).standard_normal((1, 12)), jnp.float32)
    net = Net()
    result = irtools.analyze((net, net.init(jax.random.PRNGKey(0), x), (x,)), metrics=["spectral"], min_evals=1)
    assert [r["name"] for r in result.layers] == ["lora", "head"]
