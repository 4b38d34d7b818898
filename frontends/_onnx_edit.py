"""ONNX graph edits the frontends share: renaming values (subgraphs included), dropping and adding
initializers, nodes that rebuild a weight's other layouts from its named initializer, metadata."""

from __future__ import annotations

import itertools
from collections.abc import Mapping

import numpy as np
import onnx
from onnx import helper, numpy_helper

__all__ = ["alias_uses", "rename_values", "rewrite", "set_metadata", "view_nodes"]


def alias_uses(name: str, local: np.ndarray, others, renames: dict[str, str], extra_nodes: list) -> None:
    """Further uses [(value, element indices)] of weight `name`, whose initializer holds the weight's
    elements `local`: a use in the same layout is renamed to the initializer, another layout becomes
    nodes computing it from the initializer (`view_nodes`)."""
    position = None
    for j, (other, other_local) in enumerate(others, start=1):
        if other_local.shape == local.shape and np.array_equal(other_local, local):
            renames[other] = name
            continue
        if position is None:
            position = np.empty(local.size, dtype=np.int64)
            position[local.reshape(-1)] = np.arange(local.size)
        extra_nodes.extend(view_nodes(name, local.shape, position[other_local], other, f"{name}/view{j}"))


def rewrite(graph: onnx.GraphProto, drop: set[str], new_initializers, renames: dict[str, str],
             view_nodes: list[onnx.NodeProto]) -> None:
    """Drop the exporter's weight copies, add the named weights, rename uses, and put the nodes
    that rebuild other copies from the named weights first."""
    # delete in place: re-adding the kept ones would copy every tensor once more (upb arenas free
    # nothing until the whole model is freed)
    for i in reversed([i for i, t in enumerate(graph.initializer) if t.name in drop]):
        del graph.initializer[i]
    graph.initializer.extend(new_initializers)
    rename_values(graph, renames)
    if view_nodes:
        nodes = view_nodes + list(graph.node)
        del graph.node[:]
        graph.node.extend(nodes)


def view_nodes(source: str, source_dims, positions: np.ndarray, output: str, prefix: str) -> list[onnx.NodeProto]:
    """Nodes computing `output` (element i = source.flat[positions.flat[i]]) from `source`."""
    dims = tuple(int(d) for d in source_dims)
    grid = np.arange(int(np.prod(dims, dtype=np.int64))).reshape(dims)
    if len(dims) == positions.ndim:
        for perm in itertools.permutations(range(len(dims))):
            if grid.transpose(perm).shape == positions.shape and np.array_equal(grid.transpose(perm), positions):
                return [helper.make_node("Transpose", [source], [output], name=f"{prefix}/Transpose", perm=list(perm))]
    flat_shape = numpy_helper.from_array(np.array([-1], dtype=np.int64), f"{prefix}/flat_shape")
    indices = numpy_helper.from_array(positions.astype(np.int64), f"{prefix}/indices")
    return [
        helper.make_node("Constant", [], [flat_shape.name], name=f"{prefix}/flat_shape", value=flat_shape),
        helper.make_node("Constant", [], [indices.name], name=f"{prefix}/indices", value=indices),
        helper.make_node("Reshape", [source, flat_shape.name], [f"{prefix}/flat"], name=f"{prefix}/Reshape"),
        helper.make_node("Gather", [f"{prefix}/flat", indices.name], [output], name=f"{prefix}/Gather", axis=0),
    ]


def rename_values(graph: onnx.GraphProto, renames: Mapping[str, str]) -> None:
    if not renames:
        return
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in renames:
                node.input[i] = renames[name]
        for attr in node.attribute:  # outer-scope references inside subgraphs
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                rename_values(sub, renames)
    for vi in itertools.chain(graph.input, graph.output, graph.value_info):
        if vi.name in renames:
            vi.name = renames[vi.name]


def set_metadata(proto: onnx.ModelProto, items: Mapping[str, str]) -> None:
    kept = [p for p in proto.metadata_props if p.key not in items]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    for key, value in items.items():
        proto.metadata_props.add(key=key, value=value)
