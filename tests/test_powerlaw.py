"""The power-law fit against a transcription of the reference's O(n^2) scan and known laws."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from irtools.passes.spectral.powerlaw import fit_power_law


def reference_fit(evals, thresh=1e-5):
    """WeightWatcher 0.7.x's WWFit, written out plainly: every candidate's tail scanned in full."""
    data = np.sort(np.asarray(evals, dtype=np.float64))
    data = data[data > thresh]
    n_all = len(data)
    log_data = np.log(data)
    if n_all < 20:
        best = (np.inf, None)
        for i in range(n_all - 1):
            n = n_all - i
            if n < 8:
                continue
            s = np.sum(log_data[i:]) - n * log_data[i]
            if s <= 1e-12:
                continue
            a = 1 + (n - 1) / s
            if a <= 1:
                continue
            d = np.max(np.abs(np.arange(n) / n - (1 - (data[i:] / data[i]) ** (1 - a))))
            j = d - 0.868 / np.sqrt(n)
            if j < best[0]:
                best = (j, (i, a, d))
        i, a, d = best[1]
    else:
        alphas, ds = np.zeros(n_all - 1), np.ones(n_all - 1)
        for i in range(n_all - 1):
            n = float(n_all - i)
            alphas[i] = 1 + n / (np.sum(log_data[i:]) - n * log_data[i])
            if alphas[i] > 1:
                ds[i] = np.max(np.abs(1 - (data[i:] / data[i]) ** (-alphas[i] + 1) - np.arange(n) / n))
        i = int(np.argmin(ds))
        a, d = alphas[i], ds[i]
    return {"alpha": a, "xmin": data[i], "D": d, "sigma": (a - 1) / np.sqrt(n_all - i),
            "num_pl_spikes": int(np.sum(evals >= data[i]))}


def pareto(alpha, n, rng, xmin=1.0):
    """Samples with density proportional to x^-alpha above xmin (inverse CDF)."""
    return xmin * (1 - rng.random(n)) ** (-1 / (alpha - 1))


@settings(max_examples=80, deadline=None)
@given(st.integers(8, 400), st.floats(1.5, 6.0), st.integers(0, 2**32 - 1), st.booleans())
def test_same_fit_as_the_reference_scan(n, alpha, seed, with_bulk):
    rng = np.random.default_rng(seed)
    evals = pareto(alpha, n, rng)
    if with_bulk:  # a Marchenko-Pastur-like bulk under the tail, and a few values below the cut
        evals = np.concatenate([evals, rng.uniform(0.05, 0.9, size=n), [1e-7, 0.0]])
    ours, ref = fit_power_law(evals), reference_fit(evals)
    assert ours.status == "success"
    assert ours.xmin == ref["xmin"]
    for key in ("alpha", "D", "sigma"):
        assert getattr(ours, key) == pytest.approx(ref[key], rel=1e-12, abs=1e-14), key
    assert ours.num_pl_spikes == ref["num_pl_spikes"]
    assert ours.xmax == np.max(evals)


@pytest.mark.parametrize("alpha", [2.0, 2.5, 3.5, 5.0])
def test_recovers_known_pareto_exponents(alpha):
    rng = np.random.default_rng(int(alpha * 10))
    fit = fit_power_law(pareto(alpha, 20_000, rng, xmin=0.5))
    assert fit.alpha == pytest.approx(alpha, abs=4 * fit.sigma + 0.02)
    assert fit.xmin == pytest.approx(0.5, rel=0.5)


def test_failed_fits_are_nan_with_a_reason():
    for evals, reason in (([3.0], "1 eigenvalue"), ([1e-9, 1e-8, 2.0], "1 eigenvalue"),
                          ([2.0] * 12, "all equal")):
        fit = fit_power_law(np.array(evals))
        assert math.isnan(fit.alpha) and math.isnan(fit.D) and reason in fit.status
