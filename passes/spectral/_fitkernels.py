"""numba kernels of `irtools.passes.spectral.powerlaw` (kept apart so that importing irtools does not import numba).

Scans are written as plain loops over log-eigenvalues; `nogil` lets the spectral pass fit one
layer while another thread's eigensolve runs.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def _ks_distance(log_x, i, alpha, bound):
    """max_k |1 - (x_{i+k}/x_i)^(1-alpha) - k/n| over the tail, stopping once it reaches `bound`."""
    n = log_x.shape[0] - i
    worst = 0.0
    for k in range(n):
        d = abs(1.0 - np.exp((1.0 - alpha) * (log_x[i + k] - log_x[i])) - k / n)
        if d > worst:
            worst = d
            if worst >= bound:
                return worst
    return worst


@njit(cache=True, nogil=True)
def _fit_standard(x):
    n_all = x.shape[0]
    log_x = np.log(x)
    tail_sum = np.empty(n_all)  # sum of log x over x[i:]
    acc = 0.0
    for i in range(n_all - 1, -1, -1):
        acc += log_x[i]
        tail_sum[i] = acc
    m = n_all - 1
    alphas = np.empty(m)
    for i in range(m):
        n = n_all - i
        alphas[i] = 1.0 + n / (tail_sum[i] - n * log_x[i])
    best_i = 0
    best_d = np.inf
    # seed the bound with a coarse pass so that most full scans stop early
    step = max(1, m // 64)
    for i in range(0, m, step):
        d = _ks_distance(log_x, i, alphas[i], np.inf) if alphas[i] > 1.0 else 1.0
        if d < best_d:
            best_d, best_i = d, i
    for i in range(m):
        if i % step == 0:
            continue
        if alphas[i] > 1.0:
            d = _ks_distance(log_x, i, alphas[i], best_d if i > best_i else np.nextafter(best_d, np.inf))
        else:
            d = 1.0
        if d < best_d or (d == best_d and i < best_i):
            best_d, best_i = d, i
    return best_i, alphas[best_i], best_d


@njit(cache=True, nogil=True)
def _fit_small(x, k_min):
    n_all = x.shape[0]
    log_x = np.log(x)
    best_j = np.inf
    best_i = -1
    best_alpha = 0.0
    best_d = 1.0
    for i in range(n_all - 1):
        n = n_all - i
        if n < k_min:
            continue
        s = 0.0
        for k in range(i, n_all):
            s += log_x[k]
        s -= n * log_x[i]
        if s <= 1e-12:
            continue
        alpha = 1.0 + (n - 1.0) / s
        if alpha <= 1.0:
            continue
        d = _ks_distance(log_x, i, alpha, np.inf)
        j = d - 0.868 / np.sqrt(n)
        if j < best_j:
            best_j, best_i, best_alpha, best_d = j, i, alpha, d
    return best_i, best_alpha, best_d
