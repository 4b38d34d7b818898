"""numba.cuda kernels of `irtools.passes.spectral._cudafit` (imported only when a CUDA fit runs).

`cuda` and `math` are module globals so that numba's CUDA simulator can stand in for them.
"""

from __future__ import annotations

import math
import os

from numba import config, cuda, float64, int64

# the simulator runs every thread in Python: small blocks (numba-cuda may keep its config elsewhere)
_SIMULATED = bool(getattr(config, "ENABLE_CUDASIM", 0)) or os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")
#: Threads per block of `candidates`, and of `select` (a power of two for its tree reduction).
CANDIDATE_THREADS = 8 if _SIMULATED else 128
SELECT_THREADS = 8 if _SIMULATED else 256


@cuda.jit(device=True, cache=True)
def ks_distance(log_x, base, i, n_all, alpha):
    """max_k |1 - (x_{i+k}/x_i)^(1-alpha) - k/n| over the whole tail (the CPU's term)."""
    n = n_all - i
    worst = 0.0
    for k in range(n):
        if alpha == math.inf:  # an all-equal tail: the ratio is 1 at x = xmin, as on the CPU
            ratio = 1.0 if log_x[base + i + k] == log_x[base + i] else 0.0
        else:
            ratio = math.exp((1.0 - alpha) * (log_x[base + i + k] - log_x[base + i]))
        d = abs(1.0 - ratio - k / n)
        if d > worst:
            worst = d
    return worst


@cuda.jit(cache=True)
def candidates(log_x, starts, cstarts, layer_of, small, k_min, alphas, ds, js):
    """Thread t: candidate t of layer layer_of[t] (alpha; D, 1 if not computed; J, inf if not)."""
    t = cuda.grid(1)
    if t >= layer_of.shape[0]:
        return
    layer = layer_of[t]
    base = starts[layer]
    n_all = starts[layer + 1] - base
    i = t - cstarts[layer]
    n = n_all - i
    acc = 0.0
    for j in range(n_all - 1, i - 1, -1):  # the CPU's tail sum, in its order
        acc += log_x[base + j]
    alphas[t] = 0.0
    ds[t] = 1.0
    js[t] = math.inf
    if small[layer] == 0:
        s = acc - n * log_x[base + i]
        alpha = 1.0 + n / s if s != 0.0 else math.inf
        alphas[t] = alpha
        if alpha > 1.0:
            ds[t] = ks_distance(log_x, base, i, n_all, alpha)
        return
    if n < k_min:
        return
    s = acc - n * log_x[base + i]
    if s <= 1e-12:
        return
    alpha = 1.0 + (n - 1.0) / s
    alphas[t] = alpha
    if alpha <= 1.0:
        return
    d = ks_distance(log_x, base, i, n_all, alpha)
    ds[t] = d
    js[t] = d - 0.868 / math.sqrt(n)


@cuda.jit(cache=True)
def select(ds, js, use_j, cstarts, best):
    """Block l: the index (within layer l) of its smallest key, D or J, the first one on ties."""
    layer = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    key_s = cuda.shared.array(SELECT_THREADS, float64)
    idx_s = cuda.shared.array(SELECT_THREADS, int64)
    lo = cstarts[layer]
    hi = cstarts[layer + 1]
    key = math.inf
    idx = hi
    for t in range(lo + tid, hi, SELECT_THREADS):  # ascending t: each thread keeps its first minimum
        v = js[t] if use_j[layer] else ds[t]
        if v < key:
            key = v
            idx = t
    key_s[tid] = key
    idx_s[tid] = idx
    cuda.syncthreads()
    step = SELECT_THREADS // 2
    while step > 0:
        if tid < step:
            k2 = key_s[tid + step]
            i2 = idx_s[tid + step]
            if k2 < key_s[tid] or (k2 == key_s[tid] and i2 < idx_s[tid]):
                key_s[tid] = k2
                idx_s[tid] = i2
        cuda.syncthreads()
        step //= 2
    if tid == 0:
        # every key inf (a small spectrum with no qualifying candidate): numpy's argmin says 0
        best[layer] = idx_s[0] - lo if idx_s[0] < hi else 0
