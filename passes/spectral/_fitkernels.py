"""numba kernels of `irtools.passes.spectral.powerlaw` (kept apart so that importing irtools does not import numba).

Every kernel takes the log-eigenvalues (computed once by numpy, so that the CPU and the CUDA fits
start from the same bits) and writes its arithmetic exactly as the CUDA kernels of
`irtools.passes.spectral._cudafit` do: tail sums accumulated from the largest eigenvalue down,
alpha = 1 + n / (tail sum - n ln xmin) (inf when that is 0), the KS term
|1 - exp((1 - alpha)(ln x - ln xmin)) - k/n| (with the ratio 1 where x = xmin).
`nogil` lets the spectral pass fit one layer while another thread's eigensolve runs.
"""

from __future__ import annotations

import numpy as np
from irtools._jit import jit


@jit(nogil=True)
def _tail_sums(log_x):
    """sum(log_x[i:]) for every i, accumulated from the top (the order the CUDA threads use)."""
    n_all = log_x.shape[0]
    out = np.empty(n_all)
    acc = 0.0
    for i in range(n_all - 1, -1, -1):
        acc += log_x[i]
        out[i] = acc
    return out


@jit(nogil=True)
def _ks_term(log_x, i, k, n, alpha, infinite):
    """|1 - (x_{i+k}/x_i)^(1-alpha) - k/n|: one point of the KS distance of the tail from x_i."""
    if infinite:  # an all-equal tail: the ratio is 1 at x = xmin (numpy's 1.0 ** -inf), not NaN
        ratio = 1.0 if log_x[i + k] == log_x[i] else 0.0
    else:
        ratio = np.exp((1.0 - alpha) * (log_x[i + k] - log_x[i]))
    return abs(1.0 - ratio - k / n)


@jit(nogil=True)
def _ks_distance(log_x, i, alpha, bound):
    """max_k |1 - (x_{i+k}/x_i)^(1-alpha) - k/n| over the tail, stopping once it reaches `bound`."""
    return _ks_bounded(log_x, i, alpha, bound, -1)[0]


@jit(nogil=True)
def _ks_bounded(log_x, i, alpha, bound, probe):
    """`_ks_distance(log_x, i, alpha, bound)` that looks first at index `probe` of log_x (where the
    previous candidate's scan reached its bound; neighbouring candidates' worst points are close;
    -1: nowhere): (the value, the index where it reached `bound` or -1). A value >= bound, wherever
    it was found, rules the candidate out exactly as the full scan would; otherwise the whole tail
    is scanned in order and the maximum is the full scan's, bit for bit."""
    n = log_x.shape[0] - i
    infinite = alpha == np.inf
    k = probe - i
    if probe >= 0 and 0 <= k < n:
        d = _ks_term(log_x, i, k, n, alpha, infinite)
        if d >= bound:
            return d, probe
    worst = 0.0
    for k in range(n):
        d = _ks_term(log_x, i, k, n, alpha, infinite)
        if d > worst:
            worst = d
            if worst >= bound:
                return worst, i + k
    return worst, -1


@jit(nogil=True)
def _fit_standard(log_x):
    """(index of xmin, alpha, D) of the candidate with the smallest D, the first one on ties.

    A candidate with alpha <= 1 has D = 1, as in the reference. A candidate's scan stops as soon
    as its D cannot beat the best so far (seeded by a coarse pass over every 64th of the candidates,
    itself bounded), which selects the same xmin, and reports the same D, as full scans."""
    n_all = log_x.shape[0]
    tail_sum = _tail_sums(log_x)
    m = n_all - 1
    alphas = np.empty(m)
    for i in range(m):
        n = n_all - i
        s = tail_sum[i] - n * log_x[i]
        alphas[i] = 1.0 + n / s if s != 0.0 else np.inf  # s = 0: an all-equal tail (numpy's n / 0.0)
    best_i = 0
    best_d = np.inf
    step = max(1, m // 64)
    probe = -1
    # The coarse pass runs from the top of the spectrum down (short tails first: the best xmin of a
    # layer's ESD is usually high, so its D bounds the long tails' scans early) and is bounded too: a
    # scan stops once its D exceeds the best so far, so a D it returns at or below that is the full
    # scan's, and the lower index wins ties (what scanning upwards and keeping the first gives).
    for i in range((m - 1) // step * step, -1, -step):
        if alphas[i] > 1.0:
            d, at = _ks_bounded(log_x, i, alphas[i], np.nextafter(best_d, np.inf), probe)
            if at >= 0:
                probe = at
        else:
            d = 1.0
        if d <= best_d:
            best_d, best_i = d, i
    for i in range(m):
        if i % step == 0:
            continue
        if alphas[i] > 1.0:
            d, at = _ks_bounded(log_x, i, alphas[i], best_d if i > best_i else np.nextafter(best_d, np.inf), probe)
            if at >= 0:
                probe = at
        else:
            d = 1.0
        if d < best_d or (d == best_d and i < best_i):
            best_d, best_i = d, i
    return best_i, alphas[best_i], best_d


@jit(nogil=True)
def _small_candidates(log_x, k_min):
    """The reference's small-sample arrays: per candidate the bias-corrected alpha = 1 + (n-1)/s,
    the KS distance D and J = D - 0.868/sqrt(n). Candidates with tails shorter than `k_min` or
    s <= 1e-12 keep alpha 0, D 1 and J = inf (WeightWatcher's initial values)."""
    n_all = log_x.shape[0]
    tail_sum = _tail_sums(log_x)
    m = n_all - 1
    alphas = np.zeros(m)
    ds = np.ones(m)
    js = np.full(m, np.inf)
    for i in range(m):
        n = n_all - i
        if n < k_min:
            continue
        s = tail_sum[i] - n * log_x[i]
        if s <= 1e-12:
            continue
        alpha = 1.0 + (n - 1.0) / s
        alphas[i] = alpha
        if alpha <= 1.0:
            continue
        d = _ks_distance(log_x, i, alpha, np.inf)
        ds[i] = d
        js[i] = d - 0.868 / np.sqrt(n)
    return alphas, ds, js


@jit(nogil=True)
def _fit_candidates(log_x, candidates):
    """(index of xmin, alpha, D) of the candidate (indices into log_x, ascending) with the smallest D, the
    first one on ties: the standard alpha = 1 + n / (tail sum - n ln xmin) for every tail size. A scan
    stops as soon as its D cannot beat the best so far."""
    n_all = log_x.shape[0]
    tail_sum = _tail_sums(log_x)
    best_i = candidates[0]
    best_alpha = np.inf
    best_d = np.inf
    probe = -1
    for c in range(candidates.shape[0]):
        i = candidates[c]
        n = n_all - i
        s = tail_sum[i] - n * log_x[i]
        alpha = 1.0 + n / s if s != 0.0 else np.inf
        d, at = _ks_bounded(log_x, i, alpha, best_d, probe)
        if at >= 0:
            probe = at
        if d < best_d:
            best_d, best_i, best_alpha = d, i, alpha
    return best_i, best_alpha, best_d


@jit(nogil=True)
def _fit_standard_rows(evals, log_evals, starts):
    """`_fit_standard` of many spectra at once, with what `powerlaw.finish` counts: for each row r of
    `evals` (sorted ascending) the fit of its tail evals[r, starts[r]:] (the eigenvalues above the cut,
    at least two), from `log_evals` = np.log(evals) (numpy's, elementwise: a row's tail has the bits
    np.log gives the tail alone). Returns per row (index of xmin in the tail, alpha, D, the count of
    the row's eigenvalues >= xmin): one call instead of a Python round trip per layer."""
    rows, size = evals.shape
    index = np.empty(rows, dtype=np.int64)
    alphas = np.empty(rows)
    ds = np.empty(rows)
    spikes = np.empty(rows, dtype=np.int64)
    for r in range(rows):
        start = starts[r]
        i, alpha, d = _fit_standard(log_evals[r, start:])
        index[r] = i
        alphas[r] = alpha
        ds[r] = d
        xmin = evals[r, start + i]
        count = 0
        for j in range(size):
            if evals[r, j] >= xmin:
                count += 1
        spikes[r] = count
    return index, alphas, ds, spikes
