"""Checks on ONNX protobufs before they become IR, with one-line errors for every bad input.

Reads the file and checks the protobuf, the graph structure (undefined inputs, cycles),
tensor data types and external-data references; `irtools.model.load` then builds the IR.
"""

from __future__ import annotations

import os

import onnx
from google.protobuf.message import DecodeError

from irtools.errors import ModelLoadError, UnsupportedError

# Tensor element types irtools can read (onnx.TensorProto.DataType values minus UNDEFINED).
SUPPORTED_DTYPES = frozenset(v for k, v in onnx.TensorProto.DataType.items() if k != "UNDEFINED")


def read_model_proto(path: str | os.PathLike) -> onnx.ModelProto:
    """Parse `path` as an ONNX ModelProto without loading external data."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ModelLoadError("no such file", path)
    if os.path.isdir(path):
        raise ModelLoadError("is a directory, expected an ONNX model file", path)
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise ModelLoadError(f"cannot read file: {exc.strerror}", path) from exc
    if not data:
        raise ModelLoadError("file is empty, not an ONNX model", path)
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise ModelLoadError(f"not an ONNX model (protobuf does not parse: truncated or corrupt: {exc})", path) from exc
    if proto.ir_version <= 0 or not proto.HasField("graph"):
        raise ModelLoadError("not an ONNX model (no IR version or no graph in the protobuf)", path)
    return proto


def _graphs(graph: onnx.GraphProto):
    """Yield `graph` and every subgraph nested in its node attributes."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from _graphs(sub)


def iter_tensors(graph: onnx.GraphProto):
    """Yield every tensor stored in the graph: initializers and Constant/attribute tensors."""
    for g in _graphs(graph):
        yield from g.initializer
        for node in g.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR:
                    yield attr.t
                elif attr.type == onnx.AttributeProto.TENSORS:
                    yield from attr.tensors


def check_tensors(proto: onnx.ModelProto, path: str) -> None:
    """Reject unknown data types and missing or out-of-bounds external data."""
    base = os.path.dirname(os.path.abspath(path))
    sizes: dict[str, int] = {}
    for t in iter_tensors(proto.graph):
        if t.data_type not in SUPPORTED_DTYPES:
            raise UnsupportedError(f"tensor '{t.name}' has unsupported data type {t.data_type}", path)
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in t.external_data}
        location = info.get("location", "")
        if not location or os.path.isabs(location) or ".." in location.replace("\\", "/").split("/"):
            raise ModelLoadError(f"tensor '{t.name}' has an unsafe external data location {location!r}", path)
        full = os.path.join(base, location)
        if not os.path.isfile(full):
            raise ModelLoadError(f"external data file '{location}' of tensor '{t.name}' is missing", path)
        if full not in sizes:
            sizes[full] = os.path.getsize(full)
        offset = int(info.get("offset", 0))
        length = int(info.get("length", -1))
        if length >= 0 and offset + length > sizes[full]:
            raise ModelLoadError(
                f"external data file '{location}' is too short for tensor '{t.name}' "
                f"(needs {offset + length} bytes, has {sizes[full]})",
                path,
            )


def check_structure(proto: onnx.ModelProto, path: str) -> None:
    """Reject graphs with inputs that nothing defines, values defined twice, or cycles."""
    _check_graph(proto.graph, set(), path)


def _subgraph_free_names(graph: onnx.GraphProto) -> set[str]:
    """Names a subgraph reads from its enclosing scopes."""
    defined = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    free: set[str] = set()
    for node in graph.node:
        for name in node.input:
            if name and name not in defined:
                free.add(name)
        for attr in node.attribute:
            subs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
            for sub in subs:
                free |= _subgraph_free_names(sub) - defined
        defined.update(o for o in node.output if o)
    return free | ({o.name for o in graph.output} - defined)


def _check_graph(graph: onnx.GraphProto, outer: set[str], path: str) -> None:
    available = set(outer) | {i.name for i in graph.input} | {t.name for t in graph.initializer}
    producer: dict[str, int] = {}
    for idx, node in enumerate(graph.node):
        for out in node.output:
            if not out:
                continue
            if out in producer:
                raise ModelLoadError(f"value '{out}' is produced by two nodes", path)
            producer[out] = idx
    # Dependencies of each node on the nodes of this graph (inputs and subgraph captures).
    deps: list[set[int]] = []
    for node in graph.node:
        names = [n for n in node.input if n]
        for attr in node.attribute:
            subs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
            for sub in subs:
                names.extend(_subgraph_free_names(sub))
        d: set[int] = set()
        for name in names:
            if name in producer:
                d.add(producer[name])
            elif name not in available:
                label = node.name or node.op_type
                raise ModelLoadError(f"input '{name}' of node '{label}' is not defined by any node, initializer or input", path)
        deps.append(d)
    # Kahn's algorithm: anything left over sits on a cycle.
    users: list[list[int]] = [[] for _ in graph.node]
    indegree = [len(d) for d in deps]
    for idx, d in enumerate(deps):
        for src in d:
            users[src].append(idx)
    ready = [i for i, k in enumerate(indegree) if k == 0]
    seen = 0
    while ready:
        i = ready.pop()
        seen += 1
        for j in users[i]:
            indegree[j] -= 1
            if indegree[j] == 0:
                ready.append(j)
    if seen != len(graph.node):
        stuck = next(graph.node[i] for i, k in enumerate(indegree) if k > 0)
        raise ModelLoadError(f"graph '{graph.name}' has a cycle through node '{stuck.name or stuck.op_type}'", path)
    for out in graph.output:
        if out.name not in producer and out.name not in available:
            raise ModelLoadError(f"graph output '{out.name}' is not defined", path)
    defined = available | set(producer)
    for node in graph.node:
        for attr in node.attribute:
            subs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
            for sub in subs:
                _check_graph(sub, defined, path)


