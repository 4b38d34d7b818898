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
from irtools.frontends.formats import gguf_file, gguf_meta  # noqa: E402

Q = gguf.GGMLQuantizationType
RNG = np.random.default_rng(6)
ARCH = [f.gguf_kv("general.architecture", 8, f.gguf_string("llama"))]
T = f.gguf_tensor_info
DATA = np.arange(8 * 32, dtype=np.float32).tobytes()  # room for two (4, 32) float32 tensors at 0 and 512


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
    _refused(_write(tmp_path, f.gguf_bytes(ARCH + [evil, evil], [])), r"metadata 'general.\\x1b\[2Jalignment' appears twice")
