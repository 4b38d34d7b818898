"""Dequantisation of quantized weights: DequantizeLinear and (numba) MatMulNBits unpacking.

Weights stored as int8/uint8/int4 with scales and zero points become float64 matrices
before spectral analysis.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit


def dequantize_problem(q_shape, scale_shape, zero_shape, axis: int = 1, block_size: int = 0) -> str | None:
    """Why a DequantizeLinear of these shapes is not one ONNX defines, or None. The result has the
    quantized tensor's shape, never a broadcast of it: the scale (and a zero point, of the scale's shape)
    is one value, one per index of `axis` (1-D), or, with `block_size`, q's shape with `axis` cut into
    blocks of that size."""
    q_shape, scale_shape = tuple(q_shape), tuple(scale_shape)
    if zero_shape is not None and tuple(zero_shape) != scale_shape and not (
            math.prod(zero_shape) == 1 == math.prod(scale_shape) and len(zero_shape) <= 1 and len(scale_shape) <= 1):
        return f"zero point of shape {tuple(zero_shape)} for a scale of shape {scale_shape}"
    if len(scale_shape) <= 1 and math.prod(scale_shape) == 1 and block_size <= 0:
        return None
    if not q_shape or not -len(q_shape) <= axis < len(q_shape):
        return f"axis {axis} of a tensor of shape {q_shape}"
    axis %= len(q_shape)
    if block_size > 0:
        want = list(q_shape)
        want[axis] = -(-q_shape[axis] // block_size)
        if scale_shape != tuple(want):
            return f"scale of shape {scale_shape} for {q_shape} in blocks of {block_size} along axis {axis} " \
                   f"(expected {tuple(want)})"
        return None
    if scale_shape != (q_shape[axis],):
        return f"scale of shape {scale_shape} for a tensor of shape {q_shape} along axis {axis} " \
               f"(expected ({q_shape[axis]},))"
    return None


def dequantize_linear(q: np.ndarray, scale: np.ndarray, zero: np.ndarray | None, axis: int = 1,
                      block_size: int = 0) -> np.ndarray:
    """ONNX DequantizeLinear in float64: per-tensor, per-axis (1-D scale along `axis`) or blocked.
    Shapes ONNX does not define (`dequantize_problem`) raise ValueError rather than broadcast."""
    q, scale = np.asarray(q), np.asarray(scale)
    problem = dequantize_problem(q.shape, scale.shape, None if zero is None else np.shape(zero), axis, block_size)
    if problem:
        raise ValueError(f"DequantizeLinear: {problem}")
    q = q.astype(np.float64)
    scale = scale.astype(np.float64)
    zero = np.zeros_like(scale) if zero is None else np.asarray(zero).astype(np.float64)
    if scale.size == 1:
        return (q - zero.ravel()[0]) * scale.ravel()[0]
    axis %= q.ndim
    if block_size > 0:  # scale has q's shape with the axis cut into blocks
        idx = np.arange(q.shape[axis]) // block_size
        return (q - np.take(zero, idx, axis=axis)) * np.take(scale, idx, axis=axis)
    shape = [1] * q.ndim
    shape[axis] = -1
    return (q - zero.reshape(shape)) * scale.reshape(shape)


@njit(cache=True)
def _unpack_nbits(packed, scales, zeros, n_rows, k, block, bits, has_zero):
    out = np.empty((n_rows, k))
    per_byte = 8 // bits
    mask = (1 << bits) - 1
    n_blocks = (k + block - 1) // block
    zero_row_bytes = (n_blocks * bits + 7) // 8  # each row's zero points start on a byte
    default_zero = float(1 << (bits - 1))
    for r in range(n_rows):
        for c in range(k):
            b = c // block
            within = c - b * block
            byte = packed[r, b, within // per_byte]
            v = (byte >> ((within % per_byte) * bits)) & mask
            zp = default_zero
            if has_zero:
                zbyte = zeros[r * zero_row_bytes + b // per_byte]
                zp = float((zbyte >> ((b % per_byte) * bits)) & mask)
            out[r, c] = (v - zp) * scales[r * n_blocks + b]
    return out


def matmul_nbits_problem(n, k, block_size, bits, packed_size: int, scales_size: int,
                         zeros_size: int | None) -> str | None:
    """Why a MatMulNBits weight of these attributes and stored sizes cannot be unpacked, or None: the
    kernel indexes the stored arrays by the attributes, so each size must be the one they imply
    (bits 2, 4 or 8, block_size a power of two >= 16; B (N, ceil(K / block_size),
    block_size * bits / 8), one scale per row and block, zero points packed per row to whole bytes)."""
    if not all(isinstance(x, int | np.integer) for x in (n, k, block_size, bits)):
        return "attributes N, K, block_size and bits must be whole numbers"
    if bits not in (2, 4, 8):
        return f"bits={bits} (2, 4 or 8: codes packed whole into bytes)"
    if block_size < 16 or block_size & (block_size - 1):
        return f"block_size={block_size} (a power of two >= 16)"
    if n < 1 or k < 1:
        return f"N={n}, K={k} (each must be >= 1)"
    blocks = -(-k // block_size)
    if packed_size != n * blocks * (block_size * bits // 8):
        return (f"B holds {packed_size:,} bytes, but N={n:,}, K={k:,}, block_size={block_size}, bits={bits} "
                f"need {n * blocks * (block_size * bits // 8):,}")
    if scales_size != n * blocks:
        return f"{scales_size:,} scales, but N x ceil(K / block_size) = {n * blocks:,}"
    if zeros_size is not None and zeros_size != n * ((blocks * bits + 7) // 8):
        return f"{zeros_size:,} zero-point bytes, but N rows of {blocks:,} packed zero points need {n * ((blocks * bits + 7) // 8):,}"
    return None


def dequantize_matmul_nbits(packed: np.ndarray, scales: np.ndarray, zeros: np.ndarray | None, n: int, k: int,
                            block_size: int, bits: int = 4) -> np.ndarray:
    """com.microsoft MatMulNBits weight B (N, blocks, blob) -> float64 (N, K). Sizes that do not match the
    attributes (`matmul_nbits_problem`) raise ValueError: the kernel would read past the stored arrays."""
    packed, scales = np.asarray(packed), np.asarray(scales)
    has_zero = zeros is not None and np.asarray(zeros).dtype == np.uint8
    problem = matmul_nbits_problem(n, k, block_size, bits, packed.size, scales.size,
                                   np.asarray(zeros).size if has_zero else None)
    if problem:
        raise ValueError(f"MatMulNBits weight: {problem}")
    packed = np.ascontiguousarray(packed, dtype=np.uint8).reshape(n, -1, block_size * bits // 8)
    z = np.ascontiguousarray(zeros, dtype=np.uint8).ravel() if has_zero else np.zeros(1, np.uint8)
    return _unpack_nbits(packed, np.asarray(scales, dtype=np.float64).ravel(), z, n, k, block_size, bits, has_zero)


# -- checkpoint quantization formats (safetensors) ------------------------------------------------
# Each function reproduces the arithmetic of the code that defines the format, in the same
# float precision, so the values equal that code's bit for bit (tests/test_quantized_safetensors.py
# calls the defining library where it runs on CPU). Each writes one output array in bands of rows
# (`chunk_rows`): the unpacked codes, gathered scales and products exist only for a band at a time,
# so the peak is the output plus a few MB however large the matrix (benchmarks/dequant_memory.py);
# the arithmetic is elementwise, so the bands change no value.

#: About this many bytes of float output per band (the band's temporaries are a few times this).
CHUNK_BYTES = 4 << 20

#: MXFP4 / NVFP4 E2M1 values by 4-bit code (transformers.integrations.mxfp4.FP4_VALUES).
FP4_E2M1 = np.array([+0.0, +0.5, +1.0, +1.5, +2.0, +3.0, +4.0, +6.0,
                     -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0], np.float32)


def chunk_rows(row_bytes: int, multiple: int = 1) -> int:
    """Rows of `row_bytes` output bytes in one band of about CHUNK_BYTES, a multiple of `multiple` (>= 1 of them)."""
    rows = max(1, CHUNK_BYTES // max(int(row_bytes), 1))
    return max(multiple, rows // multiple * multiple)


def scale_as_float32(scale: np.ndarray) -> np.ndarray:
    """A stored scale as float32: float types as they are; a uint8 exponent (E8M0 stored as bytes,
    MXFP8/MXFP4) as 2^(byte - 127)."""
    scale = np.asarray(scale)
    if scale.dtype == np.uint8:
        return np.ldexp(np.float32(1), scale.astype(np.int32) - 127).astype(np.float32)
    return scale.astype(np.float32)


def fp8_blocks(q: np.ndarray, scale: np.ndarray, block: tuple[int, int] | None = None) -> np.ndarray:
    """FP8 weights (..., rows, cols) times their scales (per tensor, per row or per block): float32,
    as transformers' `Fp8Dequantize._dequantize_one` computes it (both sides in float32).
    `block` (rows, cols) of each scale; by default the weight's size over the scale grid's
    (rounded up: a last block may be partial, as `_dequantize_fp8_weight` allows)."""
    q = np.asarray(q)
    s = scale_as_float32(scale)
    rows, cols = q.shape[-2:]
    if s.ndim < 2:  # a per-tensor scalar or a per-row vector
        s = s.reshape(-1, 1) if s.size == rows and s.size > 1 else s.reshape(1, 1)
    grid_r, grid_c = s.shape[-2:]
    bm, bn = block or (-(-rows // grid_r), -(-cols // grid_c))
    if -(-rows // bm) != grid_r or -(-cols // bn) != grid_c:
        raise ValueError(f"scale grid {list(s.shape)} does not tile a {rows}x{cols} weight in {bm}x{bn} blocks")
    lead = q.shape[:-2]
    q3 = q.reshape(-1, rows, cols)
    s3 = np.broadcast_to(s, (*lead, grid_r, grid_c)).reshape(-1, grid_r, grid_c) if s.ndim > 2 or lead else \
        s.reshape(1, grid_r, grid_c)
    if s3.shape[0] == 1 and q3.shape[0] > 1:
        s3 = np.broadcast_to(s3, (q3.shape[0], grid_r, grid_c))
    out = np.empty(q3.shape, np.float32)
    step = chunk_rows(cols * 4)
    for e in range(q3.shape[0]):
        for i in range(grid_r):
            r0, r1 = i * bm, min((i + 1) * bm, rows)
            row_scale = np.repeat(s3[e, i], bn)[:cols]
            for r in range(r0, r1, step):
                np.multiply(q3[e, r:min(r + step, r1)].astype(np.float32), row_scale, out=out[e, r:min(r + step, r1)])
    return out.reshape(q.shape)


def mxfp4(blocks: np.ndarray, scales: np.ndarray, dtype=np.float32) -> np.ndarray:
    """MXFP4 blocks (..., G, 16 bytes: 32 E2M1 codes, low nibble first) with E8M0 exponents
    (..., G) -> (..., G * 32): `lut[code] * 2^(scale - 127)` (transformers'
    `_convert_moe_packed_tensors`, before its final transpose)."""
    blocks = np.asarray(blocks, np.uint8)
    scales = np.asarray(scales)
    if blocks.shape[:-1] != scales.shape:
        raise ValueError(f"MXFP4 blocks {list(blocks.shape)} and scales {list(scales.shape)} do not match")
    lut = FP4_E2M1.astype(dtype)
    width = blocks.shape[-1] * 2
    flat_b, flat_s = blocks.reshape(-1, blocks.shape[-1]), scales.reshape(-1)
    out = np.empty((flat_b.shape[0], width), dtype)
    step = chunk_rows(width * np.dtype(dtype).itemsize)
    for a in range(0, flat_b.shape[0], step):
        b, part = flat_b[a:a + step], out[a:a + step]
        part[:, 0::2] = lut[b & 0x0F]
        part[:, 1::2] = lut[b >> 4]
        part[...] = np.ldexp(part, flat_s[a:a + step].astype(np.int32)[:, None] - 127).astype(dtype)
    return out.reshape(*blocks.shape[:-2], blocks.shape[-2] * width)


def _times_absmax(values: np.ndarray, absmax: np.ndarray, blocksize: int, first_block: int) -> np.ndarray:
    """`values` (a run of whole blocks from block `first_block`, the last possibly partial) times each
    block's absmax, float32 (bitsandbytes' `_dequantize_blockwise_compute` product)."""
    n = values.size
    full = n - n % blocksize
    res = np.empty(n, np.float32)
    res[:full] = (values[:full].reshape(-1, blocksize) *
                  absmax[first_block:first_block + full // blocksize, None]).reshape(-1)
    if full < n:
        res[full:] = values[full:] * absmax[first_block + full // blocksize]
    return res


def blockwise_codes(codes: np.ndarray, absmax: np.ndarray, code: np.ndarray, blocksize: int) -> np.ndarray:
    """bitsandbytes' blockwise dequantization (`_dequantize_blockwise_compute`): code[byte] times
    its block's absmax, float32."""
    codes = np.asarray(codes).reshape(-1)
    code, absmax = np.asarray(code, np.float32), np.asarray(absmax, np.float32).reshape(-1)
    out = np.empty(codes.size, np.float32)
    step = chunk_rows(4 * blocksize) * blocksize
    for a in range(0, codes.size, step):
        out[a:a + step] = _times_absmax(code[codes[a:a + step].astype(np.intp)], absmax, blocksize, a // blocksize)
    return out


def bnb_4bit(packed: np.ndarray, absmax: np.ndarray, code: np.ndarray, blocksize: int, shape,
             dtype=np.float32) -> np.ndarray:
    """bitsandbytes NF4/FP4 (`_dequantize_4bit_compute`): two 4-bit codes a byte, high nibble
    first; code[nibble] times its block's absmax in float32, stored as `dtype`, in `shape`."""
    flat = np.asarray(packed).view(np.uint8).reshape(-1)
    n = int(np.prod(shape))
    code, absmax = np.asarray(code, np.float32), np.asarray(absmax, np.float32).reshape(-1)
    out = np.empty(n, dtype)
    step = chunk_rows(4 * blocksize) * blocksize * 2 // math.gcd(blocksize, 2)  # whole blocks, whole bytes
    for a in range(0, n, step):
        b = min(a + step, n)
        byte = flat[a // 2:(b + 1) // 2]
        idx = np.empty(byte.size * 2, np.uint8)
        idx[1::2] = byte & 0xF
        idx[::2] = byte >> 4
        out[a:b] = _times_absmax(code[idx[:b - a]], absmax, blocksize, a // blocksize)
    return out.reshape(shape)


def int8_rowwise(q: np.ndarray, scb: np.ndarray) -> np.ndarray:
    """bitsandbytes LLM.int8 weights: int8 x SCB (each row's absmax) / 127, float32, as
    transformers' `dequantize_bnb_weight` writes it (`* 7.874015718698502e-3`)."""
    q = np.asarray(q)
    scb = np.asarray(scb, np.float32).reshape(-1, 1)
    out = np.empty(q.shape, np.float32)
    step = chunk_rows(4 * math.prod(q.shape[1:]))
    for r in range(0, q.shape[0], step):
        out[r:r + step] = q[r:r + step].astype(np.float32) * scb[r:r + step] * np.float32(7.874015718698502e-3)
    return out


def _unpack_int32(packed: np.ndarray, bits: int, axis: int) -> np.ndarray:
    """The `bits`-wide fields of int32 words, lowest first, spread along `axis`."""
    words = np.asarray(packed).view(np.uint32)
    per = 32 // bits
    shifts = (np.arange(per, dtype=np.uint32) * bits)
    fields = (np.expand_dims(words, axis + 1) >> shifts.reshape([-1 if i == axis + 1 else 1
                                                                 for i in range(words.ndim + 1)])) & ((1 << bits) - 1)
    shape = list(words.shape)
    shape[axis] *= per
    return fields.reshape(shape).astype(np.int32)


def gptq(qweight: np.ndarray, qzeros: np.ndarray, scales: np.ndarray, g_idx: np.ndarray | None, bits: int,
         group_size: int, v1: bool = True) -> np.ndarray:
    """GPTQ packed int weights -> the Linear weight (out, in), in the scales' float type:
    `scales[g_idx] * (w - zeros[g_idx])` (gptqmodel's `dequantize_weight`), `qweight` (in*bits/32,
    out) packed along the input dim, `qzeros` (groups, out*bits/32) along the output; checkpoints
    in GPTQ's v1 format store each zero point minus one. Unpacked a band of input rows at a time."""
    qweight = np.asarray(qweight)
    per = 32 // bits
    n_in, n_out = qweight.shape[0] * per, qweight.shape[1]
    z = _unpack_int32(qzeros, bits, 1)[:, :n_out] + (1 if v1 else 0)
    g = np.arange(n_in) // group_size if g_idx is None else np.asarray(g_idx).astype(np.int64)
    s = np.asarray(scales)
    out = np.empty((n_in, n_out), s.dtype)
    step = chunk_rows(n_out * 4, per)
    for r in range(0, n_in, step):
        w = _unpack_int32(qweight[r // per:(r + step) // per], bits, 0)
        gi = g[r:r + step]
        np.multiply(s[gi], (w - z[gi]).astype(s.dtype), out=out[r:r + step])
    return out.T


AWQ_ORDER = (0, 4, 1, 5, 2, 6, 3, 7)  # compressed_tensors' AutoAWQConverter.AWQ_REVERSE_ORDER for 4 bits


def awq(qweight: np.ndarray, qzeros: np.ndarray | None, scales: np.ndarray, bits: int, group_size: int) -> np.ndarray:
    """AutoAWQ GEMM packed int4 -> the Linear weight (out, in), in the scales' float type:
    `(w - z) * s` per group, `qweight` (in, out*bits/32) packed along the output dim in AWQ's
    interleaved order (undone as compressed-tensors' `AutoAWQConverter.reverse_awq_order` does).
    Unpacked a band of input rows at a time."""
    qweight = np.asarray(qweight)
    per = 32 // bits
    n_in, n_out = qweight.shape[0], qweight.shape[1] * per
    order = np.arange(n_out).reshape(-1, per)[:, list(AWQ_ORDER)].reshape(-1)
    z = _unpack_int32(qzeros, bits, 1)[:, order] if qzeros is not None else None
    s = np.asarray(scales)
    g = np.arange(n_in) // group_size
    out = np.empty((n_in, n_out), s.dtype)
    step = chunk_rows(n_out * 4)
    for r in range(0, n_in, step):
        w = _unpack_int32(qweight[r:r + step], bits, 1)[:, order]
        gi = g[r:r + step]
        w -= z[gi] if z is not None else np.int32(1 << (bits - 1))
        np.multiply(w.astype(s.dtype), s[gi], out=out[r:r + step])
    return out.T


def _stream_fields(words: np.ndarray, bits: int, cols: int, dtype) -> np.ndarray:
    """The first `cols` `bits`-wide fields of each row's words read as one little-endian bit stream."""
    rows = words.shape[0]
    stream = np.unpackbits(np.ascontiguousarray(words).view(np.uint8).reshape(rows, -1), axis=1, bitorder="little")
    fields = stream[:, :cols * bits].reshape(rows, cols, bits).astype(dtype)
    return (fields << np.arange(bits, dtype=dtype)).sum(axis=2, dtype=dtype)


def mlx_affine(w: np.ndarray, scales: np.ndarray, biases: np.ndarray, bits: int, group_size: int) -> np.ndarray:
    """MLX affine quantization: `scales * q + biases` per group of `group_size` along the rows,
    `q` the `bits`-wide fields of the uint32 words read as one little-endian bit stream (so 3-,
    5- and 6-bit codes may straddle words), in the scales' float type. A band of rows at a time."""
    words = np.asarray(w).view(np.uint32)
    rows = words.shape[0]
    cols = words.shape[-1] * 32 // bits
    s, b = np.asarray(scales), np.asarray(biases)
    dtype = s.dtype
    g = np.arange(cols) // group_size
    out = np.empty((rows, cols), dtype)
    step = chunk_rows(cols * 4 * (1 if 32 % bits == 0 else bits))
    for r in range(0, rows, step):
        band = words[r:r + step]
        q = _unpack_int32(band, bits, 1) if 32 % bits == 0 else _stream_fields(band, bits, cols, np.uint32)
        out[r:r + step] = s[r:r + step][:, g] * q.astype(dtype) + b[r:r + step][:, g]
    return out


def unpack_int32_stream(packed: np.ndarray, bits: int, cols: int, signed_offset: bool = True) -> np.ndarray:
    """compressed-tensors' `unpack_from_int32` (packed along the last dim): element i of a row is
    the `bits` bits at bit position i*bits of the row's little-endian words, minus 2^(bits-1)
    (`pack_to_int32` stores the signed codes offset), as int32."""
    words = np.asarray(packed).view(np.uint32)
    q = _unpack_int32(words, bits, 1)[:, :cols] if 32 % bits == 0 else _stream_fields(words, bits, cols, np.int32)
    return q - (1 << (bits - 1)) if signed_offset else q


def pack_quantized(packed: np.ndarray, scale: np.ndarray, zero_packed: np.ndarray | None, shape, bits: int,
                   g_idx: np.ndarray | None = None) -> np.ndarray:
    """compressed-tensors' pack-quantized weights (`weight_packed`, `weight_scale`, optional
    `weight_zero_point` packed along the output dim, `weight_g_idx`) -> (out, in) in the scale's
    float type: `(q - z) * s`, the group of column j `g_idx[j]` or `j // (in / groups)` (channel
    and tensor scales broadcast), as `compressed_tensors...forward.dequantize` computes it. A band
    of output rows at a time."""
    out_f, in_f = (int(d) for d in shape)
    packed = np.asarray(packed)
    s = np.asarray(scale)
    dtype = s.dtype
    s2 = s.reshape(1, 1) if s.size == 1 else s.reshape(out_f, -1)
    groups = s2.shape[1]
    if g_idx is not None:
        cols = np.asarray(g_idx).astype(np.int64)
    else:
        cols = np.arange(in_f) // max(1, -(-in_f // groups))
    z = None
    if zero_packed is not None:
        z = unpack_int32_stream(np.ascontiguousarray(np.asarray(zero_packed).T), bits, out_f).T  # packed along dim 0
    out = np.empty((out_f, in_f), dtype)
    step = chunk_rows(in_f * 4 * (1 if 32 % bits == 0 else bits))
    for r in range(0, out_f, step):
        x = unpack_int32_stream(packed[r:r + step], bits, in_f).astype(dtype)
        if z is not None:
            zr = z[r:r + step]
            x = x - (zr[:, cols] if zr.shape[1] > 1 else zr).astype(dtype)
        sr = s2 if s2.shape[0] == 1 else s2[r:r + step]
        out[r:r + step] = x * (sr[:, cols] if groups > 1 else sr)
    return out
