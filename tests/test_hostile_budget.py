"""Work bounded before it is done (issue #23): small files that declare huge work (constants that
expand, doubling chains, a 2^62-iteration Loop, nested branches, model-local functions calling each
other twice, a million-node chain) end fast, in a child process whose peak RSS stays under the
harness bound, with exit 2 and one `irtools: error:` line naming the op and the size (or exit 0
where the work is optional and left out with a note); nothing is evaluated or inlined to find out.
The counts and caps themselves are checked against hand-derived values."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

from irtools import budget
from irtools.errors import ModelLoadError
from irtools.ir.loading import count_nodes
from tests.fuzz import expanding, harness, hostile

#: Seconds one refusal may take in a child (import ~3 s on an idle machine; CI runs 2 cores busy).
SECONDS = 90

#: attack -> (CLI command, expected exit, a part of the one stderr line)
REFUSED = {
    "constant_of_shape": ("analyze", 2,
                          "constant 'big' (ConstantOfShape node 'cos') would be 4.0 GiB computed from 16 B"),
    "expand": ("analyze", 2, "(Expand node 'expand') would be 4.0 GiB"),
    "tile": ("analyze", 2, "(Tile node 'tile') would be 4.0 GiB"),
    "hann_window": ("analyze", 2, "(HannWindow node 'window') would be 4.0 GiB"),
    "blackman_window": ("inspect", 2, "(BlackmanWindow node 'window') would be 4.0 GiB"),
    "range": ("analyze", 2, "(Range node 'range') would be 4.0 GiB"),
    "matmul_of_vectors": ("analyze", 2, "(MatMul node 'outer') would be 1.5 GiB computed from 78.1 KiB"),
    "concat_doubling": ("analyze", 2, "(Concat node 'double"),
    "loop_2_62": ("analyze", 0, "a probe run would execute 9.22e+18 nodes (Loop node 'loop' (4.61e+18 iterations))"),
    "nested_if": ("inspect", 2, "the model's graph has 262,145 nodes, over the cap of 131,072 nodes"),
    "doubling_functions": ("inspect", 2, "(its model-local functions inlined) has 1,099,511,627,777 nodes"),
}


def _write(lay, name: str, data: bytes) -> str:
    return lay.write(f"{name}.onnx", data)


def _run(tmp_path, name: str, data: bytes, command: str, *extra: str, env: dict | None = None):
    lay = hostile.layout(str(tmp_path))
    path = _write(lay, name, data)
    before = harness.snapshot(lay.model)
    saved = {k: os.environ.get(k) for k in env or {}}
    os.environ.update(env or {})
    try:
        outcome = harness.run_subprocess([command, path, "--format", "json", *extra], timeout=SECONDS)
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    return outcome, lay, before


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_declared_work_is_refused_before_it_is_done(tmp_path, name):
    build, kwargs = expanding.ATTACKS[name]
    command, code, message = REFUSED[name]
    outcome, lay, before = _run(tmp_path, name, build(**kwargs).SerializeToString(), command)
    harness.check(outcome, lay.model, before, expect=code, message=message)


@pytest.mark.parametrize("command", ["inspect", "analyze"])
def test_a_loop_of_2_62_iterations_never_hangs_inspect_or_analyze(tmp_path, command):
    outcome, lay, before = _run(tmp_path, "loop", expanding.loop(1 << 62).SerializeToString(), command)
    harness.check(outcome, lay.model, before, expect=0)


def test_a_million_node_chain_is_refused_before_it_is_parsed(tmp_path):
    """25 MB of Relu nodes: refused during the wire scan (no protobuf parse, no IR)."""
    data = expanding.chain_bytes(1_000_000)
    outcome, lay, before = _run(tmp_path, "chain", data, "inspect")
    harness.check(outcome, lay.model, before, expect=2,
                  message="the model's graph has more nodes than the cap of 131,072 (IRTOOLS_MAX_NODES=N")
    assert outcome.maxrss < 200 << 20, outcome.maxrss >> 20


def test_the_node_cap_can_be_raised_and_big_valid_work_says_how_long_it_takes(tmp_path):
    """Under a raised cap the chain is valid work: it loads, and says so within the first seconds
    with an estimate (a note, since the work is estimated long, terminal or not)."""
    n = 30_000
    outcome, lay, before = _run(tmp_path, "chain", expanding.chain_bytes(n), "inspect",
                                env={"IRTOOLS_MAX_NODES": str(n)})
    harness.check(outcome, lay.model, before, expect=0)
    assert f"irtools: note: loading a graph of {n:,} nodes (about {n * budget.SECONDS_PER_NODE:.0f} s)" \
        in outcome.stderr
    outcome, lay, before = _run(tmp_path / "2", "chain", expanding.chain_bytes(n), "inspect",
                                env={"IRTOOLS_MAX_NODES": str(n - 1)})
    harness.check(outcome, lay.model, before, expect=2, message=f"has more nodes than the cap of {n - 1:,}")


# -- the counts, against hand-derived values ------------------------------------------------------
@pytest.mark.parametrize("depth", [1, 2, 5, 22, 41])
def test_function_calls_are_counted_memoised_not_inlined(depth):
    """f0 = Relu, fk calls f(k-1) twice: f(d-1) is 2^(d-1) nodes; the graph adds its own Relu."""
    count, inlined = count_nodes(expanding.doubling_functions(depth))
    assert (count, inlined) == (2 ** (depth - 1) + 1, True)


@pytest.mark.parametrize("depth", [1, 2, 3, 6])
def test_nested_branches_are_counted_with_one_node_per_subgraph(depth):
    """A complete binary nest of If: 2^depth leaves (one Add each), 2^depth - 1 Ifs, 2^(depth+1) - 2
    branch graphs, plus the main graph's Relu, ReduceSum, Constant and Greater."""
    count, inlined = count_nodes(expanding.nested_if(depth))
    assert (count, inlined) == (2 ** depth + (2 ** depth - 1) + (2 ** (depth + 1) - 2) + 4, False)


def test_a_function_that_calls_itself_is_refused():
    proto = expanding.doubling_functions(3)
    f1 = next(f for f in proto.functions if f.name == "f1")
    f0 = next(f for f in proto.functions if f.name == "f0")
    f0.node[0].op_type, f0.node[0].domain = "f1", "local"  # f0 -> f1 -> f0
    f0.opset_import.append(h.make_opsetid("local", 1))
    assert f1.node[0].op_type == "f0"
    with pytest.raises(ModelLoadError, match="'f[01]' .* calls itself"):
        count_nodes(proto)


def test_computed_constants_within_the_ratio_load_and_evaluate():
    """A low-rank weight A[64, 8] @ B[8, 64] (4x its stored bytes) is valid and evaluates
    to the product numpy computes; the outer product of two stored [n]-vectors past 256x is refused."""
    import irtools

    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((64, 8)).astype(np.float32), rng.standard_normal((8, 64)).astype(np.float32)
    nodes = [h.make_node("MatMul", ["a", "b"], ["w"], name="lowrank"), h.make_node("MatMul", ["x", "w"], ["y"])]
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, [1, 64])],
                     [h.make_tensor_value_info("y", T.FLOAT, [1, 64])], [nh.from_array(a, "a"), nh.from_array(b, "b")])
    m = irtools.load(h.make_model(g, opset_imports=[h.make_opsetid("", 17)]))
    w = next(v for n in m.graph for v in n.outputs if v.name == "w")
    np.testing.assert_allclose(m.constant_value(w), a @ b, rtol=1e-5)
    assert budget.COMPUTED_RATIO == 256 and budget.COMPUTED_FREE == 512 << 20
    budget.check_computed(512 << 20, 0, "free")  # at the free amount: accepted
    budget.check_computed(1 << 30, 4 << 20, "ratio")  # exactly 256x: accepted
    with pytest.raises(budget.MemoryBudgetError, match="over 256x: refused as an expanding constant"):
        budget.check_computed((1 << 30) + 1, 4 << 20, "ratio")


def test_chain_bytes_are_what_onnx_writes():
    for n in (1, 2, 7, 130):
        assert expanding.chain_bytes(n) == expanding.chain(n).SerializeToString()
    assert onnx.load_from_string(expanding.chain_bytes(3)).graph.node[2].output == ["y"]


@pytest.mark.parametrize("command", ["inspect", "analyze"])
def test_onnxruntime_failing_on_a_negative_dim_prints_only_irtools_line(tmp_path, command):
    """ConstantOfShape of [-3, 4]: onnxruntime fails evaluating it and used to print its own log
    lines first (issue #23); every session irtools opens is silent, so one line (or only notes)."""
    outcome, lay, before = _run(tmp_path, "neg", expanding.negative_constant_of_shape().SerializeToString(), command)
    harness.check(outcome, lay.model, before)
    assert "onnxruntime_src" not in outcome.stderr.split("irtools: ", 1)[0]
    assert all(line.startswith("irtools: ") for line in outcome.stderr.splitlines()), outcome.stderr


def test_the_probe_run_counts_loop_steps_and_bounds_branch_inlining(monkeypatch):
    """A Loop of M constant trips with a 2-node body declares 1 + 2M node executions, beside the
    graph's Relu and two Constants; nested Ifs are inlined for the probe only under the node cap."""
    from irtools.ir.shapes import _light_copy, _probe_steps, _with_branches_inlined

    for trips in (0, 10, 1 << 62):
        steps, worst = _probe_steps(_light_copy(expanding.loop(trips)).graph, {})
        assert steps == float(3 + 1 + 2 * trips)
        assert worst == (f"Loop node 'loop' ({float(trips):.3g} iterations)" if trips else "")
    light = _light_copy(expanding.nested_if(4))
    assert _with_branches_inlined(light) is not None
    monkeypatch.setenv("IRTOOLS_MAX_NODES", "20")
    assert _with_branches_inlined(light) is None


def test_progress_notes_print_names_from_files_escaped(capsys):
    """A note quoting a name from a file (a Loop node's) never writes its control characters raw."""
    from irtools import budget

    assert budget.progress("unrolling Loop node 'a\x1b[2J\r\nirtools: error: forged'", 1e6)
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\r" not in err and err.count("\n") == 1, err
    assert err.startswith("irtools: note: unrolling Loop node 'a")
