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

WeightWatcher's options for the top of the spectrum (`FitOptions`, `fit_layer`), as 0.7.7 computes them:
- `fix_fingers="clip_xmax"` (its `fit_clipped_powerlaw`): fit, then refit without the 2, 3, ...
  `max_fingers - 1` largest eigenvalues; the first refit whose alpha is below the first alpha by more
  than `finger_thresh` wins (`num_fingers` = clipped - 1), a refit with alpha <= 2 stops the search
  (keeping the first fit). `max_fingers` below half the eigenvalues is reset to 10. It then refits
  three more clipped spectra only to log them: the whole fit fails if those reach below 2 eigenvalues.
  xmax is the winner's largest eigenvalue; num_pl_spikes counts every eigenvalue >= xmin.
- `fix_fingers="xmin_peak"`: xmin is searched only among the eigenvalues between
  min(log10(0.95 p), m) and max(log10(0.95 p), m), p the left edge of the fullest of 100 bins of the
  log10 ESD and m = `xmin_max` (default 1.5 p); the log10 on one bound only is WeightWatcher's. As in
  the `powerlaw` package (1.5) it hands that range to: distinct values only, the largest candidate in the
  range dropped, alpha = 1 + n / sum ln(x / xmin) for every tail size (no small-sample variant),
  smallest D. (WeightWatcher 0.7.7 itself fails this fit on every layer: its own fit cannot take a
  range, and powerlaw 2.0 refuses the keyword it passes; irtools computes what it means.)
- integer `xmax = -k` (`clip_top = k`): the k largest eigenvalues are left out of the fit (num_pl_spikes
  then counts the rest). When k exceeds half the eigenvalues WeightWatcher instead cuts the fit at the
  eigenvalue nearest to the number k; irtools does the same.
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
    num_fingers: int = 0  # eigenvalues clipped off the top by fix_fingers="clip_xmax" (WeightWatcher's count)
    raw_alpha: float = math.nan  # clip_xmax: alpha before clipping


_READY = threading.Event()  # set once the fit kernels are loaded in this process


def warm_up() -> None:
    """Import numba and load the compiled fit kernels from its cache (about 0.5 s on first use in
    a process). The spectral pass calls this in a thread while the first eigenvalues are
    computed, which hold no GIL, so that the load is hidden behind them."""
    fit_power_law(np.linspace(1.0, 2.0, SMALL_N_CUTOFF + 8))  # imports numba and the kernels
    fit_power_law(np.linspace(1.0, 2.0, 16))
    from irtools.passes.spectral._fitkernels import _fit_standard_rows

    rows = np.linspace(1.0, 2.0, 2 * (SMALL_N_CUTOFF + 8)).reshape(2, -1)  # the fits of a group of layers
    _fit_standard_rows(rows, np.log(rows), np.zeros(2, dtype=np.intp))
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


# -- WeightWatcher's options for the top of the spectrum ------------------------------------------

#: `fix_fingers` methods (None: the plain fit).
FIX_FINGERS = {
    "clip_xmax": "refit without the largest eigenvalues until alpha drops by finger_thresh (num_fingers, raw_alpha)",
    "xmin_peak": "xmin searched near the peak of the log ESD (up to xmin_max)",
}
DEFAULT_MAX_FINGERS = 10
DEFAULT_FINGER_THRESH = 1.0
#: clip_xmax stops clipping at a refit with alpha at or below this (WeightWatcher's min_alpha).
CLIP_MIN_ALPHA = 2.0
#: clip_xmax's logged refits after the search (their failure fails the fit).
CLIP_CHECKS = 3
#: xmin_peak: bins of the log10 ESD histogram, the lower bound's factor and the default upper bound's.
PEAK_BINS, PEAK_LOW, PEAK_HIGH = 100, 0.95, 1.5


@dataclass(frozen=True, slots=True)
class FitOptions:
    """How a layer's power law is fitted: the small-sample rule and WeightWatcher's options for the top
    of the spectrum (see the module docstring). The default is the plain fit."""

    small_n_xmin: str = "D"
    fix_fingers: str | None = None
    xmin_max: float | None = None  # xmin_peak: the top of the xmin range (default 1.5 x the peak)
    max_fingers: int | None = DEFAULT_MAX_FINGERS  # clip_xmax: clip up to max_fingers - 1 eigenvalues
    finger_thresh: float = DEFAULT_FINGER_THRESH  # clip_xmax: the alpha drop that marks fingers
    clip_top: int = 0  # WeightWatcher's integer xmax: the |xmax| largest eigenvalues left out of the fit

    def __post_init__(self):
        check_rule(self.small_n_xmin)
        if self.fix_fingers is not None and self.fix_fingers not in FIX_FINGERS:
            raise ValueError(f"fix_fingers must be one of {', '.join(FIX_FINGERS)} or None, not {self.fix_fingers!r}")
        if self.fix_fingers is not None and self.clip_top:
            raise ValueError("fix_fingers and an integer xmax cannot be combined (WeightWatcher refuses it too)")
        if self.max_fingers is not None and self.max_fingers < 1:
            raise ValueError(f"max_fingers must be at least 1, not {self.max_fingers}")
        if not math.isfinite(self.finger_thresh):
            raise ValueError(f"finger_thresh must be a number, not {self.finger_thresh!r}")

    @property
    def plain(self) -> bool:
        return self.fix_fingers is None and not self.clip_top


def fit_layer(evals: np.ndarray, options: FitOptions | None = None) -> PowerLawFit:
    """A layer's fit with `options` (all of a layer's eigenvalues, any order)."""
    if options is None or options.plain:
        return fit_power_law(evals, small_n_xmin=options.small_n_xmin if options else "D")
    evals = np.sort(np.asarray(evals, dtype=np.float64))
    if options.clip_top:
        return _fit_clip_top(evals, abs(int(options.clip_top)), options.small_n_xmin)
    return _FINGER_FITS[options.fix_fingers](evals, options)


def _spikes(fit: PowerLawFit, evals: np.ndarray, **changes) -> PowerLawFit:
    """`fit` with num_pl_spikes counted over `evals` (and other fields changed)."""
    from dataclasses import replace

    if fit.status != "success":
        return fit
    return replace(fit, num_pl_spikes=int(np.count_nonzero(evals >= fit.xmin)), **changes)


def _fit_clipped(evals: np.ndarray, options: FitOptions) -> PowerLawFit:
    """fix_fingers="clip_xmax" (WeightWatcher's `fit_clipped_powerlaw`)."""
    x = evals[evals > EVALS_THRESH]
    max_fingers = options.max_fingers
    if max_fingers is None or max_fingers < evals.size / 2:
        max_fingers = DEFAULT_MAX_FINGERS
    if max_fingers <= 2:
        return _failed(f"failed: max_fingers={max_fingers} clips nothing (WeightWatcher fails here too)")
    rule = options.small_n_xmin
    first = fit_power_law(x, small_n_xmin=rule)
    if first.status != "success":
        return first
    best, fingers = first, 0
    for clipped in range(2, max_fingers):
        if x.size - clipped < 2:
            return _too_few_to_clip(x.size, clipped)
        fit = fit_power_law(x[:-clipped], small_n_xmin=rule)
        if fit.alpha + options.finger_thresh < first.alpha:
            best, fingers = fit, clipped - 1
            break
        if fit.alpha <= CLIP_MIN_ALPHA:
            break
    if x.size - (clipped + CLIP_CHECKS) < 2:  # the logged refits may fail; each ends the checks on a jump
        for check in range(clipped + 1, clipped + 1 + CLIP_CHECKS):
            if x.size - check < 2:
                return _too_few_to_clip(x.size, check)
            if abs(fit_power_law(x[:-check], small_n_xmin=rule).alpha - fit.alpha) > options.finger_thresh:
                break
    return _spikes(best, evals, num_fingers=fingers, raw_alpha=first.alpha)


def _too_few_to_clip(size: int, clipped: int) -> PowerLawFit:
    return _failed(f"failed: {size} eigenvalues above {EVALS_THRESH:g} are too few to clip {clipped} "
                   f"(WeightWatcher fails here too)")


def peak_range(x: np.ndarray, xmin_max: float | None) -> tuple[float, float]:
    """xmin_peak's xmin range (low, high) for the eigenvalues `x` above the cut (see the module docstring)."""
    counts, edges = np.histogram(np.log10(x), bins=PEAK_BINS)
    peak = 10 ** edges[np.argmax(counts)]
    bounds = (np.log10(PEAK_LOW * peak), PEAK_HIGH * peak if xmin_max is None else xmin_max)
    return float(min(bounds)), float(max(bounds))


def _fit_peak(evals: np.ndarray, options: FitOptions) -> PowerLawFit:
    """fix_fingers="xmin_peak": the standard fit with xmin among the distinct eigenvalues in `peak_range`,
    the largest of them left out."""
    from irtools.passes.spectral._fitkernels import _fit_candidates

    x, log_x = tail_data(evals)
    failed = too_few(x)
    if failed is not None:
        return failed
    low, high = peak_range(x, options.xmin_max)
    first = np.ones(x.size, dtype=bool)
    first[1:] = x[1:] != x[:-1]
    candidates = np.flatnonzero(first & (x >= low) & (x <= high))[:-1]
    if candidates.size == 0:
        return _failed(f"failed: fewer than 2 distinct eigenvalues in the xmin range [{low:.4g}, {high:.4g}]")
    i, alpha, d = _fit_candidates(log_x, candidates.astype(np.int64))
    if math.isinf(alpha):
        return _failed("failed: the eigenvalues are all equal")
    return PowerLawFit(alpha=float(alpha), xmin=float(x[i]), xmax=float(x[-1]), D=float(d),
                       sigma=float((alpha - 1.0) / np.sqrt(x.size - i)),
                       num_pl_spikes=int(np.count_nonzero(evals >= x[i])), status="success")


def _fit_clip_top(evals: np.ndarray, k: int, rule: str) -> PowerLawFit:
    """Integer xmax: the fit without the k largest eigenvalues (WeightWatcher's `evals[:-k]`); past half
    the eigenvalues, WeightWatcher's fit cut at the eigenvalue nearest to the number k."""
    if k <= evals.size / 2:
        kept = evals[:-k]
        return fit_power_law(kept, small_n_xmin=rule)
    x = evals[evals > EVALS_THRESH]
    failed = too_few(x)  # one eigenvalue: WeightWatcher's fit of it fails
    if failed is not None:
        return failed
    cut = x[: int(np.argmin(np.abs(x - k))) + 1]
    return _spikes(fit_power_law(cut, small_n_xmin=rule), evals)


_FINGER_FITS = {"clip_xmax": _fit_clipped, "xmin_peak": _fit_peak}
