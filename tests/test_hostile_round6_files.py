"""Hostile inputs, round 6: weight files and ONNX files as memory bombs and hangs, attacked as classes.

- a pickle's cost is bounded by its bytes before it is run: a memo slot past the writes before it (the C
  unpickler sizes its memo table by the largest slot), dict keys or set members whose hash the file
  chooses (ints of 61 bits or more, tuples: equal hashes make the dict quadratic), and the scan itself
  holds a pointer per stack slot;
- a safetensors header is read as safetensors reads it, or refused: duplicate keys, a `__metadata__`
  that is not an object of strings;
- DeepSpeed records of the wrong Python types are one line naming the file and the field;
- ONNX files: external data that is no regular file of the model's folder, nesting and counts past
  the caps, are one line, never a hang.
Every case: one `IrtoolsError` line through the public entry, no traceback, bounded time.
"""

from __future__ import annotations

import io
import pickle
import tracemalloc

import numpy as np
import pytest
from irtools.frontends.weights_file import read_weights

from irtools.errors import IrtoolsError
from tests.fuzz import formats as f
from tests.fuzz import harness

P61 = (1 << 61) - 1  # Python hashes an int modulo this prime: its multiples all hash to 0


def _cli_one_line(path, *extra, message=None, timeout=60):
    outcome = harness.run_subprocess(["analyze", str(path), *extra], timeout=timeout)
    folder = str(path.parent)
    harness.check(outcome, folder, harness.snapshot(folder), expect=2, message=message)
    return outcome


def _weights(path, data: bytes):
    path.write_bytes(data)
    return str(path)


# -- pickles: memo, hashes, the scan's own memory ------------------------------------------------------------
@pytest.mark.timeout(60)
def test_a_memo_slot_past_the_writes_before_it_is_refused_before_allocating(tmp_path):
    """One LONG_BINPUT of slot 9,999,999 (under the old cap of 10^7) made the C unpickler allocate
    a memo table of 2 x 10^7 pointers (160 MB) for a 250-byte file."""
    from irtools.frontends.formats.unpickler import unpickle

    tracemalloc.start()
    try:
        with pytest.raises(pickle.UnpicklingError, match="memo slot 9999999 is out of range"):
            unpickle(io.BytesIO(f.memo_pickle(9_999_999)), "m.pt")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, peak
    # slots written in order (what every pickler writes) are read as before
    assert unpickle(io.BytesIO(pickle.dumps([[1], [2], {"a": [3]}], protocol=2)), "m.pt") == [[1], [2], {"a": [3]}]
    _weights(tmp_path / "m.pt", f.torch_zip(f.memo_pickle(9_999_999), {}))
    _cli_one_line(tmp_path / "m.pt", message="memo slot 9999999 is out of range")


def _colliding_dict(n: int, key=lambda i: f.p_int(P61 * (i + 1))) -> bytes:
    return b"\x80\x02}(" + b"".join(key(i) + b"K\x01" for i in range(n)) + b"u."


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["big int keys", "tuple keys", "set of big ints", "frozenset opcode",
                                 "OrderedDict of pairs", "DICT opcode"])
def test_keys_of_a_chosen_hash_are_refused_before_the_dict_is_built(tmp_path, how):
    """60,000 int keys that are multiples of 2^61 - 1 (all of hash 0) took 22 s to unpickle (quadratic);
    a million is hours for an 11 MB file. Whatever builds the dict or set, it is refused first."""
    n = 20_000
    big = b"".join(f.p_int(P61 * (i + 1)) for i in range(n))
    pickles = {
        "big int keys": _colliding_dict(n),
        "tuple keys": _colliding_dict(n, lambda i: f.p_tuple(f.p_int(i), f.p_int(i))),
        "set of big ints": b"\x80\x02c__builtin__\nset\n(" + big + b"l\x85R.",
        "frozenset opcode": b"\x80\x04(" + big + b"\x91.",
        "OrderedDict of pairs": b"\x80\x02ccollections\nOrderedDict\n(" +
                                b"".join(f.p_tuple(f.p_int(P61 * (i + 1)), b"K\x01") for i in range(n)) + b"l\x85R.",
        "DICT opcode": b"\x80\x02(" + b"".join(f.p_int(P61 * (i + 1)) + b"K\x01" for i in range(n)) + b"d.",
    }
    path = _weights(tmp_path / "m.pt", f.torch_zip(pickles[how], {}))
    with pytest.raises(IrtoolsError, match=r"(keys|builds a (set|dict) of) more than 10000") as err:
        read_weights(path)
    assert "\n" not in str(err.value)


@pytest.mark.timeout(60)
def test_many_keys_of_strings_and_small_ints_are_read():
    """The rule counts only keys of a chosen hash: a state dict's names and an optimizer's int ids pass."""
    from irtools.frontends.formats.unpickler import unpickle

    data = {**{f"layer{i}.weight": i for i in range(30_000)}, **{i: {"step": i} for i in range(30_000)}}
    assert unpickle(io.BytesIO(pickle.dumps(data, protocol=2)), "m.pt") == data
    assert unpickle(io.BytesIO(pickle.dumps({(1, 2): 3, P61: 4, frozenset({5}): {6, P61}}, protocol=4)), "m.pt") \
        == {(1, 2): 3, P61: 4, frozenset({5}): {6, P61}}


@pytest.mark.timeout(60)
def test_the_scan_holds_a_pointer_per_stack_slot():
    """1,000,000 ints under one MARK: the scan made a list per leaf (~72 bytes each; a 30 MB pickle
    took 1.4 GB), now one shared item (8 bytes a slot)."""
    from irtools.frontends.formats.unpickler import scan_pickle

    n = 1_000_000
    data = b"\x80\x02(" + b"K\x01" * n + b"l."
    tracemalloc.start()
    try:
        scan_pickle(io.BytesIO(data), "m.pt")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 24 * n, peak  # the pointers (8 n) and the list's growth, not 72 n
    # the counts still see through shared items: a billion laughs is refused as before
    with pytest.raises(pickle.UnpicklingError, match="more than 20000000 objects"):
        scan_pickle(io.BytesIO(f.laughs_pickle(40)), "m.pt")


# -- safetensors headers: read as safetensors reads them, or refused ------------------------------------------
F32 = np.arange(16, dtype=np.float32)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("header, says", [
    # json kept the last 'w' (bytes 64..128) and analysed it; safetensors refuses the file
    ((b'{"w": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 64]}, '
      b'"w": {"dtype": "F32", "shape": [4, 4], "data_offsets": [64, 128]}}'), "names 'w' twice"),
    (b'{"w": {"dtype": "F32", "dtype": "F16", "shape": [4, 4], "data_offsets": [0, 64]}}', "names 'dtype' twice"),
    (b'{"w": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 64], "data_offsets": [64, 128]}}',
     "names 'data_offsets' twice"),
    (b'{"__metadata__": [1, 2], "w": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 64]}}',
     "__metadata__ is not an object of strings"),
    (b'{"__metadata__": {"format": 5}, "w": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 64]}}',
     "__metadata__ is not an object of strings"),
])
def test_a_safetensors_header_that_says_two_things_is_refused(tmp_path, header, says):
    path = tmp_path / "m.safetensors"
    path.write_bytes(f.safetensors_bytes(header, F32.tobytes() + (-F32).tobytes()))
    st = pytest.importorskip("safetensors.numpy")
    with pytest.raises(Exception, match="."):  # the format's own reader refuses each too
        st.load_file(str(path))
    with pytest.raises(IrtoolsError, match=says):
        read_weights(str(path))
    _cli_one_line(path, message=says)


def test_a_safetensors_header_with_string_metadata_is_read(tmp_path):
    path = tmp_path / "m.safetensors"
    path.write_bytes(f.safetensors_bytes({"__metadata__": {"format": "pt"}, "w": {
        "dtype": "F32", "shape": [4, 4], "data_offsets": [0, 64]}}, F32.tobytes()))
    np.testing.assert_array_equal(read_weights(str(path))["w"].load(), F32.reshape(4, 4))


@pytest.mark.timeout(60)
def test_a_header_of_many_empty_tensors_is_budgeted_before_it_is_parsed(tmp_path):
    """10^6 empty tensors (a 67 MB header, each entry valid) took 30 s and 1.5 GB; 200,000 of them
    under --max-memory 256M: one line, before the JSON is parsed (the child's peak RSS stays small)."""
    n = 200_000
    header = {f"t{i}": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]} for i in range(n)}
    header["w"] = {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 64]}
    path = tmp_path / "m.safetensors"
    path.write_bytes(f.safetensors_bytes(header, F32.tobytes()))
    outcome = _cli_one_line(path, "--max-memory", "256M", message="tensor records would need")
    assert outcome.maxrss < 300 << 20, outcome.maxrss


# -- DeepSpeed records of the wrong Python types ----------------------------------------------------------------
from tests.test_deepspeed import _model, _write, deepspeed_classes  # noqa: F401  (the fixture)

DEEPSPEED = {  # field set to a value of the wrong type: words of its one line (was Python's own message)
    "buffer_names": (5, "'mp_rank_00_model_states.pt': buffer_names is an int, not a list of names"),
    "module": ([1], "'mp_rank_00_model_states.pt': module is a list, not a dict of tensors"),  # was: buffers dropped
    "frozen_param_shapes": ([1, 2], "'mp_rank_00_model_states.pt': frozen_param_shapes is a list, not a dict"),
    "frozen_param_fragments": ([1], "'mp_rank_00_model_states.pt': frozen_param_fragments is a list, not a dict"),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("field", sorted(DEEPSPEED))
@pytest.mark.parametrize("trust", [False, True])
def test_deepspeed_fields_of_the_wrong_type_name_the_file_and_the_field(tmp_path, deepspeed_classes, field,  # noqa: F811
                                                                        trust):
    torch = pytest.importorskip("torch")
    top, _ = _write(tmp_path, _model(), 2, 2, deepspeed_classes)
    target = top / "global_step7" / "mp_rank_00_model_states.pt"
    value, says = DEEPSPEED[field]
    state = torch.load(target, weights_only=False)
    state[field] = value
    torch.save(state, target)
    with pytest.raises(IrtoolsError) as err:
        read_weights(str(top), trust=trust)
    assert says in str(err.value) and "\n" not in str(err.value), err.value


@pytest.mark.timeout(60)
def test_deepspeed_partition_counts_that_are_not_ints_are_one_line(tmp_path, deepspeed_classes):  # noqa: F811
    torch = pytest.importorskip("torch")
    top, _ = _write(tmp_path, _model(), 2, 2, deepspeed_classes)
    for f_ in sorted((top / "global_step7").glob("*_optim_states.pt")):
        state = torch.load(f_, weights_only=False)
        state["optimizer_state_dict"]["partition_count"] = [2, "two"]  # max() raised "'>' not supported"
        torch.save(state, f_)
    with pytest.raises(IrtoolsError, match=r"partition_count \[2, 'two'\]: irtools reads ZeRO stages 1-3"):
        read_weights(str(top))


# -- ONNX: nodes counted in the bytes, before the parse ---------------------------------------------------------
def _varint(n: int) -> bytes:
    from irtools.ir.wire import _encode_varint

    return _encode_varint(n)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


EMPTY_NODES = _field(1, b"") * 1_000_000  # GraphProto.node, a million empty NodeProtos (2 bytes each)


def _onnx_with(extra: bytes) -> bytes:
    """The small valid model of `formats.onnx_model` with `extra` bytes of ModelProto fields after it
    (protobuf merges a message field given twice)."""
    return f.onnx_model().SerializeToString() + extra


def _if_node(branch: bytes) -> bytes:
    attribute = _field(1, b"then_branch") + _field(6, branch) + b"\xa0\x01\x05"  # name, g, type GRAPH
    return _field(4, b"If") + _field(5, attribute)


HIDDEN_NODES = {  # where a million nodes hide from a count of the main graph's own fields
    "a second graph field": _field(7, EMPTY_NODES),
    "an If branch": _field(7, _field(1, _if_node(EMPTY_NODES))),
    "a local function": _field(25, _field(1, b"f") + _field(7, b"") * 1_000_000),  # FunctionProto.node is 7
    "behind an unknown group field": b"\x9b\x06" + _field(1, b"x") + b"\x9c\x06" + _field(7, EMPTY_NODES),
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("where", sorted(HIDDEN_NODES))
def test_a_million_nodes_anywhere_in_the_file_are_refused_before_the_parse(tmp_path, where):
    """Split over two `graph` fields (merged by protobuf) the million nodes skipped the pre-parse count
    and were parsed first (150 MB for a 2 MB file); in an If branch or a function likewise."""
    path = tmp_path / "m.onnx"
    path.write_bytes(_onnx_with(HIDDEN_NODES[where]))
    onnx = pytest.importorskip("onnx")
    model = onnx.ModelProto()
    model.ParseFromString(path.read_bytes())  # the bytes are a valid protobuf holding the nodes
    assert sum(len(g.node) for g in [model.graph] + [a.g for n in model.graph.node for a in n.attribute]) + \
        sum(len(fn.node) for fn in model.functions) >= 1_000_000
    del model
    outcome = _cli_one_line(path, message="more nodes than the cap of 131,072")
    assert outcome.maxrss < 200 << 20, outcome.maxrss >> 20


@pytest.mark.timeout(60)
def test_nodes_in_an_if_branch_under_the_scan_limit_get_their_exact_count(tmp_path):
    """Between the cap and the scan's limit the model is parsed and refused with its exact count."""
    import irtools

    n = 140_000
    path = tmp_path / "m.onnx"
    path.write_bytes(_onnx_with(_field(7, _field(1, _if_node(_field(1, b"") * n)))))
    with pytest.raises(IrtoolsError, match=f"the model's graph has {n + 4:,} nodes, over the cap of 131,072"):
        irtools.load(str(path))


# -- ONNX external data that is no regular file of the model's folder -------------------------------------------
@pytest.mark.timeout(60)
@pytest.mark.parametrize("location, make, says", [
    ("/dev/zero", None, "outside the model's folder"),
    ("../outside.bin", None, "outside the model's folder"),
    ("fifo", lambda d: __import__("os").mkfifo(d / "fifo"), "is a FIFO, not a regular file"),
    ("zero", lambda d: (d / "zero").symlink_to("/dev/zero"), "resolves to '/dev/zero', outside"),
    ("link", lambda d: (d / "link").symlink_to(d.parent / "outside.bin"), "outside the model's folder"),
    ("data.bin", lambda d: (d / "data.bin").write_bytes(bytes(100)), "is too short for tensor 'w'"),
])
def test_external_data_that_is_no_regular_file_of_the_folder_is_one_line_never_a_hang(tmp_path, location, make,
                                                                                       says):
    folder = tmp_path / "model"
    folder.mkdir()
    (tmp_path / "outside.bin").write_bytes(bytes(1 << 12))
    if make is not None:
        make(folder)
    proto, _ = f.with_external(f.onnx_model(), location)
    f.save_onnx(proto, str(folder / "m.onnx"))
    _cli_one_line(folder / "m.onnx", message=says)


# -- zip archives (torch, npz): the entries as a whole ----------------------------------------------------------
def _overlapping_zip(names: list[str], prefix, tail: bytes) -> bytes:
    """A stored zip whose entry i holds `prefix(n)` then entry i+1 whole (its local header and its
    bytes): each entry is valid alone (its own header, size and CRC), together they repeat the file's
    bytes once per entry (the overlapping-entries zip bomb)."""
    import struct
    import zlib

    def local(name, data):
        return struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 0, 0, 0, zlib.crc32(data), len(data), len(data),
                           len(name), 0) + name.encode()

    datas, heads, rest = [], [], tail
    for name in reversed(names):
        head = prefix(len(rest))
        data = head + rest
        datas.insert(0, data)
        heads.insert(0, head)
        rest = local(name, data) + data
    body, offsets, pos = rest, [], 0
    for name, data, head in zip(names, datas, heads, strict=True):  # entry i+1 starts after i's header and prefix
        offsets.append(pos)
        pos += len(local(name, data)) + len(head)
    central = b"".join(struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 0, 0, 0, zlib.crc32(d), len(d), len(d),
                                   len(n), 0, 0, 0, 0, 0, o) + n.encode() for n, d, o in zip(names, datas, offsets,
                                                                                            strict=True))
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(names), len(names), len(central), len(body), 0)
    return body + central + end


def _npy_prefix(n: int) -> bytes:
    return f.npy_bytes((1, n), "|u1", data=b"")


@pytest.mark.timeout(60)
def test_zip_entries_whose_bytes_overlap_are_refused(tmp_path):
    import zipfile

    names = [f"m{i}.npy" for i in range(32)]
    data = _overlapping_zip(names, _npy_prefix, bytes(1 << 16))
    path = tmp_path / "m.npz"
    path.write_bytes(data)
    with zipfile.ZipFile(path) as z:  # each entry reads alone, its CRC right: they hold the file 32 times over
        assert sum(len(z.read(n)) for n in names) > 16 * len(data)
    with pytest.raises(IrtoolsError, match="entries that overlap: refused as a zip bomb"):
        read_weights(str(path))
    torch_path = tmp_path / "m.pt"  # the same for a torch zip's storages
    torch_path.write_bytes(_overlapping_zip(["archive/data.pkl", *[f"archive/data/{i}" for i in range(16)]],
                                            lambda n: b"", bytes(1 << 16)))
    _cli_one_line(torch_path, message="entries that overlap")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("suffix", [".npz", ".pt"])
def test_many_entries_each_under_the_free_amount_are_a_bomb_together(tmp_path, suffix):
    """64 entries of 16 MiB of zeros each pass the per-entry check (16 MiB inflate freely); ~1 MB of
    file declares 1 GiB in all."""
    import zipfile

    path = tmp_path / f"m{suffix}"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        if suffix == ".pt":
            z.writestr("archive/data.pkl", f.p_state({"w": f.p_tensor("0", 16, 0, (4, 4), (4, 1))}))
        for k in range(64):
            z.writestr(f"archive/data/{k}" if suffix == ".pt" else f"m{k}.npy",
                       f.npy_bytes((4096, 1024), data=bytes(16 << 20)) if suffix == ".npz" else bytes(16 << 20))
    _cli_one_line(path, message="in all (over 256x: refused as a zip bomb)")


def _entries(what: str, n: int) -> bytes:
    if what == "value infos":
        return _field(7, b"".join(_field(13, _field(1, b"v%d" % i)) for i in range(n)))
    if what == "metadata pairs":
        return b"".join(_field(14, _field(1, b"k%d" % i) + _field(2, b"v")) for i in range(n))
    if what == "node inputs":  # one Identity node of 2 * 10^6 inputs
        return _field(7, _field(1, _field(4, b"Identity") + _field(2, b"o") + _field(1, b"x") * (2 * n)))
    attribute = _field(1, b"a") + b"\xa0\x01\x08" + _field(9, b"") * (2 * n)  # STRINGS, 2 * 10^6 of them
    return _field(7, _field(1, _field(4, b"Identity") + _field(1, b"x") + _field(2, b"o2") + _field(5, attribute)))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("what", ["value infos", "metadata pairs", "node inputs", "attribute strings"])
def test_a_million_small_entries_are_budgeted_before_the_parse(tmp_path, what):
    """10^6 value infos (10 MB) took 700 MB to parse and load, 2 * 10^6 inputs of one node (5 MB) 800 MB,
    2 * 10^6 strings of one attribute (3 MB) 480 MB; under --max-memory 256M: one line, unparsed."""
    entries = _entries(what, 1_000_000)
    path = tmp_path / "m.onnx"
    path.write_bytes(_onnx_with(entries))
    outcome = _cli_one_line(path, "--max-memory", "256M", message="entries (nodes, initializers, value infos")
    assert outcome.maxrss < 200 << 20, outcome.maxrss >> 20


@pytest.mark.timeout(60)
def test_deepspeed_latest_symlinked_out_of_the_folder_is_never_opened(tmp_path, deepspeed_classes):  # noqa: F811
    """`latest` -> /etc/passwd was opened and read (256 bytes) for its tag; it is no regular file of the folder."""
    top, _ = _write(tmp_path, _model(), 2, 1, deepspeed_classes)
    (top / "latest").unlink()
    (top / "latest").symlink_to("/etc/passwd")
    before = harness.snapshot(str(top))
    outcome = harness.run_in_process(["analyze", str(top), "--min-evals", "1"])
    assert "/etc/passwd" not in outcome.opened
    harness.check(outcome, str(top), before, expect=2)


@pytest.mark.timeout(60)
def test_a_deepspeed_tag_folder_symlinked_out_of_the_folder_is_not_read(tmp_path, deepspeed_classes):  # noqa: F811
    """`latest` names global_step7, a symlink to another checkpoint's folder: its files were read as this one's."""
    elsewhere, _ = _write(tmp_path / "elsewhere", _model(), 2, 1, deepspeed_classes)
    top = tmp_path / "model"
    top.mkdir()
    (top / "latest").write_text("global_step7\n")
    (top / "global_step7").symlink_to(elsewhere / "global_step7")
    outcome = harness.run_in_process(["analyze", str(top), "--min-evals", "1"])
    assert not any(p.startswith(str(elsewhere)) for p in outcome.opened), outcome.opened
    harness.check(outcome, str(top), harness.snapshot(str(top)), expect=2)


# -- ONNX lengths and dims past what the file holds -------------------------------------------------------------
@pytest.mark.timeout(60)
@pytest.mark.parametrize("case, says", [
    ("graph claiming 3 GB", "not an ONNX model"),
    ("dims overflowing, inline", "declares 21267647932558653966460912964485513216 elements but holds no data"),
    ("dims overflowing, lazily mapped", "has raw_data bytes: 262144 but its dims and type need"),
    ("raw_data shorter than the dims", "has raw_data bytes: 262140 but its dims and type need 262144"),
])
def test_onnx_lengths_past_the_file_are_one_line(tmp_path, case, says):
    onnx = pytest.importorskip("onnx")
    path = tmp_path / "m.onnx"
    if case == "graph claiming 3 GB":
        data = _onnx_with(_varint(7 << 3 | 2) + _varint(3 << 30) + b"\x0a\x00" * 1000)
    else:
        if case == "dims overflowing, inline":
            t = onnx.TensorProto(name="big", data_type=onnx.TensorProto.FLOAT, dims=[1 << 62, 1 << 62])
        else:  # over LAZY_MIN_BYTES: the bytes are left in the file and mapped, the dims checked against them
            raw = bytes(262144 - 4 * (case == "raw_data shorter than the dims"))
            t = onnx.TensorProto(name="big", data_type=onnx.TensorProto.FLOAT,
                                 dims=[1 << 40, 1 << 40] if "overflowing" in case else [256, 256], raw_data=raw)
        data = f.onnx_model(extra_inits=[t]).SerializeToString()
    path.write_bytes(data)
    _cli_one_line(path, message=says)


# -- npz and HDF5 ------------------------------------------------------------------------------------------------
@pytest.mark.timeout(60)
@pytest.mark.parametrize("trust", [False, True])
def test_an_npz_object_array_is_refused_even_with_trust(tmp_path, trust):
    """An object array is a pickle inside the .npy: never unpickled (numpy's allow_pickle stays off)."""
    buf = io.BytesIO()
    np.save(buf, np.array([1, "x"], dtype=object), allow_pickle=True)
    path = tmp_path / "m.npz"
    path.write_bytes(f.npz({"w": f.npy_bytes((4, 4)), "evil": buf.getvalue()}))
    _cli_one_line(path, *(["--trust"] if trust else []), message="npz member 'evil' holds Python objects")


@pytest.mark.timeout(60)
def test_hdf5_link_cycles_are_walked_once_and_huge_datasets_refused(tmp_path):
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "m.weights.h5"
    w = np.arange(64, dtype=np.float32).reshape(8, 8)
    with h5py.File(path, "w") as fh:
        fh.create_dataset("layers/dense/vars/0", data=w)
        fh["layers/dense/loop"] = fh["layers"]  # a hard link cycle
        fh["layers/soft"] = h5py.SoftLink("/layers/soft")  # a soft link to itself
        fh["layers/up"] = h5py.SoftLink("/layers")
    tensors = read_weights(str(path))
    assert list(tensors) == ["layers/dense/vars/0"]
    np.testing.assert_array_equal(tensors["layers/dense/vars/0"].load(), w)
    big = tmp_path / "big" / "m.weights.h5"
    big.parent.mkdir()
    with h5py.File(big, "w") as fh:  # 4 TiB declared, nothing written
        fh.create_dataset("layers/big/vars/0", shape=(1 << 20, 1 << 20), dtype="f4", chunks=(64, 64),
                          compression="gzip")
    _cli_one_line(big, message="dataset 'layers/big/vars/0'")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("offsets, data, says", [
    ([[0, 64], [128, 192]], 192, "64 bytes between tensors 'a' and 'b' belong to no tensor"),
    ([[64, 128], [128, 192]], 192, "64 bytes of the data before the tensors belong to no tensor"),
    ([[0, 64], [64, 128]], 192, "64 bytes of the data after the tensors belong to no tensor"),
])
def test_safetensors_bytes_no_tensor_holds_are_refused_as_safetensors_refuses_them(tmp_path, offsets, data, says):
    """The format allows no holes (a file that is also another format, a polyglot): safetensors refuses them."""
    header = {name: {"dtype": "F32", "shape": [4, 4], "data_offsets": o} for name, o in zip("ab", offsets, strict=True)}
    path = tmp_path / "m.safetensors"
    path.write_bytes(f.safetensors_bytes(header, bytes(data)))
    st = pytest.importorskip("safetensors.numpy")
    with pytest.raises(Exception, match="."):
        st.load_file(str(path))
    _cli_one_line(path, message=says)


def _external_model(folder, uses: list[tuple[int, int]], n: int = 512):
    """MatMuls over weights w0, w1, ... of n x n float32, each read from data.bin at its (offset, length)."""
    onnx = pytest.importorskip("onnx")
    from onnx import helper as oh

    inits, nodes, prev = [], [], "x"
    for i, (offset, length) in enumerate(uses):
        t = onnx.TensorProto(name=f"w{i}", data_type=onnx.TensorProto.FLOAT, dims=[n, n])
        t.data_location = onnx.TensorProto.EXTERNAL
        for k, v in (("location", "data.bin"), ("offset", str(offset)), ("length", str(length))):
            e = t.external_data.add()
            e.key, e.value = k, v
        inits.append(t)
        nodes.append(oh.make_node("MatMul", [prev, f"w{i}"], [f"y{i}"]))
        prev = f"y{i}"
    g = oh.make_graph(nodes, "g", [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, n])],
                      [oh.make_tensor_value_info(prev, onnx.TensorProto.FLOAT, [1, n])], inits)
    m = oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)])
    m.ir_version = 8
    (folder / "data.bin").write_bytes(np.random.default_rng(0).standard_normal(2 * n * n).astype(np.float32))
    return f.save_onnx(m, str(folder / "m.onnx"))


@pytest.mark.timeout(60)
def test_external_data_regions_read_many_times_over_are_refused(tmp_path):
    import irtools

    size = 512 * 512 * 4
    for sub, uses, says in (
        ("overlap", [(0, size), (4096, size)], "tensors 'w0' and 'w1' overlap in their external data file"),
        ("repeated", [(0, size)] * 24, "read 25165824 bytes from 1048576 bytes of external data"),
    ):
        folder = tmp_path / sub
        folder.mkdir()
        with pytest.raises(IrtoolsError, match=says):
            irtools.load(_external_model(folder, uses))
    folder = tmp_path / "tied"  # one region named twice (a tied weight), and regions side by side: read
    folder.mkdir()
    model = irtools.load(_external_model(folder, [(0, size), (0, size), (size, size)]))
    assert model is not None


@pytest.mark.timeout(60)
def test_one_storage_viewed_as_many_tensors_is_refused(tmp_path):
    """Each view lies inside its storage and within the per-tensor repeat limit; 64 views of one 1 MiB
    storage are 64 MiB of weights to analyse from 1 MiB of file (10^5 of them: 100 GiB)."""
    n = 512 * 512
    storage = np.random.default_rng(0).standard_normal(n).astype(np.float32).tobytes()
    many = f.p_state({f"l{i}.weight": f.p_tensor("0", n, 0, (512, 512), (512, 1)) for i in range(64)})
    path = tmp_path / "m.pt"
    path.write_bytes(f.torch_zip(many, {"0": storage}))
    with pytest.raises(IrtoolsError, match=r"64 tensors view 67108864 bytes of 1048576 bytes of storages"):
        read_weights(str(path))
    tied = f.p_state({"emb.weight": f.p_tensor("0", n, 0, (512, 512), (512, 1)),
                      "head.weight": f.p_tensor("0", n, 0, (512, 512), (512, 1)),
                      "q.weight": f.p_tensor("0", n, 0, (256, 512), (512, 1)),
                      "k.weight": f.p_tensor("0", n, 256 * 512, (256, 512), (512, 1))})
    path.write_bytes(f.torch_zip(tied, {"0": storage}))
    got = read_weights(str(path))  # tied weights and a fused parameter's parts: read
    want = np.frombuffer(storage, np.float32).reshape(512, 512)
    np.testing.assert_array_equal(got["head.weight"].load(), want)
    np.testing.assert_array_equal(got["k.weight"].load(), want[256:])


@pytest.mark.timeout(60)
def test_a_tensor_splitting_into_absurdly_many_matrices_is_skipped_with_its_reason(tmp_path):
    """2 * 10^6 experts of 1x1 (an 8 MB file) made 2 * 10^6 rows: 3.3 GB and over 5 minutes; a 1-D
    convolution of 10^7 kernel positions as many 1x1 slices. Each is one skipped entry; the rest is analysed."""
    from irtools.frontends.weights_file import weight_layers

    n = 100_000
    w = np.random.default_rng(0).standard_normal((8, 8)).astype(np.float32)
    header = {"mlp.experts.w": {"dtype": "F32", "shape": [n, 1, 1], "data_offsets": [0, 4 * n]},
              "conv.weight": {"dtype": "F32", "shape": [1, 1, n], "data_offsets": [4 * n, 8 * n]},
              "moe.experts.v": {"dtype": "F32", "shape": [2, 8, 8], "data_offsets": [8 * n, 8 * n + 512]},
              "fc.weight": {"dtype": "F32", "shape": [8, 8], "data_offsets": [8 * n + 512, 8 * n + 768]}}
    path = tmp_path / "m.safetensors"
    path.write_bytes(f.safetensors_bytes(header, bytes(8 * n) + np.stack([w, w]).tobytes() + w.tobytes()))
    skipped = []
    layers = weight_layers(read_weights(str(path)), skipped=skipped)
    assert sorted(layer.name for layer in layers) == ["fc", "moe.experts.v[0]", "moe.experts.v[1]"]
    assert {s["name"]: s["reason"] for s in skipped} == {
        "mlp.experts.w": f"tensor of shape [{n}, 1, 1]: {n} experts' matrices, over the 65536 one tensor may split into",
        "conv.weight": f"tensor of shape [1, 1, {n}]: {n} kernel positions, over the 65536 one tensor may split into"}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("part", ["\u00b2", "1" * 5000])
def test_a_name_part_that_is_a_digit_but_no_int_is_read(tmp_path, part):
    """Names stored sorted are put in forward order by their numbered parts: '²' (a digit to str.isdigit,
    no int) and a 5000-digit part (past Python's digit limit) refused the whole file."""
    w = np.eye(4, dtype=np.float32)
    path = tmp_path / "m.safetensors"
    path.write_bytes(f.safetensors_of({"layers.0.weight": w, f"layers.{part}.weight": w}))  # stored sorted
    assert list(read_weights(str(path))) == ["layers.0.weight", f"layers.{part}.weight"]


@pytest.mark.timeout(60)
def test_a_pickle_of_too_many_opcodes_is_refused(monkeypatch):
    """Leaves left on the stack build no object the counts see: the opcodes themselves are bounded
    (15 million of them, a 30 MB data.pkl, took 24 s to scan: a 1 GB one would take over 20 minutes)."""
    from irtools.frontends.formats import unpickler

    monkeypatch.setattr(unpickler, "PICKLE_MAX_OPCODES", 1000)
    with pytest.raises(pickle.UnpicklingError, match="more than 1000 opcodes"):
        unpickler.scan_pickle(io.BytesIO(b"\x80\x02(" + b"K\x01" * 2000 + b"l."), "m.pt")
    unpickler.scan_pickle(io.BytesIO(b"\x80\x02(" + b"K\x01" * 900 + b"l."), "m.pt")  # under it: scanned
