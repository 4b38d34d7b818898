"""Hand-crafted hostile files, one builder per case, grouped by the class of attack they stand
for (issue #12). Each builder gets a fresh folder holding `model/` (what irtools is pointed at)
and `outside/` (files a model must never make irtools read, with a bait secret), and returns
the `Case`: the CLI arguments and what must happen."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

from tests.fuzz import formats as f

SECRET = "TOP-SECRET-NOT-A-WEIGHT"


@dataclass
class Case:
    args: list[str]
    expect: int  # exit code
    message: str | None = None  # a part of the one error line
    isolate: bool = False  # run in a subprocess (could crash, hang or bloat the test process)
    absent: tuple[str, ...] = (SECRET,)  # text that must not appear in the output


@dataclass
class Layout:
    root: str

    @property
    def model(self) -> str:
        return os.path.join(self.root, "model")

    @property
    def outside(self) -> str:
        return os.path.join(self.root, "outside")

    def write(self, name: str, data: bytes, *, outside: bool = False) -> str:
        path = os.path.join(self.outside if outside else self.model, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as fh:
            fh.write(data)
        return path

    def secret_safetensors(self) -> str:
        """A safetensors file outside the model whose tensor name is the secret."""
        return self.write("secret.safetensors", f.safetensors_of({SECRET: np.eye(8)}), outside=True)


def layout(root: str) -> Layout:
    lay = Layout(root)
    os.makedirs(lay.model, exist_ok=True)
    lay.write("secret.txt", (SECRET + "\n").encode() * 64, outside=True)
    return lay


CASES: dict[str, tuple[str, Callable[[Layout], Case]]] = {}


def case(klass: str):
    def register(fn):
        CASES[fn.__name__] = (klass, fn)
        return fn

    return register


def _shards(lay: Layout, name: str) -> Case:
    good = lay.write("model-00001.safetensors", f.safetensors_of({"a.weight": np.eye(8)}))
    assert good
    index = {"weight_map": {"a.weight": "model-00001.safetensors", SECRET: name}}
    lay.write("model.safetensors.index.json", json.dumps(index).encode())
    return Case(["analyze", lay.model], 2, "outside the model's folder")


# -- reads outside the model ----------------------------------------------------------------
@case("outside")
def shard_by_absolute_path(lay):
    return _shards(lay, lay.secret_safetensors())


@case("outside")
def shard_by_dotdot(lay):
    lay.secret_safetensors()
    return _shards(lay, "../outside/secret.safetensors")


@case("outside")
def shard_through_symlink(lay):
    os.symlink(lay.secret_safetensors(), os.path.join(lay.model, "evil.safetensors"))
    return _shards(lay, "evil.safetensors")


@case("outside")
def folder_with_symlinked_shard(lay):
    lay.write("a.safetensors", f.safetensors_of({"a.weight": np.eye(8)}))
    os.symlink(lay.secret_safetensors(), os.path.join(lay.model, "b.safetensors"))
    return Case(["analyze", lay.model], 2, "outside the model's folder")


@case("outside")
def onnx_external_data_symlink_to_passwd(lay):
    proto, _ = f.with_external(f.onnx_model(), "w.bin")
    os.symlink("/etc/passwd", os.path.join(lay.model, "w.bin"))
    return Case(["inspect", f.save_onnx(proto, os.path.join(lay.model, "m.onnx"))], 2, "outside the model's folder")


@case("outside")
def onnx_external_data_dotdot(lay):
    proto, raw = f.with_external(f.onnx_model(), "../outside/w.bin")
    lay.write("w.bin", raw, outside=True)
    return Case(["inspect", f.save_onnx(proto, os.path.join(lay.model, "m.onnx"))], 2, "outside the model's folder")


@case("outside")
def onnx_external_data_absolute(lay):
    proto, raw = f.with_external(f.onnx_model(), os.path.join(lay.outside, "w.bin"))
    lay.write("w.bin", raw, outside=True)
    return Case(["inspect", f.save_onnx(proto, os.path.join(lay.model, "m.onnx"))], 2, "outside the model's folder")


def _h5(lay: Layout, make) -> Case:
    h5py = pytest.importorskip("h5py")
    path = os.path.join(lay.model, "m.weights.h5")
    with h5py.File(path, "w") as fh:
        fh.create_dataset("layers/dense/vars/0", data=np.eye(8, dtype=np.float32))
        make(h5py, fh)
    return Case(["analyze", path], 2, "refused")


@case("outside")
def h5_external_storage(lay):
    secret = os.path.join(lay.outside, "secret.txt")
    return _h5(lay, lambda h5py, fh: fh.create_dataset("layers/x/vars/0", shape=(16, 16), dtype="f4",
                                                       external=[(secret, 0, 1024)]))


@case("outside")
def h5_external_storage_passwd(lay):
    return _h5(lay, lambda h5py, fh: fh.create_dataset("layers/x/vars/0", shape=(8,), dtype="f4",
                                                       external=[("/etc/passwd", 0, 32)]))


def _outside_h5(lay, h5py) -> str:
    """An HDF5 file outside the model's folder, for a hostile file to point at."""
    other = os.path.join(lay.outside, "other.h5")
    os.makedirs(lay.outside, exist_ok=True)
    with h5py.File(other, "w") as fh:
        fh.create_dataset("d", data=np.ones((8, 8), np.float32))
    return other


@case("outside")
def h5_virtual_dataset(lay):
    h5py = pytest.importorskip("h5py")

    other = _outside_h5(lay, h5py)

    def make(h5py, fh):
        vl = h5py.VirtualLayout(shape=(8, 8), dtype="f4")
        vl[:] = h5py.VirtualSource(other, "d", shape=(8, 8))
        fh.create_virtual_dataset("layers/v/vars/0", vl)

    return _h5(lay, make)


@case("outside")
def h5_external_link(lay):
    h5py = pytest.importorskip("h5py")

    other = _outside_h5(lay, h5py)
    return _h5(lay, lambda h5py, fh: fh.__setitem__("layers/l", h5py.ExternalLink(other, "/")))


@case("outside")
def keras_full_model_h5_external_storage(lay):
    """A full-model .h5 (it has a model_config): refused when it is recognised, before Keras opens it."""
    h5py = pytest.importorskip("h5py")

    path = os.path.join(lay.model, "m.h5")
    with h5py.File(path, "w") as fh:
        fh.attrs["model_config"] = "{}"
        fh.create_dataset("model_weights/d/k", shape=(8,), dtype="f4", external=[("/etc/passwd", 0, 32)])
    return Case(["analyze", path], 2, "external storage")


# -- crashes and hangs ----------------------------------------------------------------------
_GOOD = np.arange(16, dtype=np.float32).tobytes()  # a 64-byte storage


def _torch(lay: Layout, tensor: bytes, storage: bytes = _GOOD, *, legacy: bool = False, numel: int = 16,
           isolate: bool = False) -> Case:
    state = f.p_state({"w": tensor})
    data = f.torch_legacy(state, {"0": (numel, storage)}) if legacy else f.torch_zip(state, {"0": storage})
    return Case(["analyze", lay.write("m.pt", data)], 2, "storage", isolate=isolate)


@case("crash")
def torch_small_storage_backs_huge_tensor(lay):
    return _torch(lay, f.p_tensor("0", 16, 0, (4096, 4096), (4096, 1)), isolate=True)  # segfaulted


@case("crash")
def torch_negative_stride(lay):
    c = _torch(lay, f.p_tensor("0", 16, 15, (4, 4), (-4, 1)))
    c.message = "negative"
    return c


@case("crash")
def torch_offset_past_end(lay):
    return _torch(lay, f.p_tensor("0", 16, 1000, (4, 4), (4, 1)))


@case("crash")
def torch_storage_shorter_than_declared(lay):
    return _torch(lay, f.p_tensor("0", 1 << 20, 0, (1024, 1024), (1024, 1)))


@case("crash")
def torch_stride_rank_mismatch(lay):
    c = _torch(lay, f.p_tensor("0", 16, 0, (4, 4), (1,)))
    c.message = "strides"
    return c


@case("crash")
def torch_legacy_small_storage_backs_huge_tensor(lay):
    return _torch(lay, f.p_tensor("0", 16, 0, (4096, 4096), (4096, 1)), legacy=True)


@case("crash")
def torch_legacy_count_lies(lay):
    return _torch(lay, f.p_tensor("0", 16, 0, (4, 4), (4, 1)), legacy=True, numel=1 << 40)


@case("bomb")
def torch_zero_strides_repeat_one_element(lay):
    c = _torch(lay, f.p_tensor("0", 16, 0, (1 << 14, 1 << 14), (0, 0)), isolate=True)
    c.message = "repeats its storage"
    return c


@case("crash")
def torch_deep_pickle(lay):
    return Case(["analyze", lay.write("m.pt", f.torch_zip(f.deep_pickle(200_000), {}))], 2, "deep", isolate=True)


@case("crash")
def torch_legacy_deep_pickle(lay):
    return Case(["analyze", lay.write("m.pth", f.deep_pickle(200_000))], 2, "deep")


@case("crash")
def torch_billion_laughs(lay):
    return Case(["analyze", lay.write("m.pt", f.torch_zip(f.laughs_pickle(59), {}))], 2, "objects", isolate=True)


@case("crash")
def torch_memo_bomb(lay):
    return Case(["analyze", lay.write("m.pt", f.torch_zip(f.memo_pickle(0xFFFFFFF0), {}))], 2, "memo", isolate=True)


@case("crash")
def fifo_as_model(lay):
    path = os.path.join(lay.model, "m.onnx")
    os.mkfifo(path)
    return Case(["inspect", path], 2, "FIFO")


@case("crash")
def fifo_as_weights(lay):
    path = os.path.join(lay.model, "m.safetensors")
    os.mkfifo(path)
    return Case(["analyze", path], 2, "FIFO")


@case("crash")
def symlink_to_dev_zero(lay):
    path = os.path.join(lay.model, "m.pt")
    os.symlink("/dev/zero", path)
    return Case(["analyze", path], 2, "character device")


@case("crash")
def fifo_as_external_data(lay):
    proto, _ = f.with_external(f.onnx_model(), "w.bin")
    os.mkfifo(os.path.join(lay.model, "w.bin"))
    return Case(["inspect", f.save_onnx(proto, os.path.join(lay.model, "m.onnx"))], 2, "FIFO")


@case("legit")
def string_initializer(lay):
    vocab = h.make_tensor("vocab", T.STRING, [3], [b"a", b"b", b"c"])
    return Case(["inspect", f.save_onnx(f.onnx_model(extra_inits=[vocab]), os.path.join(lay.model, "m.onnx"))], 0)


@case("legit")
def hugging_face_cache_layout(lay):
    """snapshots/<rev>/x -> ../../blobs/<hash>: the repository folder is the model's folder."""
    blob = lay.write("repo/blobs/0123abcd", f.safetensors_of({"a.weight": np.eye(8)}))
    snap = os.path.join(lay.model, "repo", "snapshots", "rev1")
    os.makedirs(snap)
    os.symlink(os.path.relpath(blob, snap), os.path.join(snap, "model.safetensors"))
    return Case(["analyze", snap, "--metrics", "spectral"], 0)


# -- memory bombs -----------------------------------------------------------------------------
@case("bomb")
def npz_member_bomb(lay):
    return Case(["analyze", lay.write("m.npz", f.zeros_member_bomb(128 << 20))], 2, "zip bomb", isolate=True)


@case("bomb")
def torch_zip_storage_bomb(lay):
    import io
    import zipfile

    buf = io.BytesIO()
    numel = 1 << 25  # 128 MiB of float32 zeros, 128 KB deflated
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/data.pkl", f.p_state({"w": f.p_tensor("0", numel, 0, (1 << 12, 1 << 13),
                                                                  (1 << 13, 1))}))
        with z.open("archive/data/0", "w", force_zip64=True) as fh:
            chunk = bytes(1 << 20)
            for _ in range(numel * 4 // len(chunk)):
                fh.write(chunk)
    return Case(["analyze", lay.write("m.pt", buf.getvalue())], 2, "zip bomb", isolate=True)


@case("bomb")
def h5_unwritten_huge_dataset(lay):
    c = _h5(lay, lambda h5py, fh: fh.create_dataset("layers/big/vars/0", shape=(1 << 14, 1 << 14), dtype="f4",
                                                    chunks=(64, 64)))
    c.message, c.isolate = "declares", True
    return c


@case("bomb")
def budget_refuses_declared_tensor(lay):
    data = f.safetensors_of({"a.weight": np.zeros((512, 512))})
    return Case(["analyze", lay.write("m.safetensors", data), "--max-memory", "64K"], 2, "memory budget")


# -- errors that say what happened ------------------------------------------------------------
@case("error")
def safetensors_header_not_an_object(lay):
    return Case(["analyze", lay.write("m.safetensors", f.safetensors_bytes([1, 2, 3]))], 2, "not an object")


@case("error")
def safetensors_header_not_json(lay):
    return Case(["analyze", lay.write("m.safetensors", f.safetensors_bytes(b"{nope"))], 2, "not JSON")


@case("error")
def safetensors_entry_not_an_object(lay):
    return Case(["analyze", lay.write("m.safetensors", f.safetensors_bytes({"a": 3}))], 2, "not an object")


@case("error")
def safetensors_overlapping_tensors(lay):
    header = {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
              "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}}
    return Case(["analyze", lay.write("m.safetensors", f.safetensors_bytes(header, bytes(24)))], 2, "overlap")


@case("error")
def control_characters_in_an_error(lay):
    bad = "evil\n\x1b[2J\x1b]0;pwned\x07"
    proto = f.onnx_model(nodes=[h.make_node("MatMul", ["x", bad], ["m"]), h.make_node("Relu", ["m"], ["y"])])
    return Case(["inspect", f.save_onnx(proto, os.path.join(lay.model, "m.onnx"))], 2, "evil\\n\\x1b[2J",
                absent=("\x1b", "evil\n"))


@case("error")
def control_characters_in_a_table(lay):
    bad = "w\n\x1b[31mred\u2028"
    proto = f.onnx_model(name=bad, node_name="mm\x1b[1m")
    return Case(["inspect", f.save_onnx(proto, os.path.join(lay.model, "m.onnx"))], 0, absent=("\x1b", "w\n"))


# -- lies accepted ----------------------------------------------------------------------------
@case("lie")
def onnx_raw_data_longer_than_dims(lay):
    proto = f.onnx_model()
    proto.graph.initializer[0].raw_data += b"\0" * 8
    return Case(["analyze", f.save_onnx(proto, os.path.join(lay.model, "m.onnx"))], 2, "raw_data")


@case("lie")
def onnx_raw_data_shorter_than_dims(lay):
    proto = f.onnx_model()
    t = proto.graph.initializer[0]
    t.raw_data = t.raw_data[:-4]
    return Case(["analyze", f.save_onnx(proto, os.path.join(lay.model, "m.onnx"))], 2, "raw_data")


@case("lie")
def onnx_large_raw_data_longer_than_dims(lay):
    """A tensor big enough to be memory-mapped lazily, with 4 bytes too many."""
    w = np.zeros((256, 256), np.float32)
    proto = f.onnx_model(256, out_shape=(1, 256))
    t = proto.graph.initializer[0]
    t.raw_data = w.tobytes() + b"\0" * 4
    return Case(["analyze", f.save_onnx(proto, os.path.join(lay.model, "m.onnx"))], 2, "raw_data")


@case("lie")
def onnx_external_length_shorter(lay):
    proto, raw = f.with_external(f.onnx_model(), "w.bin", length=len(f.onnx_model().graph.initializer[0].raw_data) - 4)
    lay.write("w.bin", raw)
    return Case(["analyze", f.save_onnx(proto, os.path.join(lay.model, "m.onnx"))], 2, "external data length")


@case("lie")
def onnx_external_file_too_short(lay):
    proto, raw = f.with_external(f.onnx_model(), "w.bin")
    lay.write("w.bin", raw[:-4])
    return Case(["analyze", f.save_onnx(proto, os.path.join(lay.model, "m.onnx"))], 2, "too short")


@case("lie")
def onnx_typed_values_of_another_count(lay):
    t = h.make_tensor("b", T.FLOAT, [12], np.ones(12, np.float32).tolist())
    del t.float_data[-2:]
    proto = f.onnx_model(nodes=[h.make_node("MatMul", ["x", "w"], ["m"]), h.make_node("Add", ["m", "b"], ["y"])],
                         extra_inits=[t])
    return Case(["analyze", f.save_onnx(proto, os.path.join(lay.model, "m.onnx"))], 2, "float_data")


@case("lie")
def onnx_tensor_without_data(lay):
    t = onnx.TensorProto(name="b", data_type=T.FLOAT, dims=[1 << 40])
    proto = f.onnx_model(extra_inits=[t])
    return Case(["inspect", f.save_onnx(proto, os.path.join(lay.model, "m.onnx"))], 2, "holds no data")


@case("lie")
def safetensors_size_lie(lay):
    header = {"a": {"dtype": "F32", "shape": [1 << 20, 1 << 20], "data_offsets": [0, 64]}}
    return Case(["analyze", lay.write("m.safetensors", f.safetensors_bytes(header, bytes(64)))], 2, "need")


@case("lie")
def npz_member_size_lie(lay):
    data = f.npz({"w": f.npy_bytes((4096, 4096), data=bytes(64))})
    return Case(["analyze", lay.write("m.npz", data)], 2, "need")


@case("lie")
def shard_index_names_a_tensor_its_shard_lacks(lay):
    lay.write("s1.safetensors", f.safetensors_of({"a.weight": np.eye(8)}))
    index = {"weight_map": {"a.weight": "s1.safetensors", "b.weight": "s1.safetensors"}}
    lay.write("model.safetensors.index.json", json.dumps(index).encode())
    return Case(["analyze", lay.model], 2, "does not hold it")


# -- found by the held-out sweep (/tmp/h): one case per class fixed -------------------------------
@case("outside")
def onnx_external_data_hard_link(lay):
    """A hard link passes every path check, yet can be any file of the same file system."""
    proto, raw = f.with_external(f.onnx_model(), "w.bin")
    os.link(lay.write("w.bin", raw, outside=True), os.path.join(lay.model, "w.bin"))
    return Case(["analyze", f.save_onnx(proto, os.path.join(lay.model, "m.onnx"))], 2, "hard links")


@case("outside")
def onnx_sparse_initializer_external_outside(lay):
    """Sparse tensors' values were never checked (nor analysed): their external data is checked too."""
    proto = f.onnx_model()
    values = nh.from_array(np.ones(3, np.float32), "s")
    proto.graph.sparse_initializer.append(h.make_sparse_tensor(values, nh.from_array(np.arange(3), ""), [12, 12]))
    t = proto.graph.sparse_initializer[0].values
    t.ClearField("raw_data")
    t.data_location = T.EXTERNAL
    for k, v in (("location", "../outside/secret.txt"), ("offset", "0")):
        e = t.external_data.add()
        e.key, e.value = k, v
    return Case(["analyze", f.save_onnx(proto, os.path.join(lay.model, "m.onnx"))], 2, "outside the model's folder")


@case("lie")
def onnx_sparse_index_past_the_end(lay):
    proto = f.onnx_model()
    values = nh.from_array(np.ones(3, np.float32), "s")
    indices = nh.from_array(np.array([0, 143, 10**12], np.int64), "")
    proto.graph.sparse_initializer.append(h.make_sparse_tensor(values, indices, [12, 12]))
    return Case(["analyze", f.save_onnx(proto, os.path.join(lay.model, "m.onnx"))], 2, "index outside")


@case("crash")
def onnx_zero_dim_times_int64_max(lay):
    """0 x (2^63 - 1) elements is 0 bytes, but numpy cannot make the array ("array is too big")."""
    proto = f.onnx_model(extra_inits=[onnx.TensorProto(name="z", data_type=T.FLOAT, dims=[0, (1 << 63) - 1])])
    return Case(["analyze", f.save_onnx(proto, os.path.join(lay.model, "m.onnx"))], 2, "overflows 64 bits")


@case("crash")
def safetensors_zero_dim_times_huge(lay):
    header = {"a.weight": {"dtype": "F32", "shape": [0, 1 << 62, 4], "data_offsets": [0, 0]}}
    return Case(["analyze", lay.write("m.safetensors", f.safetensors_bytes(header)), "--no-limits"], 2,
                "overflows 64 bits")


@case("crash")
def npz_too_many_dims(lay):
    return Case(["analyze", lay.write("m.npz", f.npz({"w": f.npy_bytes((1,) * 40, data=bytes(4))}))], 2,
                "dimensions")


@case("lie")
def onnx_two_initializers_of_one_name(lay):
    proto = f.onnx_model(extra_inits=[nh.from_array(np.ones((3, 3), np.float32), "w")])
    return Case(["analyze", f.save_onnx(proto, os.path.join(lay.model, "m.onnx"))], 2, "two initializers")


@case("lie")
def onnx_node_output_overwrites_an_input(lay):
    proto = f.onnx_model(nodes=[h.make_node("MatMul", ["x", "w"], ["x2"]), h.make_node("Relu", ["x2"], ["w"]),
                                h.make_node("Identity", ["w"], ["y"])])
    return Case(["analyze", f.save_onnx(proto, os.path.join(lay.model, "m.onnx"))], 2, "both a graph input")


def _corrupt_after(data: bytes, marker: bytes, start: int, stop: int) -> bytes:
    """`data` with the bytes [start, stop) after `marker` flipped."""
    out = bytearray(data)
    at = out.find(marker) + len(marker)
    for k in range(at + start, at + stop):
        out[k] ^= 0xFF
    return bytes(out)


_MATRIX = f.RNG.standard_normal((32, 32)).astype(np.float32)


@case("crash")
def npz_member_corrupt_when_read(lay):
    """The header reads fine; the member's bytes fail their CRC only when the layer loads them."""
    data = f.npz({"w": f.npy_bytes((32, 32), data=_MATRIX.tobytes())})
    return Case(["analyze", lay.write("m.npz", _corrupt_after(data, b"w.npy", 300, 304))], 2,
                "not a readable npz archive")


@case("crash")
def torch_zip_storage_corrupt_when_read(lay):
    state = f.p_state({"w": f.p_tensor("0", 1024, 0, (32, 32), (32, 1))})
    data = f.torch_zip(state, {"0": _MATRIX.tobytes()}, compress=True)
    return Case(["analyze", lay.write("m.pt", _corrupt_after(data, b"archive/data/0", 40, 120))], 2,
                "not a readable PyTorch checkpoint")


@case("crash")
def h5_dataset_with_an_unknown_filter(lay):
    """h5py fails only when the dataset's bytes are read (no such filter plugin). The data must
    compress: HDF5 stores a chunk that does not unfiltered."""
    h5py = pytest.importorskip("h5py")
    path = os.path.join(lay.model, "m.weights.h5")
    with h5py.File(path, "w") as fh:
        fh.create_dataset("layers/dense/vars/0", data=np.ones((32, 32), np.float32), compression="lzf")
    with open(path, "rb") as fh:
        data = fh.read()
    with open(path, "wb") as fh:  # filter id 32000 (lzf) -> 32123, which no plugin provides
        fh.write(data.replace((32000).to_bytes(2, "little"), (32123).to_bytes(2, "little")))
    return Case(["analyze", path], 2, "cannot read the file")


def _declared_parameters_case(text: str):
    """The `irtools.parameters` metadata holding what is not a list of names (deep nesting was a
    RecursionError)."""
    def build(lay):
        proto = f.onnx_model()
        entry = proto.metadata_props.add()
        entry.key, entry.value = "irtools.parameters", text
        return Case(["analyze", f.save_onnx(proto, os.path.join(lay.model, "m.onnx"))], 2,
                    "not a JSON list of parameter names")

    return build


for _label, _text in (("nested", "[" * 100_000), ("dict", '{"w": 1}'), ("numbers", '["w", 3]')):
    CASES[f"declared_parameters_{_label}"] = ("lie", _declared_parameters_case(_text))


@case("error")
def torch_persistent_id_that_is_not_a_storage(lay):
    """The message must not read like the CLI's catch-all for bugs ("unexpected ...")."""
    return Case(["analyze", lay.write("m.pt", f.torch_zip(b"\x80\x02Pstorage\n.", {}))], 2, "not a storage")


def _surrogate_name_case(*extra: str, output: str | None = None):
    def build(lay):
        header = b'{"a\\ud800.weight": {"dtype": "F32", "shape": [8, 8], "data_offsets": [0, 256]}}'
        path = lay.write("m.safetensors", f.safetensors_bytes(header, np.eye(8, dtype=np.float32).tobytes()))
        out = [] if output is None else ["-o", os.path.join(lay.root, output)]
        return Case([*extra[:1], path, *extra[1:], *out], 0)

    return build


# A JSON "\ud800" escape is a lone surrogate in Python: no UTF-8 file (CSV, HTML) could hold the name.
CASES["surrogate_name_csv"] = ("crash", _surrogate_name_case("analyze", "--format", "csv", output="out.csv"))
CASES["surrogate_name_report"] = ("crash", _surrogate_name_case("report", output="out.html"))


@case("error")
def onnx_names_that_are_not_utf8(lay):
    """proto2 strings are not checked by the parser: such names came back as bytes, and onnx-ir
    failed with 'Error calling _deserialize_graph with: g'."""
    data = f.onnx_model(name="wQQQ").SerializeToString().replace(b"wQQQ", b"w\xff\xfeQ")
    return Case(["inspect", f.save_onnx_bytes(data, os.path.join(lay.model, "m.onnx"))], 2, "is not UTF-8 text")


@case("legit")
def onnx_external_data_symlink_inside_convert(lay):
    """A data file that is a symlink to another file of the model's folder is fine; `convert`'s reference
    run re-read the file with onnx.load, which refuses every symlink (an 'unexpected ValidationError')."""
    proto, raw = f.with_external(f.onnx_model(), "w.bin")
    lay.write("data/real.bin", raw)
    os.symlink(os.path.join("data", "real.bin"), os.path.join(lay.model, "w.bin"))
    model = f.save_onnx(proto, os.path.join(lay.model, "m.onnx"))
    return Case(["convert", model, "-o", os.path.join(lay.root, "out.onnx")], 0)
