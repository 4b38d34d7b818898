"""Marchenko-Pastur bulk fit of an ESD, as WeightWatcher 0.7.x's `mp_fit` does it.

The ESD is rescaled to unit mean, a linear-kernel density estimate (bandwidth 0.1) is taken on
1000 points, and the MP scale sigma that best matches it is found by a grid search over
[0.05, 2) x the scale implied by lambda_max, polished by Nelder-Mead (`scipy.optimize.brute`).
num_spikes counts eigenvalues above the bulk edge plus a Tracy-Widom margin; mp_softrank is
bulk edge / lambda_max. Unlike the reference, the density estimate is computed once per layer
instead of once per trial sigma.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy import optimize

_THRESH = 0.01  # grid points with density below this are left out of the residual


def _linear_kde(samples: np.ndarray, grid: np.ndarray, bw: float) -> np.ndarray:
    """Density of a linear (triangular) kernel estimate: mean of max(0, 1 - |g - x| / bw) / bw."""
    out = np.zeros(grid.size)
    for start in range(0, samples.size, 2048):
        chunk = samples[start:start + 2048]
        out += np.clip(1.0 - np.abs(grid[:, None] - chunk[None, :]) / bw, 0.0, None).sum(axis=1)
    return out / (samples.size * bw)


def _residual(p, xde, yde, n_bad, q):
    sigma = p[0] if np.ndim(p) else p
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        if q == 1:
            ymp = np.nan_to_num((1 / (np.pi * sigma * sigma)) * np.sqrt(4 - xde**2))
            resid = ymp - yde
        else:
            b = (sigma * (1 + np.sqrt(1 / q))) ** 2
            a = (sigma * (1 - np.sqrt(1 / q))) ** 2
            peak = xde[np.argmax(yde)]
            if b < peak or b > xde.max() or a > peak:
                resid = np.full(yde.size, 1000.0)
            else:
                ymp = np.nan_to_num((1 / (2 * np.pi * sigma * sigma * xde * (1 / q))) * np.sqrt((b - xde) * (xde - a)))
                resid = ymp - yde
    return float(np.sum(resid**2))  # the n_bad zero residuals add nothing


def mp_fit(evals: np.ndarray, n: int, m: int, bw: float = 0.1) -> dict:
    """num_spikes, sigma_mp, mp_softrank (and the bulk edges) of the eigenvalues of an N x M layer."""
    evals = np.asarray(evals, dtype=np.float64)
    q = n / m
    total = float(np.sum(evals))
    if not (total > 0 and math.isfinite(total)) or float(np.max(evals)) == float(np.min(evals)):
        # a zero or constant layer has no bulk to fit (WeightWatcher divides by zero here)
        return dict.fromkeys(("num_spikes", "sigma_mp", "mp_softrank", "bulk_min", "bulk_max"), math.nan)
    scaled = evals * (evals.size / float(np.sum(evals)))  # Wscale^2 * evals: unit mean
    lam_max = float(np.max(scaled))
    to_fit = np.sqrt(scaled) if q == 1 else scaled
    xde = np.linspace(0, np.max(to_fit) + 0.5, 1000)
    yde = _linear_kde(to_fit, xde, bw)
    good = yde > _THRESH
    xde, n_bad, yde = xde[good], int(np.count_nonzero(~good)), yde[good]
    scale = math.sqrt(lam_max / (1 + 1 / math.sqrt(q)) ** 2)
    grid = (slice(0.05 * scale, 2.0 * scale, 0.01 * scale),)
    sigma = float(np.ravel(optimize.brute(_residual, grid, args=(xde, yde, n_bad, q), full_output=True)[0])[0])
    bulk_max = (sigma * (1 + 1 / math.sqrt(q))) ** 2
    bulk_min = (sigma * (1 - 1 / math.sqrt(q))) ** 2
    tw = 1 / math.sqrt(q) * bulk_max ** (2 / 3) * m ** (-2 / 3)
    return {
        "num_spikes": int(np.count_nonzero(scaled > bulk_max + math.sqrt(tw))),
        "sigma_mp": sigma,
        "mp_softrank": bulk_max / lam_max,
        "bulk_min": bulk_min,
        "bulk_max": bulk_max,
    }
