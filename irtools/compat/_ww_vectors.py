"""WeightWatcher 0.7.7's `vectors=True` (its apply_analyze_eigenvectors): for each eigenvector of each
matrix's smaller Gram matrix, its discrete entropy, localization ratio and participation ratio; the columns
are their means and variances over the bulk (eigenvalues below the fit's xmin) and the tail (the fit's
num_pl_spikes largest), `bulk_mean_vec_entropy` ... `tail_var_part_ratio`. WeightWatcher's eigenvalue
solver is a general `eig`; here the symmetric one (`eigh`): the same eigenvectors up to sign, and every metric
depends only on |v|.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

METRICS = ("vec_entropy", "loc_ratio", "part_ratio")
#: WeightWatcher's histogram bins and the EPSILON it adds to each bin (RMT_Util.discrete_entropy).
ENTROPY_BINS, EPSILON = 100, 1e-10


def discrete_entropy(vec: np.ndarray) -> float:
    """WeightWatcher's discrete_entropy: the entropy of the 100-bin density of |v| - mean |v|."""
    vec = np.absolute(vec)
    counts = np.histogram(vec - np.mean(vec), density=True, bins=ENTROPY_BINS)[0]
    p = (counts + EPSILON) / math.sqrt(2 * math.pi)
    p = p / np.sum(p)
    return float(-np.sum(p * np.log(p)))


def vector_columns(mats: list[np.ndarray], num_tail) -> dict:
    """The 12 columns of one layer whose power-law tail holds its `num_tail` largest eigenvalues (NaN where the
    bulk or the tail is empty, and all NaN when the fit has no tail). WeightWatcher compares eigenvalues it
    computes again (with `eig`) with the fit's xmin, so the eigenvector of xmin itself falls on either side by
    rounding; here it is in the tail, where the fit puts it."""
    evals, values = [], {m: [] for m in METRICS}
    for w in mats:
        w = np.asarray(w, dtype=np.float64)
        gram = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
        e, vectors = np.linalg.eigh(gram)
        evals.append(e)
        for v in vectors.T:
            values["vec_entropy"].append(discrete_entropy(v))
            values["loc_ratio"].append(np.linalg.norm(v, 1) / np.linalg.norm(v, np.inf))
            values["part_ratio"].append(np.linalg.norm(v, 2) / np.linalg.norm(v, 4))
    evals = np.concatenate(evals)
    if not isinstance(num_tail, (int, np.integer)) or num_tail < 0:
        return {f"{part}_{stat}_{name}": math.nan for name in METRICS for part in ("bulk", "tail")
                for stat in ("mean", "var")}
    tail = np.zeros(evals.size, dtype=bool)
    tail[np.argsort(evals, kind="stable")[evals.size - min(int(num_tail), evals.size):]] = True
    bulk = ~tail
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an empty bulk or tail: NaN, as in WeightWatcher
        for name in METRICS:
            data = np.asarray(values[name])
            for part, mask in (("bulk", bulk), ("tail", tail)):
                chosen = data[mask]
                out[f"{part}_mean_{name}"] = float(np.mean(chosen)) if chosen.size else math.nan
                out[f"{part}_var_{name}"] = float(np.var(chosen)) if chosen.size else math.nan
    return out
