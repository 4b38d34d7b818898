"""The power-law fit against WeightWatcher 0.7.7's own WWFit, a transcription of its J rule, and known laws."""

import contextlib
import importlib
import importlib.util
import io
import math
import os
import sys
import types

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from irtools.passes.spectral.powerlaw import SMALL_N_CUTOFF, fit_power_law


def _wwfit_class():
    """WeightWatcher's WWFit, loaded from its installed file without the package's __init__
    (which imports torch and prints), under a private package name."""
    spec = importlib.util.find_spec("weightwatcher")
    if spec is None:
        pytest.skip("weightwatcher is not installed")
    if "_ww_reference" not in sys.modules:
        pkg = types.ModuleType("_ww_reference")
        pkg.__path__ = [os.path.dirname(spec.origin)]
        sys.modules["_ww_reference"] = pkg
    return importlib.import_module("_ww_reference.WW_powerlaw").WWFit


def ww_fit(evals, thresh=1e-5):
    """What WeightWatcher 0.7.7 reports (its fit_powerlaw: the eigenvalues above 1e-5, WWFit)."""
    evals = np.asarray(evals, dtype=np.float64)
    with contextlib.redirect_stdout(io.StringIO()):  # WWFit prints "SMALL N PL FIT"
        fit = _wwfit_class()(evals[evals > thresh])
    return {"alpha": fit.alpha, "xmin": fit.xmin, "D": fit.D, "sigma": fit.sigma,
            "num_pl_spikes": int(np.sum(evals >= fit.xmin))}


def j_rule_fit(evals, thresh=1e-5):
    """The small-sample J rule written out plainly (WeightWatcher's choice before its __init__
    overwrites it): smallest J = D - 0.868/sqrt(n) over tails of at least 8."""
    data = np.sort(np.asarray(evals, dtype=np.float64))
    data = data[data > thresh]
    best = (np.inf, None)
    for i in range(len(data) - 1):
        n = len(data) - i
        s = np.sum(np.log(data[i:])) - n * np.log(data[i])
        if n < 8 or s <= 1e-12:
            continue
        a = 1 + (n - 1) / s
        d = np.max(np.abs(np.arange(n) / n - (1 - (data[i:] / data[i]) ** (1 - a))))
        if d - 0.868 / np.sqrt(n) < best[0]:
            best = (d - 0.868 / np.sqrt(n), (i, a, d))
    return best[1]


def pareto(alpha, n, rng, xmin=1.0):
    """Samples with density proportional to x^-alpha above xmin (inverse CDF)."""
    return xmin * (1 - rng.random(n)) ** (-1 / (alpha - 1))


def assert_same(ours, ref, small):
    assert ours.status == "success"
    assert ours.xmin == ref["xmin"]
    for key in ("alpha", "D") + (() if small else ("sigma",)):
        assert getattr(ours, key) == pytest.approx(ref[key], rel=1e-12, abs=1e-14), key
    assert ours.num_pl_spikes == ref["num_pl_spikes"]


@settings(max_examples=80, deadline=None)
@given(st.integers(8, 400), st.floats(1.5, 6.0), st.integers(0, 2**32 - 1), st.booleans())
def test_same_fit_as_weightwatcher(n, alpha, seed, with_bulk):
    rng = np.random.default_rng(seed)
    evals = pareto(alpha, n, rng)
    if with_bulk:  # a Marchenko-Pastur-like bulk under the tail, and a few values below the cut
        evals = np.concatenate([evals, rng.uniform(0.05, 0.9, size=n), [1e-7, 0.0]])
    ours, ref = fit_power_law(evals), ww_fit(evals)
    assert_same(ours, ref, small=False)
    if n >= 8:
        assert ours.sigma == pytest.approx(ref["sigma"], rel=1e-12)
    assert ours.xmax == np.max(evals)


@settings(max_examples=120, deadline=None)
@given(st.integers(2, SMALL_N_CUTOFF - 1), st.floats(1.3, 8.0), st.integers(0, 2**32 - 1),
       st.integers(0, 4), st.integers(0, 3))
def test_small_samples_report_what_weightwatcher_reports(n, alpha, seed, repeats, tiny):
    """Fewer than 20 eigenvalues above the cut: bias-corrected alphas, xmin = argmin D (the
    candidate WWFit.__init__ keeps), with repeated eigenvalues (ties) and values below 1e-5."""
    rng = np.random.default_rng(seed)
    evals = pareto(alpha, n, rng, xmin=rng.uniform(0.01, 3.0))
    if repeats:
        evals[:repeats] = evals[-1]  # repeated eigenvalues, including the largest
    evals = np.concatenate([evals, np.full(tiny, 1e-9)])
    ours, ref = fit_power_law(evals), ww_fit(evals)
    if np.ptp(evals[evals > 1e-5]) == 0:
        assert ours.status == "failed: the eigenvalues are all equal"
        return
    assert_same(ours, ref, small=True)
    above = int(np.sum(evals > 1e-5))
    if above >= 8:  # below 8, WeightWatcher reports sigma = -1/sqrt(n) (see powerlaw.py)
        assert ours.sigma == pytest.approx(ref["sigma"], rel=1e-12)
    else:
        assert ref["sigma"] == pytest.approx(-1 / math.sqrt(above))
        assert ours.sigma == pytest.approx((ours.alpha - 1) / math.sqrt(above), rel=1e-12)


def test_small_layer_from_the_issue_picks_argmin_d_and_j_on_request():
    """A spectrum where the two rules disagree (as on the 240x10 squeeze-excite layers of the
    issue): the default is WeightWatcher's reported argmin-D choice; "J" its J choice."""
    rng = np.random.default_rng(3)
    for _ in range(200):
        evals = pareto(2.5, 14, rng)
        i, a, d = j_rule_fit(evals)
        ref = ww_fit(evals)
        if ref["xmin"] != np.sort(evals)[i]:
            break
    else:
        pytest.fail("no spectrum where the rules disagree")
    default, j = fit_power_law(evals), fit_power_law(evals, small_n_xmin="J")
    assert default.xmin == ref["xmin"] and default.alpha == pytest.approx(ref["alpha"], rel=1e-12)
    assert j.xmin == np.sort(evals)[i] and j.alpha == pytest.approx(a, rel=1e-12) and j.D == pytest.approx(d)
    assert default.D < j.D
    with pytest.raises(ValueError, match="small_n_xmin"):
        fit_power_law(evals, small_n_xmin="K")


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


@pytest.mark.parametrize("repeats", [2, 3, 6])
def test_repeated_largest_eigenvalues_match_weightwatcher(repeats):
    """Tied top eigenvalues make a candidate's sum ln(x/xmin) exactly 0: the reference's alpha is
    then inf (numpy's n / 0.0) with (x/xmin)^(1-alpha) = 1; numba must neither raise nor give NaN."""
    rng = np.random.default_rng(repeats)
    for n in (24, 40, 120):
        evals = np.sort(pareto(2.5, n, rng))
        evals[-repeats:] = evals[-1]
        evals[: repeats + 1] = evals[0]  # ties at the bottom too
        with np.errstate(divide="ignore", invalid="ignore"):
            ref = ww_fit(evals)
        assert_same(fit_power_law(evals), ref, small=False)


def _full_scan_fit(evals, thresh=1e-5):
    """(xmin, alpha, D) of the standard fit by brute force: every candidate's whole tail, argmin D."""
    x = np.sort(np.asarray(evals, dtype=np.float64))
    x = x[x > thresh]
    log_x = np.log(x)
    tails = np.cumsum(log_x[::-1])[::-1]
    best = (np.inf, None)
    for i in range(x.size - 1):
        n = x.size - i
        s = tails[i] - n * log_x[i]
        a = 1.0 + n / s if s != 0 else np.inf
        d = np.max(np.abs(1.0 - np.exp((1.0 - a) * (log_x[i:] - log_x[i])) - np.arange(n) / n)) if a > 1 else 1.0
        if d < best[0]:
            best = (d, (x[i], a, d))
    return best[1]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pruned_scans_pick_the_full_scans_xmin_on_pooled_conv_spectra(seed):
    """The fit's scans stop early (and look first where the previous candidate failed): on the
    ~1000-2000 eigenvalues of a pooled conv layer (heavy-tailed 3x3 kernel slices) it still
    picks the xmin, alpha and D of scanning every tail in full."""
    rng = np.random.default_rng(seed)
    c = 96 + 32 * seed
    w = rng.standard_t(3, (c, c, 3, 3))
    evals = np.concatenate([np.linalg.eigvalsh(w[:, :, i, j].T @ w[:, :, i, j]) for i in range(3) for j in range(3)])
    ours = fit_power_law(evals)
    xmin, alpha, d = _full_scan_fit(evals)
    assert ours.xmin == xmin
    assert ours.alpha == pytest.approx(alpha, rel=1e-12) and ours.D == pytest.approx(d, rel=1e-9, abs=1e-15)


@pytest.mark.parametrize("seed", range(6))
def test_bounded_scans_equal_every_candidates_full_kernel_scan_bit_for_bit(seed):
    """`_fit_standard` bounds every scan (its coarse pass too) and looks first where the last one
    failed: its xmin index, alpha and D are exactly those of scanning every candidate's whole tail
    with the same kernel (`_ks_distance` with no bound) and taking the first smallest D, on pooled
    conv-like, heavy-tailed, tied and short spectra."""
    from irtools.passes.spectral._fitkernels import _fit_standard, _ks_distance, _tail_sums

    rng = np.random.default_rng(seed)
    n = [25, 64, 300, 576, 1500, 2304][seed]
    spectra = [np.sort(rng.standard_normal((n, 3 + seed)).std(axis=1) ** 2 * 10),
               np.sort(pareto(1.5 + seed / 2, n, rng)),
               np.sort(np.concatenate([rng.chisquare(2, n - 8), np.full(8, 50.0)]))]
    for x in spectra:
        log_x = np.log(x[x > 1e-5])
        tails = _tail_sums(log_x)
        best = (np.inf, -1, np.nan)
        for i in range(log_x.size - 1):
            s = tails[i] - (log_x.size - i) * log_x[i]
            a = 1.0 + (log_x.size - i) / s if s != 0.0 else np.inf
            d = _ks_distance(log_x, i, a, np.inf) if a > 1.0 else 1.0
            if d < best[0]:
                best = (d, i, a)
        i, alpha, d = _fit_standard(log_x)
        assert (i, alpha, d) == (best[1], best[2], best[0])
