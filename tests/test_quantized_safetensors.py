"""Quantized safetensors checkpoints: each layout's dequantization against the library that
defines it, on fixtures that library wrote where it runs on CPU (transformers' FP8 quantizer and
dequantizer, transformers' MXFP4 converter, bitsandbytes' CPU quantize/dequantize, MLX's
quantize/dequantize, compressed-tensors' AutoAWQ converter and dequantize), and the rule that
every tensor of a file is a row, a skipped entry or the auxiliary of another tensor."""

from __future__ import annotations

import json
import types

import numpy as np
import pytest

from irtools.frontends import open_source
from irtools.frontends.weights_file import read_weights

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")
RNG = np.random.default_rng(11)


def _save(path, tensors: dict, config: dict | None = None) -> str:
    path.mkdir(exist_ok=True)
    safetensors_torch.save_file({k: v.contiguous() for k, v in tensors.items()}, str(path / "model.safetensors"))
    if config is not None:
        (path / "config.json").write_text(json.dumps(config))
    return str(path / "model.safetensors")


def _accounted(path):
    """Every tensor of the file is a row, a skipped entry, an auxiliary or a vector (1-D)."""
    opened = open_source(path, trust=False)
    stored = read_weights(path, dequantize=False)
    raw = read_weights(path)
    rows = {layer.parameter for layer in opened.layers}
    skipped = {s["parameter"] for s in opened.skipped}
    for name, t in stored.items():
        owner = raw.auxiliary.get(name, name)
        assert owner in rows or owner in skipped or len(t.shape) < 2, f"{name} is neither a row nor skipped"
    return opened


# -- FP8 ---------------------------------------------------------------------------------------------
def _fp8_quantize(w: torch.Tensor, block):
    from transformers.integrations.finegrained_fp8 import Fp8Quantize

    quantizer = types.SimpleNamespace(quantization_config=types.SimpleNamespace(weight_block_size=list(block),
                                                                                 scale_fmt=None))
    out = Fp8Quantize(quantizer).convert({"m.weight": w})
    return out["m.weight"], out["m.weight_scale_inv"]


def test_fp8_block_weights_are_rows_equal_to_transformers_dequantize(tmp_path):
    """The model makers' FP8 layout (F8_E4M3 + 2-D weight_scale_inv, bf16 embeddings), written by
    transformers' own `Fp8Quantize` and compared with its `Fp8Dequantize._dequantize_one`: every FP8
    weight is a row (it was silently dropped) and no scale is a row or a skipped entry."""
    from transformers.integrations.finegrained_fp8 import Fp8Dequantize

    block = (16, 16)
    tensors, want = {"model.embed_tokens.weight": torch.randn(64, 32).to(torch.bfloat16)}, {}
    for name, shape in (("model.layers.0.self_attn.q_proj", (32, 32)), ("model.layers.0.mlp.down_proj", (32, 64)),
                        ("model.layers.0.mlp.up_proj", (64, 32))):
        q, s = _fp8_quantize(torch.randn(*shape), block)
        tensors[f"{name}.weight"], tensors[f"{name}.weight_scale_inv"] = q, s
        want[name] = Fp8Dequantize(None)._dequantize_one(q, s, torch.float32).numpy()
    path = _save(tmp_path / "fp8", tensors, {"quantization_config": {"quant_method": "fp8",
                                                                      "weight_block_size": list(block)}})
    opened = _accounted(path)
    rows = {layer.name: layer for layer in opened.layers}
    assert set(rows) == {"model.embed_tokens", *want} and not opened.skipped
    for name, w in want.items():
        assert rows[name].extra == {"storage": "F8_E4M3 block 16x16"}
        np.testing.assert_array_equal(rows[name].matrices()[0], w)
    assert opened.metadata["quantization"] == {"F8_E4M3": 3}
    import irtools  # the report, end to end: the FP8 weights are rows, no scale is a skipped "layer"

    a = irtools.analyze(path, min_evals=1)
    assert set(a.details.name) == {"model.embed_tokens", *want} and not a.skipped
    assert set(a.details.storage.dropna()) == {"F8_E4M3 block 16x16"}


def test_fp8_partial_blocks_and_per_tensor_scales(tmp_path):
    """A last block cut short (transformers' `_dequantize_fp8_weight`, which allows it) and a
    per-tensor `weight_scale` (compressed-tensors' FP8 layout, also `_dequantize_one`'s (1, 1) grid)."""
    from transformers.integrations.finegrained_fp8 import Fp8Dequantize, _dequantize_fp8_weight

    w = torch.randn(40, 24).to(torch.float8_e4m3fn)
    s = torch.rand(3, 2) + 0.5  # 16x16 blocks over 40x24: the last row and column blocks partial
    t = torch.randn(16, 16).to(torch.float8_e5m2)
    ts = torch.tensor([0.37])
    path = _save(tmp_path / "p", {"a.weight": w, "a.weight_scale_inv": s, "b.weight": t, "b.weight_scale": ts},
                 {"quantization_config": {"weight_block_size": [16, 16]}})
    got = read_weights(path)
    np.testing.assert_array_equal(got["a.weight"].load(), _dequantize_fp8_weight(w, s, [16, 16], torch.float32).numpy())
    np.testing.assert_array_equal(got["b.weight"].load(),
                                  Fp8Dequantize(None)._dequantize_one(t, ts.reshape(1, 1), torch.float32).numpy())
    assert got["a.weight"].storage == "F8_E4M3 block 16x16" and got["b.weight"].storage == "F8_E5M2 per-tensor"
    assert got.auxiliary == {"a.weight_scale_inv": "a.weight", "b.weight_scale": "b.weight"}


def test_a_weight_that_cannot_be_dequantized_is_skipped_never_dropped(tmp_path):
    """An FP8 weight whose scale does not tile it, an integer matrix no format claims and a bool
    mask: each a skipped entry with its reason; an FP8 weight without any scale is its own values."""
    path = _save(tmp_path / "bad", {"a.weight": torch.randn(32, 32).to(torch.float8_e4m3fn),
                                    "a.weight_scale_inv": torch.ones(40, 40),
                                    "b.weight": torch.randint(0, 9, (16, 16), dtype=torch.int32),
                                    "c.mask": torch.ones(8, 8, dtype=torch.bool),
                                    "d.weight": torch.randn(16, 16).to(torch.float8_e4m3fn)})
    opened = _accounted(path)
    reasons = {s["name"]: s["reason"] for s in opened.skipped}
    assert set(reasons) == {"a.weight", "b.weight", "c.mask"}
    assert "does not tile" in reasons["a.weight"] and "int32" in reasons["b.weight"] and "bool" in reasons["c.mask"]
    assert [(layer.name, layer.extra) for layer in opened.layers] == [("d", {"storage": "float8_e4m3fn"})]


# -- MXFP4 --------------------------------------------------------------------------------------------
def test_mxfp4_experts_equal_transformers_convert_moe_packed_tensors(tmp_path):
    """gpt-oss's layout (`*_blocks` uint8 (E, out, G, 16), `*_scales` uint8 (E, out, G)): blocks built
    from the format (any byte is two E2M1 codes), checked against transformers'
    `convert_moe_packed_tensors`, which also transposes to the parameter's (E, in, out)."""
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    blocks = torch.from_numpy(RNG.integers(0, 256, (2, 24, 2, 16), dtype=np.uint8))
    scales = torch.from_numpy(RNG.integers(120, 134, (2, 24, 2), dtype=np.uint8))
    name = "model.layers.0.mlp.experts.gate_up_proj"
    path = _save(tmp_path / "mx", {f"{name}_blocks": blocks, f"{name}_scales": scales,
                                   "model.layers.0.mlp.router.weight": torch.randn(2, 64)})
    got = read_weights(path)[name]
    want = convert_moe_packed_tensors(blocks, scales, dtype=torch.float32).numpy()
    assert got.shape == want.shape == (2, 64, 24) and got.storage == "MXFP4 block 32"
    np.testing.assert_array_equal(got.load(), want)
    rows = {layer.name: layer for layer in _accounted(path).layers}
    assert set(rows) == {"model.layers.0.mlp.experts.gate_up_proj[0]", "model.layers.0.mlp.experts.gate_up_proj[1]",
                         "model.layers.0.mlp.router"}
    np.testing.assert_array_equal(rows["model.layers.0.mlp.experts.gate_up_proj[1]"].matrices()[0], want[1])
    assert rows["model.layers.0.mlp.experts.gate_up_proj[1]"].extra == {"storage": "MXFP4 block 32", "expert": 1}


# -- bitsandbytes -------------------------------------------------------------------------------------
@pytest.mark.parametrize("quant_type, nested, dtype", [("nf4", False, torch.float16), ("nf4", True, torch.bfloat16),
                                                       ("fp4", True, torch.float32)])
def test_bitsandbytes_4bit_equals_its_cpu_dequantize(tmp_path, quant_type, nested, dtype):
    """A Linear weight quantized by bitsandbytes' own `quantize_4bit` (CPU), saved as transformers saves
    it (`QuantState.as_dict(packed=True)` beside the packed weight), read back equal to bitsandbytes'
    `dequantize_4bit` bit for bit."""
    bnb_f = pytest.importorskip("bitsandbytes.functional")
    w = torch.randn(48, 64, dtype=dtype)
    q, state = bnb_f.quantize_4bit(w, blocksize=64, quant_type=quant_type, compress_statistics=nested)
    tensors = {"m.proj.weight": q, **{f"m.proj.weight.{k}": v for k, v in state.as_dict(packed=True).items()}}
    path = _save(tmp_path / "bnb", tensors)
    got = read_weights(path)
    assert set(got) == {"m.proj.weight"}
    np.testing.assert_array_equal(got["m.proj.weight"].load().astype(np.float32),
                                  bnb_f.dequantize_4bit(q, state).float().numpy())
    assert got["m.proj.weight"].storage == f"bitsandbytes {quant_type.upper()} block 64"
    assert _accounted(path).layers[0].extra["storage"].startswith("bitsandbytes")


def test_bitsandbytes_int8_equals_its_dequantize(tmp_path):
    bnb_f = pytest.importorskip("bitsandbytes.functional")
    w = torch.randn(32, 48)
    cb, scb, _ = bnb_f.int8_vectorwise_quant(w)
    path = _save(tmp_path / "i8", {"m.fc.weight": cb, "m.fc.SCB": scb})
    got = read_weights(path)["m.fc.weight"]
    np.testing.assert_array_equal(got.load(), bnb_f.int8_vectorwise_dequant(cb, scb).numpy())
    assert got.storage == "bitsandbytes int8 per-row"


# -- GPTQ / AWQ ------------------------------------------------------------------------------------------
def _pack_rows(values: np.ndarray, bits: int) -> np.ndarray:
    """int values (rows, cols) packed along the rows into int32 words, lowest bits first."""
    per = 32 // bits
    v = values.astype(np.uint32).reshape(values.shape[0] // per, per, values.shape[1])
    return (v << (np.arange(per, dtype=np.uint32) * bits)[None, :, None]).sum(axis=1, dtype=np.uint32).view(np.int32)


def test_gptq_equals_gptqmodel_dequantize_weight_arithmetic(tmp_path):
    """GPTQ (v1 checkpoint format, act-order g_idx). gptqmodel/auto-gptq do not install here (CUDA
    builds), so the reference is gptqmodel's `TorchQuantLinear.dequantize_weight` arithmetic written
    with torch's own bit ops: zeros and weights unpacked by `bitwise_right_shift` with the
    `wf` shift table, zeros + 1 (v1 -> v2), `scales[g_idx] * (weight - zeros[g_idx])`, transposed.
    The fixture is a round trip: integer codes chosen first, packed, and the codes recovered."""
    bits, group, n_in, n_out = 4, 16, 64, 24
    codes = RNG.integers(0, 16, (n_in, n_out))
    zeros = RNG.integers(1, 15, (n_in // group, n_out))
    scales = (RNG.uniform(0.01, 0.1, (n_in // group, n_out))).astype(np.float16)
    g_idx = RNG.permutation(np.arange(n_in) // group).astype(np.int32)
    qweight = _pack_rows(codes, bits)
    qzeros = _pack_rows((zeros - 1).T, bits).T.copy()  # v1 stores zero - 1, packed along the output dim
    path = _save(tmp_path / "gptq", {"m.q_proj.qweight": torch.from_numpy(qweight),
                                     "m.q_proj.qzeros": torch.from_numpy(qzeros),
                                     "m.q_proj.scales": torch.from_numpy(scales),
                                     "m.q_proj.g_idx": torch.from_numpy(g_idx), "m.q_proj.bias": torch.zeros(n_out)},
                 {"quantization_config": {"quant_method": "gptq", "bits": 4, "group_size": group}})
    wf = torch.arange(0, 32, bits, dtype=torch.int32)
    tq, tz, ts, tg = (torch.from_numpy(a) for a in (qweight, qzeros, scales, g_idx))
    z = torch.bitwise_and(torch.bitwise_right_shift(tz.unsqueeze(2).expand(-1, -1, 8), wf.view(1, 1, 8)), 15)
    z = z.reshape(ts.shape) + 1
    w = torch.bitwise_and(torch.bitwise_right_shift(tq.unsqueeze(1).expand(-1, 8, -1), wf.view(1, 8, 1)), 15)
    w = w.reshape(-1, w.shape[2])
    want = (ts[tg.long()] * (w - z[tg.long()]).to(torch.float16)).T.numpy()
    got = read_weights(path)["m.q_proj.weight"]
    assert got.shape == (n_out, n_in) and got.storage == "GPTQ int4 group 16"
    np.testing.assert_array_equal(got.load(), want)
    np.testing.assert_array_equal(got.load().T, scales[g_idx] * (codes - zeros[g_idx]).astype(np.float16))


def test_awq_equals_compressed_tensors_conversion_and_dequantize(tmp_path):
    """AutoAWQ GEMM tensors (random packed words: every 4-bit code is valid) converted by
    compressed-tensors' own `AutoAWQConverter` (its unpacking and AWQ order reversal) and
    dequantized by compressed-tensors' `dequantize` with group strategy: equal to the reader's."""
    pytest.importorskip("compressed_tensors")
    from compressed_tensors.entrypoints.convert.converters.autoawq import AutoAWQConverter
    from compressed_tensors.quantization import QuantizationArgs
    from compressed_tensors.quantization.lifecycle.forward import dequantize

    n_in, n_out, group = 64, 32, 16
    qweight = torch.from_numpy(RNG.integers(-2**31, 2**31 - 1, (n_in, n_out // 8), dtype=np.int64).astype(np.int32))
    qzeros = torch.from_numpy(RNG.integers(-2**31, 2**31 - 1, (n_in // group, n_out // 8), dtype=np.int64)
                              .astype(np.int32))
    scales = torch.rand(n_in // group, n_out, dtype=torch.float16) / 10
    path = _save(tmp_path / "awq", {"m.o_proj.qweight": qweight, "m.o_proj.qzeros": qzeros, "m.o_proj.scales": scales},
                 {"quantization_config": {"quant_method": "awq", "bits": 4, "group_size": group}})
    conv = AutoAWQConverter(bits=4, group_size=group)
    q, s, z = conv._convert_gemm_module(qweight, scales, qzeros)
    args = QuantizationArgs(num_bits=4, strategy="group", group_size=group, symmetric=False)
    want = dequantize(q, s, z, args).numpy()
    got = read_weights(path)["m.o_proj.weight"]
    assert got.shape == (n_out, n_in) and got.storage == "AWQ int4 group 16"
    np.testing.assert_array_equal(got.load(), want)


# -- MLX -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bits, group", [(4, 64), (8, 32), (2, 32), (3, 32), (6, 64)])
def test_mlx_affine_equals_mlx_dequantize(tmp_path, bits, group):
    """Weights quantized by MLX's own `mx.quantize`, saved as mlx-lm saves them (uint32 weight,
    scales, biases; bits and group size in config.json's `quantization`), read back equal to
    `mx.dequantize` bit for bit."""
    mx = pytest.importorskip("mlx.core")
    w = mx.array(RNG.standard_normal((16, 128)).astype(np.float32)).astype(mx.float16)
    try:
        q, s, b = mx.quantize(w, group_size=group, bits=bits)
    except ValueError as exc:
        pytest.skip(f"this MLX does not quantize {bits} bits: {exc}")
    want = np.array(mx.dequantize(q, s, b, group_size=group, bits=bits).astype(mx.float32))
    words = torch.from_numpy(np.array(q).astype(np.uint32).view(np.int32)).view(torch.uint32)
    path = _save(tmp_path / f"mlx{bits}", {"model.layers.0.mlp.down_proj.weight": words,
                                           "model.layers.0.mlp.down_proj.scales": torch.from_numpy(np.array(s)),
                                           "model.layers.0.mlp.down_proj.biases": torch.from_numpy(np.array(b))},
                 {"quantization": {"group_size": group, "bits": bits}})
    got = read_weights(path)["model.layers.0.mlp.down_proj.weight"]
    assert got.shape == (16, 128) and got.storage == f"MLX affine int{bits} group {group}"
    np.testing.assert_array_equal(got.load().astype(np.float32), want)


# -- compressed-tensors pack-quantized ----------------------------------------------------------------------
@pytest.mark.parametrize("bits, strategy, symmetric", [(4, "group", False), (4, "channel", True), (8, "group", True),
                                                      (3, "group", False)])
def test_compressed_tensors_pack_quantized_equals_its_decompress(tmp_path, bits, strategy, symmetric):
    """Weights packed by compressed-tensors' own `PackedQuantizationCompressor.compress` (its quantize
    and `pack_to_int32`), read back equal to its `decompress` (its `unpack_from_int32` and `dequantize`)."""
    pytest.importorskip("compressed_tensors")
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    out_f, in_f, group = 24, 64, 16
    args = QuantizationArgs(num_bits=bits, strategy=strategy, symmetric=symmetric,
                            group_size=group if strategy == "group" else None)
    scheme = QuantizationScheme(targets=["Linear"], weights=args)
    groups = in_f // group if strategy == "group" else 1
    scale = (torch.rand(out_f, groups) / 10 + 0.01).to(torch.bfloat16)
    half = 1 << (bits - 1)
    zp = None if symmetric else torch.randint(-half, half, (out_f, groups), dtype=torch.int8)
    state = {"weight": torch.randn(out_f, in_f).to(torch.bfloat16), "weight_scale": scale}
    if zp is not None:
        state["weight_zero_point"] = zp
    packed = PackedQuantizationCompressor.compress(state, scheme)
    want = PackedQuantizationCompressor.decompress(packed, scheme)["weight"].float().numpy()
    config = {"quantization_config": {"quant_method": "compressed-tensors", "format": "pack-quantized",
                                      "config_groups": {"group_0": {"targets": ["Linear"], "weights": args.model_dump()}}}}
    path = _save(tmp_path / "ct", {f"m.up_proj.{k}": v for k, v in packed.items()}, config)
    got = read_weights(path)["m.up_proj.weight"]
    assert got.shape == (out_f, in_f) and got.storage.startswith(f"compressed-tensors int{bits}")
    np.testing.assert_array_equal(got.load().astype(np.float32), want)
    assert not _accounted(path).skipped


# -- bands: every dequantization writes its output a band of rows at a time ------------------------------------
def _band_cases():
    import ml_dtypes

    from irtools.ir import quant

    def words(*shape):
        return RNG.integers(-2**31, 2**31 - 1, shape, dtype=np.int64).astype(np.int32)

    def f16(*shape):
        return RNG.uniform(0.01, 0.1, shape).astype(np.float16)

    def bf16(*shape):
        return RNG.uniform(0.01, 0.1, shape).astype(np.float32).astype(ml_dtypes.bfloat16)

    codes4 = RNG.integers(0, 256, (7 * 64 + 5) * 40 // 2 + 3, dtype=np.uint8)
    return {  # name: (function of no arguments, rows of its output's banded axis, bytes of one band row)
        "gptq": (lambda: quant.gptq(words(7, 24), words(7, 3), f16(7, 24), RNG.permutation(np.arange(56) % 7), 4, 8),
                 56, 24 * 4, 8),
        "gptq 2-bit": (lambda: quant.gptq(words(5, 24), words(5, 24 // 16 + 1), f16(5, 24), None, 2, 16), 80, 96, 16),
        "awq": (lambda: quant.awq(words(50, 3), words(5, 3), f16(5, 24), 4, 10), 50, 24 * 4, 1),
        "awq no zeros": (lambda: quant.awq(words(50, 3), None, f16(5, 24), 4, 10), 50, 24 * 4, 1),
        "mlx 4-bit": (lambda: quant.mlx_affine(words(37, 8).view(np.uint32), f16(37, 2), f16(37, 2), 4, 32), 37, 64 * 4,
                      1),
        "mlx 3-bit": (lambda: quant.mlx_affine(words(37, 6).view(np.uint32), bf16(37, 2), bf16(37, 2), 3, 32), 37,
                      64 * 4 * 3, 1),
        "nf4": (lambda: quant.bnb_4bit(codes4, RNG.uniform(0.1, 1, -(-(7 * 64 + 5) * 40 // 64)).astype(np.float32),
                                       np.sort(RNG.uniform(-1, 1, 16)).astype(np.float32), 64, (7 * 64 + 5, 40),
                                       np.float16), (7 * 64 + 5) * 40 // 64, 64 * 4, 1),
        "blockwise": (lambda: quant.blockwise_codes(RNG.integers(0, 256, 999, dtype=np.uint8),
                                                    RNG.uniform(0.1, 1, 16).astype(np.float32),
                                                    RNG.uniform(-1, 1, 256).astype(np.float32), 64), 16, 64 * 4, 1),
        "int8": (lambda: quant.int8_rowwise(RNG.integers(-127, 128, (45, 33), dtype=np.int8),
                                            RNG.uniform(0.1, 3, 45).astype(np.float32)), 45, 33 * 4, 1),
        "fp8 per-tensor": (lambda: quant.fp8_blocks(RNG.standard_normal((45, 33)).astype(
            ml_dtypes.float8_e4m3fn), np.float32(0.3)), 45, 33 * 4, 1),
        "fp8 blocks": (lambda: quant.fp8_blocks(RNG.standard_normal((2, 45, 33)).astype(
            ml_dtypes.float8_e4m3fn), RNG.uniform(0.1, 1, (2, 3, 3)).astype(np.float32), (16, 16)),
            16, 33 * 4, 1),
        "mxfp4": (lambda: quant.mxfp4(RNG.integers(0, 256, (3, 13, 2, 16), dtype=np.uint8),
                                      RNG.integers(120, 134, (3, 13, 2), dtype=np.uint8)), 3 * 13 * 2, 32 * 4, 1),
        "pack-quantized 4-bit": (lambda: quant.pack_quantized(words(29, 8), bf16(29, 4), words(4, 4), (29, 64), 4),
                                 29, 64 * 4, 1),
        "pack-quantized 3-bit": (lambda: quant.pack_quantized(words(29, 6), bf16(29, 1), None, (29, 64), 3),
                                 29, 64 * 4 * 3, 1),
    }


@pytest.mark.parametrize("case", sorted(_band_cases()))
def test_bands_change_no_value(monkeypatch, case):
    """A tensor whose rows are not a whole number of bands (bands of a few rows, the last one short)
    dequantizes bit for bit as in one band: the bands only bound the temporaries."""
    from irtools.ir import quant

    make, rows, row_bytes, multiple = _band_cases()[case]
    state = RNG.bit_generator.state
    monkeypatch.setattr(quant, "CHUNK_BYTES", 1 << 40)
    whole = make()
    RNG.bit_generator.state = state  # the same inputs again
    k = next(k for k in range(2, rows) if rows % (k * multiple))  # bands of k * multiple rows, the last one short
    monkeypatch.setattr(quant, "CHUNK_BYTES", row_bytes * k * multiple)
    step = quant.chunk_rows(row_bytes, multiple)
    assert 1 < step < rows and rows % step, (step, rows)  # several bands, the last one partial
    banded = make()
    assert banded.dtype == whole.dtype and banded.shape == whole.shape and banded.strides == whole.strides
    np.testing.assert_array_equal(banded, whole)
    assert np.isfinite(whole.astype(np.float32)).any()


# -- hostile quantized checkpoints: members that do not fit are skipped entries, never a traceback -------------
def _i32(*shape):
    return torch.from_numpy(RNG.integers(-2**31, 2**31 - 1, shape, dtype=np.int64).astype(np.int32))


def _state(**fields):
    return torch.from_numpy(np.frombuffer(json.dumps(fields).encode(), np.uint8).copy())


GPTQ = {"quantization_config": {"quant_method": "gptq", "bits": 4, "group_size": 16}}
HOSTILE = {  # case: (tensors of the weight "m", config, words its skipped reason holds)
    "GPTQ scales disagree with qweight": (
        lambda: {"m.qweight": _i32(8, 32), "m.qzeros": _i32(4, 4), "m.scales": torch.rand(4, 40, dtype=torch.float16)},
        GPTQ, "do not fit"),
    "GPTQ g_idx past the groups": (
        lambda: {"m.qweight": _i32(8, 32), "m.qzeros": _i32(4, 4), "m.scales": torch.rand(4, 32, dtype=torch.float16),
                 "m.g_idx": torch.full((64,), 7, dtype=torch.int32)}, GPTQ, "g_idx points past the 4 groups"),
    "GPTQ g_idx of floats": (
        lambda: {"m.qweight": _i32(8, 32), "m.qzeros": _i32(4, 4), "m.scales": torch.rand(4, 32, dtype=torch.float16),
                 "m.g_idx": torch.zeros(64)}, GPTQ, "not one integer group a row"),
    "GPTQ 3-bit": (lambda: {"m.qweight": _i32(8, 32), "m.qzeros": _i32(4, 4),
                            "m.scales": torch.rand(4, 32, dtype=torch.float16)},
                   {"quantization_config": {"quant_method": "gptq", "bits": 3}}, "3-bit"),
    "AWQ qzeros disagree with scales": (
        lambda: {"m.qweight": _i32(64, 4), "m.qzeros": _i32(3, 4), "m.scales": torch.rand(4, 32, dtype=torch.float16)},
        {"quantization_config": {"quant_method": "awq", "bits": 4, "group_size": 16}}, "qzeros"),
    "MLX scales disagree with the weight": (
        lambda: {"m.weight": _i32(16, 8).view(torch.uint32), "m.scales": torch.rand(16, 3, dtype=torch.float16),
                 "m.biases": torch.rand(16, 3, dtype=torch.float16)},
        {"quantization": {"bits": 4, "group_size": 32}}, "do not fit"),
    "MLX without bits": (
        lambda: {"m.weight": _i32(16, 8).view(torch.uint32), "m.scales": torch.rand(16, 2, dtype=torch.float16),
                 "m.biases": torch.rand(16, 2, dtype=torch.float16)}, None, "without bits and group_size"),
    "int8 SCB of another length": (
        lambda: {"m.weight": torch.randint(-127, 127, (16, 16), dtype=torch.int8), "m.SCB": torch.rand(15)}, None,
        "do not fit"),
    "MXFP4 blocks of 15 bytes": (
        lambda: {"m_blocks": torch.randint(0, 255, (16, 2, 15), dtype=torch.uint8),
                 "m_scales": torch.randint(120, 130, (16, 2), dtype=torch.uint8)}, None, "do not fit"),
    "NF4 state not JSON": (
        lambda: {"m.weight": torch.randint(0, 255, (128, 1), dtype=torch.uint8),
                 "m.weight.quant_state.bitsandbytes__nf4": torch.tensor([1, 2, 255], dtype=torch.uint8),
                 "m.weight.absmax": torch.rand(4), "m.weight.quant_map": torch.rand(16)}, None, "not a JSON object"),
    "NF4 state shape past the packed bytes": (
        lambda: {"m.weight": torch.randint(0, 255, (128, 1), dtype=torch.uint8),
                 "m.weight.quant_state.bitsandbytes__nf4": _state(shape=[1 << 20, 1 << 20], blocksize=64,
                                                                  dtype="float16", quant_type="nf4"),
                 "m.weight.absmax": torch.rand(4), "m.weight.quant_map": torch.rand(16)}, None,
        "holds fewer than the 1099511627776 values"),
    "FP8 scale of another grid": (
        lambda: {"m.weight": torch.randn(32, 32).to(torch.float8_e4m3fn), "m.weight_scale_inv": torch.ones(2, 3, 5)},
        None, "does not fit weight [32, 32]"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_quantized_group_that_does_not_fit_is_skipped_in_one_line(tmp_path, case):
    import tracemalloc

    import irtools

    make, config, words = HOSTILE[case]
    path = _save(tmp_path / "bad", {**make(), "n.weight": torch.randn(16, 16)}, config)
    _accounted(path)  # once untraced: first-use imports are not the file's cost
    tracemalloc.start()
    opened = _accounted(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    reasons = {s["name"]: s["reason"] for s in opened.skipped}
    weight = "m" if case.startswith("MXFP4") else "m.weight"
    assert set(reasons) == {weight}, reasons
    assert words in reasons[weight] and "\n" not in reasons[weight], reasons[weight]
    assert [layer.name for layer in opened.layers] == ["n"] and peak < 8 << 20
    assert list(irtools.analyze(path, min_evals=1).details.name) == ["n"]  # the rest is analysed
