"""Checks on ONNX protobufs before they become IR, with one-line errors for every bad input.

Reads the file (a regular file only) and checks the protobuf, the graph structure (undefined
inputs, cycles), tensor data types, that every tensor holds exactly the bytes its dims declare
(sparse tensors are made dense once their indices are checked),
and external-data references (inside the model's folder: `irtools.files.model_member`); `irtools.ir.model.load` then builds the IR.
"""

from __future__ import annotations

import itertools
import math
import os

import numpy as np
import onnx
import onnx_ir as ir
from google.protobuf.message import DecodeError

from irtools import budget
from irtools.errors import IrtoolsError, ModelLoadError, UnsupportedError, printable
from irtools.ir.wire import (_GRAPH_INITIALIZER, _GRAPH_NODE, _MODEL_GRAPH, _TENSOR_DATA_LOCATION, _TENSOR_DATA_TYPE,
                             _TENSOR_RAW_DATA, _check_wire_nodes, _encode_varint, _fields, _Irregular, _varint)

# Tensor element types irtools can read (onnx.TensorProto.DataType values minus UNDEFINED).
SUPPORTED_DTYPES = frozenset(v for k, v in onnx.TensorProto.DataType.items() if k != "UNDEFINED")


#: Initializer payloads (TensorProto.raw_data) at least this large are left in the file and
#: memory-mapped on first use instead of being copied by the protobuf parser.
LAZY_MIN_BYTES = 1 << 16
#: Element types whose bytes numpy reads as they are (little-endian); others are parsed.
_NUMPY_TYPES = {
    onnx.TensorProto.FLOAT: "<f4", onnx.TensorProto.DOUBLE: "<f8", onnx.TensorProto.FLOAT16: "<f2",
    onnx.TensorProto.INT8: "i1", onnx.TensorProto.UINT8: "u1", onnx.TensorProto.INT16: "<i2",
    onnx.TensorProto.UINT16: "<u2", onnx.TensorProto.INT32: "<i4", onnx.TensorProto.UINT32: "<u4",
    onnx.TensorProto.INT64: "<i8", onnx.TensorProto.UINT64: "<u8",
}


def read_model(path: str | os.PathLike, *, lazy: bool = True) -> tuple[onnx.ModelProto, dict[str, tuple[str, int]]]:
    """Parse `path` as an ONNX ModelProto without loading external data.

    With `lazy`, the raw data of the main graph's large initializers is not parsed: those
    tensors are returned as external-data references into the model file itself (the offset
    and length of their bytes), and in a dict {name: (numpy dtype, offset)} by which
    `irtools.ir.model.load` maps them from the file when a pass reads them. Parsing then costs
    time in proportion to the graph, not to the weights (VGG-16, 553 MB: 0.01 s against 2.1 s
    to read and parse it whole). A file whose layout the scan does not expect is parsed whole.
    """
    path = os.fspath(path)
    if not os.path.exists(path) and not os.path.islink(path):
        raise ModelLoadError("no such file", path)
    if os.path.isdir(path):
        raise ModelLoadError("is a directory, expected an ONNX model file", path)
    from irtools.files import check_input  # noqa: PLC0415

    try:
        check_input(path)
    except IrtoolsError as exc:
        raise ModelLoadError(exc.message, path) from None
    try:
        with open(path, "rb") as fh:
            _check_wire_nodes(fh, path)
            if lazy and os.fstat(fh.fileno()).st_size >= 4 * LAZY_MIN_BYTES:
                found = _read_lazily(fh, path)
                if found is not None:
                    return found
                fh.seek(0)
            data = fh.read()
    except OSError as exc:
        raise ModelLoadError(f"cannot read file: {exc.strerror}", path) from exc
    if not data:
        raise ModelLoadError("file is empty, not an ONNX model", path)
    return _parse(data, path), {}


def _parse(data: bytes, path: str) -> onnx.ModelProto:
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise ModelLoadError(f"not an ONNX model (protobuf does not parse: truncated or corrupt: {exc})", path) from exc
    if proto.ir_version <= 0 or not proto.HasField("graph"):
        raise ModelLoadError("not an ONNX model (no IR version or no graph in the protobuf)", path)
    return proto


# -- lazy reading: large raw_data left in the file (the wire scan: `irtools.ir.wire`) ----------
def _read_lazily(fh, path: str) -> tuple[onnx.ModelProto, dict[str, tuple[str, int]]] | None:
    import mmap

    try:
        buf = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError):
        return None
    try:
        return _strip_and_parse(buf, path)
    except _Irregular:
        return None
    finally:
        buf.close()


def _strip_and_parse(buf, path: str) -> tuple[onnx.ModelProto, dict[str, tuple[str, int]]] | None:
    size = len(buf)
    top = list(_fields(buf, 0, size))
    graphs = [f for f in top if f[0] == _MODEL_GRAPH]
    if len(graphs) != 1 or graphs[0][1] != 2:
        return None
    _, _, _, gbody, gend = graphs[0]
    cap, nodes = budget.max_nodes(), 0
    graph_fields = []
    for f in _fields(buf, gbody, gend):
        graph_fields.append(f)
        nodes += f[0] == _GRAPH_NODE
        if nodes > cap:  # refused before the protobuf is parsed (a million nodes parse to ~0.5 GB)
            raise budget.GraphBudgetError(f"the model's graph has more nodes than the cap of {cap:,} "
                                          "(IRTOOLS_MAX_NODES=N to change it)", path)
    # (field index in graph_fields, payload start, payload length) of each large raw_data
    candidates = []
    for i, (number, wire, _, body, stop) in enumerate(graph_fields):
        if number != _GRAPH_INITIALIZER or wire != 2 or stop - body < LAZY_MIN_BYTES:
            continue
        fields = list(_fields(buf, body, stop))
        raw = [f for f in fields if f[0] == _TENSOR_RAW_DATA]
        types = [_varint(buf, f[3], f[4])[0] for f in fields if f[0] == _TENSOR_DATA_TYPE and f[1] == 0]
        external = any(f[0] == _TENSOR_DATA_LOCATION for f in fields)
        if (len(raw) == 1 and raw[0][1] == 2 and not external and raw[0][4] - raw[0][3] >= LAZY_MIN_BYTES
                and len(types) == 1 and types[0] in _NUMPY_TYPES):
            candidates.append((i, raw[0][2], raw[0][3], raw[0][4]))
    if not candidates:
        return None
    lazy = {c[0]: c for c in candidates}
    pieces, order = [], []
    for i, (number, _, start, body, stop) in enumerate(graph_fields):
        if i not in lazy:
            pieces.append(buf[start:stop])
            continue
        _, raw_start, raw_body, raw_stop = lazy[i]
        tensor = buf[body:raw_start] + buf[raw_stop:stop]
        pieces.append(_encode_varint(number << 3 | 2) + _encode_varint(len(tensor)) + tensor)
        order.append((raw_body, raw_stop - raw_body))
    graph = b"".join(pieces)
    head = [buf[start:stop] for number, _, start, _, stop in top if number != _MODEL_GRAPH]
    stripped = b"".join(head) + _encode_varint(_MODEL_GRAPH << 3 | 2) + _encode_varint(len(graph)) + graph
    proto = _parse(stripped, path)
    lazy_fields = sorted(lazy)
    initializers = [i for i, f in enumerate(graph_fields) if f[0] == _GRAPH_INITIALIZER]
    position = {field: k for k, field in enumerate(initializers)}
    location = os.path.basename(path)
    mapped = {}
    for field, (offset, length) in zip(lazy_fields, order, strict=True):
        t = proto.graph.initializer[position[field]]
        if tensor_nbytes(t) != length:
            raise ModelLoadError(_mismatch(printable(t.name), "has raw_data bytes:", length, tensor_nbytes(t)), path)
        t.data_location = onnx.TensorProto.EXTERNAL
        for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
            entry = t.external_data.add()
            entry.key, entry.value = key, value
        mapped[t.name] = (_NUMPY_TYPES[t.data_type], offset)
    return proto, mapped


def all_graphs(graph: onnx.GraphProto):
    """Yield `graph` and every subgraph nested in its node attributes."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from all_graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from all_graphs(sub)


def _local_functions(proto: onnx.ModelProto) -> dict[tuple[str, str, str], onnx.FunctionProto]:
    return {(f.domain, f.name, getattr(f, "overload", "")): f for f in proto.functions}


def count_nodes(proto: onnx.ModelProto, path: str | None = None) -> tuple[int, bool]:
    """The nodes of the model once every call of a model-local function is inlined, over every
    graph and subgraph (each subgraph counted as one node more), without inlining anything: each
    function's size is computed once (memoised) and multiplied per call, so a chain of functions
    that each call the previous twice is counted, not expanded. Returns (count, whether a function
    call was counted). A function that calls itself (directly or not) is refused."""
    functions = _local_functions(proto)
    sizes: dict[tuple[str, str, str], int] = {}
    visiting: set[tuple[str, str, str]] = set()
    called = False

    def function_size(key) -> int:
        nonlocal called
        called = True
        if key in sizes:
            return sizes[key]
        if key in visiting:
            raise ModelLoadError(f"model-local function '{printable(key[1])}' (domain '{printable(key[0])}') calls "
                                 "itself: its inlined graph would never end", path)
        visiting.add(key)
        sizes[key] = nodes_size(functions[key].node)
        visiting.discard(key)
        return sizes[key]

    def nodes_size(nodes) -> int:
        total = 0
        for node in nodes:
            key = (node.domain, node.op_type, getattr(node, "overload", "")) if functions else None
            total += function_size(key) if key in functions else 1
            if node.attribute:
                for attr in node.attribute:
                    if attr.type == onnx.AttributeProto.GRAPH:
                        total += 1 + nodes_size(attr.g.node)
                    elif attr.type == onnx.AttributeProto.GRAPHS:
                        total += sum(1 + nodes_size(g.node) for g in attr.graphs)
        return total

    try:
        return nodes_size(proto.graph.node), called
    except RecursionError:
        raise ModelLoadError("subgraphs or model-local functions nest too deeply (corrupt file)", path) from None


def check_node_count(proto: onnx.ModelProto, path: str | None = None) -> int:
    """`count_nodes` checked against the node cap (`budget.check_nodes`: one line naming the count
    and the cap; the main graph's own length first, which costs nothing); a count that will take a
    while to load prints a progress note with the estimate. Returns the count."""
    budget.check_nodes(len(proto.graph.node), "the model's graph", path)
    count, inlined = count_nodes(proto, path)
    budget.check_nodes(count, "the model (its model-local functions inlined)" if inlined else "the model's graph", path)
    budget.progress(f"loading a graph of {count:,} nodes", count * budget.SECONDS_PER_NODE)
    return count


def _attribute_values(graph: onnx.GraphProto, one: str, many: str):
    """Yield the values of one graph's node attributes of a kind: `one` ("t", "sparse_tensor")
    holds one value, `many` ("tensors", "sparse_tensors") a list."""
    one_type = onnx.AttributeProto.TENSOR if one == "t" else onnx.AttributeProto.SPARSE_TENSOR
    many_type = onnx.AttributeProto.TENSORS if one == "t" else onnx.AttributeProto.SPARSE_TENSORS
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == one_type:
                yield getattr(attr, one)
            elif attr.type == many_type:
                yield from getattr(attr, many)


def _sparse_tensors(graph: onnx.GraphProto):
    """Yield every sparse tensor of one graph: sparse initializers and sparse attributes."""
    yield from graph.sparse_initializer
    yield from _attribute_values(graph, "sparse_tensor", "sparse_tensors")


def iter_tensors(graph: onnx.GraphProto):
    """Yield every tensor stored in the graph: initializers, Constant/attribute tensors, and the
    values and indices of sparse ones."""
    for g in all_graphs(graph):
        yield from g.initializer
        yield from _attribute_values(g, "t", "tensors")
        for sparse in _sparse_tensors(g):
            yield sparse.values
            yield sparse.indices


#: Bits of one element of each fixed-size element type (STRING has none).
_BITS = {v: int(ir.DataType(v).bitwidth) for v in SUPPORTED_DTYPES if v != onnx.TensorProto.STRING}
#: The typed field that holds each element type's values when they are not raw bytes, and how
#: many elements one entry of it packs (complex: 2 entries per element, written as 0.5).
_TYPED_FIELD: dict[int, tuple[str, float]] = {
    **{t: ("int32_data", 1) for t in (onnx.TensorProto.INT32, onnx.TensorProto.INT16, onnx.TensorProto.INT8,
                                      onnx.TensorProto.UINT16, onnx.TensorProto.UINT8, onnx.TensorProto.BOOL,
                                      onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16,
                                      onnx.TensorProto.FLOAT8E4M3FN, onnx.TensorProto.FLOAT8E4M3FNUZ,
                                      onnx.TensorProto.FLOAT8E5M2, onnx.TensorProto.FLOAT8E5M2FNUZ,
                                      onnx.TensorProto.FLOAT8E8M0)},
    **{t: ("int32_data", 2) for t in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4, onnx.TensorProto.FLOAT4E2M1)},
    **{getattr(onnx.TensorProto, n): ("int32_data", per) for n, per in
       (("INT2", 4), ("UINT2", 4), ("FLOAT6E2M3", 1), ("FLOAT6E3M2", 1)) if hasattr(onnx.TensorProto, n)},
    onnx.TensorProto.FLOAT: ("float_data", 1), onnx.TensorProto.COMPLEX64: ("float_data", 0.5),
    onnx.TensorProto.DOUBLE: ("double_data", 1), onnx.TensorProto.COMPLEX128: ("double_data", 0.5),
    onnx.TensorProto.INT64: ("int64_data", 1), onnx.TensorProto.UINT32: ("uint64_data", 1),
    onnx.TensorProto.UINT64: ("uint64_data", 1), onnx.TensorProto.STRING: ("string_data", 1),
}
_ALL_TYPED = ("float_data", "double_data", "int32_data", "int64_data", "uint64_data", "string_data")


def tensor_nbytes(t: onnx.TensorProto) -> int | None:
    """The bytes a tensor's dims and element type declare (None for STRING tensors)."""
    bits = _BITS.get(t.data_type)
    return None if bits is None else -(-math.prod(t.dims) * bits // 8)


def check_tensors(proto: onnx.ModelProto, path: str) -> None:
    """Reject unknown data types, negative dims, and any tensor whose bytes are not exactly what
    its dims and type declare: raw_data of another length, typed values of another count,
    external data that is unsafe (outside the model's folder, `irtools.files.model_member`),
    missing, shorter than the tensor, or of a declared length that is not the tensor's size."""
    _check_text(proto, path)  # before any name is used: a field of bytes is no str
    regions: dict[str, list[tuple[int, int, str]]] = {}  # external data file: (offset, end, tensor) of each use
    for t in iter_tensors(proto.graph):
        name = printable(t.name)
        if t.data_type not in SUPPORTED_DTYPES:
            raise UnsupportedError(f"tensor '{name}' has unsupported data type {t.data_type}", path)
        if any(d < 0 for d in t.dims):
            raise ModelLoadError(f"tensor '{name}' has a negative dimension {list(t.dims)}", path)
        if t.data_location == onnx.TensorProto.EXTERNAL:
            full, offset, nbytes = _check_external(t, name, path)
            regions.setdefault(os.path.realpath(full), []).append((offset, offset + nbytes, name))
        else:
            _check_inline(t, name, path)
        budget.check_shape(t.dims, _BITS.get(t.data_type, 8) / 8, f"tensor '{name}'", path)
    _check_regions(regions, path)
    densify_sparse(proto, path)


#: How many times over the bytes of its external data files a model's tensors may read them in all
#: (the same region named by several tensors: one tied weight is read twice), past `_REGIONS_FREE`.
_REGIONS_MAX_TIMES, _REGIONS_FREE = 4, 16 << 20


def _check_regions(regions: dict[str, list[tuple[int, int, str]]], path: str) -> None:
    """Refuse external data whose tensors overlap in part (one file's bytes read as several different
    tensors) or that read their files' bytes more than `_REGIONS_MAX_TIMES` over in all (a 100 MB file
    named by 10^4 tensors is a terabyte of weights to analyse)."""
    declared = held = 0
    for uses in regions.values():
        uses.sort()
        end = 0
        for (a0, a1, a), (b0, b1, b) in itertools.pairwise(uses):
            if b0 < a1 and (b0, b1) != (a0, a1):
                raise ModelLoadError(f"tensors '{a}' and '{b}' overlap in their external data file (corrupt file)",
                                     path)
        for start, stop, _ in uses:
            declared += stop - start
            held += max(0, stop - max(start, end))
            end = max(end, stop)
    if declared > max(_REGIONS_FREE, held * _REGIONS_MAX_TIMES):
        raise ModelLoadError(f"the model's tensors read {declared} bytes from {held} bytes of external data (over "
                             f"{_REGIONS_MAX_TIMES}x: the same bytes named by many tensors, refused)", path)


# -- sparse tensors -----------------------------------------------------------------------------
def densify_sparse(proto: onnx.ModelProto, path: str) -> None:
    """Replace every sparse initializer by the dense initializer it stands for, and a Constant's
    `sparse_value` by its dense `value` (in place), once its indices are checked: the IR has no
    sparse tensors, and a parameter stored sparse must be analysed, not silently dropped."""
    dense_bytes = [0]  # all sparse tensors of the model together, dense: the budget is the model's, not one tensor's
    for g in all_graphs(proto.graph):
        for sparse in g.sparse_initializer:
            g.initializer.append(_dense(sparse, path, dense_bytes))
        del g.sparse_initializer[:]
        for node in g.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.SPARSE_TENSOR:
                    if node.op_type != "Constant" or attr.name != "sparse_value":
                        raise UnsupportedError(f"node '{printable(node.name or node.op_type)}' has a sparse tensor "
                                               f"attribute '{printable(attr.name)}'", path)
                    dense = _dense(attr.sparse_tensor, path, dense_bytes)
                    attr.Clear()
                    attr.name, attr.type = "value", onnx.AttributeProto.TENSOR
                    attr.t.CopyFrom(dense)
                elif attr.type == onnx.AttributeProto.SPARSE_TENSORS:
                    raise UnsupportedError(f"node '{printable(node.name or node.op_type)}' has a list of sparse "
                                           "tensors", path)


def _dense(sparse: onnx.SparseTensorProto, path: str, dense_bytes: list[int]) -> onnx.TensorProto:
    """The dense tensor of one sparse tensor (values at linear or coordinate indices, zeros elsewhere).
    Its bytes are charged to `dense_bytes` (the model's sparse tensors so far, against the memory budget)
    and, like any constant computed from stored bytes, may expand its stored values and indices at most
    `budget.COMPUTED_RATIO` times past `budget.COMPUTED_FREE` (1 of 10^8 values stored is no pruned weight)."""
    from onnx import numpy_helper  # noqa: PLC0415

    values, indices = sparse.values, sparse.indices
    name = printable(values.name)
    dims = tuple(sparse.dims)
    if any(d < 0 for d in dims):
        raise ModelLoadError(f"sparse tensor '{name}' has a negative dimension {list(dims)}", path)
    if values.data_location == onnx.TensorProto.EXTERNAL or indices.data_location == onnx.TensorProto.EXTERNAL:
        raise UnsupportedError(f"sparse tensor '{name}' keeps its values or indices in external data", path)
    if values.data_type == onnx.TensorProto.STRING:
        raise UnsupportedError(f"sparse tensor '{name}' holds strings", path)
    if indices.data_type != onnx.TensorProto.INT64:
        raise ModelLoadError(f"sparse tensor '{name}' has indices of type {indices.data_type}, not INT64", path)
    numel = math.prod(dims)
    nbytes = numel * _BITS[values.data_type] / 8
    dense_bytes[0] += nbytes
    budget.check(dense_bytes[0], f"the model's sparse tensors up to '{name}' (dense)", path)
    budget.check_computed(nbytes, values.ByteSize() + indices.ByteSize(), f"sparse tensor '{name}' (dense)", path)
    vals = numpy_helper.to_array(values).reshape(-1)
    idx = numpy_helper.to_array(indices)
    nnz = len(vals)
    if idx.shape == (nnz,):
        linear = idx
    elif idx.shape == (nnz, len(dims)) and dims:
        if nnz and (idx.min() < 0 or np.any(idx >= np.array(dims))):
            raise ModelLoadError(f"sparse tensor '{name}' has an index outside its dims {list(dims)}", path)
        linear = np.ravel_multi_index(tuple(idx.T), dims) if nnz else idx.reshape(0)
    else:
        raise ModelLoadError(f"sparse tensor '{name}' has indices of shape {list(idx.shape)} for {nnz} values in "
                             f"{len(dims)} dims (corrupt file)", path)
    if nnz and (linear.min() < 0 or linear.max() >= numel):
        raise ModelLoadError(f"sparse tensor '{name}' has an index outside its {numel} elements", path)
    dense = np.zeros(numel, vals.dtype)
    dense[linear] = vals
    out = numpy_helper.from_array(dense.reshape(dims), values.name)
    out.data_type = values.data_type  # bfloat16 / float8 values come back as their storage type
    return out


def _mismatch(name: str, what: str, has: int, needs: int) -> str:
    return f"tensor '{name}' {what} {has} but its dims and type need {needs} (corrupt file)"


def _check_inline(t: onnx.TensorProto, name: str, path: str) -> None:
    numel, nbytes = math.prod(t.dims), tensor_nbytes(t)
    if t.HasField("raw_data") or t.raw_data:
        if nbytes is None:
            raise ModelLoadError(f"tensor '{name}' is a STRING tensor with raw_data (corrupt file)", path)
        if len(t.raw_data) != nbytes:
            raise ModelLoadError(_mismatch(name, "has raw_data bytes:", len(t.raw_data), nbytes), path)
        return
    present = [f for f in _ALL_TYPED if len(getattr(t, f))]
    field, per_entry = _TYPED_FIELD.get(t.data_type, (None, 1))
    if not present:
        if numel:
            raise ModelLoadError(f"tensor '{name}' declares {numel} elements but holds no data (corrupt file)", path)
        return
    if present != [field]:
        raise ModelLoadError(f"tensor '{name}' holds its values in {', '.join(present)}, not in the field of its "
                             f"type ({field}) (corrupt file)", path)
    needs = math.ceil(numel / per_entry)
    has = len(getattr(t, field))
    if has != needs:
        raise ModelLoadError(_mismatch(name, f"has {field} values:", has, needs), path)


def _external_field(t: onnx.TensorProto, info: dict, key: str, default: int | None, name: str, path: str):
    text = info.get(key)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise ModelLoadError(f"tensor '{name}' has an external data {key} that is not a number: "
                             f"{printable(text)!r}", path) from None
    if value < 0:
        raise ModelLoadError(f"tensor '{name}' has a negative external data {key} {value}", path)
    return value


#: The keys ONNX defines for external data (onnx.external_data_helper.ExternalDataInfo).
_EXTERNAL_KEYS = frozenset({"location", "offset", "length", "checksum", "basepath"})


def _check_external(t: onnx.TensorProto, name: str, path: str) -> tuple[str, int, int]:
    from irtools.files import model_member  # noqa: PLC0415

    info = {e.key: e.value for e in t.external_data}
    unknown = sorted(set(info) - _EXTERNAL_KEYS)
    if unknown:
        raise ModelLoadError(f"tensor '{name}' has an unknown external data key '{printable(unknown[0])}' "
                             "(corrupt file)", path)
    nbytes = tensor_nbytes(t)
    if nbytes is None:
        raise UnsupportedError(f"tensor '{name}' is a STRING tensor stored as external data", path)
    full = model_member(path, info.get("location", ""), f"external data file of tensor '{name}'", ModelLoadError)
    offset = _external_field(t, info, "offset", 0, name, path)
    length = _external_field(t, info, "length", None, name, path)
    if length is not None and length != nbytes:
        raise ModelLoadError(_mismatch(name, "has an external data length of", length, nbytes), path)
    size = os.path.getsize(full)
    if offset + nbytes > size:
        raise ModelLoadError(f"external data file '{printable(info['location'])}' is too short for tensor '{name}' "
                             f"(needs {offset + nbytes} bytes, has {size})", path)
    _locate(t, full, path)
    return full, offset, nbytes


def _locate(t: onnx.TensorProto, full: str, path: str) -> None:
    """Name the checked file by where it really is, relative to the model's folder (`model_root`):
    in a Hugging Face cache `snapshots/<rev>/model.onnx_data` is a symlink to `../../blobs/<hash>`,
    which readers that resolve locations against the model file's own folder (onnx-ir, onnx) refuse
    as a path traversal. Relative to the repository folder it is `blobs/<hash>`, inside it. Outside a
    cache the model's folder is the model file's, and a location changes only where it named a
    symlink (to its target in the folder). Readers must resolve locations against `model_root`."""
    from irtools.files import model_root  # noqa: PLC0415

    location = os.path.relpath(os.path.realpath(full), model_root(path))
    for entry in t.external_data:
        if entry.key == "location":
            entry.value = location


def check_structure(proto: onnx.ModelProto, path: str) -> None:
    """Reject graphs with inputs that nothing defines, values defined twice, or cycles, and
    metadata irtools reads that is not what it should be."""
    _check_text(proto, path)
    _check_declared_parameters(proto, path)
    try:
        _check_graph(proto.graph, set(), path, {})
    except RecursionError:
        raise ModelLoadError("subgraphs nest too deeply (corrupt file)", path) from None


def _names(proto: onnx.ModelProto):
    """(what, value) of every name-like string field irtools reads: ONNX declares them proto2
    `string`, which the parser does not check, so bytes that are not UTF-8 come back as `bytes`.
    Tensors' external data entries (their keys and locations: a key of bytes made sorting the keys
    an unexpected TypeError), the producer and the local functions are among them."""
    yield from (("opset domain", o.domain) for o in proto.opset_import)
    yield from (("metadata", x) for e in proto.metadata_props for x in (e.key, e.value))
    yield from (("producer", x) for x in (proto.producer_name, proto.producer_version, proto.domain))
    for t in iter_tensors(proto.graph):
        yield "tensor", t.name
        yield from (("external data", x) for e in t.external_data for x in (e.key, e.value))
    for fn in proto.functions:
        yield from (("function", x) for x in (fn.name, fn.domain, *fn.input, *fn.output, *fn.attribute))
        for node in fn.node:
            yield from (("node", x) for x in (node.name, node.op_type, node.domain, *node.input, *node.output))
    for g in all_graphs(proto.graph):
        yield "graph name", g.name
        yield from (("initializer", t.name) for t in g.initializer)
        for vi in (*g.input, *g.output, *g.value_info):
            yield "value", vi.name
            if vi.type.HasField("tensor_type"):
                yield from (("dim", d.dim_param) for d in vi.type.tensor_type.shape.dim)
        for node in g.node:
            yield from (("node", x) for x in (node.name, node.op_type, node.domain, *node.input, *node.output))
            yield from (("attribute", a.name) for a in node.attribute)


def _check_text(proto: onnx.ModelProto, path: str) -> None:
    """Refuse names that are not UTF-8 text (onnx-ir cannot build a graph from them), and lists of strings in
    attributes that are not (`bytes` in the proto: onnx-ir decodes them, and failed with "Error calling
    _deserialize_graph with: g"). A single string attribute may hold any bytes (an EPContext node's embedded
    engine): onnx-ir keeps them as bytes."""
    for what, value in _names(proto):
        if not isinstance(value, str):
            raise ModelLoadError(f"{what} name {printable(repr(value)[:80])} is not UTF-8 text (corrupt file)", path)
    nodes = [n for g in all_graphs(proto.graph) for n in g.node] + [n for fn in proto.functions for n in fn.node]
    for node in nodes:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.STRINGS:
                try:
                    for text in a.strings:
                        text.decode("utf-8")
                except UnicodeDecodeError:
                    raise ModelLoadError(f"attribute '{printable(a.name)}' of node '{printable(node.name)}' holds "
                                         f"{printable(repr(text)[:80])}, which is not UTF-8 text (corrupt file)",
                                         path) from None


def _check_declared_parameters(proto: onnx.ModelProto, path: str) -> None:
    """The `irtools.parameters` metadata (the parameter names a frontend declared) must be a JSON
    list of names: a file can put anything there (deep nesting, numbers, a dict)."""
    from irtools.ir.parameters import DECLARED_PARAMETERS_KEY, UNREAD_PARAMETERS_KEY  # noqa: PLC0415

    for entry in proto.metadata_props:
        if entry.key == DECLARED_PARAMETERS_KEY:
            declared_parameter_names(entry.value, path)
        elif entry.key == UNREAD_PARAMETERS_KEY:
            unread_parameter_shapes(entry.value, path)


def declared_parameter_names(text: str, path: str | None) -> list[str]:
    """The names in an `irtools.parameters` metadata value, or a `ModelLoadError` for anything
    but a JSON list of strings."""
    import json  # noqa: PLC0415

    from irtools.ir.parameters import DECLARED_PARAMETERS_KEY  # noqa: PLC0415

    try:
        names = json.loads(text)
    except (ValueError, RecursionError):
        names = None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ModelLoadError(f"metadata '{DECLARED_PARAMETERS_KEY}' is not a JSON list of parameter names "
                             "(corrupt file)", path)
    return names


def unread_parameter_shapes(text: str, path: str | None) -> dict[str, tuple[int, ...]]:
    """The {name: shape} of an `irtools.unread_parameters` metadata value, or a `ModelLoadError`."""
    import json  # noqa: PLC0415

    from irtools.ir.parameters import UNREAD_PARAMETERS_KEY  # noqa: PLC0415

    try:
        shapes = json.loads(text)
    except (ValueError, RecursionError):
        shapes = None
    if not isinstance(shapes, dict) or not all(
            isinstance(k, str) and isinstance(v, list) and all(type(d) is int and 0 <= d < 1 << 62 for d in v)
            for k, v in shapes.items()):
        raise ModelLoadError(f"metadata '{UNREAD_PARAMETERS_KEY}' is not a JSON object of parameter shapes "
                             "(corrupt file)", path)
    return {k: tuple(v) for k, v in shapes.items()}


def _check_unique(graph: onnx.GraphProto, path: str) -> None:
    """Reject a graph that names two inputs, or two initializers, alike (which one a node reads
    would be a guess). An initializer may share its name with an input: its default value."""
    for what, names in (("input", [i.name for i in graph.input]), ("initializer", [t.name for t in graph.initializer])):
        seen: set[str] = set()
        for name in names:
            if name in seen:
                raise ModelLoadError(f"graph '{printable(graph.name)}' has two {what}s named '{printable(name)}'",
                                     path)
            seen.add(name)


def _subgraph_free_names(graph: onnx.GraphProto, memo: dict | None = None) -> set[str]:
    """Names a subgraph reads from its enclosing scopes. With `memo` (id of a graph -> the graph and
    its names, kept for one walk: a protobuf wrapper's id is reused once it is freed) each nested graph is read once, so a deep nest costs its size, not its size
    times its depth."""
    if memo is not None and id(graph) in memo:  # the memo holds the graph too, so its id is not reused
        return memo[id(graph)][1]
    defined = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    free: set[str] = set()
    for node in graph.node:
        for name in node.input:
            if name and name not in defined:
                free.add(name)
        for attr in node.attribute:
            subs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
            for sub in subs:
                free |= _subgraph_free_names(sub, memo) - defined
        defined.update(o for o in node.output if o)
    free |= {o.name for o in graph.output} - defined
    if memo is not None:
        memo[id(graph)] = (graph, free)
    return free


def _check_graph(graph: onnx.GraphProto, outer: set[str], path: str, memo: dict) -> None:
    _check_unique(graph, path)
    local = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    available = set(outer) | local
    producer: dict[str, int] = {}
    for idx, node in enumerate(graph.node):
        for out in node.output:
            if not out:
                continue
            if out in producer:
                raise ModelLoadError(f"value '{printable(out)}' is produced by two nodes", path)
            if out in local:
                raise ModelLoadError(f"value '{printable(out)}' is both a graph input or initializer and the "
                                     f"output of node '{printable(node.name or node.op_type)}'", path)
            producer[out] = idx
    # Dependencies of each node on the nodes of this graph (inputs and subgraph captures).
    deps: list[set[int]] = []
    for node in graph.node:
        names = [n for n in node.input if n]
        for attr in node.attribute:
            subs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
            for sub in subs:
                names.extend(_subgraph_free_names(sub, memo))
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
                _check_graph(sub, defined, path, memo)


