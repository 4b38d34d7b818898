"""Power-law fit of an empirical spectral density, as WeightWatcher 0.7.x does it, in numba.

Every eigenvalue but the largest is an xmin candidate; for each, the MLE alpha of the tail
(cumulative sums make every alpha O(1)) and the KS distance D between the fitted and the
empirical tail CDF; the candidate with the smallest D wins (the first one on ties). The
reference scans every tail fully, O(n^2); here a candidate's scan stops as soon as its D
cannot beat the best so far, which selects the same xmin. Fewer than 20 eigenvalues use the
reference's bias-corrected small-sample variant.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

#: Eigenvalues at or below this are dropped before the fit (WeightWatcher's EVALS_THRESH).
EVALS_THRESH = 1e-5
#: Below this many eigenvalues the small-sample variant is used.
SMALL_N_CUTOFF = 20


@dataclass(frozen=True, slots=True)
class PowerLawFit:
    """Result of `fit_power_law`; alpha etc. are NaN when the fit failed (see `status`)."""

    alpha: float
    xmin: float
    xmax: float
    D: float
    sigma: float
    num_pl_spikes: int
    status: str  # "success" or why it failed


@njit(cache=True)
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


@njit(cache=True)
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


@njit(cache=True)
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


def warm_up() -> None:
    """Load the compiled fit kernels from numba's cache (0.3 s on first use in a process). The
    spectral pass calls this in a thread while the first eigenvalues are computed, which hold no
    GIL, so that the load is hidden behind them."""
    fit_power_law(np.linspace(1.0, 2.0, SMALL_N_CUTOFF + 8))
    fit_power_law(np.linspace(1.0, 2.0, 16))


def fit_power_law(evals: np.ndarray, thresh: float = EVALS_THRESH) -> PowerLawFit:
    """Fit a power law to the eigenvalues `evals` (any order) the way WeightWatcher does."""
    evals = np.asarray(evals, dtype=np.float64)
    x = np.sort(evals[evals > thresh])
    nan = float("nan")
    if x.size < 2:
        return PowerLawFit(nan, nan, nan, nan, nan, 0, f"failed: {x.size} eigenvalue(s) above {thresh:g}")
    if x.size < SMALL_N_CUTOFF:
        i, alpha, d = _fit_small(x, 8)
        if i < 0:  # the reference falls back to the whole sample
            n = x.size
            s = float(np.sum(np.log(x)) - n * np.log(x[0]))
            if s <= 1e-12:
                return PowerLawFit(nan, nan, nan, nan, nan, 0, "failed: the eigenvalues are all equal")
            i, alpha = 0, 1.0 + (n - 1.0) / s
            d = float(np.max(np.abs(np.arange(n) / n - (1.0 - (x / x[0]) ** (1.0 - alpha)))))
    else:
        i, alpha, d = _fit_standard(x)
        if not alpha > 1.0:
            return PowerLawFit(nan, nan, nan, nan, nan, 0, "failed: no xmin gives alpha > 1")
    n_tail = x.size - i
    xmin = float(x[i])
    return PowerLawFit(
        alpha=float(alpha), xmin=xmin, xmax=float(x[-1]), D=float(d), sigma=float((alpha - 1.0) / np.sqrt(n_tail)),
        num_pl_spikes=int(np.count_nonzero(evals >= xmin)), status="success",
    )
