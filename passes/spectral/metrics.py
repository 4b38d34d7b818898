"""Heavy-tailed self-regularisation metrics of one layer's ESD, and the model summary.

Conventions of WeightWatcher 0.7.x (conventions.md section 2): the ESD is the eigenvalues of
X = W^T W (not divided by N); norms use every eigenvalue, the power-law fit only those above
1e-5. A layer with NaN or Inf weights is a finding (`warning = non-finite`), all its metrics NaN,
so that the means leave it out. Unlike the reference, a failed or meaningless fit is NaN with a reason (never -1), and
degenerate spectra (rank one, constant weights) are flagged instead of given an alpha.
"""

from __future__ import annotations

import math

import numpy as np

from irtools.passes.spectral.powerlaw import (EVALS_THRESH, SMALL_N_CUTOFF, FitOptions, PowerLawFit, fit_layer,
                                              fit_power_law)

OVER_TRAINED, UNDER_TRAINED, DEGENERATE, NON_FINITE = "over-trained", "under-trained", "degenerate", "non-finite"
#: The model summary: plain means over the layers that have the metric.
SUMMARY_METRICS = ("log_norm", "alpha", "alpha_weighted", "log_alpha_norm", "log_spectral_norm", "stable_rank")
#: Summarised only when computed (--mp-fit, --randomize).
OPTIONAL_SUMMARY_METRICS = ("mp_softrank", "rand_distance")


def layer_metrics(evals: np.ndarray, n: int, m: int, noise_floor: float, max_rank_per_matrix: int,
                  small_n_xmin: str = "D", fit: PowerLawFit | None = None,
                  fit_options: FitOptions | None = None, presorted: bool = False) -> dict:
    """All per-layer metrics of the pooled eigenvalues `evals` of a layer whose matrices are N x M.

    `noise_floor` is the eigenvalue level below which the backend's eigenvalues are round-off;
    `max_rank_per_matrix` the largest rank of the layer's individual matrices; `fit` the power-law
    fit when it was computed elsewhere (the CUDA fit of many layers at once), else it is computed
    here (`small_n_xmin`, or `fit_options` when given: see `irtools.passes.spectral.powerlaw`). With
    fix_fingers="clip_xmax" the row also has WeightWatcher's num_fingers and raw_alpha. `presorted`: `evals`
    is a float64 array sorted ascending already (`layer_eigen`'s), not sorted again.
    """
    evals = np.sort(np.asarray(evals, dtype=np.float64)) if not presorted else evals
    if fit is None and fit_options is None:
        row = _plain_row(evals, n, m, noise_floor, max_rank_per_matrix)
        if row is not None:
            return row
    lam_max = float(evals[-1])
    norm = float(evals.sum())
    row = {
        "N": n, "M": m, "num_evals": int(evals.size), "lambda_max": lam_max,
        "norm": norm, "log_norm": _log10(norm), "spectral_norm": lam_max, "log_spectral_norm": _log10(lam_max),
        "stable_rank": norm / lam_max if lam_max > 0 else math.nan,
    }
    rank = int(np.count_nonzero(evals > max(noise_floor, 0.0))) if lam_max > 0 else 0
    row["matrix_rank"] = rank
    row["entropy"] = _matrix_entropy(evals, rank, norm)
    degenerate = _degeneracy(evals, m, max_rank_per_matrix)
    if degenerate:
        fit_status, alpha = f"degenerate: {degenerate}", math.nan
        row.update(alpha=math.nan, xmin=math.nan, xmax=math.nan, D=math.nan, sigma=math.nan, num_pl_spikes=0)
    else:
        if fit is None:
            fit = fit_layer(evals, fit_options) if fit_options is not None else fit_power_law(
                evals, small_n_xmin=small_n_xmin)
        fit_status, alpha = fit.status, fit.alpha
        row.update(alpha=fit.alpha, xmin=fit.xmin, xmax=fit.xmax, D=fit.D, sigma=fit.sigma,
                   num_pl_spikes=fit.num_pl_spikes)
    if fit_options is not None and fit_options.fix_fingers == "clip_xmax":
        row.update(finger_columns(fit if not degenerate else None))
    row["alpha_weighted"] = alpha * row["log_spectral_norm"]
    row["log_alpha_norm"] = _log_alpha_norm(evals, alpha, lam_max)  # evals sorted: its max is the last
    if degenerate:
        row["warning"] = DEGENERATE
    elif math.isnan(alpha):
        row["warning"] = "fit-failed"
    elif alpha < 2.0:
        row["warning"] = OVER_TRAINED
    elif alpha > 6.0:
        row["warning"] = UNDER_TRAINED
    else:
        row["warning"] = ""
    row["fit_status"] = fit_status
    row["num_nonfinite"] = 0
    return row


_fit_standard = None  # irtools.passes.spectral._fitkernels._fit_standard, once `_plain_row` has run


def _plain_row(evals: np.ndarray, n: int, m: int, noise_floor: float, max_rank_per_matrix: int) -> dict | None:
    """`layer_metrics`' row of sorted float64 `evals` with the standard plain fit (at least `SMALL_N_CUTOFF`
    eigenvalues above the cut, not degenerate, the fit a success), or None (then the general code runs).
    The same numpy operations on the same arrays, so the same bits, with fewer calls: the tail is a slice
    of the sorted spectrum found once (the boolean mask and sort of `tail_data` select the same values),
    the spikes are counted by a search, reductions call the ufunc (`np.sum`'s Python layers cost 1-2 us
    each). A 64 x 64 layer's metrics took 28 us this way against 10 us."""
    global _fit_standard
    if _fit_standard is None:  # numba's module, imported on first use (not with this one: start-up time)
        from irtools.passes.spectral._fitkernels import _fit_standard
    size = evals.size
    if size == 0:
        return None
    lam = float(evals[-1])
    start = int(evals.searchsorted(EVALS_THRESH, "right"))  # the first eigenvalue above the cut
    if lam <= 0 or size - start < SMALL_N_CUTOFF or (max_rank_per_matrix <= 1 < m):
        return None
    x = evals[start:]
    if x[-1] - x[0] <= 1e-12 * x[-1]:  # all eigenvalues above the cut equal: degenerate
        return None
    i, alpha, d = _fit_standard(np.log(x))
    alpha = float(alpha)
    if not alpha > 1.0 or math.isinf(alpha):
        return None
    norm = float(np.add.reduce(evals))
    rank = int(np.count_nonzero(evals > max(noise_floor, 0.0)))
    p = evals / norm + 1e-10
    denom = math.log(rank + 1e-10)
    entropy = float(-np.add.reduce(p * np.log(p)) / denom) if denom != 0 else math.nan
    xmin = float(x[i])
    log_spectral = _log10(lam)
    with np.errstate(under="ignore"):  # (lambda / lambda_max) ** alpha in [0, 1]; tiny terms underflow to 0
        scaled = float(np.add.reduce((evals / lam) ** alpha))
    return {
        "N": n, "M": m, "num_evals": int(size), "lambda_max": lam, "norm": norm, "log_norm": _log10(norm),
        "spectral_norm": lam, "log_spectral_norm": log_spectral, "stable_rank": norm / lam,
        "matrix_rank": rank, "entropy": entropy,
        "alpha": alpha, "xmin": xmin, "xmax": lam, "D": float(d), "sigma": (alpha - 1.0) / math.sqrt(x.size - i),
        "num_pl_spikes": int(size - evals.searchsorted(xmin, "left")),
        "alpha_weighted": alpha * log_spectral, "log_alpha_norm": alpha * math.log10(lam) + math.log10(scaled),
        "warning": OVER_TRAINED if alpha < 2.0 else UNDER_TRAINED if alpha > 6.0 else "",
        "fit_status": "success", "num_nonfinite": 0,
    }


def layer_metrics_rows(evals: np.ndarray, n, m: int, noise_floors: np.ndarray, max_ranks: np.ndarray,
                       small_n_xmin: str = "D") -> list[dict]:
    """`layer_metrics` of each row of `evals` (layers of one M and rf: one finite spectrum a row, sorted
    ascending; `n` their N, one for all or one per row) with the plain fit, the same numbers: the norms,
    ranks, entropies and alpha-norms of all rows in whole-array operations (a row of a C-ordered array is
    reduced, logged and raised to a power with the bits of the same operation on that row alone), the
    standard fits in one numba call
    (`_fit_standard_rows`). A row that is degenerate, has fewer than `SMALL_N_CUTOFF` eigenvalues
    above the cut, or whose fit fails, gets `layer_metrics` itself."""
    from irtools.passes.spectral._fitkernels import _fit_standard_rows
    from irtools.passes.spectral.powerlaw import EVALS_THRESH, SMALL_N_CUTOFF, check_rule

    check_rule(small_n_xmin)
    evals = np.ascontiguousarray(evals, dtype=np.float64)
    layers, size = evals.shape
    ns = [int(n)] * layers if np.ndim(n) == 0 else [int(v) for v in n]
    noise_floors = np.asarray(noise_floors, dtype=np.float64)
    max_ranks = np.asarray(max_ranks)
    lam_max = evals[:, -1]
    norms = evals.sum(axis=1)
    starts = np.count_nonzero(evals <= EVALS_THRESH, axis=1)  # a sorted row's eigenvalues above the cut: a tail
    tails = size - starts
    top_above = lam_max
    bottom_above = evals[np.arange(layers), np.minimum(starts, size - 1)]
    # `_degeneracy` and the small-sample rule, for all rows: these rows go to `layer_metrics`
    scalar = ((lam_max <= 0) | ((max_ranks <= 1) & (m > 1)) | (tails < SMALL_N_CUTOFF)
              | ((tails >= 2) & (top_above - bottom_above <= 1e-12 * top_above)))
    fast = np.flatnonzero(~scalar)
    rows: list[dict | None] = [None] * layers
    if fast.size:
        ev = evals[fast] if fast.size < layers else evals
        with np.errstate(divide="ignore"):  # log(0) below the cut: never read
            log_ev = np.log(ev)
        index, alphas, ds, spikes = _fit_standard_rows(ev, log_ev, starts[fast])
        ranks = np.count_nonzero(ev > np.maximum(noise_floors[fast], 0.0)[:, None], axis=1)
        p = ev / norms[fast][:, None] + 1e-10
        plogp = np.sum(p * np.log(p), axis=1)
        ok = (alphas > 1.0) & np.isfinite(alphas) & (alphas != 2.0)  # 2.0: numpy's ** takes a square there
        with np.errstate(under="ignore"):
            scaled = np.sum((ev / lam_max[fast][:, None]) ** np.where(ok, alphas, 1.5)[:, None], axis=1)
        for j, (r, lam, norm, rank, plp, start, i, alpha, d, spike, sc, good) in enumerate(zip(
                fast.tolist(), lam_max[fast].tolist(), norms[fast].tolist(), ranks.tolist(), plogp.tolist(),
                starts[fast].tolist(), index.tolist(), alphas.tolist(), ds.tolist(), spikes.tolist(),
                scaled.tolist(), ok.tolist())):
            if not good:
                continue
            denom = math.log(rank + 1e-10)
            log_spectral = _log10(lam)
            row = {
                "N": ns[r], "M": m, "num_evals": size, "lambda_max": lam, "norm": norm, "log_norm": _log10(norm),
                "spectral_norm": lam, "log_spectral_norm": log_spectral, "stable_rank": norm / lam,
                "matrix_rank": rank, "entropy": -plp / denom if denom != 0 else math.nan,
                "alpha": alpha, "xmin": float(evals[r, start + i]), "xmax": lam, "D": d,
                "sigma": (alpha - 1.0) / math.sqrt(size - start - i), "num_pl_spikes": spike,
                "alpha_weighted": alpha * log_spectral, "log_alpha_norm": alpha * math.log10(lam) + math.log10(sc),
                "warning": OVER_TRAINED if alpha < 2.0 else UNDER_TRAINED if alpha > 6.0 else "",
                "fit_status": "success", "num_nonfinite": 0,
            }
            rows[r] = row
    for r in range(layers):
        if rows[r] is None:
            rows[r] = layer_metrics(evals[r], ns[r], m, float(noise_floors[r]), int(max_ranks[r]), small_n_xmin)
    return rows


def finger_columns(fit: PowerLawFit | None) -> dict:
    """WeightWatcher's clip_xmax columns: eigenvalues clipped and the alpha before clipping (NaN: no fit)."""
    if fit is None or fit.status != "success":
        return {"num_fingers": 0, "raw_alpha": math.nan}
    return {"num_fingers": fit.num_fingers, "raw_alpha": fit.raw_alpha}


#: Every metric of a layer, NaN when its weights are not finite.
_METRIC_KEYS = ("lambda_max", "alpha", "xmin", "xmax", "D", "sigma", "norm", "log_norm", "spectral_norm",
                "log_spectral_norm", "alpha_weighted", "log_alpha_norm", "stable_rank", "entropy")


def nonfinite_metrics(n: int, m: int, num_evals: int, count: int) -> dict:
    """The row of a layer whose weights hold `count` NaN or Inf values: no eigenvalues, no fit.
    (count 0: the weights are finite but W^T W overflows float64.)"""
    row = {"N": n, "M": m, "num_evals": num_evals, **dict.fromkeys(_METRIC_KEYS, math.nan),
           "num_pl_spikes": 0, "matrix_rank": 0, "warning": NON_FINITE, "num_nonfinite": count}
    row["fit_status"] = (f"failed: {count} non-finite weight(s) (NaN or Inf)" if count
                         else "failed: W^T W overflows float64 (weights above ~1e154)")
    return row


def log_alpha_norm(evals: np.ndarray, alpha: float) -> float:
    """log10(sum(lambda_i ** alpha)) (WeightWatcher's log_alpha_norm), computed in log space:
    alpha log10(lambda_max) + log10(sum((lambda_i / lambda_max) ** alpha)), so that an alpha of
    tens on eigenvalues of thousands (Keras EfficientNetB0) gives its finite value instead of
    overflowing float64 (the direct sum is inf there). The same number, to round-off, wherever
    the direct formula is finite. NaN for NaN alpha or an empty or all-zero spectrum."""
    evals = np.asarray(evals, dtype=np.float64)
    if math.isnan(alpha) or evals.size == 0:
        return math.nan
    return _log_alpha_norm(evals, alpha, float(evals.max()))


def _log_alpha_norm(evals: np.ndarray, alpha: float, top: float) -> float:
    """`log_alpha_norm` of float64 `evals` whose largest value is `top`."""
    if math.isnan(alpha) or evals.size == 0:
        return math.nan
    if top <= 0.0 or alpha <= 0.0 or math.isinf(alpha):  # no scaling to do: the direct formula (no overflow)
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            return _log10(float(np.sum(evals**alpha)))
    with np.errstate(under="ignore"):  # (lambda / lambda_max) ** alpha in [0, 1]; tiny terms underflow to 0
        scaled = float(np.sum((evals / top) ** alpha))  # >= 1: the largest term is 1
    return alpha * math.log10(top) + math.log10(scaled)


def _log10(x: float) -> float:
    return math.log10(x) if x > 0 else math.nan


def _matrix_entropy(evals: np.ndarray, rank: int, total: float | None = None) -> float:
    """WeightWatcher's matrix entropy: -sum p ln p / ln(rank), p = lambda / sum(lambda) + 1e-10
    (`total`: that sum, when the caller has it)."""
    total = float(evals.sum()) if total is None else total
    if total <= 0:
        return math.nan
    p = evals / total + 1e-10
    denom = math.log(rank + 1e-10)
    return float(-np.sum(p * np.log(p)) / denom) if denom != 0 else math.nan


def _degeneracy(evals: np.ndarray, m: int, max_rank_per_matrix: int) -> str:
    """Why a spectrum (sorted ascending) carries no power law (empty string if it may)."""
    if evals.size == 0 or evals[-1] <= 0:
        return "all weights are zero"
    if max_rank_per_matrix <= 1 < m:
        return "every weight matrix has rank one (e.g. constant weights)"
    above = evals[np.searchsorted(evals, 1e-5, side="right"):]  # evals is sorted: those > 1e-5
    if above.size >= 2 and above[-1] - above[0] <= 1e-12 * above[-1]:  # their max - min (np.ptp)
        return "all eigenvalues are equal"
    return ""


def rand_distance(evals: np.ndarray, rand_evals: np.ndarray) -> float:
    """Jensen-Shannon distance between the sorted eigenvalue vectors (as WeightWatcher defines it)."""
    from scipy import stats  # imported here: scipy.stats adds ~0.5 s to every start-up

    p, q = np.asarray(evals, dtype=np.float64), np.asarray(rand_evals, dtype=np.float64)
    mid = (p + q) / 2
    return float(np.sqrt((stats.entropy(p, mid) + stats.entropy(q, mid)) / 2))


def _mean(vals: list) -> float:
    """`float(np.mean(vals))`, the same arithmetic (numpy's float64 sum, divided by the count) without
    `np.mean`'s Python layers (2-4 us a call: the summary's means cost more than a small layer's metrics)."""
    if len(vals) == 1:  # numpy's sum of one value is that value
        return float(vals[0]) / 1
    return float(np.add.reduce(np.asarray(vals, dtype=np.float64))) / len(vals)


def summarize(rows: list[dict]) -> dict:
    """Means over layers of the summary metrics; each says over how many layers it was taken."""
    keys = SUMMARY_METRICS + OPTIONAL_SUMMARY_METRICS
    vals: dict[str, list] = {key: [] for key in keys}
    warnings = dict.fromkeys((OVER_TRAINED, UNDER_TRAINED, DEGENERATE, "fit-failed", NON_FINITE), 0)
    fitted = 0
    for r in rows:  # one pass over the rows: a value that is there, not None and not NaN counts
        for key in keys:
            v = r.get(key)
            if v is not None and not math.isnan(v):
                vals[key].append(v)
        fitted += r.get("fit_status") == "success"
        if r.get("warning") in warnings:
            warnings[r["warning"]] += 1
    out: dict = {"layers": len(rows)}
    for key in keys:
        if key in OPTIONAL_SUMMARY_METRICS and not vals[key]:
            continue
        out[key] = _mean(vals[key]) if vals[key] else math.nan
        out[f"{key}_layers"] = len(vals[key])
    out["fitted_layers"] = fitted
    out["warnings"] = warnings
    return out
