"""Hypothesis strategies that build malformed model files of every format irtools reads.

Each strategy draws a *writer*: a function that, given a `hostile.Layout`, writes the files of
one case into its `model/` folder (and bait into `outside/`) and returns the path to analyse.
The files start from valid ones and lie in the ways a crafted file can: sizes, shapes, strides,
offsets and lengths that disagree with the bytes; names with control characters; files named
outside the model's folder; nesting; compression; flipped bytes.
"""

from __future__ import annotations

import json
import os

import numpy as np
from hypothesis import strategies as st
from onnx import TensorProto as T

from tests.fuzz import formats as f
from tests.fuzz.hostile import Layout

# integers a declaration may hold: small, boundary, huge, negative
sizes = st.one_of(st.integers(0, 40), st.sampled_from([-1, 2**31, 2**32 + 1, 2**40, 2**62, 2**63 - 1]),
                  st.integers(-(2**63), 2**63 - 1))
small = st.integers(0, 24)
names = st.one_of(st.text(max_size=12), st.sampled_from(["w", "a\nb", "\x1b[2J", "x\u2028y", "\ud800", "../x"]))
#: names a protobuf string can hold (no lone surrogates)
proto_names = st.one_of(st.text(st.characters(exclude_categories=["Cs"]), max_size=12),
                        st.sampled_from(["w", "a\nb", "\x1b[2J", "x\u2028y", "../x"]))


class Writer:
    """A drawn case: writes its files into a `Layout` and returns what to analyse; its repr
    shows what was drawn (for hypothesis' falsifying example)."""

    def __init__(self, fn, **drawn):
        self.fn, self.drawn = fn, drawn

    def __call__(self, lay: Layout) -> str:
        return self.fn(lay)

    def __repr__(self) -> str:
        return f"Writer({', '.join(f'{k}={v!r}' for k, v in self.drawn.items())})"


def _flip(data: bytes, flips: list[tuple[int, int]]) -> bytes:
    out = bytearray(data)
    for pos, value in flips:
        if out:
            out[pos % len(out)] = value
    return bytes(out)


flips = st.lists(st.tuples(st.integers(0, 2**20), st.integers(0, 255)), max_size=4)


# -- ONNX --------------------------------------------------------------------------------------
def _outside_location(lay: Layout, kind: str, raw: bytes) -> str:
    """An external-data location of the given kind, its file written where the kind says."""
    if kind == "inside":
        lay.write("w.bin", raw)
        return "w.bin"
    lay.write("w.bin", raw, outside=True)
    if kind == "dotdot":
        return "../outside/w.bin"
    if kind == "absolute":
        return os.path.join(lay.outside, "w.bin")
    if kind == "symlink":
        os.symlink(os.path.join(lay.outside, "w.bin"), os.path.join(lay.model, "link.bin"))
        return "link.bin"
    if kind == "passwd":
        os.symlink("/etc/passwd", os.path.join(lay.model, "pw.bin"))
        return "pw.bin"
    if kind == "fifo":
        os.mkfifo(os.path.join(lay.model, "fifo.bin"))
        return "fifo.bin"
    return kind  # a raw string: "", "sub/../w.bin", a name with control characters


def _set_dims(value_info, dims) -> None:
    shape = value_info.type.tensor_type.shape
    del shape.dim[:]
    for d in dims:
        dim = shape.dim.add()
        if isinstance(d, str):
            dim.dim_param = d
        else:
            dim.dim_value = d


@st.composite
def onnx_files(draw):
    n = draw(st.sampled_from([4, 12]))
    init_name, node_name = draw(st.just("w") | proto_names), draw(proto_names)
    dims = draw(st.none() | st.lists(sizes, max_size=3))
    extra = draw(st.integers(-8, 8))
    data_type = draw(st.none() | st.integers(0, 30))
    external = draw(st.none() | st.sampled_from(["inside", "dotdot", "absolute", "symlink", "passwd", "fifo", "",
                                                 "sub/../w.bin", "w\n.bin"]))
    offset, length = draw(st.none() | sizes), draw(st.none() | sizes | st.just("junk"))
    string_init = draw(st.booleans())
    op = draw(st.none() | st.sampled_from(["Softmax", "Gemm", "Conv", "Reshape", "Expand", "Tile", "ConstantOfShape",
                                            "Range", "Transpose", "Flatten", "Cast", "If", "NoSuchOp", "Split"]))
    attrs = draw(st.dictionaries(st.sampled_from(["axis", "perm", "to", "kernel_shape", "value", "then_branch"]),
                                 st.integers(-3, 2**40) | st.lists(st.integers(-3, 5), min_size=1, max_size=3), max_size=2))
    x_dims = draw(st.none() | st.lists(st.integers(0, 2**33) | st.just(-1) | st.text("ab", min_size=1, max_size=2),
                                       max_size=4))
    opset = draw(st.none() | st.integers(-1, 30))
    byte_flips = draw(st.sampled_from([[]] * 3) | st.lists(st.tuples(st.integers(0, 2**12), st.integers(0, 255)),
                                                            max_size=2))

    def write(lay: Layout) -> str:
        from onnx import helper as h

        inits = [h.make_tensor("vocab", T.STRING, [2], [b"a", b"\x1b[31m"])] if string_init else []
        proto = f.onnx_model(n, name=init_name, node_name=node_name, extra_inits=inits, out_shape=(1, n))
        t = proto.graph.initializer[0]
        second = proto.graph.node[1]
        if op is not None:
            second.op_type = op
            second.input.extend(["w"] if op in ("Gemm", "Conv", "Reshape", "Expand", "Tile", "Range") else [])
        for key, value in attrs.items():
            second.attribute.append(h.make_attribute(key, value))
        if x_dims is not None:
            _set_dims(proto.graph.input[0], x_dims)
        if opset is not None:
            proto.opset_import[0].version = opset
        if dims is not None:
            del t.dims[:]
            t.dims.extend(max(-(2**63), min(d, 2**63 - 1)) for d in dims)
        if extra > 0:
            t.raw_data += bytes(extra)
        elif extra < 0:
            t.raw_data = t.raw_data[:extra]
        if data_type is not None:
            t.data_type = data_type
        if external is not None:
            raw = t.raw_data
            proto, _ = f.with_external(proto, "placeholder", offset=offset or 0,
                                       length=None if length is None else 0)
            entries = {e.key: e for e in t.external_data}
            entries["location"].value = _outside_location(lay, external, raw)
            if length is not None:
                entries["length"].value = str(length)
        return f.save_onnx_bytes(_flip(proto.SerializeToString(), byte_flips), os.path.join(lay.model, "m.onnx"))

    return Writer(write, n=n, init_name=init_name, node_name=node_name, dims=dims, extra=extra, data_type=data_type,
                  op=op, attrs=attrs, x_dims=x_dims, opset=opset, external=external, offset=offset, length=length, string_init=string_init, flips=byte_flips)


# -- safetensors -------------------------------------------------------------------------------
json_values = st.recursive(st.none() | st.booleans() | st.integers(-(2**64), 2**64) | st.floats() | st.text(max_size=6),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                                         max_size=3), max_leaves=8)
dtypes = st.sampled_from(["F32", "F16", "BF16", "F64", "I64", "U8", "BOOL", "F8_E4M3", "X9", ""]) | json_values


@st.composite
def safetensors_entries(draw):
    shape = draw(st.lists(sizes | small, max_size=3) | json_values)
    start = draw(small | sizes)
    end = draw(small | sizes | st.just(start + 4 * 16))
    entry = {"dtype": draw(dtypes), "shape": shape, "data_offsets": draw(st.just([start, end]) | json_values)}
    return draw(st.just(entry) | json_values)


@st.composite
def safetensors_files(draw):
    header = draw(st.dictionaries(names, safetensors_entries(), max_size=3) | json_values)
    valid = draw(st.booleans())
    data = bytes(draw(st.integers(0, 400)))
    length = draw(st.sampled_from([None] * 6) | sizes)
    sharded = draw(st.none() | st.sampled_from(["plain", "absolute", "dotdot", "symlink", "missing", "junk"]))
    byte_flips = draw(st.sampled_from([[]] * 3) | flips)

    def write(lay: Layout) -> str:
        body = f.safetensors_of({"a.weight": np.eye(12)}) if valid else f.safetensors_bytes(header, data)
        if length is not None:
            body = (length % 2**64).to_bytes(8, "little") + body[8:]
        body = _flip(body, byte_flips)
        if sharded is None:
            return lay.write("m.safetensors", body)
        lay.write("s1.safetensors", body)
        target = {"plain": "s1.safetensors", "missing": "nope.safetensors", "dotdot": "../outside/s.safetensors",
                  "absolute": os.path.join(lay.outside, "s.safetensors"), "symlink": "l.safetensors"}
        lay.write("s.safetensors", f.safetensors_of({"secret": np.eye(8)}), outside=True)
        if sharded == "symlink":
            os.symlink(os.path.join(lay.outside, "s.safetensors"), os.path.join(lay.model, "l.safetensors"))
        index = {"weight_map": {"a.weight": target.get(sharded, "s1.safetensors")}} if sharded != "junk" else header
        lay.write("model.safetensors.index.json", json.dumps(index).encode())
        return lay.model

    return Writer(write, header=header, valid=valid, data=len(data), length=length, sharded=sharded, flips=byte_flips)


# -- PyTorch zip and legacy pickles -----------------------------------------------------------------
storage_types = st.sampled_from(["FloatStorage", "HalfStorage", "LongStorage", "BoolStorage", "BFloat16Storage",
                                 "NotAStorage"])
junk_pickles = st.sampled_from([f.deep_pickle(300), f.laughs_pickle(40), f.memo_pickle(2**31), b"\x80\x02N.",
                                b"\x80\x02]q\x00.", b"\x80\x02(K\x01K\x02l.", b"garbage", b"\x80\x02}(Xa", b""])


@st.composite
def torch_tensors(draw):
    ndim = draw(st.integers(0, 3))
    shape = draw(st.lists(small | sizes, min_size=ndim, max_size=ndim))
    stride = draw(st.lists(small | sizes, min_size=ndim, max_size=ndim + draw(st.integers(0, 1))))
    return f.p_tensor(draw(st.sampled_from(["0", "1"])), draw(small | sizes), draw(small | sizes), shape, stride,
                      draw(storage_types))


@st.composite
def torch_files(draw):
    pickled = draw(junk_pickles | st.dictionaries(names, torch_tensors(), max_size=3).map(f.p_state))
    storages = {k: bytes(draw(st.integers(0, 300))) for k in ("0", "1")}
    legacy = draw(st.booleans())
    counts = {k: draw(small | sizes) for k in storages}
    compress = draw(st.booleans())
    byte_flips = draw(st.sampled_from([[]] * 3) | flips)

    def write(lay: Layout) -> str:
        pkl = _flip(pickled, byte_flips)
        if legacy:
            data = f.torch_legacy(pkl, {k: (counts[k] % 2**63, raw) for k, raw in storages.items()})
        else:
            data = f.torch_zip(pkl, storages, compress=compress)
        return lay.write("m.pt", data)

    return Writer(write, pickled=pickled, storages={k: len(v) for k, v in storages.items()}, legacy=legacy,
                  counts=counts, compress=compress, flips=byte_flips)


# -- npz ---------------------------------------------------------------------------------------
npy_dtypes = st.sampled_from(["<f4", ">f8", "<f2", "|u1", "<i8", "|O", "<c8", "|V8", "<U4", "|b1"])


@st.composite
def npz_files(draw):
    members = {}
    for name in draw(st.lists(st.text("abc.\n", min_size=1, max_size=4), max_size=3, unique=True)):
        shape = draw(st.lists(st.integers(0, 40) | st.sampled_from([2**40, 2**62]), max_size=3))
        dtype = draw(npy_dtypes)
        data = bytes(draw(st.integers(0, 300)))
        members[name] = _flip(f.npy_bytes(shape, dtype, data), draw(st.lists(
            st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=2)))
    compress = draw(st.booleans())
    return Writer(lambda lay: lay.write("m.npz", f.npz(members, compress=compress)), members=members,
                  compress=compress)


# -- HDF5 --------------------------------------------------------------------------------------
@st.composite
def h5_files(draw):
    kinds = draw(st.lists(st.sampled_from(["plain", "int", "scalar", "external", "virtual", "link", "huge", "empty",
                                           "control-name"]), min_size=1, max_size=3))
    full_model = draw(st.booleans())

    def write(lay: Layout) -> str:
        import h5py

        os.makedirs(lay.outside, exist_ok=True)
        other = os.path.join(lay.outside, "other.h5")
        with h5py.File(other, "w") as fh:
            fh.create_dataset("d", data=np.ones((8, 8), np.float32))
        path = os.path.join(lay.model, "m.weights.h5" if not full_model else "m.h5")
        with h5py.File(path, "w") as fh:
            if full_model:
                fh.attrs["model_config"] = "{}"
            for i, kind in enumerate(kinds):
                key = f"layers/l{i}/vars/0"
                if kind == "plain":
                    fh.create_dataset(key, data=np.eye(12, dtype=np.float32))
                elif kind == "int":
                    fh.create_dataset(key, data=np.ones((4, 4), np.int32))
                elif kind == "scalar":
                    fh.create_dataset(key, data=np.float32(1))
                elif kind == "external":
                    fh.create_dataset(key, shape=(8,), dtype="f4", external=[("/etc/passwd", 0, 32)])
                elif kind == "virtual":
                    vl = h5py.VirtualLayout(shape=(8, 8), dtype="f4")
                    vl[:] = h5py.VirtualSource(other, "d", shape=(8, 8))
                    fh.create_virtual_dataset(key, vl)
                elif kind == "link":
                    fh[f"layers/l{i}"] = h5py.ExternalLink(other, "/")
                elif kind == "huge":
                    fh.create_dataset(key, shape=(1 << 14, 1 << 14), dtype="f4", chunks=(64, 64))
                elif kind == "empty":
                    fh.create_dataset(key, shape=(0, 8), dtype="f4")
                else:
                    fh.create_dataset(f"layers/\x1b[2J\n{i}/vars/0", data=np.eye(8, dtype=np.float32))
        return path

    return Writer(write, kinds=kinds, full_model=full_model)


# -- ONNX graphs that declare huge work (issue #23) ----------------------------------------------
def _expanding_cases():
    from tests.fuzz import expanding as e

    exponent = st.integers(0, 40)
    return st.one_of(
        st.tuples(st.just("constant_of_shape"), st.tuples(st.just(4), exponent.map(lambda k: 1 << k)))
        .map(lambda t: (t[0], lambda: e.constant_of_shape(t[1]), t[1])),
        st.tuples(st.sampled_from(["expand", "tile"]), st.tuples(st.integers(1, 8), exponent.map(lambda k: 1 << k)))
        .map(lambda t: (t[0], lambda: (e.expand if t[0] == "expand" else e.tile)(t[1]), t[1])),
        st.tuples(st.sampled_from(["HannWindow", "HammingWindow", "BlackmanWindow"]), st.integers(1, 1 << 40))
        .map(lambda t: (t[0], lambda: e.window(t[0], t[1]), t[1])),
        st.integers(1, 1 << 40).map(lambda n: ("range", lambda: e.range_op(n), n)),
        st.integers(1, 3000).map(lambda n: ("matmul_of_vectors", lambda: e.matmul_of_vectors(n), n)),
        st.integers(0, 40).map(lambda k: ("concat_doubling", lambda: e.concat_doubling(k, 4), k)),
        # a loop of a few trips (valid, quick) or of 2^30 and more (refused): one in between is valid work
        # that takes its time (the unrolling prints its estimate), not for a 20 s alarm
        (st.integers(0, 64) | st.integers(1 << 30, (1 << 63) - 1)).map(lambda n: ("loop", lambda: e.loop(n), n)),
        st.integers(1, 11).map(lambda d: ("nested_if", lambda: e.nested_if(d), d)),
        st.integers(1, 64).map(lambda d: ("doubling_functions", lambda: e.doubling_functions(d), d)),
        st.integers(1, 3000).map(lambda n: ("chain", lambda: e.chain(n), n)),
    )


@st.composite
def expanding_onnx_files(draw):
    """One of `tests.fuzz.expanding`'s attacks at a drawn size: from a few nodes or elements (valid
    work) to 2^40 and more (refused before it is done)."""
    kind, build, size = draw(_expanding_cases())

    def write(lay: Layout) -> str:
        return f.save_onnx(build(), os.path.join(lay.model, "m.onnx"))

    return Writer(write, kind=kind, size=size)
