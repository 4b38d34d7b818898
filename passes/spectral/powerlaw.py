"""Power-law fit of an empirical spectral density, as WeightWatcher 0.7.x does it, in numba.

Every eigenvalue but the largest is an xmin candidate; for each, the MLE alpha of the tail
(cumulative sums make every alpha O(1)) and the KS distance D between the fitted and the
empirical tail CDF; the candidate with the smallest D wins (the first one on ties). The
reference scans every tail fully, O(n^2); here a candidate's scan stops as soon as its D
cannot beat the best so far, which selects the same xmin.

Fewer than `SMALL_N_CUTOFF` eigenvalues use the reference's bias-corrected small-sample
variant: alpha = 1 + (n - 1) / sum ln(x / xmin), candidates only with tails of at least
`SMALL_N_K_MIN`. WeightWatcher 0.7.7 first picks the candidate of smallest
J = D - 0.868 / sqrt(n), then `WWFit.__init__` overwrites that choice with the candidate of
smallest D, and reports the latter: `small_n_xmin="D"` (the default) reproduces what it
reports, `"J"` keeps the J choice. When no candidate qualifies (fewer than `SMALL_N_K_MIN`
eigenvalues above the cut), the whole sample is the tail. There the reference reports
sigma = -1 / sqrt(n) (its sigma array is filled before that fallback alpha is computed);
irtools reports (alpha - 1) / sqrt(n) like everywhere else.

The selection rules here (`choose`, `finish`) are shared with the CUDA fit
(`irtools.passes.spectral._cudafit`), which computes the same candidate arrays on a GPU.
The numba kernels live in `irtools.passes.spectral._fitkernels`, imported on first use: importing
numba takes a quarter of a second, which the spectral pass hides in a thread behind its first eigensolve.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import numpy as np

#: Eigenvalues at or below this are dropped before the fit (WeightWatcher's EVALS_THRESH).
EVALS_THRESH = 1e-5
#: Below this many eigenvalues the small-sample variant is used.
SMALL_N_CUTOFF = 20
#: Shortest tail the small-sample variant considers.
SMALL_N_K_MIN = 8
#: How the small-sample variant picks xmin: the key minimised (first index on ties).
SMALL_N_RULES = {
    "D": "smallest KS distance D (what WeightWatcher 0.7.7 reports)",
    "J": "smallest J = D - 0.868/sqrt(n) (WeightWatcher's intermediate choice)",
}


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


def check_rule(small_n_xmin: str) -> str:
    if small_n_xmin not in SMALL_N_RULES:
        raise ValueError(f"small_n_xmin must be one of {', '.join(SMALL_N_RULES)}, not {small_n_xmin!r}")
    return small_n_xmin


def tail_data(evals: np.ndarray, thresh: float = EVALS_THRESH) -> tuple[np.ndarray, np.ndarray]:
    """The sorted eigenvalues above `thresh` and their natural logs (the fit's input)."""
    evals = np.asarray(evals, dtype=np.float64)
    x = np.sort(evals[evals > thresh])
    return x, np.log(x)


def too_few(x: np.ndarray, thresh: float = EVALS_THRESH) -> PowerLawFit | None:
    """The failed fit of a spectrum with fewer than two eigenvalues above the cut, else None."""
    if x.size >= 2:
        return None
    return _failed(f"failed: {x.size} eigenvalue(s) above {thresh:g}")


def choose(ds: np.ndarray, js: np.ndarray, rule: str) -> int:
    """The small-sample xmin index by `rule`, or -1 when no candidate qualifies (J is inf)."""
    i = int(np.argmin(ds if rule == "D" else js))
    return i if math.isfinite(js[i]) else -1


def finish(evals: np.ndarray, x: np.ndarray, log_x: np.ndarray, i: int, alpha: float, d: float) -> PowerLawFit:
    """The fit with xmin = x[i] (i = -1: the small-sample fallback, the whole sample as the tail)."""
    small = x.size < SMALL_N_CUTOFF
    if i < 0:
        from irtools.passes.spectral._fitkernels import _ks_distance, _tail_sums

        n = x.size
        s = float(_tail_sums(log_x)[0]) - n * float(log_x[0])
        if s <= 1e-12:
            return _failed("failed: the eigenvalues are all equal")
        i, alpha = 0, 1.0 + (n - 1.0) / s
        d = float(_ks_distance(log_x, 0, alpha, np.inf))
    if not small and not alpha > 1.0:
        return _failed("failed: no xmin gives alpha > 1")
    if math.isinf(alpha):  # the best tail is one repeated eigenvalue (sum ln(x / xmin) = 0)
        return _failed("failed: the eigenvalues are all equal")
    xmin = float(x[i])
    return PowerLawFit(
        alpha=float(alpha), xmin=xmin, xmax=float(x[-1]), D=float(d),
        sigma=float((alpha - 1.0) / np.sqrt(x.size - i)),
        num_pl_spikes=int(np.count_nonzero(np.asarray(evals) >= xmin)), status="success",
    )


def fit_power_law(evals: np.ndarray, thresh: float = EVALS_THRESH, small_n_xmin: str = "D") -> PowerLawFit:
    """Fit a power law to the eigenvalues `evals` (any order) the way WeightWatcher does."""
    from irtools.passes.spectral._fitkernels import _fit_standard, _small_candidates

    x, log_x = tail_data(evals, thresh)
    failed = too_few(x, thresh)
    if failed is not None:
        return failed
    if x.size < SMALL_N_CUTOFF:
        alphas, ds, js = _small_candidates(log_x, SMALL_N_K_MIN)
        i = choose(ds, js, check_rule(small_n_xmin))
        return finish(evals, x, log_x, i, alphas[i] if i >= 0 else math.nan, ds[i] if i >= 0 else math.nan)
    i, alpha, d = _fit_standard(log_x)
    return finish(evals, x, log_x, i, alpha, d)


def _failed(status: str) -> PowerLawFit:
    nan = float("nan")
    return PowerLawFit(nan, nan, nan, nan, nan, 0, status)
