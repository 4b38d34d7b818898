"""GGUF files read through gguf (the llama.cpp project's package): values against gguf's own
quantizer and dequantizer, names against gguf's own tensor-name map and transformers' real
parameter names, and hostile headers refused on one line before anything is allocated."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest

import irtools
from irtools.errors import IrtoolsError
from irtools.frontends import open_source
from irtools.frontends.weights_file import read_weights
from tests.fuzz import formats as f

gguf = pytest.importorskip("gguf")
Q = gguf.GGMLQuantizationType
RNG = np.random.default_rng(7)


def _write(path, tensors: dict, arch: str = "llama", context: int = 2048, raw: dict | None = None) -> str:
    """A GGUF written by gguf's own writer: `tensors` {name: (float32 array, type)} quantized with
    gguf's quantizer; `raw` {name: (bytes as uint8 rows, type)} stored as given."""
    w = gguf.GGUFWriter(str(path), arch)
    w.add_context_length(context)
    w.add_block_count(2)
    for name, (x, qtype) in tensors.items():
        w.add_tensor(name, gguf.quants.quantize(x, qtype), raw_dtype=qtype)
    for name, (data, qtype) in (raw or {}).items():
        w.add_tensor(name, data, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return str(path)


def _llama_like(path):
    x = {name: RNG.standard_normal(shape).astype(np.float32) for name, shape in (
        ("token_embd.weight", (96, 64)), ("blk.0.attn_q.weight", (64, 64)), ("blk.0.attn_k.weight", (32, 64)),
        ("blk.0.ffn_down.weight", (64, 128)), ("blk.1.attn_q.weight", (64, 64)), ("output.weight", (96, 64)),
        ("output_norm.weight", (64,)))}
    types = {"token_embd.weight": Q.Q8_0, "blk.0.attn_q.weight": Q.Q4_0, "blk.0.attn_k.weight": Q.BF16,
             "blk.0.ffn_down.weight": Q.F16, "blk.1.attn_q.weight": Q.Q4_1, "output.weight": Q.Q8_0,
             "output_norm.weight": Q.F32}
    return _write(path, {n: (x[n], types[n]) for n in x}), x, types


def test_values_are_gguf_dequantize_of_gguf_quantize_bit_for_bit(tmp_path):
    path, x, types = _llama_like(tmp_path / "m.gguf")
    tensors = read_weights(path)
    hf = {"token_embd.weight": "model.embed_tokens.weight", "blk.0.attn_q.weight": "model.layers.0.self_attn.q_proj.weight",
          "blk.0.attn_k.weight": "model.layers.0.self_attn.k_proj.weight",
          "blk.0.ffn_down.weight": "model.layers.0.mlp.down_proj.weight",
          "blk.1.attn_q.weight": "model.layers.1.self_attn.q_proj.weight", "output.weight": "lm_head.weight",
          "output_norm.weight": "model.norm.weight"}
    assert set(tensors) == set(hf.values())
    for name, qtype in types.items():
        want = gguf.quants.dequantize(gguf.quants.quantize(x[name], qtype), qtype).astype(np.float32)
        got = tensors[hf[name]].load()
        assert got.dtype == np.float32 and got.shape == x[name].shape
        np.testing.assert_array_equal(got, want)
        assert tensors[hf[name]].storage == qtype.name
    if True:  # the quantized values are not the originals (the test would pass on a no-op otherwise)
        assert not np.array_equal(tensors[hf["blk.0.attn_q.weight"]].load(), x["blk.0.attn_q.weight"])


def test_rows_metadata_and_storage_columns(tmp_path):
    path, _, _ = _llama_like(tmp_path / "m.gguf")
    opened = open_source(path)
    assert opened.metadata["format"] == "gguf" and opened.metadata["architecture"] == "llama"
    assert opened.metadata["context_length"] == 2048
    assert opened.metadata["quantization"] == {"BF16": 1, "F16": 1, "F32": 1, "Q4_0": 1, "Q4_1": 1, "Q8_0": 2}
    rows = {layer.name: layer for layer in opened.layers}
    assert rows["model.layers.0.self_attn.q_proj"].extra == {"storage": "Q4_0"}
    assert rows["model.embed_tokens"].layer_type == "embedding" and rows["lm_head"].extra == {"storage": "Q8_0"}
    assert "model.norm" not in rows and not opened.skipped  # a vector: no row
    a = irtools.analyze(path, min_evals=1)
    assert set(a.details.name) == set(rows) and set(a.details.storage) == {"Q4_0", "Q4_1", "Q8_0", "BF16", "F16"}


def test_a_type_gguf_cannot_dequantize_is_skipped_with_its_name(tmp_path):
    block, size = gguf.GGML_QUANT_SIZES[Q.Q8_1]
    assert Q.Q8_1 not in gguf.quants._type_traits  # the premise: gguf has no Q8_1 dequantizer
    raw = np.zeros((8, 64 // block * size), np.uint8)
    path = _write(tmp_path / "m.gguf", {"blk.0.attn_q.weight": (RNG.standard_normal((8, 64)).astype(np.float32), Q.Q8_0)},
                  raw={"blk.0.attn_k.weight": (raw, Q.Q8_1)})
    opened = open_source(path)
    assert [s["name"] for s in opened.skipped] == ["model.layers.0.self_attn.k_proj"] or \
        [s["name"] for s in opened.skipped] == ["model.layers.0.self_attn.k_proj.weight"]
    assert "Q8_1" in opened.skipped[0]["reason"] and "cannot dequantize" in opened.skipped[0]["reason"]
    assert [layer.name for layer in opened.layers] == ["model.layers.0.self_attn.q_proj"]


def _q4_k_blocks(n_blocks: int):
    """Q4_K super-blocks (ggml-common.h block_q4_K: d, dmin as f16, 12 bytes of 6-bit scales and
    mins, 128 bytes of 4-bit codes) with every scale 1 and every min 0, so value i of 64-value
    chunk c is d times nibble i of the chunk (low nibbles of its 32 bytes, then the high ones)."""
    d = RNG.uniform(0.01, 1, n_blocks).astype(np.float16)
    qs = RNG.integers(0, 256, (n_blocks, 128), dtype=np.uint8)
    scales = np.array([1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1], np.uint8)
    blocks = np.concatenate([d.view(np.uint8).reshape(-1, 2), np.zeros((n_blocks, 2), np.uint8),
                             np.tile(scales, (n_blocks, 1)), qs], axis=1)
    want = np.empty((n_blocks, 256), np.float32)
    for c in range(4):
        chunk = qs[:, c * 32:(c + 1) * 32]
        want[:, c * 64:c * 64 + 32] = (chunk & 0xF) * d[:, None].astype(np.float32)
        want[:, c * 64 + 32:(c + 1) * 64] = (chunk >> 4) * d[:, None].astype(np.float32)
    return blocks, want


@pytest.mark.parametrize("qtype", [t for t in Q if t.name.endswith("_K") or t.name.startswith(("IQ", "TQ", "MXFP"))])
def test_k_quants_and_iq_types_through_gguf_dequantize(tmp_path, qtype):
    """gguf cannot write K-quants or IQ types from Python: blocks are built from the layout
    (random codes, finite f16 scales where the layout has them) and the reader's values must be
    gguf's own `dequantize` of those bytes; Q4_K is also checked against values derived by hand."""
    if qtype not in gguf.quants._type_traits:
        pytest.skip(f"the installed gguf has no {qtype.name} dequantizer")
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    rows = 3
    if qtype == Q.Q4_K:
        raw, want = _q4_k_blocks(rows)
    else:
        raw = RNG.integers(0, 256, (rows, size), dtype=np.uint8)
        raw[:, :2] = np.frombuffer(np.float16(0.5).tobytes(), np.uint8)  # a finite leading f16 scale
        if qtype.name.endswith("_K"):  # K-quants keep d (and dmin) at the block's end or start: keep all finite
            half = raw.view(np.uint8)
            half[:, -2:] = np.frombuffer(np.float16(0.25).tobytes(), np.uint8)
        want = gguf.quants.dequantize(raw, qtype)
    path = _write(tmp_path / "m.gguf", {}, raw={"blk.0.attn_q.weight": (raw, qtype)})
    got = read_weights(path)["model.layers.0.self_attn.q_proj.weight"]
    assert got.shape == (rows, block) and got.storage == qtype.name
    np.testing.assert_array_equal(got.load(), want)
    np.testing.assert_array_equal(got.load(), gguf.quants.dequantize(raw, qtype))


@pytest.mark.parametrize("arch, model", [("llama", "LlamaConfig"), ("qwen2", "Qwen2Config"), ("gemma2", "Gemma2Config"),
                                         ("phi3", "Phi3Config")])
def test_names_map_back_to_transformers_parameter_names(arch, model):
    """transformers' own parameter names -> gguf names (gguf's map, as llama.cpp's converter uses
    it) -> back: every matrix gets its transformers name again."""
    transformers = pytest.importorskip("transformers")
    from irtools.frontends.formats.gguf_file import hf_names

    cfg = getattr(transformers, model)(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, vocab_size=64, head_dim=8,
                                       pad_token_id=0)
    names = [n for n, p in transformers.AutoModelForCausalLM.from_config(cfg).state_dict().items() if p.ndim == 2]
    forward = gguf.get_tensor_name_map(next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == arch), 2)
    to_gguf = {n: forward.get_name(n, try_suffixes=(".weight", ".bias")) for n in names}
    to_gguf = {n: g for n, g in to_gguf.items() if g}  # a head tied to the embedding has no GGUF tensor
    assert len(to_gguf) >= 1 + 2 * 4, to_gguf  # the embedding and at least 4 matrices a block (fused in phi3)
    back = hf_names(list(to_gguf.values()), arch)
    assert {back[g] for g in to_gguf.values()} == set(to_gguf)


# -- hostile files (the builders of tests/fuzz/formats.py, so every field can lie) -----------------------
ARCH = [f.gguf_kv("general.architecture", 8, f.gguf_string("llama"))]
HOSTILE = {
    "truncated": (lambda good: good[: len(good) * 2 // 3], "outside the file|truncated"),
    "unknown type id": (lambda _: f.gguf_bytes(ARCH, [f.gguf_tensor_info("blk.0.attn_q.weight", (32, 4), 4, 0)],
                                               bytes(512)), "unknown GGML type id 4"),
    "offset past the file": (lambda _: f.gguf_bytes(ARCH, [f.gguf_tensor_info("blk.0.attn_q.weight", (32, 4), 0,
                                                                              1 << 40)], bytes(512)),
                             "lies outside the file"),
    "size past the file": (lambda _: f.gguf_bytes([], [f.gguf_tensor_info("w", (1 << 20, 1 << 10), 0, 0)], bytes(64)),
                           "lies outside the file"),
    "array of 2^40 entries": (lambda _: f.gguf_bytes([f.gguf_kv("big", 9, struct.pack("<IQ", 4, 1 << 40))], []),
                              "array of 1099511627776 entries"),
    "array of 2^40 strings": (lambda _: f.gguf_bytes([f.gguf_kv("big", 9, struct.pack("<IQ", 8, 1 << 40))], []),
                              "array of 1099511627776 entries"),
    "string past the file": (lambda _: f.gguf_bytes([struct.pack("<Q", 1 << 50) + b"k"], [], bytes(64)),
                             "truncated GGUF"),
    "2^60 tensors": (lambda _: f.gguf_bytes([], [], n_tensors=1 << 60), "declares 1152921504606846976 tensors"),
    "2^40 tensors": (lambda _: f.gguf_bytes([], [], n_tensors=1 << 40), "declares 1099511627776 tensors"),
    "five dims": (lambda _: f.gguf_bytes([], [f.gguf_tensor_info("w", (32, 1, 1, 1, 1), 0, 0)], bytes(128)),
                  "5 dimensions"),
    "rows not whole blocks": (lambda _: f.gguf_bytes([], [f.gguf_tensor_info("w", (33, 2), 8, 0)], bytes(256)),
                              "not whole Q8_0 blocks"),
    "overlapping tensors": (lambda _: f.gguf_bytes([], [f.gguf_tensor_info("a", (32, 2), 0, 0),
                                                        f.gguf_tensor_info("b", (32, 2), 0, 128)], bytes(512)),
                            "overlap"),
    "unknown metadata type": (lambda _: f.gguf_bytes([f.gguf_kv("k", 77, b"")], []), "unknown metadata type 77"),
    "alignment not a power of two": (lambda _: f.gguf_bytes([f.gguf_kv("general.alignment", 4, struct.pack("<I", 24))],
                                                            []), "not a power of two"),
    "version 1": (lambda _: f.gguf_bytes([], [], version=1), "GGUF version 1"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_gguf_is_one_line_within_budget(tmp_path, case):
    good, _, _ = _llama_like(tmp_path / "good.gguf")
    make, message = HOSTILE[case]
    with open(good, "rb") as fh:
        data = make(fh.read())
    path = tmp_path / "bad.gguf"
    path.write_bytes(data)
    tracemalloc.start()
    with pytest.raises(IrtoolsError, match=message) as err:
        read_weights(str(path))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert "\n" not in str(err.value) and peak < 8 << 20, (str(err.value), peak)


def test_cli_reads_gguf_and_refuses_a_bad_one_in_one_line(tmp_path):
    path, _, _ = _llama_like(tmp_path / "m.gguf")
    proc = subprocess.run([sys.executable, "-m", "irtools", "analyze", path, "--min-evals", "1", "--format", "json"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    rows = {r["name"]: r for r in json.loads(proc.stdout)["layers"]}
    assert rows["model.layers.0.self_attn.q_proj"]["storage"] == "Q4_0"
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(open(path, "rb").read()[:300])
    proc = subprocess.run([sys.executable, "-m", "irtools", "analyze", str(bad)], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "GGUF" in proc.stderr, proc.stderr


def test_a_gguf_saved_under_another_suffix_is_read_by_its_magic(tmp_path):
    path, _, _ = _llama_like(tmp_path / "m.gguf")
    other = tmp_path / "model.bin"
    other.write_bytes(open(path, "rb").read())
    assert "model.layers.0.self_attn.q_proj.weight" in read_weights(str(other))


def test_fuzz_gguf_bytes_mutated(tmp_path):
    """Bytes of a valid GGUF (tests/fuzz/formats.py's builder) overwritten, cut and extended at drawn
    places, through the CLI in-process: exit 0 with JSON or 2 with one line, nothing opened outside
    the model's folder, the input unchanged (the fuzz suite's contract, tests/fuzz/harness.py)."""
    pytest.importorskip("hypothesis")
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from tests.fuzz import harness

    good = f.gguf_of({"token_embd.weight": RNG.standard_normal((16, 8)), "blk.0.attn_q.weight": np.eye(8),
                      "output_norm.weight": np.ones(8)})

    @settings(max_examples=60, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.lists(st.tuples(st.integers(0, len(good) - 1), st.binary(min_size=1, max_size=9)), max_size=4),
           st.integers(8, len(good)))
    def run(edits, cut):
        data = bytearray(good)
        for at, chunk in edits:
            data[at:at + len(chunk)] = chunk
        folder = tmp_path / "model"
        folder.mkdir(exist_ok=True)
        path = folder / "m.gguf"
        path.write_bytes(bytes(data[:cut]))
        before = harness.snapshot(str(folder))
        outcome = harness.run_in_process(["analyze", str(path), "--format", "json", "--max-memory", "256M"])
        harness.check(outcome, str(folder), before)
        if outcome.code == 0:
            json.loads(outcome.stdout)

    run()


def test_a_gguf_pairs_row_by_row_with_the_safetensors_it_came_from(tmp_path):
    """`irtools.finetune.compare(QUANTIZED, ORIGINAL)` (what `analyze --base` runs) pairs every GGUF row
    with the original's by name: a BF16 GGUF of the same values is at distance 0, a Q4_0 one is not."""
    from safetensors.numpy import save_file

    from irtools.finetune import compare

    x = {"model.embed_tokens.weight": RNG.standard_normal((96, 64)).astype(np.float32),
         "model.layers.0.self_attn.q_proj.weight": RNG.standard_normal((64, 64)).astype(np.float32),
         "model.layers.0.mlp.down_proj.weight": RNG.standard_normal((64, 128)).astype(np.float32)}
    import ml_dtypes

    x = {k: v.astype(ml_dtypes.bfloat16).astype(np.float32) for k, v in x.items()}
    save_file({k: v.astype(ml_dtypes.bfloat16) for k, v in x.items()}, str(tmp_path / "model.safetensors"))
    to_gguf = {"model.embed_tokens.weight": "token_embd.weight", "model.layers.0.self_attn.q_proj.weight":
               "blk.0.attn_q.weight", "model.layers.0.mlp.down_proj.weight": "blk.0.ffn_down.weight"}
    for qtype in (Q.BF16, Q.Q4_0):
        path = _write(tmp_path / f"m-{qtype.name}.gguf", {to_gguf[k]: (v, qtype) for k, v in x.items()})
        result = compare(path, str(tmp_path / "model.safetensors"), models=False)
        assert not result.skipped and len(result.details) == 3
        distances = result.details.set_index("name").dist_euclidean
        assert (distances == 0).all() if qtype == Q.BF16 else (distances > 0).all(), (qtype, distances)


# -- big-endian files (gguf's writer with GGUFEndian.BIG; llama.cpp's s390x files) -------------------------------
def _to_big_endian(path, monkeypatch) -> str:
    """A copy of a little-endian GGUF converted to big-endian by gguf's own converter
    (gguf/scripts/gguf_convert_endian.py: header fields, plain tensors and each block's f16 fields)."""
    import argparse
    import builtins
    import shutil

    convert = pytest.importorskip("gguf.scripts.gguf_convert_endian")
    big = str(path).replace(".gguf", "-be.gguf")
    shutil.copy(path, big)
    monkeypatch.setattr(builtins, "input", lambda *_: "YES")  # the converter asks before it rewrites
    reader = gguf.GGUFReader(big, "r+")
    convert.convert_byteorder(reader, argparse.Namespace(order="big", dry_run=False))
    del reader
    assert gguf.GGUFReader(big).endianess == gguf.GGUFEndian.BIG
    return big


def _finite_blocks(qtype, rows: int, f16_at: tuple[int, ...]) -> np.ndarray:
    """Random blocks of `qtype` (one a row) whose f16 fields at `f16_at` are finite scales."""
    _, size = gguf.GGML_QUANT_SIZES[qtype]
    raw = RNG.integers(0, 256, (rows, size), dtype=np.uint8)
    for at in f16_at:
        raw[:, at:at + 2] = RNG.uniform(0.1, 1, (rows, 1)).astype(np.float16).view(np.uint8)
    return raw


def test_a_big_endian_gguf_gives_the_same_rows_as_the_little_endian_one(tmp_path, monkeypatch):
    """Every type gguf's converter can turn big-endian (F32, F16, BF16, Q8_0, Q4_0, Q4_K, Q6_K, MXFP4):
    the big-endian file's tensors equal the little-endian file's bit for bit, under the same names,
    and analyze gives the same rows."""
    x = {name: RNG.standard_normal(shape).astype(np.float32) for name, shape in (
        ("token_embd.weight", (96, 64)), ("blk.0.attn_q.weight", (64, 64)), ("blk.0.attn_k.weight", (32, 64)),
        ("blk.0.ffn_down.weight", (64, 128)), ("blk.0.attn_v.weight", (32, 64)), ("blk.1.attn_q.weight", (64, 64)),
        ("output_norm.weight", (64,)))}
    types = {"token_embd.weight": Q.Q8_0, "blk.0.attn_q.weight": Q.Q4_0, "blk.0.attn_k.weight": Q.BF16,
             "blk.0.ffn_down.weight": Q.F16, "blk.0.attn_v.weight": Q.MXFP4, "blk.1.attn_q.weight": Q.Q8_0,
             "output_norm.weight": Q.F32}
    raw = {"blk.1.attn_k.weight": (_finite_blocks(Q.Q4_K, 8, (0, 2)), Q.Q4_K),
           "blk.1.ffn_down.weight": (_finite_blocks(Q.Q6_K, 8, (208,)), Q.Q6_K)}
    little = _write(tmp_path / "m.gguf", {n: (x[n], types[n]) for n in x}, raw=raw)
    big = _to_big_endian(little, monkeypatch)
    assert open(big, "rb").read() != open(little, "rb").read()
    a, b = read_weights(little), read_weights(big)
    assert b.metadata["byte_order"] == "big-endian" and a.metadata["byte_order"] == "little-endian"
    assert {k: v for k, v in a.metadata.items() if k != "byte_order"} == \
        {k: v for k, v in b.metadata.items() if k != "byte_order"}
    assert list(a) == list(b) and len(a) == 9 and not b.skipped
    for name in a:
        got, want = b[name].load(), a[name].load()
        assert got.dtype == want.dtype == np.float32 and got.dtype.isnative and b[name].storage == a[name].storage
        np.testing.assert_array_equal(got, want, err_msg=name)
    # the little-endian values are gguf's own dequantization (so equality is not two equal mistakes)
    np.testing.assert_array_equal(a["model.layers.1.self_attn.k_proj.weight"].load(),
                                  gguf.quants.dequantize(raw["blk.1.attn_k.weight"][0], Q.Q4_K))
    ra, rb = irtools.analyze(little, min_evals=1).details, irtools.analyze(big, min_evals=1).details
    assert list(ra.name) == list(rb.name) and len(ra) == 8
    np.testing.assert_array_equal(ra.alpha.to_numpy(), rb.alpha.to_numpy())


def test_a_big_endian_type_with_no_defined_byte_order_is_skipped_by_name(tmp_path):
    """gguf's writer with GGUFEndian.BIG swaps plain arrays itself; a Q4_1 tensor (a type gguf's converter
    does not define big-endian) is skipped with its type named, the F32, F16, F64 and I16 tensors read as
    in the little-endian file."""
    x = RNG.standard_normal((16, 64)).astype(np.float32)
    paths = {}
    for order in (gguf.GGUFEndian.LITTLE, gguf.GGUFEndian.BIG):
        path = str(tmp_path / f"m-{order.name}.gguf")
        w = gguf.GGUFWriter(path, "llama", endianess=order)
        w.add_block_count(1)
        w.add_tensor("blk.0.attn_q.weight", x)
        w.add_tensor("blk.0.attn_k.weight", x.astype(np.float16))
        w.add_tensor("blk.0.attn_v.weight", gguf.quants.quantize(x, Q.Q4_1), raw_dtype=Q.Q4_1)
        w.add_tensor("blk.0.ffn_up.weight", x.astype(np.float64))
        w.add_tensor("blk.0.ffn_gate.weight", (x * 1000).astype(np.int16))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        paths[order.name] = path
    a, b = read_weights(paths["LITTLE"]), read_weights(paths["BIG"])
    assert not a.skipped and "model.layers.0.self_attn.v_proj.weight" in a
    assert [s["name"] for s in b.skipped] == ["model.layers.0.self_attn.v_proj.weight"]
    assert "Q4_1 in a big-endian file" in b.skipped[0]["reason"] and "\n" not in b.skipped[0]["reason"]
    for name in ("model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight",
                 "model.layers.0.mlp.up_proj.weight", "model.layers.0.mlp.gate_proj.weight"):
        np.testing.assert_array_equal(b[name].load(), a[name].load())
        assert b[name].load().dtype == a[name].load().dtype and b[name].load().dtype.isnative
    np.testing.assert_array_equal(b["model.layers.0.mlp.gate_proj.weight"].load(), (x * 1000).astype(np.int16))
    np.testing.assert_array_equal(b["model.layers.0.self_attn.q_proj.weight"].load(), x)
    opened = open_source(paths["BIG"])
    assert [s["name"] for s in opened.skipped if "Q4_1" in s["reason"]] in (["model.layers.0.self_attn.v_proj"],
                                                                           ["model.layers.0.self_attn.v_proj.weight"])


# -- names of fused and expert tensors, with and without transformers -----------------------------------------
MOE = {  # label: (GGUF architecture, transformers config class, its arguments)
    "phi3": ("phi3", "Phi3Config", {"intermediate_size": 64, "pad_token_id": 0}),  # fused qkv_proj, gate_up_proj
    "falcon": ("falcon", "FalconConfig", {"new_decoder_architecture": False, "multi_query": True}),  # fused qkv
    "qwen2moe": ("qwen2moe", "Qwen2MoeConfig", {"intermediate_size": 64, "moe_intermediate_size": 16, "num_experts": 4,
                                                "shared_expert_intermediate_size": 16, "num_experts_per_tok": 2}),
    "mixtral": ("llama", "MixtralConfig", {"intermediate_size": 64, "num_local_experts": 4}),  # llama.cpp: "llama"
}


def _convert_like_llama_cpp(state: dict, arch: str, path) -> str:
    """A checkpoint's tensors written as llama.cpp's converter writes them (gguf's own tensor-name map; the
    experts' `experts.N.w` matrices merged into one (E, out, in) stack under `experts.w`, as its MoE models
    do), F32 so that the values are the checkpoint's exactly."""
    import re

    forward = gguf.get_tensor_name_map(next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == arch), 2)
    merged: dict = {}
    for name, value in state.items():
        m = re.match(r"(.*\.experts)\.(\d+)\.(.*)$", name)
        if m:
            merged.setdefault(f"{m[1]}.{m[3]}", {})[int(m[2])] = value
        else:
            merged[name] = value
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(2)
    for name, value in merged.items():
        if isinstance(value, dict):
            value = np.stack([value[e] for e in sorted(value)])
        gname = forward.get_name(name, try_suffixes=(".weight", ".bias"))
        assert gname, name  # every tensor of these architectures has a GGUF name
        w.add_tensor(gname, np.ascontiguousarray(value, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return str(path)


def _names_child(arch: str, blocks: int) -> set[str]:
    """The reader's child program (gguf_file._NAMES_CHILD) run in this process: transformers' module paths."""
    import contextlib
    import io
    import logging
    import warnings

    from irtools.frontends.formats import gguf_file

    out = io.StringIO()
    argv = sys.argv
    try:
        sys.argv = ["names", json.dumps(gguf_file.model_types(arch)), str(blocks)]
        with warnings.catch_warnings(), contextlib.redirect_stdout(out):
            exec(compile(gguf_file._NAMES_CHILD, "names", "exec"), {"__name__": "__main__"})
    finally:
        sys.argv = argv
        logging.disable(logging.NOTSET)
    names = set(json.loads(out.getvalue().strip().splitlines()[-1]))
    assert names, arch  # transformers builds the architecture
    return names


@pytest.mark.parametrize("label", sorted(MOE))
def test_fused_and_expert_tensors_line_up_with_the_safetensors_route(tmp_path, monkeypatch, label):
    """A checkpoint saved by transformers (`save_pretrained`: fused qkv/gate_up, experts one matrix each) and
    the GGUF llama.cpp's converter would make of it: the GGUF's rows are the safetensors route's rows, name
    for name and value for value, with transformers importable and with it absent (gguf's map alone)."""
    transformers = pytest.importorskip("transformers")
    from safetensors.numpy import load_file

    from irtools.frontends.formats import gguf_file

    arch, config, extra = MOE[label]
    cfg = getattr(transformers, config)(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, vocab_size=64,
                                        **({"num_key_value_heads": 2} if "multi_query" not in extra else {}), **extra)
    folder = tmp_path / "hf"
    transformers.AutoModelForCausalLM.from_config(cfg).save_pretrained(str(folder))
    checkpoint = str(folder / "model.safetensors")
    state = load_file(checkpoint)
    assert any(k in n for n in state for k in ("experts.0.", "qkv_proj", "query_key_value")), sorted(state)
    path = _convert_like_llama_cpp(state, arch, tmp_path / "m.gguf")
    want_rows = {layer.name for layer in open_source(checkpoint).layers}
    for absent in (False, True):
        # transformers' names as the reader's child process finds them, its program run here (a child would
        # import torch and transformers again: 20 s on two busy cores)
        monkeypatch.setattr(gguf_file, "_NAMES_CACHE", {} if absent else {(arch, 2): _names_child(arch, 2)})
        if absent:
            monkeypatch.setitem(sys.modules, "transformers", None)  # `import transformers` fails, find_spec is None
            assert gguf_file._build_transformers_names(arch, 2) == set()
        got = read_weights(path)
        assert set(got) <= set(state), (absent, sorted(set(got) - set(state)))
        for name, t in got.items():
            np.testing.assert_array_equal(t.load(), state[name], err_msg=name)
        assert {layer.name for layer in open_source(path).layers} == want_rows, absent


@pytest.mark.parametrize("case, message", [("2^40 tensors", "declares 1099511627776 tensors"),
                                           ("2^40 metadata entries", "1099511627776 metadata entries"),
                                           ("truncated", "outside the file|truncated"),
                                           ("tensor past the file", "lies outside the file")])
def test_a_hostile_big_endian_gguf_is_one_line_within_budget(tmp_path, case, message):
    """The big-endian header is checked as the little-endian one: counts read in the file's byte order."""
    path = str(tmp_path / "be.gguf")
    w = gguf.GGUFWriter(path, "llama", endianess=gguf.GGUFEndian.BIG)
    w.add_tensor("blk.0.attn_q.weight", RNG.standard_normal((32, 64)).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    data = bytearray(open(path, "rb").read())
    assert read_weights(path).metadata["byte_order"] == "big-endian"  # the untouched file reads
    if case == "2^40 tensors":
        data[8:16] = struct.pack(">Q", 1 << 40)
    elif case == "2^40 metadata entries":
        data[16:24] = struct.pack(">Q", 1 << 40)
    elif case == "truncated":
        data = data[: len(data) - 100]
    else:  # the tensor's offset (its info's last 8 bytes, just before the data's alignment padding)
        info = data.index(b"blk.0.attn_q.weight") + len("blk.0.attn_q.weight")
        data[info + 4 + 16 + 4:info + 4 + 16 + 4 + 8] = struct.pack(">Q", 1 << 40)
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(bytes(data))
    tracemalloc.start()
    with pytest.raises(IrtoolsError, match=message) as err:
        read_weights(str(bad))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert "\n" not in str(err.value) and peak < 8 << 20, (str(err.value), peak)
