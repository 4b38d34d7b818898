"""Hostile GGUF files, round 6: the header parser attacked as classes.

- metadata costs time in proportion to the bytes that matter: the strings of a metadata array are
  walked in compiled code (gguf_meta, checked against its Python twin and against gguf's own writer
  and reader), the key-value pairs and items of arrays of arrays parsed in Python are capped, and a
  string is decoded only up to a cap (a 16 MB key of invalid bytes is no 64 MB str);
- every count, length, dimension, offset, type id and alignment of the tensor infos lies in turn, and
  the file is cut at every byte: one IrtoolsError line, or the same tensors as the whole file;
- names two tensors would share, block numbers that would size gguf's name map (`blk.10^18`) or
  that int() refuses (`blk.²`), metadata values of the wrong type, and names with control
  characters reach no output raw.
Truth: gguf's own GGUFWriter / GGUFReader for valid files, bytes patched by hand for hostile ones.
"""

from __future__ import annotations

import struct
import tracemalloc

import numpy as np
import pytest
from click.testing import CliRunner

from irtools.errors import IrtoolsError
from irtools.frontends.weights_file import read_weights
from tests.fuzz import formats as f

gguf = pytest.importorskip("gguf")
from irtools.frontends.formats import gguf_file, gguf_meta

Q = gguf.GGMLQuantizationType
RNG = np.random.default_rng(6)
ARCH = [f.gguf_kv("general.architecture", 8, f.gguf_string("llama"))]
T = f.gguf_tensor_info
DATA = np.arange(8 * 32, dtype=np.float32).tobytes()  # room for two (4, 32) float32 tensors at 0 and 512
U32 = struct.Struct("<I").pack


def _cli(*args):
    from irtools.cli import main

    return CliRunner().invoke(main, list(args))


def _refused(path, match: str, peak: int = 8 << 20) -> str:
    """read_weights(path) raises one IrtoolsError line matching `match`, within `peak` bytes traced."""
    tracemalloc.start()
    try:
        with pytest.raises(IrtoolsError, match=match) as err:
            read_weights(str(path))
        used = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    text = str(err.value)
    assert "\n" not in text and "\x1b" not in text and used < peak, (text, used)
    return text


def _write(tmp_path, data: bytes, name: str = "m.gguf") -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def _tokens_file(path, tokens: list[str], big: bool = False) -> dict[str, np.ndarray]:
    """A GGUF written by gguf's own writer: a vocabulary array, a key after it and two tensors."""
    w = gguf.GGUFWriter(str(path), "llama", endianess=gguf.GGUFEndian.BIG if big else gguf.GGUFEndian.LITTLE)
    w.add_block_count(1)
    w.add_token_list(tokens)
    w.add_token_scores([float(i) for i in range(len(tokens))])
    w.add_string("general.name", "after the vocabulary")
    x = {"blk.0.attn_q.weight": RNG.standard_normal((4, 32)).astype(np.float32),
         "blk.0.attn_k.weight": RNG.standard_normal((2, 32)).astype(np.float32)}
    for name, a in x.items():
        w.add_tensor(name, a)  # the writer swaps the bytes of a big-endian file itself
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return x


# -- metadata: work in proportion to what matters -------------------------------------------------------------
def _random_strings(n: int) -> list[str]:
    lengths = RNG.integers(0, 12, n)
    alphabet = np.array(list("abcdefghijklmnopqrstuvwxyz\u00e9\u4e2d"))
    return ["".join(alphabet[RNG.integers(0, len(alphabet), k)]) for k in lengths]


@pytest.mark.parametrize("big", [False, True])
@pytest.mark.parametrize("compiled", [False, True])
def test_a_vocabulary_is_walked_to_the_bytes_gguf_reader_finds_after_it(tmp_path, monkeypatch, big, compiled):
    """The strings past the kept ones are walked (in Python, or compiled when PY_STRINGS is 0) to the
    same end as gguf's own GGUFReader: the key after the array and the tensors after the header read
    as gguf wrote them, the first tokens kept, the rest counted."""
    monkeypatch.setattr(gguf_meta, "PY_STRINGS", 1 << 19 if not compiled else 0)
    tokens = _random_strings(3000)
    path = tmp_path / "m.gguf"
    x = _tokens_file(path, tokens, big)
    reader = gguf.GGUFReader(str(path))
    truth = {t.name: np.asarray(t.data) for t in reader.tensors}
    with open(path, "rb") as fh:
        meta, tensors, start = gguf_file.parse(fh.read(), str(path))
    assert meta["tokenizer.ggml.tokens"] == {"array_of": 3000} and meta["general.name"] == "after the vocabulary"
    assert start == reader.data_offset and [t["name"] for t in tensors] == list(truth)
    got = read_weights(str(path))
    for name, want in x.items():
        hf = name.replace("blk.0.attn_q", "model.layers.0.self_attn.q_proj").replace(
            "blk.0.attn_k", "model.layers.0.self_attn.k_proj")
        np.testing.assert_array_equal(got[hf].load(), want)
        np.testing.assert_array_equal(got[hf].load(), truth[name].astype(np.float32))
    kept = [bytes(reader.fields["tokenizer.ggml.tokens"].parts[i]).decode()
            for i in reader.fields["tokenizer.ggml.tokens"].data[:16]]
    assert kept == tokens[:16]
    few = tmp_path / "few.gguf"
    _tokens_file(few, tokens[:5], big)
    with open(few, "rb") as fh:
        assert gguf_file.parse(fh.read(), str(few))[0]["tokenizer.ggml.tokens"] == tokens[:5]


@pytest.mark.parametrize("big", [False, True])
def test_the_compiled_walk_is_its_python_twin_on_random_and_lying_lengths(big):
    """Random arrays of strings, cut short, with a length of 2^64-1 or one byte too many: the compiled
    walk ends where the Python one does, or says -1 where the Python one does."""
    order = ">" if big else "<"
    for trial in range(60):
        n = int(RNG.integers(0, 40))
        lengths = RNG.integers(0, 9, n)
        raw = b"".join(struct.pack(order + "Q", int(k)) + bytes(int(k)) for k in lengths)
        if trial % 4 == 1 and n:
            raw = raw[:int(RNG.integers(0, len(raw)))]
        elif trial % 4 == 2 and n:
            at = int(RNG.integers(0, n))
            pos = sum(8 + int(k) for k in lengths[:at])
            raw = raw[:pos] + struct.pack(order + "Q", (1 << 64) - 1 if trial % 8 == 2 else len(raw) - pos - 7) + \
                raw[pos + 8:]
        buf = b"pad" + raw
        want = gguf_meta.skip_strings_py(buf, 3, n, big)
        assert gguf_meta.skip_strings(buf, 3, n, big) == want
        if trial % 4 == 0:
            assert want == len(buf)


@pytest.mark.timeout(60)
def test_millions_of_empty_strings_cost_no_python_step_each(tmp_path):
    """4 million empty strings in one array (32 MB; item by item in Python it took ~1.6 s, 10^8 of them
    minutes): the tensor after the header is found and read."""
    n = 4 << 20
    tokens = f.gguf_string("tokenizer.ggml.tokens") + struct.pack("<IIQ", 9, 8, n) + bytes(8 * n)
    path = _write(tmp_path, f.gguf_bytes(ARCH + [tokens], [T("blk.0.attn_q.weight", (32, 4), 0, 0)], DATA[:512]))
    got = read_weights(path)["model.layers.0.self_attn.q_proj.weight"].load()
    np.testing.assert_array_equal(got, np.frombuffer(DATA[:512], np.float32).reshape(4, 32))
    cut = _write(tmp_path, f.gguf_bytes(ARCH + [tokens[:-8] + struct.pack("<Q", 1)], [], align=1), "cut.gguf")
    _refused(cut, "tokenizer.ggml.tokens' holds strings that run past the end of the file")


def test_metadata_entries_past_the_cap_are_refused_before_parsing(tmp_path):
    """70,000 key-value pairs (13 bytes each: the file's size allows them) and an array of 70,000
    empty arrays: one line each, before a Python step per entry."""
    entry = f.gguf_string("") + struct.pack("<I", 0) + b"\0"
    many = _write(tmp_path, f.gguf_bytes([entry] * 70_000, []), "kv.gguf")
    _refused(many, "70000 metadata entries; irtools reads at most 65536")
    nested = f.gguf_kv("n", 9, struct.pack("<IQ", 9, 70_000) + struct.pack("<IQ", 0, 0) * 70_000)
    _refused(_write(tmp_path, f.gguf_bytes(ARCH + [nested], []), "nested.gguf"),
             "metadata 'n': the metadata holds more than 65536 entries")
    tensors = _write(tmp_path, f.gguf_bytes(ARCH, [T("w", (0,), 0, 0)] * 70_000), "tensors.gguf")
    _refused(tensors, "70000 tensors")


def test_a_long_key_of_invalid_bytes_is_not_decoded(tmp_path):
    """A 16 MB metadata key of invalid UTF-8 (decoded, each byte would be 4 characters: 64 MB) and a
    16 MB general.name: parsed past, not kept, the tensor after them read."""
    key = struct.pack("<Q", 16 << 20) + b"\xff" * (16 << 20) + struct.pack("<I", 4) + b"\0" * 4
    name = f.gguf_kv("general.name", 8, f.gguf_string(b"\xfe" * (16 << 20)))
    path = _write(tmp_path, f.gguf_bytes(ARCH + [key, name], [T("blk.0.attn_q.weight", (32, 4), 0, 0)], DATA[:512]))
    read_weights(path)  # the imports it makes (gguf, yaml: ~19 MB) before the memory is traced
    tracemalloc.start()
    try:
        got = read_weights(path)
        used = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert used < 8 << 20, used
    assert list(got) == ["model.layers.0.self_attn.q_proj.weight"] and "name" not in got.metadata


def test_a_duplicated_metadata_key_is_refused_with_its_name_escaped(tmp_path):
    evil = f.gguf_kv("general.\x1b[2Jalignment", 4, struct.pack("<I", 32))
    _refused(_write(tmp_path, f.gguf_bytes(ARCH + [evil, evil], [])),
             r"metadata 'general.\\x1b\[2Jalignment' appears twice")


# -- tensor infos: every field lies in turn ---------------------------------------------------------------------
def _named(name: bytes, n_dims: int, dims=(), tail: bytes = struct.pack("<IQ", 0, 0)) -> bytes:
    return f.gguf_string(name) + U32(n_dims) + struct.pack(f"<{len(dims)}Q", *dims) + tail


def _align(value: bytes, vtype: int) -> list[bytes]:
    return ARCH + [f.gguf_kv("general.alignment", vtype, value)]


INFOS = {  # case: (metadata, tensor infos, words of the one line[, the data, none padded: DATA])
    "no dimensions": (ARCH, [_named(b"w", 0)], "has 0 dimensions"),
    "2^32-1 dimensions": (ARCH, [_named(b"w", 0xFFFFFFFF)], "has 4294967295 dimensions"),
    "dims whose product overflows int64": (ARCH, [T("w", (1 << 32, 1 << 32), 0, 0)], "overflows 64 bits"),
    "a dim of 2^64-1": (ARCH, [T("w", ((1 << 64) - 1, 2), 0, 0)], "overflows 64 bits"),
    "a zero dim beside a dim of 2^62": (ARCH, [T("w", (0, 1 << 62), 0, 0)], "overflows 64 bits"),
    "dims past the budget": (ARCH, [T("w", (1 << 20, 1 << 20, 1 << 10), 0, 0)], "memory budget|outside the file"),
    "offset 2^64-32": (ARCH, [T("w", (32, 4), 0, (1 << 64) - 32)], "lies outside the file"),
    "offset past the end": (ARCH, [T("w", (32, 4), 0, 1024)], "lies outside the file"),
    "bytes past the end": (ARCH, [T("w", (32, 9), 0, 0)], "lies outside the file"),
    "offset not aligned": (ARCH, [T("w", (32, 4), 0, 16)], "not a multiple of the alignment 32"),
    "overlapping in part": (ARCH, [T("a", (32, 4), 0, 0), T("b", (32, 4), 0, 256)], "overlap"),
    "one inside another": (ARCH, [T("a", (32, 8), 0, 0), T("b", (32, 2), 0, 256)], "overlap"),
    "a name declared twice": (ARCH, [T("a", (32, 2), 0, 0), T("a", (32, 2), 0, 512)], "'a' is declared twice"),
    "type id 4 (Q4_2, removed)": (ARCH, [T("w", (32, 4), 4, 0)], "unknown GGML type id 4"),
    "type id 31": (ARCH, [T("w", (32, 4), 31, 0)], "unknown GGML type id 31"),
    "type id 2^32-1": (ARCH, [T("w", (32, 4), 0xFFFFFFFF, 0)], "unknown GGML type id 4294967295"),
    "rows not whole blocks": (ARCH, [T("w", (33, 2), 8, 0)], "not whole Q8_0 blocks"),
    "a name of 70,000 bytes": (ARCH, [_named(b"n" * 70_000, 2, (32, 4))], "a tensor name of 70000 bytes"),
    "a name past the end": (ARCH, [struct.pack("<Q", 1 << 63) + b"w"], "truncated GGUF file"),
    "dims past the end": (ARCH, [f.gguf_string("w") + U32(4) + struct.pack("<Q", 32)], "truncated GGUF file", b""),
    "alignment 0": (_align(U32(0), 4), [T("w", (32, 4), 0, 0)], "alignment 0 is not a power of two"),
    "alignment 24": (_align(U32(24), 4), [T("w", (32, 4), 0, 0)], "alignment 24 is not a power of two"),
    "alignment 2^63": (_align(struct.pack("<Q", 1 << 63), 10), [], "alignment 9223372036854775808 is not"),
    "alignment 2^21": (_align(U32(1 << 21), 4), [], "alignment 2097152 is not"),
    "alignment -32": (_align(struct.pack("<i", -32), 5), [], "alignment -32 is not"),
    "alignment a string": (_align(f.gguf_string("32"), 8), [], "alignment '32' is not"),
    "alignment a bool": (_align(b"\x01", 7), [], "alignment True is not"),
    "alignment a float": (_align(struct.pack("<f", 32.0), 6), [], "alignment 32.0 is not"),
    "alignment an array": (_align(struct.pack("<IQ", 4, 1) + U32(32), 9), [], r"alignment \[32\] is not"),
}


@pytest.mark.parametrize("case", sorted(INFOS))
def test_a_lying_tensor_info_is_one_line_through_the_reader_and_the_cli(tmp_path, case):
    kvs, infos, says, *data = INFOS[case]
    path = _write(tmp_path, f.gguf_bytes(kvs, infos, *data, align=1) if data else f.gguf_bytes(kvs, infos, DATA))
    _refused(path, says)
    result = _cli("analyze", path, "--min-evals", "1")
    assert result.exit_code == 2 and result.output.startswith("irtools: error: "), result.output
    assert result.output.count("\n") == 1 and not isinstance(result.exception, (AssertionError, TypeError)), \
        result.output


@pytest.mark.parametrize("field, says", [("tensors", "declares 4611686018427387904 tensors"),
                                         ("kv", "4611686018427387904 metadata entries")])
def test_a_count_the_bytes_cannot_hold_is_refused_before_parsing(tmp_path, field, says):
    counts = {"n_tensors": 1 << 62} if field == "tensors" else {"n_kv": 1 << 62}
    _refused(_write(tmp_path, f.gguf_bytes(ARCH, [T("w", (32, 4), 0, 0)], DATA, **counts)), says)


def test_a_zero_dim_is_an_empty_tensor_and_a_row_of_no_eigenvalues(tmp_path):
    path = _write(tmp_path, f.gguf_bytes(ARCH, [T("blk.0.attn_q.weight", (32, 0), 0, 0),
                                                T("blk.0.attn_k.weight", (32, 4), 0, 0)], DATA[:512]))
    got = read_weights(path)
    empty = got["model.layers.0.self_attn.q_proj.weight"]
    assert empty.shape == (0, 32) and empty.load().shape == (0, 32)
    np.testing.assert_array_equal(got["model.layers.0.self_attn.k_proj.weight"].load(),
                                  np.frombuffer(DATA[:512], np.float32).reshape(4, 32))
    assert _cli("analyze", path, "--min-evals", "1").exit_code == 0


def _every_type_file(path, big: bool = False) -> bytes:
    """A small GGUF from gguf's writer: a key of every metadata type, arrays of numbers, of strings and
    of arrays, and three tensors (F32, F16, Q8_0)."""
    w = gguf.GGUFWriter(str(path), "llama", endianess=gguf.GGUFEndian.BIG if big else gguf.GGUFEndian.LITTLE)
    w.add_block_count(1)
    w.add_uint8("u8", 7)
    w.add_int8("i8", -7)
    w.add_uint16("u16", 700)
    w.add_int16("i16", -700)
    w.add_uint32("u32", 70_000)
    w.add_int32("i32", -70_000)
    w.add_float32("f32", 0.5)
    w.add_uint64("u64", 1 << 40)
    w.add_int64("i64", -(1 << 40))
    w.add_float64("f64", 0.25)
    w.add_bool("b", True)
    w.add_string("general.name", "every type")
    w.add_array("numbers", list(range(20)))
    w.add_array("words", [f"w{i}" for i in range(20)])
    w.add_array("nested", [[1, 2], ["a", "b"]])
    x = RNG.standard_normal((4, 32)).astype(np.float32)
    w.add_tensor("blk.0.attn_q.weight", x)
    w.add_tensor("blk.0.attn_k.weight", x[:2].astype(np.float16))
    w.add_tensor("blk.0.attn_v.weight", gguf.quants.quantize(x, Q.Q8_0), raw_dtype=Q.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path.read_bytes()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("big", [False, True])
def test_the_file_cut_at_every_byte_is_one_line_or_the_whole_file(tmp_path, big):
    """Every prefix of a valid file, little- and big-endian (each section boundary included): one
    IrtoolsError line, or (a cut in the padding after the last tensor) the same tensors and values as
    the whole file."""
    data = _every_type_file(tmp_path / "whole.gguf", big)
    whole = {k: v.load() for k, v in read_weights(str(tmp_path / "whole.gguf")).items()}
    meta = gguf_file.parse(data, "whole.gguf")[0]
    assert meta["nested"] == [[1, 2], ["a", "b"]] and meta["u64"] == 1 << 40 and meta["words"] == {"array_of": 20}
    assert len(whole) == 3 and np.isfinite(whole["model.layers.0.self_attn.q_proj.weight"]).all()
    cut = tmp_path / "cut.gguf"
    refused = 0
    for n in range(1, len(data)):
        cut.write_bytes(data[:n])
        try:
            got = {k: v.load() for k, v in read_weights(str(cut)).items()}
        except IrtoolsError as err:
            refused += 1
            assert "\n" not in str(err), (n, str(err))
            continue
        assert got.keys() == whole.keys(), n
        for k, v in got.items():
            np.testing.assert_array_equal(v, whole[k])
    assert refused >= len(data) - 32


# -- names -------------------------------------------------------------------------------------------------------
def test_block_numbers_that_would_size_the_name_map_or_that_int_refuses(tmp_path, monkeypatch):
    """`blk.1000000000000000000.` built gguf's name map for 10^18 blocks (it never ended); `blk.².` is a
    digit to str.isdigit that int() refuses (a traceback-turned-error for a valid name). Both keep their
    GGUF names; the map is built for the blocks the file numbers below the cap alone."""
    sizes = []
    real = gguf.get_tensor_name_map
    monkeypatch.setattr(gguf, "get_tensor_name_map", lambda arch, n: sizes.append(n) or real(arch, n))
    names = ["blk.1000000000000000000.attn_q.weight", "blk.\u00b2.attn_q.weight", "blk.1.attn_q.weight",
             "blk.4096.attn_q.weight"]
    infos = [T(name, (32, 2), 0, 256 * i) for i, name in enumerate(names)]
    got = read_weights(_write(tmp_path, f.gguf_bytes(ARCH, infos, DATA[:1024])))
    assert set(got) == {*names[:2], "model.layers.1.self_attn.q_proj.weight", names[3]}
    assert sizes == [2]


def test_a_name_that_is_another_tensors_hugging_face_name(tmp_path):
    """`blk.0.attn_q.weight` maps to `model.layers.0.self_attn.q_proj.weight`, the GGUF name of the
    file's second tensor: one of them was dropped; both now keep their GGUF names, with their values.
    An expert stack split into a name another tensor has is one line."""
    path = _write(tmp_path, f.gguf_bytes(ARCH, [T("blk.0.attn_q.weight", (32, 4), 0, 0),
                                                T("model.layers.0.self_attn.q_proj.weight", (32, 4), 0, 512)], DATA))
    got = read_weights(path)
    assert set(got) == {"blk.0.attn_q.weight", "model.layers.0.self_attn.q_proj.weight"}
    np.testing.assert_array_equal(got["model.layers.0.self_attn.q_proj.weight"].load(),
                                  np.frombuffer(DATA[512:], np.float32).reshape(4, 32))
    stack = np.zeros(2 * 4 * 32, np.float32).tobytes()
    split = _write(tmp_path, f.gguf_bytes(ARCH, [T("blk.0.ffn_gate_exps.weight", (32, 4, 2), 0, 0),
                                                 T("model.layers.0.block_sparse_moe.experts.0.w1.weight", (32, 4), 0,
                                                   1024)], stack + DATA[:512]), "split.gguf")
    _refused(split, "would both be read as 'model.layers.0.block_sparse_moe.experts.0.w1.weight'")


EVIL = "\x1b[2J\x1b]52;c;SGk=\x07\r\n[red]x[/]"


@pytest.mark.parametrize("fmt", ["table", "json"])
def test_names_and_metadata_with_control_characters_reach_no_output_raw(tmp_path, fmt):
    """An architecture, a general.name, a count of the wrong type and a tensor name holding ANSI/OSC
    escapes and CR/LF: `inspect` and `analyze` print them escaped, and a count that is no integer is
    no metadata; the error naming a hostile tensor is one escaped line."""
    kvs = [f.gguf_kv("general.architecture", 8, f.gguf_string("llama" + EVIL)),
           f.gguf_kv("general.name", 8, f.gguf_string("n" + EVIL)),
           f.gguf_kv("llama" + EVIL + ".block_count", 8, f.gguf_string(EVIL)),
           f.gguf_kv("general.file_type", 8, f.gguf_string(EVIL))]
    path = _write(tmp_path, f.gguf_bytes(kvs, [T("blk.0.attn_q" + EVIL, (32, 4), 0, 0)], DATA[:512]))
    opened = read_weights(path)
    assert opened.metadata["name"] == "n" + EVIL and "file_type" not in opened.metadata
    assert "block_count" not in opened.metadata
    for command in (["inspect", path, "--format", fmt], ["analyze", path, "--min-evals", "1", "--format", fmt]):
        result = _cli(*command)
        assert result.exit_code == 0, result.output
        assert not any(c in result.output for c in "\x1b\x07\r"), result.output
    bad = _write(tmp_path, f.gguf_bytes(ARCH, [T("w" + EVIL, (32, 4), 99, 0)], DATA[:512]), "bad.gguf")
    result = _cli("analyze", bad)
    assert result.exit_code == 2 and result.output.count("\n") == 1 and "\x1b" not in result.output, result.output
    assert "unknown GGML type id 99" in result.output


@pytest.mark.timeout(120)
@pytest.mark.parametrize("dims", [(32, 0, 1 << 40), (32, 4, 0), (32, 0, 8)])
def test_an_expert_stack_of_no_bytes_is_not_split_into_its_declared_count(tmp_path, dims):
    """A merged expert stack declaring 2^40 experts of empty matrices (no bytes vouch for the count)
    made one Python object per expert, for ever: it is one tensor, with a note; a stack holding data
    is still one matrix per expert (the two experts' values as stored)."""
    path = _write(tmp_path, f.gguf_bytes(ARCH, [T("blk.0.ffn_gate_exps.weight", dims, 0, 0)]))
    got = read_weights(path)
    assert len(got) == 1 and next(iter(got.values())).shape == tuple(reversed(dims))
    assert any("read as one tensor" in note for note in got.notes), got.notes
    many = [T(f"blk.{i}.ffn_gate_exps.weight", dims, 0, 0) for i in range(3)]
    notes = read_weights(_write(tmp_path, f.gguf_bytes(ARCH, many), "many.gguf")).notes
    assert sum("read as one tensor" in note for note in notes) == 1 and any("3 expert stack(s)" in n for n in notes)
    real = _write(tmp_path, f.gguf_bytes(ARCH, [T("blk.0.ffn_gate_exps.weight", (32, 4, 2), 0, 0)], DATA), "real.gguf")
    got = read_weights(real)
    assert len(got) == 2
    stacks = [got[k].load() for k in sorted(got)]
    np.testing.assert_array_equal(np.stack(stacks), np.frombuffer(DATA, np.float32).reshape(2, 4, 32))


def test_decoded_strings_stay_within_their_total_whatever_the_file_holds(tmp_path, monkeypatch):
    """Past the total of decoded bytes (1 MiB here), values are kept as their length and keys dropped,
    the metadata after them still parsed; tensor names have a total of their own."""
    monkeypatch.setattr(gguf_file, "_KEEP_TOTAL", 1 << 20)
    values = [f.gguf_kv(f"v{i}", 8, f.gguf_string(b"\xff" * 60_000)) for i in range(100)]  # 6 MB, 24 MB decoded
    after = f.gguf_kv("general.name", 8, f.gguf_string("kept"))
    path = _write(tmp_path, f.gguf_bytes([*ARCH, *values, after], [T("blk.0.attn_q.weight", (32, 4), 0, 0)],
                                         DATA[:512]))
    tracemalloc.start()
    try:
        with open(path, "rb") as fh:
            data = fh.read()
        before = tracemalloc.get_traced_memory()[0]
        meta, tensors, _ = gguf_file.parse(data, path)
        used = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert used < 6 << 20, used
    assert meta["v0"] == "\\xff" * 60_000 and meta["v99"] == {"string_of": 60_000}
    assert meta["general.name"] == "kept" and [t["name"] for t in tensors] == ["blk.0.attn_q.weight"]
    # a short key after the total is still read: the alignment it gives places the tensors
    filler = [f.gguf_kv(f"v{i}", 8, f.gguf_string(b"x" * 60_000)) for i in range(18)]
    align = f.gguf_kv("general.alignment", 4, U32(64))
    data = f.gguf_bytes([*ARCH, *filler, align], [T("blk.0.attn_q.weight", (32, 4), 0, 64)], bytes(64) + DATA[:512],
                        align=64)
    meta, tensors, start = gguf_file.parse(data, "m.gguf")
    assert meta["general.alignment"] == 64 and meta["v17"] == {"string_of": 60_000} and start % 64 == 0
    names = [T("n" * 60_000 + str(i), (32, 0), 0, 0) for i in range(20)]
    _refused(_write(tmp_path, f.gguf_bytes(ARCH, names), "names.gguf"), "a tensor name of 60002 bytes, past")
