"""Writers for the model formats irtools reads, byte by byte, so that a test can make any of
their declarations lie: ONNX (via onnx.helper), safetensors, PyTorch zip and legacy pickles
(opcodes written by hand: no torch needed), npz, HDF5."""

from __future__ import annotations

import io
import json
import pickle
import struct
import zipfile

import numpy as np
import onnx
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

RNG = np.random.default_rng(12)


# -- ONNX ---------------------------------------------------------------------------------
def onnx_model(n: int = 12, *, name: str = "w", node_name: str = "mm", extra_inits=(), nodes=None,
               out_shape=(1, 12)) -> onnx.ModelProto:
    """x[1, n] @ w[n, n] -> Relu -> y: the smallest model both inspect and analyze accept."""
    w = RNG.standard_normal((n, n)).astype(np.float32)
    nodes = nodes or [h.make_node("MatMul", ["x", name], ["m"], name=node_name), h.make_node("Relu", ["m"], ["y"])]
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, [1, n])],
                     [h.make_tensor_value_info("y", T.FLOAT, list(out_shape))], [nh.from_array(w, name), *extra_inits])
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def save_onnx(proto: onnx.ModelProto, path: str) -> str:
    with open(path, "wb") as fh:
        fh.write(proto.SerializeToString())
    return path


def save_onnx_bytes(data: bytes, path: str) -> str:
    with open(path, "wb") as fh:
        fh.write(data)
    return path


def with_external(proto: onnx.ModelProto, location: str, *, offset: int = 0, length: int | None = None):
    """`proto` with its first initializer's bytes moved to `location` (the caller writes that file);
    returns (proto, the bytes)."""
    t = proto.graph.initializer[0]
    raw = t.raw_data
    t.ClearField("raw_data")
    t.data_location = T.EXTERNAL
    entries = [("location", location), ("offset", str(offset))]
    if length is not None:
        entries.append(("length", str(length)))
    for k, v in entries:
        e = t.external_data.add()
        e.key, e.value = k, v
    return proto, raw


# -- safetensors --------------------------------------------------------------------------
def safetensors_bytes(header, data: bytes = b"") -> bytes:
    head = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(head)) + head + data


def safetensors_of(arrays: dict[str, np.ndarray]) -> bytes:
    header, blobs, offset = {}, [], 0
    for name, a in arrays.items():
        raw = a.astype(np.float32).tobytes()
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    return safetensors_bytes(header, b"".join(blobs))


# -- GGUF (llama.cpp), field by field --------------------------------------------------------
def gguf_string(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(raw)) + raw


def gguf_kv(key: str, vtype: int, payload: bytes) -> bytes:
    """One metadata entry: key, GGUFValueType id, the value's bytes as given (so they may lie)."""
    return gguf_string(key) + struct.pack("<I", vtype) + payload


def gguf_tensor_info(name: str, dims, type_id: int, offset: int) -> bytes:
    return gguf_string(name) + struct.pack("<I", len(dims)) + struct.pack(f"<{len(dims)}Q", *dims) + \
        struct.pack("<IQ", type_id, offset)


def gguf_bytes(kvs: list[bytes], infos: list[bytes], data: bytes = b"", *, version: int = 3,
               n_tensors: int | None = None, n_kv: int | None = None, align: int = 32) -> bytes:
    """A GGUF file: header (counts default to the entries given), metadata, tensor infos, padding, data."""
    head = b"GGUF" + struct.pack("<IQQ", version, len(infos) if n_tensors is None else n_tensors,
                                 len(kvs) if n_kv is None else n_kv) + b"".join(kvs) + b"".join(infos)
    return head + bytes(-len(head) % align) + data


def gguf_of(arrays: dict[str, np.ndarray], arch: str = "llama") -> bytes:
    """A valid GGUF of F32 tensors (GGUF dims are the numpy shape reversed, 32-byte aligned offsets)."""
    infos, blobs, offset = [], [], 0
    for name, a in arrays.items():
        raw = a.astype(np.float32).tobytes()
        infos.append(gguf_tensor_info(name, tuple(reversed(a.shape)), 0, offset))
        blobs.append(raw + bytes(-len(raw) % 32))
        offset += len(blobs[-1])
    return gguf_bytes([gguf_kv("general.architecture", 8, gguf_string(arch))], infos, b"".join(blobs))


# -- PyTorch pickles, opcode by opcode -----------------------------------------------------
def p_int(v: int) -> bytes:
    """LONG1: any signed integer."""
    raw = v.to_bytes(max(1, (v.bit_length() + 8) // 8), "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw


def p_str(s: str) -> bytes:
    raw = s.encode("utf-8", "surrogatepass")
    return b"X" + struct.pack("<I", len(raw)) + raw


def p_tuple(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"t"


def p_tensor(key: str, numel: int, offset: int, size, stride, storage: str = "FloatStorage") -> bytes:
    pid = p_tuple(p_str("storage"), b"ctorch\n" + storage.encode() + b"\n", p_str(key), p_str("cpu"), p_int(numel))
    return (b"ctorch._utils\n_rebuild_tensor_v2\n"
            + p_tuple(pid + b"Q", p_int(offset), p_tuple(*map(p_int, size)), p_tuple(*map(p_int, stride)),
                      b"\x89", b"ccollections\nOrderedDict\n)R")
            + b"R")


def p_state(tensors: dict[str, bytes]) -> bytes:
    """A protocol-2 pickle of {name: tensor} (values from `p_tensor`)."""
    return b"\x80\x02}(" + b"".join(p_str(k) + v for k, v in tensors.items()) + b"u."


def torch_zip(pickle_bytes: bytes, storages: dict[str, bytes], *, compress: bool = False) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", pickle_bytes)
        for key, raw in storages.items():
            z.writestr(f"archive/data/{key}", raw)
        z.writestr("archive/version", "3\n")
    return buf.getvalue()


def torch_legacy(pickle_bytes: bytes, storages: dict[str, tuple[int, bytes]]) -> bytes:
    """The pre-1.6 layout: magic, protocol, sys info, the state pickle, the key list, then each
    storage as its element count (int64) and bytes."""
    head = b"".join(pickle.dumps(x, protocol=2) for x in
                    (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True}))
    tail = pickle.dumps(list(storages), protocol=2)
    body = b"".join(struct.pack("<q", numel) + raw for numel, raw in storages.values())
    return head + pickle_bytes + tail + body


def deep_pickle(depth: int) -> bytes:
    """A list nested `depth` deep."""
    return b"\x80\x02" + b"]" * depth + b"a" * (depth - 1) + b"."


def laughs_pickle(levels: int) -> bytes:
    """{t: 1} where t = (t', t') shared `levels` deep: tiny, 2^levels leaves."""
    return b"\x80\x02}" + b"K\x01" + b"\x85" + b"2\x86" * levels + b"K\x01s."


def memo_pickle(slot: int) -> bytes:
    """A memo PUT into a slot far past anything the pickle holds."""
    return b"\x80\x02}r" + struct.pack("<I", slot) + b"."


# -- npz ----------------------------------------------------------------------------------
def npy_bytes(shape, dtype="<f4", data: bytes | None = None) -> bytes:
    buf = io.BytesIO()
    header = {"descr": dtype, "fortran_order": False, "shape": tuple(shape)}
    np.lib.format.write_array_header_1_0(buf, header)
    if data is None:
        data = np.zeros(shape, dtype).tobytes()
    return buf.getvalue() + data


def npz(members: dict[str, bytes], *, compress: bool = False) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED) as z:
        for name, raw in members.items():
            z.writestr(name + ".npy", raw)
    return buf.getvalue()


def zeros_member_bomb(nbytes: int) -> bytes:
    """A deflated npz whose one member inflates to `nbytes` of zeros (streamed: never held)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z, z.open("w.npy", "w", force_zip64=True) as fh:
        n = nbytes // 4
        fh.write(npy_bytes((n,), data=b""))
        chunk = bytes(1 << 20)
        left = n * 4
        while left:
            fh.write(chunk[:min(left, len(chunk))])
            left -= min(left, len(chunk))
    return buf.getvalue()
