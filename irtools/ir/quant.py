"""Dequantisation of quantized weights: DequantizeLinear and (numba) MatMulNBits unpacking.

Weights stored as int8/uint8/int4 with scales and zero points become float64 matrices
before spectral analysis.
"""

from __future__ import annotations

import numpy as np
from numba import njit


def dequantize_linear(q: np.ndarray, scale: np.ndarray, zero: np.ndarray | None, axis: int = 1,
                      block_size: int = 0) -> np.ndarray:
    """ONNX DequantizeLinear in float64: per-tensor, per-axis (1-D scale along `axis`) or blocked."""
    q = np.asarray(q).astype(np.float64)
    scale = np.asarray(scale, dtype=np.float64)
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


def dequantize_matmul_nbits(packed: np.ndarray, scales: np.ndarray, zeros: np.ndarray | None, n: int, k: int,
                            block_size: int, bits: int = 4) -> np.ndarray:
    """com.microsoft MatMulNBits weight B (N, blocks, blob) -> float64 (N, K)."""
    packed = np.ascontiguousarray(packed, dtype=np.uint8).reshape(n, -1, block_size * bits // 8)
    has_zero = zeros is not None and zeros.dtype == np.uint8
    z = np.ascontiguousarray(zeros, dtype=np.uint8).ravel() if has_zero else np.zeros(1, np.uint8)
    return _unpack_nbits(packed, np.asarray(scales, dtype=np.float64).ravel(), z, n, k, block_size, bits, has_zero)
