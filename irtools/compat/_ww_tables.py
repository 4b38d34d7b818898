"""WeightWatcher's tables from irtools' rows: the details record of a layer (its column names, the MP-fit and
randomize columns, the option columns), the DataFrame layout, and `get_summary`'s means.
"""

from __future__ import annotations

import math

import numpy as np

from irtools.compat._ww_layers import WWLayer
from irtools.compat._ww_options import Options
from irtools.passes.spectral.metrics import DEGENERATE


#: `get_summary`'s metrics (WeightWatcher's list): means over the layers that have them.
SUMMARY_METRICS = ("log_norm", "alpha", "alpha_weighted", "log_alpha_norm", "log_spectral_norm", "stable_rank",
                   "mp_softrank")


def frame(rows: list[dict]):
    """A DataFrame laid out as WeightWatcher lays out `details`: layer_id and name first, then the
    other columns sorted (WeightWatcher's one-record frames sort their keys), a RangeIndex; no rows:
    an empty frame without columns."""
    import pandas as pd

    if not rows:
        return pd.DataFrame(columns=[])
    details = pd.DataFrame(rows)
    lead = ["layer_id", "name"]
    return details[lead + sorted(c for c in details.columns if c not in lead)]


def _base_row(layer: WWLayer, wl) -> dict:
    return {"layer_id": layer.layer_id, "name": layer.name, "longname": layer.longname,
            "layer_type": layer.layer_type, "N": wl.N, "M": wl.M, "rf": wl.rf, "Q": wl.N / wl.M if wl.M else -1}


def _slice_ranks(wl, evals: np.ndarray, row: dict, device: str = "cpu") -> tuple[float, int]:
    """WeightWatcher's sv_min (the largest over the layer's matrices of their smallest singular value)
    and rank_loss (summed over the matrices). One matrix: from the pooled eigenvalues; a pooled conv:
    from each slice's spectrum (the spectral pass keeps only the pooled ESD)."""
    if wl.rf == 1:
        return math.sqrt(max(float(evals[0]), 0.0)), wl.M - int(row["matrix_rank"])
    from irtools.backends import get_backend

    spectra = get_backend(device).spectra(wl.matrices())
    sv_min = max(math.sqrt(max(float(s.evals.min()) * wl.eigen_scale, 0.0)) for s in spectra)
    rank_loss = sum(wl.M - int(np.count_nonzero(s.evals > s.noise_floor)) for s in spectra)
    return sv_min, rank_loss


MP_COLUMNS = ("num_spikes", "sigma_mp", "mp_softrank", "W_scale", "bulk_max", "bulk_min")


def mp_columns(evals: np.ndarray, wl, degenerate: bool, prefix: str = "") -> dict:
    """WeightWatcher's MP-fit columns (irtools' `mp_fit`; WeightWatcher's bulk edges are in the layer's
    own scale, irtools' in the unit-mean scale). NaN for a degenerate layer (zero, constant or rank-one
    weights: no bulk to fit; WeightWatcher fails there or fits noise)."""
    from irtools.passes.spectral.mpfit import mp_fit

    total = float(np.sum(evals))
    if degenerate or not total > 0:
        return dict.fromkeys((prefix + c for c in MP_COLUMNS), math.nan)
    fit = mp_fit(evals, wl.N, wl.M)
    w_scale = math.sqrt(evals.size / total)
    out = {"num_spikes": fit["num_spikes"], "sigma_mp": fit["sigma_mp"], "mp_softrank": fit["mp_softrank"],
           "W_scale": w_scale, "bulk_max": fit["bulk_max"] / w_scale**2, "bulk_min": fit["bulk_min"] / w_scale**2}
    return {prefix + k: v for k, v in out.items()}


def pooled_esd(mats: list[np.ndarray], eigen_scale: float, device: str = "cpu") -> np.ndarray:
    """The pooled, sorted ESD of `mats` (x eigen_scale) computed by the spectral pass on `device` (so
    that the backend chosen holds here too), without its size limits."""
    from irtools.ir.layers import WeightLayer
    from irtools.passing import get_pass

    n, m = max(mats[0].shape), min(mats[0].shape)
    layer = WeightLayer("esd", "esd", "esd", "matrix", "esd", tuple(mats[0].shape), n, m, len(mats), eigen_scale,
                        loader=lambda: mats)
    result = get_pass("spectral", backend=device, keep_evals=True, min_evals=0, max_evals=0, max_n=0,
                      workers=1).analyse([layer])
    return result.eigenvalues[0]


def randomized(wl, evals: np.ndarray, degenerate: bool, rng: np.random.Generator,
               device: str = "cpu") -> tuple[dict, np.ndarray]:
    """WeightWatcher's `randomize` columns and the randomized ESD: every matrix's elements shuffled;
    layers with fewer than 100 eigenvalues pool 5 shuffles (max_rand_eval and the MP fit of the random
    ESD, whose spikes are the correlation traps), and rand_distance compares one shuffle with the ESD.
    The shuffled ESDs are computed by the spectral pass on `device` (`pooled_esd`)."""
    from irtools.passes.spectral.metrics import rand_distance

    mats = wl.matrices()

    def shuffled_esd(replicas: int) -> np.ndarray:
        mixed = [rng.permutation(w.ravel()).reshape(w.shape) for _ in range(replicas) for w in mats]
        return pooled_esd(mixed, wl.eigen_scale, device)

    rand = shuffled_esd(5 if wl.num_evals < 100 else 1)
    single = rand if rand.size == evals.size else shuffled_esd(1)
    lam_max, rand_max = float(evals[-1]), float(rand[-1])
    out = {"max_rand_eval": rand_max, "rand_distance": rand_distance(evals, single) if lam_max > 0 else math.nan,
           "ww_softrank": rand_max / lam_max if lam_max > 0 else math.nan, "ww_maxdist": lam_max - rand_max}
    fit = mp_columns(rand, wl, degenerate, "rand_")
    fit["num_traps"] = fit["rand_num_spikes"]
    out.update(fit)
    return out, rand


def details_row(layer: WWLayer, wl, row: dict, evals: np.ndarray, *, mp_fit: bool, tolerance: float,
                part=None, device: str = "cpu") -> dict:
    """One WeightWatcher details record from irtools' row and the layer's sorted eigenvalues (`part`: the
    slice analysed, when not the pooled layer `wl`: it keeps the layer's N, M and rf, as WeightWatcher's)."""
    part = wl if part is None else part
    sv_min, rank_loss = _slice_ranks(part, evals, row, device)
    out = _base_row(layer, wl)
    out.update({
        "has_esd": True, "num_evals": row["num_evals"], "sv_max": math.sqrt(row["lambda_max"]), "sv_min": sv_min,
        "rank_loss": rank_loss, "weak_rank_loss": int(np.count_nonzero(evals < tolerance)),
        "lambda_max": row["lambda_max"], "alpha": row["alpha"], "xmin": row["xmin"], "xmax": row["xmax"],
        "D": row["D"], "sigma": row["sigma"], "num_pl_spikes": row["num_pl_spikes"],
        "status": "success" if row["fit_status"] == "success" else "failed", "warning": row["warning"],
    })
    if mp_fit:
        out.update(mp_columns(evals, part, row["warning"] == DEGENERATE))
    for key in ("norm", "log_norm", "spectral_norm", "log_spectral_norm", "alpha_weighted", "log_alpha_norm",
                "stable_rank", "matrix_rank", "entropy"):
        out[key] = row[key]
    return out


def option_columns(row: dict, options: Options, slice_id: int) -> dict:
    """The columns WeightWatcher adds or changes for the options: slice_id (pool=False), num_fingers and
    raw_alpha (clip_xmax), no xmax (xmin_peak)."""
    out = {} if options.pool else {"slice_id": slice_id}
    if options.clip_fingers:
        out.update(num_fingers=row["num_fingers"], raw_alpha=row["raw_alpha"])
    if options.peak_xmax:
        out["xmax"] = None
    return out


def summary_of(details) -> dict:
    """WeightWatcher's `get_summary`: the mean of each summary metric the table has (NaN rows left out)."""
    columns = details.columns if details is not None else []
    return {m: details[m].mean() for m in SUMMARY_METRICS if m in columns}
