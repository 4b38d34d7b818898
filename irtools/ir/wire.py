"""The protobuf wire format of an ONNX file, scanned without parsing it (`irtools.ir.loading` reads files with it).

Two uses, both before protobuf parses anything: counting the NodeProtos of every graph, subgraph and function
against the node cap and the entries of every graph against the memory budget (`_check_wire_nodes`: parsing is
what costs, and protobuf merges a message given twice, so only the bytes tell), and finding the large raw_data
payloads of the main graph's initializers, which `loading._strip_and_parse` leaves in the file to be memory-mapped.
Bytes laid out other than the scan expects raise `_Irregular`: the caller then parses the file whole.
"""

from __future__ import annotations

from irtools import budget

# ModelProto.graph is field 7, GraphProto.initializer field 5, TensorProto.raw_data field 9
# TensorProto.data_type field 2 and data_location field 14 (varints), raw_data field 9.
_MODEL_GRAPH, _GRAPH_INITIALIZER, _TENSOR_DATA_TYPE, _TENSOR_RAW_DATA, _TENSOR_DATA_LOCATION = 7, 5, 2, 9, 14
_GRAPH_NODE = 1  # GraphProto.node


class _Irregular(Exception):
    """The bytes are not laid out as the scan expects: parse the whole file instead."""


def _varint(buf, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise _Irregular
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _encode_varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _fields(buf, start: int, end: int):
    """Yield (field number, wire type, field start, payload start, field end) in buf[start:end]."""
    pos = start
    while pos < end:
        key, body = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, stop = _varint(buf, body, end)
        elif wire == 1:
            stop = body + 8
        elif wire == 2:
            length, body = _varint(buf, body, end)
            stop = body + length
        elif wire == 5:
            stop = body + 4
        else:  # groups (3, 4) do not occur in ONNX
            raise _Irregular
        if stop > end or number == 0:
            raise _Irregular
        yield number, wire, pos, body, stop
        pos = stop


#: Where NodeProtos lie, by message: {field number: the message it holds}. ModelProto.graph (7) and
#: .functions (25), GraphProto.node (1), FunctionProto.node (7), NodeProto.attribute (5),
#: AttributeProto.g (6) and .graphs (11).
_NODE_FIELDS = {"model": {7: "graph", 25: "function"}, "graph": {1: "node"}, "function": {7: "node"},
                "node": {5: "attribute"}, "attribute": {6: "graph", 11: "graph"}}


def _check_wire_nodes(fh, path: str) -> None:
    """Count the NodeProtos of every graph, subgraph and function in the file's bytes, before the
    protobuf is parsed, against the node cap: parsing is what costs (10^6 empty nodes, 2 bytes
    each, parsed to 150 MB before the cap refused them), and protobuf merges a message given twice,
    so a graph split over two `graph` fields or hidden in an If branch is counted too, and the
    functions' nodes with them (a subgraph one node more, as `count_nodes` counts); the entries of
    every graph (nodes, initializers, value infos, metadata, node inputs, attribute values) against
    the memory budget. Past
    `WIRE_SCAN_CAPS` caps the file is refused unparsed; under that, the parsed count refuses it
    (`check_node_count`, with the exact count). Bytes the scan does not expect are left to the parser."""
    import mmap

    try:
        buf = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError):
        return
    cap = budget.max_nodes()
    counts = [0, 0]  # graphs' nodes, functions' nodes
    cost, most = 0, budget.limit()
    todo = [("model", 0, len(buf), 0, 0)]
    try:
        while todo:
            kind, start, end, depth, in_function = todo.pop()
            if depth > 256:  # past any depth protobuf parses (it refuses the file)
                continue
            holds = _NODE_FIELDS[kind]
            inner = kind == "node" or kind == "attribute"
            for number, wire, _, body, stop in _wire_fields(buf, start, end):
                if wire == 2:  # a message or string: an object once parsed; packed numbers: one each
                    cost += (stop - body) // (4 if number == 7 else 1) * NUMBER_BYTES \
                        if kind == "attribute" and number in (7, 8) else STRING_BYTES if inner else ENTRY_BYTES
                elif kind == "attribute" and number in (7, 8):
                    cost += NUMBER_BYTES
                if cost > most:
                    raise budget.MemoryBudgetError(
                        f"the model's graphs hold entries (nodes, initializers, value infos, metadata, node inputs "
                        f"and attributes) that would take over {budget.format_size(most)} once parsed, the memory "
                        "budget (--max-memory SIZE to change it)", path)
                sub = holds.get(number)
                if sub is None or wire != 2:
                    continue
                function = in_function or sub == "function"
                if sub == "node" or (kind == "attribute" and sub == "graph"):
                    counts[function] += 1
                    if counts[0] + counts[1] > WIRE_SCAN_CAPS * cap:
                        raise budget.GraphBudgetError(f"the model's graph has more nodes than the cap of {cap:,} "
                                                      "(IRTOOLS_MAX_NODES=N to change it)", path)
                todo.append((sub, body, stop, depth + 1, function))
    except _Irregular:
        pass
    finally:
        buf.close()


#: Memory one entry of a graph (a node, an initializer, a value info, a metadata pair) costs once
#: parsed and loaded (measured ~610 bytes a value info: 10^6 of them, 10 MB, took 700 MB), a string
#: or message of a node or attribute (~355 bytes a node input, ~195 an attribute's string), and one
#: number of an attribute's ints or floats.
ENTRY_BYTES, STRING_BYTES, NUMBER_BYTES = 600, 200, 40
#: The nodes the wire scan lets through to the parser, in node caps: past the cap but within this
#: the parsed model's own count refuses it, naming its exact count (a bounded parse).
WIRE_SCAN_CAPS = 4


def _wire_fields(buf, start: int, end: int):
    """`_fields`, with groups (wire types 3 and 4, which ONNX does not use but the parser skips) skipped."""
    pos = start
    while pos < end:
        key, body = _varint(buf, pos, end)
        if key & 7 != 3:
            number, wire, _, body, stop = next(_fields(buf, pos, end))
            yield number, wire, pos, body, stop
            pos = stop
            continue
        level, pos = 1, body
        while level:  # to the end of the group, nested groups included
            key, body = _varint(buf, pos, end)
            wire = key & 7
            if wire in (3, 4):
                level += 1 if wire == 3 else -1
                pos = body
            else:
                pos = next(_fields(buf, pos, end))[4]
