"""Power-law fit of an empirical spectral density, as WeightWatcher 0.7.x does it, in numba.

Every eigenvalue but the largest is an xmin candidate; for each, the MLE alpha of the tail
(cumulative sums make every alpha O(1)) and the KS distance D between the fitted and the
empirical tail CDF; the candidate with the smallest D wins (the first one on ties). The
reference scans every tail fully, O(n^2); here a candidate's scan stops as soon as its D
cannot beat the best so far, which selects the same xmin. Fewer than 20 eigenvalues use the
reference's bias-corrected small-sample variant.

The numba kernels live in `irtools.passes.spectral._fitkernels`, imported on first use: importing numba takes
a quarter of a second, which the spectral pass hides in a thread behind its first eigensolve.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

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


_READY = threading.Event()  # set once the fit kernels are loaded in this process


def warm_up() -> None:
    """Import numba and load the compiled fit kernels from its cache (about 0.5 s on first use in
    a process). The spectral pass calls this in a thread while the first eigenvalues are
    computed, which hold no GIL, so that the load is hidden behind them."""
    fit_power_law(np.linspace(1.0, 2.0, SMALL_N_CUTOFF + 8))  # imports numba and the kernels
    fit_power_law(np.linspace(1.0, 2.0, 16))
    _READY.set()


def kernels_ready() -> bool:
    """Whether a fit can run now without waiting for numba (see `warm_up`)."""
    return _READY.is_set()


def fit_power_law(evals: np.ndarray, thresh: float = EVALS_THRESH) -> PowerLawFit:
    """Fit a power law to the eigenvalues `evals` (any order) the way WeightWatcher does."""
    from irtools.passes.spectral._fitkernels import _fit_small, _fit_standard

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
