"""`irtools analyze` tables: long names that share a prefix stay readable and distinct."""

import numpy as np
from onnx import helper as h

import irtools
from irtools.reports.tables import common_prefix, render_analysis
from tests.builders import model, tensor, vinfo

NODE_PREFIX = "/model/model.0/auto_model/encoder/"
PARAM_PREFIX = "model.0.auto_model.encoder."
ROLES = ["attention/self/query", "attention/self/key", "attention/self/value", "attention/output/dense",
         "intermediate/dense", "output/dense"]


def long_names_model(layers=3, width=16):
    """A chain of MatMuls named like a torch BERT export: every name starts with the same 34
    characters, the part that tells them apart comes after."""
    rng = np.random.default_rng(0)
    nodes, inits, x = [], [], "x"
    for i in range(layers):
        for role in ROLES:
            node = f"{NODE_PREFIX}layer.{i}/{role}/MatMul"
            weight = f"{PARAM_PREFIX}layer.{i}.{role.replace('/', '.')}.weight"
            nodes.append(h.make_node("MatMul", [x, weight], [node + "_output_0"], name=node))
            inits.append(tensor(weight, rng.standard_normal((width, width)).astype(np.float32)))
            x = node + "_output_0"
    return model(nodes, [vinfo("x", [1, width])], [vinfo(x, [1, width])], inits)


def table_rows(text: str, title: str) -> tuple[str, list[str]]:
    """(title line, the first column of each row) of the table titled `title...` in rendered
    text; a name folded over several lines is joined back."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title))
    body = next(i for i in range(start, len(lines)) if lines[i].startswith("┡"))
    rows: list[str] = []
    for line in lines[body + 1:]:
        if line.startswith("└"):
            break
        cells = [c.strip() for c in line.split("│")[1:-1]]
        if cells[1]:  # a new row: its second column is filled
            rows.append(cells[0])
        else:  # the name folded onto another line
            rows[-1] += cells[0]
    return lines[start], rows


def test_long_common_prefix_names_stay_distinct_in_the_table():
    proto = long_names_model()
    data = irtools.analyze(proto, metrics=["spectral", "reuse"]).to_dict()
    text = render_analysis(data)
    assert "…" not in text  # nothing is cut off
    assert max(len(line) for line in text.splitlines()) <= 140

    for table, names, shared in [("Layers (spectral)", [n.name for n in proto.graph.node], NODE_PREFIX),
                                 ("Parameters", [t.name for t in proto.graph.initializer], PARAM_PREFIX)]:
        title, visible = table_rows(text, table)
        prefix = title.split(", names after ", 1)[1].strip()  # shown once, in the title
        assert prefix.startswith(shared)
        assert len(visible) == len(names) and len(set(visible)) == len(names)
        assert sorted(prefix + v for v in visible) == sorted(names)
        assert all(v.startswith("layer.") for v in visible) if table.startswith("Layers") else True


def test_common_prefix_stops_at_a_separator_and_leaves_every_name_something():
    assert common_prefix(["/a/b/layer10/x", "/a/b/layer11/y"]) == "/a/b/"  # not "/a/b/layer1"
    assert common_prefix(["enc.layer.0.w", "enc.layer.1.w"]) == "enc.layer."
    assert common_prefix(["/enc/layer.0/q", "/enc/layer.1/q"]) == "/enc/"  # a path keeps "layer.0" whole
    assert common_prefix(["/m/a", "/m/a/x"]) == "/m/"  # "/m/a" would leave the first name empty
    assert common_prefix(["one/long/name"]) == ""  # a lone name is shown whole
    assert common_prefix(["a/x", "a/y"]) == ""  # too short to be worth a title
    assert common_prefix(["conv1", "conv2"]) == ""


def test_a_single_row_keeps_its_whole_name():
    proto = long_names_model(layers=1)
    del proto.graph.node[1:]
    proto.graph.output[0].name = proto.graph.node[0].output[0]
    del proto.graph.initializer[1:]
    text = render_analysis(irtools.analyze(proto, metrics="spectral").to_dict())
    title, visible = table_rows(text, "Layers (spectral)")
    assert title.strip() == "Layers (spectral)" and visible == [proto.graph.node[0].name]
